"""One interface for every generator, and the registry the CLI finds them through.

The toolkit never imports ``baselines/``: generators are registered here as lazy
``"module:attr"`` targets (``cellbench ls models``) and loaded on first use.

A generator receives a batch of control crops (uint8, N x 96 x 96 x 3, the dataset's channel
order) with the compound and dose of each task and a seed, and returns generated crops of the same
form. Same inputs and seed -> same images.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench.io import atomic_path
from cellbench.registry import Registry


class Generator(abc.ABC):
    """Base class of every generator."""

    name: str = "generator"
    version: str = "0"
    #: free text shown by ``cellbench ls models`` (e.g. "anchor: upper-bound-like reference")
    role: str = "model"

    @classmethod
    @abc.abstractmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | None = None,
    ) -> Generator:
        """Build the generator for ``dataset`` (from ``checkpoint`` where it has weights), its
        network on torch ``device`` (None: ``$CELLBENCH_DEVICE``, else the CPU; weight-free
        generators ignore it)."""

    @abc.abstractmethod
    def generate(
        self, controls: np.ndarray, compounds: list[str], doses: list[float], seed: int
    ) -> np.ndarray:
        """(N, 96, 96, 3) uint8 controls -> (N, 96, 96, 3) uint8 predictions."""

    def n_parameters(self) -> int:
        """Number of trainable parameters (0 for weight-free anchors)."""
        return 0


GENERATORS: Registry[type[Generator]] = Registry("model")
GENERATORS.register(
    "identity",
    "cellbench_baselines.anchors:Identity",
    summary="anchor: returns the control image unchanged (the floor a model must beat)",
)
GENERATORS.register(
    "real-shuffle",
    "cellbench_baselines.anchors:RealShuffle",
    summary="anchor: a random real treated crop of the same compound and dose from the training "
    "split (upper-bound-like reference, not a model)",
)
GENERATORS.register(
    "cellflux",
    "cellbench_baselines.cellflux:CellFlux",
    summary="model: flow matching from the noised control to the treated image (Zhang et al. "
    "2025); needs --checkpoint from `cellbench train cellflux`",
)
GENERATORS.register(
    "phendiff",
    "cellbench_baselines.phendiff:PhenDiff",
    summary="model: class-conditional DDIM, control inverted then regenerated under the "
    "compound's class (Bourou et al. 2024); needs --checkpoint from `cellbench train phendiff`",
)
GENERATORS.register(
    "impa",
    "cellbench_baselines.impa:IMPA",
    summary="model: StarGAN-v2-style GAN translating the control, styled by fingerprint + noise "
    "(IMPA, Palma et al. 2025); needs --checkpoint from `cellbench train impa`",
)
GENERATORS.register(
    "cellfluxrl",
    "cellbench_baselines.cellflux_rl:CellFluxRL",
    summary="model: CellFlux post-trained by DiffusionNFT on the seven rewards (CellFluxRL, Wu et "
    "al. 2026); needs --checkpoint from `cellbench rl cellflux`",
)


def get_generator_class(name: str) -> type[Generator]:
    """The generator class registered as ``name``; a missing baselines package is explained."""
    try:
        return GENERATORS.get(name)
    except ModuleNotFoundError as exc:
        raise CellbenchError(
            f"generator {name!r} lives in a package that is not installed ({exc.name})",
            fix="install cellbench with its baselines: pip install -e .",
        ) from None


def write_generated(
    gen: Generator,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    out: str | Path,
    *,
    n_per_task: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    skip_existing: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Generate images for every task and write ``<task_id>.npy`` (``<task_id>_<k>.npy`` for N > 1).

    Each file is written atomically; the seed of batch b and candidate k is derived from
    (``seed``, k, b), so the output does not depend on anything but the inputs. With
    ``skip_existing`` a batch whose files all exist is not generated again: an interrupted run
    resumed with the same inputs ends with the files an uninterrupted one writes. Returns the
    number of images present when it finishes (written now or kept).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, written = len(protocol), 0
    for k in range(n_per_task):
        for b, start in enumerate(range(0, n, batch_size)):
            rows = protocol.iloc[start : start + batch_size]
            names = [f"{t}.npy" if n_per_task == 1 else f"{t}_{k}.npy" for t in rows["task_id"]]
            if skip_existing and all((out / name).is_file() for name in names):
                written += len(rows)
                if on_progress is not None:
                    on_progress(written, n * n_per_task)
                continue
            controls = ds.load_crops(rows["control_key"].tolist())
            imgs = gen.generate(
                controls,
                rows["compound"].tolist(),
                [float(d) for d in rows["dose"]],
                seed=int(np.random.SeedSequence([seed, k, b]).generate_state(1)[0]),
            )
            if imgs.shape != controls.shape or imgs.dtype != np.uint8:
                raise CellbenchError(
                    f"generator {gen.name} returned {imgs.shape} {imgs.dtype}, expected "
                    f"{controls.shape} uint8",
                    fix="report this as a bug of that generator",
                )
            for name, img in zip(names, imgs, strict=True):
                with atomic_path(out / name, suffix=".npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, img)
                written += 1
            if on_progress is not None:
                on_progress(written, n * n_per_task)
    return written
