"""The result vocabulary: the typed result document, its generated JSON Schema and its builder.

* :mod:`cellbench.results.document`: the document's one definition (``TypedDict`` types);
* :mod:`cellbench.results.schema`: the published JSON Schema generated from it;
* :mod:`cellbench.results.builder`: the one function that builds a document, used by both
  ``cellbench eval`` and ``cellbench eval merge``, and the writer of the result files.
"""

from cellbench.results.document import RESULT_SCHEMA, SCORE_FIELDS, ResultDocument

__all__ = ["RESULT_SCHEMA", "SCORE_FIELDS", "ResultDocument"]
