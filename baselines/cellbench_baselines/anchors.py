"""The two anchors every benchmark needs: ``identity`` and ``real-shuffle``.

* ``identity`` returns the control crop unchanged: a model that does not beat it has learnt
  nothing about the drug.
* ``real-shuffle`` returns a real treated crop of the same compound and dose, drawn at random from
  the **training** split. It is not a model (it needs the answer's distribution) but an
  upper-bound-like reference: what a generator that samples the true treated distribution, without
  pairing to its control, would score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.generators import Generator


class Identity(Generator):
    name = "identity"
    version = "1"
    role = "anchor"
    summary = "anchor: returns the control image unchanged (the floor a model must beat)"
    takes_checkpoint = False

    @classmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | None = None,
    ) -> Identity:
        return cls()

    def generate(self, controls, compounds, doses, seed):
        return np.array(controls, dtype=np.uint8, copy=True)


class RealShuffle(Generator):
    name = "real-shuffle"
    version = "1"
    role = "anchor (upper-bound-like reference)"
    summary = (
        "anchor: a random real treated crop of the same compound and dose from the training "
        "split (upper-bound-like reference, not a model)"
    )
    takes_checkpoint = False

    def __init__(self, dataset: BBBC021Dataset):
        self.dataset = dataset
        train = dataset.split("train")
        treated = train[~train["is_control"]]
        self._pool = {
            (str(c), float(d)): sorted(g["SAMPLE_KEY"].tolist())
            for (c, d), g in treated.groupby(["CPD_NAME", "DOSE"])
        }
        self._by_compound = {
            str(c): sorted(g["SAMPLE_KEY"].tolist()) for c, g in treated.groupby("CPD_NAME")
        }

    @classmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | None = None,
    ) -> RealShuffle:
        return cls(dataset)

    def generate(self, controls, compounds, doses, seed):
        rng = np.random.default_rng(seed)
        out = np.empty_like(controls)
        for i, (c, d) in enumerate(zip(compounds, doses, strict=True)):
            pool = self._pool.get((c, float(d))) or self._by_compound.get(c)
            if not pool:
                self.dataset.compound(c)  # raises the "unknown compound" error with suggestions
                raise ValueError(f"no training crops of {c}")
            out[i] = self.dataset.load_crop(pool[int(rng.integers(len(pool)))])
        return out
