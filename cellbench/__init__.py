"""cellbench: benchmark toolkit and leaderboard for virtual cell image generators.

``import cellbench`` is light (no torch); heavy parts load when first used.
"""

from cellbench._version import __version__
from cellbench.errors import CellbenchError

__all__ = ["CellbenchError", "RewardModel", "__version__", "evaluate"]


def __getattr__(name: str):
    """Heavy parts on first use: ``cellbench.evaluate`` and ``cellbench.RewardModel``."""
    if name == "RewardModel":
        from cellbench.scoring.reward_model import RewardModel

        return RewardModel
    raise AttributeError(f"module 'cellbench' has no attribute {name!r}")


def evaluate(*args, **kwargs):
    """Score a folder of generated images; see :func:`cellbench.evaluation.evaluate`."""
    from cellbench.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
