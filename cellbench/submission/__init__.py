"""Leaderboard submissions: the folder format, its JSON Schemas and the validator.

A submission is ``submissions/<YYYY-MM-DD>_<model>/`` with ``metadata.json``, and the
``results.json`` + ``results.per_image.csv`` written by ``cellbench eval``. The schemas are
published in ``cellbench/resources/schemas/`` (copied to ``submissions/schemas/``).
"""

from cellbench.submission.validate import (
    Problem,
    Submission,
    check_submission,
    removed_submissions,
    submission_folders,
    validate_submission,
)

__all__ = [
    "Problem",
    "Submission",
    "check_submission",
    "removed_submissions",
    "submission_folders",
    "validate_submission",
]
