"""cellbench: benchmark toolkit and leaderboard for virtual cell image generators.

``import cellbench`` is light (no torch, no torchmetrics); heavy parts load when first used.
"""

from cellbench._version import __version__
from cellbench.errors import CellbenchError

__all__ = ["CellbenchError", "CellbenchMetric", "RewardModel", "__version__", "evaluate"]


def __getattr__(name: str):
    """Heavy parts on first use: :func:`cellbench.evaluate` (a folder or an in-memory batch; see
    :func:`cellbench.evaluation.evaluate`), :class:`cellbench.CellbenchMetric` (the in-memory
    metric, torchmetrics-based) and :class:`cellbench.RewardModel` (per-image rewards)."""
    if name == "evaluate":
        from cellbench.evaluation import evaluate

        return evaluate
    if name == "CellbenchMetric":
        from cellbench.scoring.metric import CellbenchMetric

        return CellbenchMetric
    if name == "RewardModel":
        from cellbench.rewards import RewardModel

        return RewardModel
    raise AttributeError(f"module 'cellbench' has no attribute {name!r}")
