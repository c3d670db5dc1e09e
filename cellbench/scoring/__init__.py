"""The one scoring path of cellbench: per-image features, then rewards (``docs/scoring.md``).

- :class:`Artifacts` (``artifacts``): a dataset's card, reference statistics and classifier;
- :class:`Scorer`, :class:`Features` (``scorer``): segmentation features, Inception features and
  MoA probabilities (each once per image), and the rewards computed from them;
- :class:`ImageArrays` (``arrays``): the per-image arrays of a scored image set;
- :func:`score_images`, :func:`reference_arrays` (``images``): an image folder's and the real
  reference crops' features;
- :class:`RewardModel` (``reward_model``): the scorer as a training-loop reward (torch tensors).

Names load on first use, so ``import cellbench.scoring`` pulls in neither torch nor pandas.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Artifacts",
    "Features",
    "ImageArrays",
    "RewardModel",
    "Scorer",
    "reference_arrays",
    "score_images",
]


def __getattr__(name: str) -> Any:
    """Load ``name`` from its submodule on first use (plain imports, seen by the import-graph test)."""
    if name == "Artifacts":
        from cellbench.scoring.artifacts import Artifacts

        return Artifacts
    if name in ("Scorer", "Features"):
        from cellbench.scoring import scorer

        return getattr(scorer, name)
    if name == "ImageArrays":
        from cellbench.scoring.arrays import ImageArrays

        return ImageArrays
    if name in ("score_images", "reference_arrays"):
        from cellbench.scoring import images

        return getattr(images, name)
    if name == "RewardModel":
        from cellbench.scoring.reward_model import RewardModel

        return RewardModel
    raise AttributeError(f"module 'cellbench.scoring' has no attribute {name!r}")
