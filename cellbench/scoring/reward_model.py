"""A reward object for training loops (CellFluxRL scores its rollouts with it).

>>> model = RewardModel("bbbc021-sim")                        # doctest: +SKIP
>>> out = model(images, moas)  # images: (B, 3, 96, 96) in [-1, 1] or uint8 (B, 96, 96, 3)
>>> out["overall"]             # (B,) float64 tensor, plus each of the seven rewards

It runs exactly the scoring of ``cellbench eval`` (:meth:`cellbench.scoring.Scorer.score`: same
segmenter, reference statistics, Inception features and classifier), per image, without the
dataset-level aggregation. Bad input (shape, dtype, range, MoA names) is refused with a
:class:`cellbench.errors.CellbenchError` (:mod:`cellbench.scoring.inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cellbench.data.bbbc021 import open_dataset
from cellbench.scoring.artifacts import Artifacts
from cellbench.scoring.inputs import check_crops, check_moas
from cellbench.scoring.scorer import Scorer


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
        self.scorer = Scorer(
            Artifacts.for_dataset(self.dataset),
            backend=backend,
            device=device,
            use_inception=use_moa,
        )

    def __call__(
        self,
        images: torch.Tensor | np.ndarray,
        moas: Sequence[str] | np.ndarray,
        *,
        value_range: tuple[float, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Rewards of ``images`` whose true MoAs are ``moas`` (one name per image).

        Args:
            images: uint8 ``(B, 96, 96, 3)`` or float ``(B, 3, 96, 96)``, numpy or torch.
            moas: the MoA of each image (names of ``cellbench.data.layout.MOAS``).
            value_range: ``(low, high)`` of float images (default ``(-1, 1)``); see
                :func:`cellbench.scoring.inputs.check_crops`.
        """
        crops = check_crops(images, value_range)
        names = check_moas(moas, len(crops))
        out = self.scorer.score(crops, names)
        return {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in out.items()}
