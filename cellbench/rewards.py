"""A reward object for training loops (CellFluxRL scores its rollouts with it).

>>> model = RewardModel("bbbc021-sim")                        # doctest: +SKIP
>>> out = model(images, moas)  # images: (B, 3, 96, 96) in [-1, 1] or uint8 (B, 96, 96, 3)
>>> out["overall"]             # (B,) float64 tensor, plus each of the seven rewards

It runs exactly the scoring of ``cellbench eval`` (same segmenter, reference statistics,
Inception features and classifier), per image, without the dataset-level aggregation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cellbench.data.bbbc021 import open_dataset
from cellbench.data.torch_dataset import from_model_range
from cellbench.evaluation import Scorer


class RewardModel:
    """Per-image rewards of a batch of generated images.

    Args:
        dataset: dataset whose reference statistics and classifier define the rewards.
        data_dir: data folder (see ``cellbench.paths``).
        backend: segmentation backend.
        device: device of the Inception network.
        use_moa: compute the ``moa`` reward (needs the Inception pass); without it ``moa`` is NaN
            and left out of ``overall``.
    """

    def __init__(
        self,
        dataset: str = "bbbc021-sim",
        *,
        data_dir: str | Path | None = None,
        backend: str = "classical",
        device: str = "cpu",
        use_moa: bool = True,
    ):
        self.dataset = open_dataset(dataset, data_dir, create_sim=True)
        self.scorer = Scorer(self.dataset, backend=backend, device=device, use_inception=use_moa)

    def __call__(
        self, images: torch.Tensor | np.ndarray, moas: list[str] | np.ndarray
    ) -> dict[str, torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
            crops = from_model_range(images)
        else:
            crops = np.asarray(
                images.cpu() if isinstance(images, torch.Tensor) else images, np.uint8
            )
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(
                f"expected (B, 3, H, W) floats or (B, H, W, 3) uint8, got {tuple(crops.shape)}"
            )
        seg = self.scorer.segment_features(crops)
        probs = None
        if self.scorer.inception is not None:
            probs = self.scorer.moa_probs(self.scorer.inception_features(crops))
        out = self.scorer.rewards(seg, probs, np.asarray(moas).astype(str))
        return {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in out.items()}
