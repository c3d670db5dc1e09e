"""Metric validation: controlled, seeded defects and the report that runs them through scoring.

* :mod:`cellbench.validation.defects`: each defect is a pure function
  ``(crops, severity, rng, ...) -> crops`` aimed at one reward (or at FID/KID);
* :mod:`cellbench.validation.report`: every defect at several severities through the same
  :class:`~cellbench.scoring.Scorer` and :func:`~cellbench.results.builder.aggregate` as
  ``cellbench eval``, written as a markdown report with figures (``cellbench validate-metrics``).
"""

from __future__ import annotations

__all__ = ["DEFECTS", "DefectSpec", "apply_defect"]


def __getattr__(name: str):  # lazy: importing the package stays cheap
    if name in __all__:
        from cellbench.validation import defects

        return getattr(defects, name)
    raise AttributeError(name)
