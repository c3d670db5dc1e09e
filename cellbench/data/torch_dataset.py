"""A torch ``Dataset`` of (control, target) pairs for training generators.

Each item pairs a treated target crop with a control crop of the same batch. The pairing is seeded
and can be redrawn per epoch with :meth:`PairedCropDataset.set_epoch`, so training is reproducible
(CellFlux draws the control without a seed; cellbench does not).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.layout import MOAS


def to_model_range(crops: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(crops)).to(torch.float32)
    return (t / 127.5 - 1.0).movedim(-1, -3)


def from_model_range(images: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounded and clipped."""
    x = ((images.detach().to(torch.float32).cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return x.to(torch.uint8).movedim(-3, -1).numpy()


class PairedCropDataset(Dataset):
    """Treated crops of a split, each with a same-batch control and its compound's conditioning.

    Items are dicts: ``control`` and ``target`` (float32 3x96x96 in [-1, 1]), ``fingerprint``
    (float32 1024), ``compound_idx`` (index into :attr:`compounds`), ``moa_idx`` (index into
    :data:`cellbench.data.layout.MOAS`), ``dose`` (float), ``target_key``, ``control_key``.
    A dataset installed without fingerprints (README, "Download") gives items without
    ``fingerprint``: a generator conditioning on classes trains, one reading fingerprints stops
    earlier at ``dataset.fingerprints`` with the message saying how to add them.
    """

    def __init__(self, dataset: BBBC021Dataset, split: str = "train", seed: int = 0):
        self.dataset = dataset
        self.split = split
        self.seed = int(seed)
        rows = dataset.split(split)
        self._treated = rows[~rows["is_control"]].sort_values("SAMPLE_KEY").reset_index(drop=True)
        self._controls = rows[rows["is_control"]]
        self.compounds: list[str] = sorted(self._treated["CPD_NAME"].unique())
        self._compound_idx = {c: i for i, c in enumerate(self.compounds)}
        self._fingerprints = (
            np.stack([dataset.fingerprint(c) for c in self.compounds])
            if dataset.has_fingerprints
            else None
        )
        self.epoch = 0
        self._pair()

    def _pair(self) -> None:
        seed = self.seed * 1_000_003 + self.epoch
        self._control_keys = self.dataset.pair_controls(self._treated, self._controls, seed)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the control pairing for ``epoch`` (deterministic in seed and epoch)."""
        self.epoch = int(epoch)
        self._pair()

    def __len__(self) -> int:
        return len(self._treated)

    def __getitem__(self, i: int) -> dict:
        row = self._treated.iloc[i]
        c_idx = self._compound_idx[row["CPD_NAME"]]
        target = self.dataset.load_crop(row["SAMPLE_KEY"])
        control = self.dataset.load_crop(self._control_keys[i])
        item: dict = {"control": to_model_range(control), "target": to_model_range(target)}
        if self._fingerprints is not None:  # absent where the dataset has no emb_fp.csv
            item["fingerprint"] = torch.from_numpy(self._fingerprints[c_idx])
        item.update(
            compound_idx=c_idx,
            moa_idx=MOAS.index(row["ANNOT"]) if row["ANNOT"] in MOAS else -1,
            dose=float(row["DOSE"]),
            target_key=row["SAMPLE_KEY"],
            control_key=self._control_keys[i],
        )
        return item
