"""Segmentation backends behind one registry (``cellbench ls segmenters``).

A backend turns uint8 crops into the six per-image features of docs/scoring.md and, on request, the
morphology profile of the same masks (:mod:`cellbench.features.profile`). Its name and version are
part of the metric identity and are recorded in every result and reference-statistics file.

* ``classical`` (default): scikit-image, no weights (:mod:`cellbench.features.segment.classical`).
* ``unet``: nuclei from a small U-Net trained in the project on the DSB2018 images (CC0; weights
  shipped, checked by sha256, :mod:`cellbench.features.segment.unet`), cells from the classical
  cell pass (:mod:`cellbench.features.segment.cells`); needs torch.
* ``cellpose``: Cellpose 3.1.x ``nuclei`` + ``cyto3`` models, used only when the package is
  installed (``pip install 'cellbench[cellpose]'``) and its weight files are on disk.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellbench.errors import CellbenchError, ImageError
from cellbench.registry import Registry

CHUNK = 256
#: batches at least this large are segmented by a pool of worker processes (one per CPU, at most
#: $CELLBENCH_WORKERS, :func:`cellbench.workers.worker_count`); each image's features are the
#: same either way
POOL_MIN_IMAGES = 256
POOL_CHUNK = 128
#: images per progress update when segmenting in the calling process (the features do not depend
#: on it): segment_batch's own chunk, as smaller calls cost more per image (32 at a time: about
#: 11% slower on 1,024 sim crops); at about 500 images per second the bar moves twice a second
PROGRESS_CHUNK = 256
_POOL: list = []


def _pool():
    """A process pool kept for the life of the process (None with one worker).

    Its workers never import the caller's ``__main__`` (:mod:`cellbench.workers`), so a script
    without an ``if __name__ == "__main__":`` guard works.
    """
    from cellbench.workers import worker_context, worker_count

    if worker_count() < 2:
        return None
    if not _POOL:
        import atexit
        from concurrent.futures import ProcessPoolExecutor

        from cellbench.ui import step
        from cellbench.workers import warm_up

        n = worker_count()
        pool = ProcessPoolExecutor(n, mp_context=worker_context())
        atexit.register(pool.shutdown, cancel_futures=True)
        with step(f"starting {n} segmentation workers"):
            warm_up(pool, n, "cellbench.features.segment.classical")
        _POOL.append(pool)
    return _POOL[0]


class SegmentationBackend(abc.ABC):
    """Base class: subclasses implement :meth:`segment` and set ``name`` / ``version``."""

    name = "base"
    version = "0"

    @property
    def feature_names(self) -> tuple[str, ...]:
        from cellbench.features.segment.classical import FEATURE_NAMES

        return FEATURE_NAMES

    def identity(self) -> dict[str, Any]:
        """What defines this backend's outputs (recorded in results)."""
        return {"name": self.name, "version": self.version}

    def weights(self) -> dict[str, str]:
        """sha256 of every weight file used (empty for weight-free backends)."""
        return {}

    @abc.abstractmethod
    def segment(self, image: np.ndarray, *, dna_channel: int):
        """One crop -> a ``SegmentationResult``."""

    def features(
        self,
        images: np.ndarray,
        *,
        dna_channel: int,
        on_progress: Callable[[int, int], None] | None = None,
        profile: bool = False,
    ) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 6) float64 features in :attr:`feature_names` order; with
        ``profile``, (N, 6 + P): then the morphology profile of the same masks
        (:func:`cellbench.features.profile.profile_stack`)."""
        from cellbench.features.profile import profile_stack, profile_width
        from cellbench.features.segment.classical import features_from_masks

        n_feat = len(self.feature_names)
        out = np.zeros((len(images), n_feat + (profile_width(images.shape[-1]) if profile else 0)))
        for i, img in enumerate(images):
            seg = self.segment(img, dna_channel=dna_channel)
            f = features_from_masks(seg)
            out[i, :n_feat] = [f[k] for k in self.feature_names]
            if profile:
                out[i, n_feat:] = profile_stack(
                    img[None], seg.nuclei[None], seg.cells[None], dna_channel=dna_channel
                )[0]
            if on_progress is not None and (i + 1) % 64 == 0:
                on_progress(i + 1, len(images))
        if on_progress is not None:
            on_progress(len(images), len(images))
        return out

    def features_of_keys(
        self, ds, keys: list[str], *, on_progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """Features of dataset crops by SAMPLE_KEY, read in chunks."""
        out = np.zeros((len(keys), len(self.feature_names)))
        step = 4 * CHUNK  # large enough to keep a worker pool busy
        for start in range(0, len(keys), step):
            crops = ds.load_crops(keys[start : start + step])
            out[start : start + len(crops)] = self.features(crops, dna_channel=ds.card.dna_channel)
            if on_progress is not None:
                on_progress(start + len(crops), len(keys))
        return out


class ClassicalBackend(SegmentationBackend):
    """Smoothing, automatic threshold, seeded watershed (scikit-image); no weights."""

    name = "classical"

    @property
    def version(self) -> str:  # type: ignore[override]
        from cellbench.features.segment.classical import BACKEND_VERSION

        return BACKEND_VERSION

    def segment(self, image: np.ndarray, *, dna_channel: int):
        from cellbench.features.segment.classical import segment_crop

        return segment_crop(image, dna_channel=dna_channel)

    def features(self, images, *, dna_channel, on_progress=None, profile=False):
        from cellbench.features.profile import profile_width
        from cellbench.features.segment.classical import segment_batch

        extra = profile_width(images.shape[-1]) if profile else 0
        out = np.zeros((len(images), len(self.feature_names) + extra))
        pool = _pool() if len(images) >= POOL_MIN_IMAGES else None
        if pool is None:
            for start in range(0, len(images), PROGRESS_CHUNK):
                chunk = images[start : start + PROGRESS_CHUNK]
                out[start : start + len(chunk)] = segment_batch(
                    chunk, dna_channel=dna_channel, profile=profile
                )
                if on_progress is not None:
                    on_progress(start + len(chunk), len(images))
            return out
        starts = list(range(0, len(images), POOL_CHUNK))
        jobs = [
            pool.submit(
                segment_batch, images[s : s + POOL_CHUNK], dna_channel=dna_channel, profile=profile
            )
            for s in starts
        ]
        for s, job in zip(starts, jobs, strict=True):  # results land in input order
            block = job.result()
            out[s : s + len(block)] = block
            if on_progress is not None:
                on_progress(s + len(block), len(images))
        return out


class UNetBackend(SegmentationBackend):
    """Nuclei from the project's small U-Net (:mod:`cellbench.features.segment.unet`: the classical
    radius estimate, a resize to a canonical nucleus size, three classes, seeded watershed);
    cells and cytoplasm from the classical cell pass with these nuclei
    (:func:`cellbench.features.segment.cells.segment_cells_stack`). Runs on the CPU.

    The shipped weight file is checked against its sha256 when the backend is made; the sha256 is
    part of :meth:`identity`.
    """

    name = "unet"
    #: crops per nucleus pass (one strip for the cell pass)
    batch = 256

    def __init__(self) -> None:
        try:
            from cellbench.features.segment import unet
        except ImportError:  # pragma: no cover - torch is a dependency
            raise CellbenchError(
                "the unet backend needs torch", fix="pip install torch, or use --backend classical"
            ) from None
        self._unet = unet
        self._net = unet.load_net()

    @property
    def version(self) -> str:  # type: ignore[override]
        return self._unet.MODEL_VERSION

    def identity(self) -> dict[str, Any]:
        """Name, version, the weight file's sha256 and the canonical radius (recorded in results)."""
        return {
            "name": self.name,
            "version": self.version,
            "weights": self.weights(),
            "canonical_radius": self._unet.CANONICAL_RADIUS,
        }

    def weights(self) -> dict[str, str]:
        return {self._unet.WEIGHTS_PATH.name: self._unet.WEIGHTS_SHA256}

    def segment_stack(self, images: np.ndarray, *, dna_channel: int):
        """(N, H, W, C) or (N, H, W) crops of one size -> a ``StackSegmentation``."""
        from cellbench.features.segment.classical import (
            StackSegmentation,
            _cell_pass,
            _split_channels,
        )

        dna, cyto_src = _split_channels(images, dna_channel)
        nuclei = self._unet.segment_nuclei_stack(self._net, dna)
        cells, cyto_mask = _cell_pass(cyto_src, nuclei)
        return StackSegmentation(nuclei, cells.astype(np.int32), cyto_mask)

    def segment(self, image: np.ndarray, *, dna_channel: int):
        img = np.asarray(image)
        if img.ndim not in (2, 3):
            raise ImageError(
                f"expected an HxW, HxWx1 or HxWxC image, got shape {img.shape}",
                fix="pass one image at a time (features takes a stack)",
            )
        return self.segment_stack(img[None], dna_channel=dna_channel)[0]

    def features(self, images, *, dna_channel, on_progress=None, profile=False):
        from cellbench.features.profile import profile_stack, profile_width
        from cellbench.features.segment.classical import stack_features

        n_feat = len(self.feature_names)
        out = np.zeros((len(images), n_feat + (profile_width(images.shape[-1]) if profile else 0)))
        for start in range(0, len(images), self.batch):
            chunk = np.asarray(images[start : start + self.batch])
            stack = self.segment_stack(chunk, dna_channel=dna_channel)
            out[start : start + len(chunk), :n_feat] = stack_features(stack)
            if profile:  # the morphology profile of the same masks
                out[start : start + len(chunk), n_feat:] = profile_stack(
                    chunk, stack.nuclei, stack.cells, dna_channel=dna_channel
                )
            if on_progress is not None:
                on_progress(start + len(chunk), len(images))
        return out


CELLPOSE_WEIGHTS = ("nucleitorch_0", "cyto3")


def cellpose_models_dir() -> Path:
    """Where Cellpose looks for weights: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".cellpose" / "models"


class CellposeBackend(SegmentationBackend):
    """Cellpose 3.1.x: ``nuclei`` on the DNA channel, ``cyto3`` on (cytoplasm, DNA).

    Weights are never downloaded by cellbench: the two files must already be in
    :func:`cellpose_models_dir` (Cellpose's own download host is not reachable everywhere); their
    sha256 are part of :meth:`identity`, so reference statistics and results name the weights.

    Choices (docs/scoring.md, "Segmentation"): the nucleus model sees the DNA channel alone
    (Cellpose channels ``[0, 0]``) at a nucleus diameter of :attr:`nucleus_diameter` pixels; the
    cell model sees a two-channel image, the mean of the two non-DNA channels (cytoplasm) and the
    DNA channel (channels ``[1, 2]``), at a cell diameter of :attr:`cell_diameter` pixels.
    Each model segments :attr:`batch` crops per call: the crops are passed as one stack, which
    Cellpose runs through its network :attr:`net_batch` crops per forward pass (a 96 x 96 crop is a
    single tile) and then turns into masks crop by crop, with each crop normalised on its own, so
    a crop's masks do not depend on the other crops of its call.
    """

    name = "cellpose"
    uses_device = True
    nucleus_diameter = 17.0
    cell_diameter = 40.0
    #: crops per Cellpose call, and per forward pass of its network
    batch = 256
    net_batch = 64

    def __init__(self, device: str = "cpu") -> None:
        try:
            import cellpose  # noqa: F401
            from cellpose import models
        except ImportError:
            raise CellbenchError(
                "the cellpose backend needs the cellpose package",
                fix="pip install 'cellbench[cellpose]' (cellpose 3.1.x), or use --backend classical",
            ) from None
        folder = cellpose_models_dir()
        missing = [w for w in CELLPOSE_WEIGHTS if not (folder / w).is_file()]
        if missing:
            raise CellbenchError(
                f"Cellpose weight file(s) {', '.join(missing)} not found",
                path=folder,
                fix="copy them there (or set CELLPOSE_LOCAL_MODELS_PATH), or use --backend classical",
            )
        from importlib.metadata import version

        import torch

        from cellbench.devices import resolve_device
        from cellbench.io import sha256_file

        dev = torch.device(resolve_device(device))
        self.device = str(dev)
        self._version = f"cellpose-{version('cellpose')}"
        self._weights = {w: sha256_file(folder / w) for w in CELLPOSE_WEIGHTS}
        gpu = dev.type == "cuda"
        self._nuc = models.CellposeModel(
            gpu=gpu, device=dev, pretrained_model=str(folder / "nucleitorch_0")
        )
        self._cyto = models.CellposeModel(
            gpu=gpu, device=dev, pretrained_model=str(folder / "cyto3")
        )

    @property
    def version(self) -> str:  # type: ignore[override]
        return self._version

    def identity(self) -> dict[str, Any]:
        """Name, version, the weight files' sha256 and the diameters (recorded in results)."""
        return {
            "name": self.name,
            "version": self.version,
            "weights": dict(self._weights),
            "nucleus_diameter": self.nucleus_diameter,
            "cell_diameter": self.cell_diameter,
        }

    def weights(self) -> dict[str, str]:
        return dict(self._weights)

    def _inputs(self, images: np.ndarray, dna_channel: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) DNA and (N, H, W, 2) (cytoplasm, DNA) float32 stacks of uint8 crops."""
        dna = images[..., dna_channel].astype(np.float32)
        cyto_channels = [k for k in range(images.shape[-1]) if k != dna_channel]
        cyto = images[..., cyto_channels].astype(np.float32).mean(-1)
        return dna, np.stack([cyto, dna], axis=-1)

    def segment_many(self, images: np.ndarray, *, dna_channel: int) -> list:
        """Segment (N, H, W, 3) uint8 crops with one call per model; one result per crop."""
        from cellbench.features.segment.classical import SegmentationResult

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        dna, two = self._inputs(images, dna_channel)
        nuclei = self._nuc.eval(
            dna[..., None],
            channels=[0, 0],
            channel_axis=-1,
            z_axis=0,
            diameter=self.nucleus_diameter,
            batch_size=self.net_batch,
        )[0]
        cells = self._cyto.eval(
            two,
            channels=[1, 2],
            channel_axis=-1,
            z_axis=0,
            diameter=self.cell_diameter,
            batch_size=self.net_batch,
        )[0]
        nuclei = np.asarray(nuclei).reshape(images.shape[:3])
        cells = np.asarray(cells).reshape(images.shape[:3])
        return [
            SegmentationResult(
                nuclei=nuclei[i].astype(np.int32),
                cells=cells[i].astype(np.int32),
                cyto_mask=cells[i] > 0,
            )
            for i in range(len(images))
        ]

    def segment(self, image: np.ndarray, *, dna_channel: int):
        return self.segment_many(image[None], dna_channel=dna_channel)[0]

    def features(self, images, *, dna_channel, on_progress=None, profile=False):
        from cellbench.features.profile import profile_stack, profile_width
        from cellbench.features.segment.classical import features_from_masks

        n_feat = len(self.feature_names)
        out = np.zeros((len(images), n_feat + (profile_width(images.shape[-1]) if profile else 0)))
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            segs = self.segment_many(chunk, dna_channel=dna_channel)
            for i, seg in enumerate(segs):
                f = features_from_masks(seg)
                out[start + i, :n_feat] = [f[k] for k in self.feature_names]
            if profile:
                out[start : start + len(chunk), n_feat:] = profile_stack(
                    chunk,
                    np.stack([s.nuclei for s in segs]),
                    np.stack([s.cells for s in segs]),
                    dna_channel=dna_channel,
                )
            if on_progress is not None:
                on_progress(start + len(chunk), len(images))
        return out


SEGMENTERS: Registry[type[SegmentationBackend]] = Registry("segmentation backend")
SEGMENTERS.register(
    "classical",
    "cellbench.features.segment.backends:ClassicalBackend",
    summary="scikit-image threshold + seeded watershed; no weights (default)",
)
SEGMENTERS.register(
    "unet",
    "cellbench.features.segment.backends:UNetBackend",
    summary="small U-Net nuclei (trained on DSB2018, CC0; shipped weights) + classical cells",
)
SEGMENTERS.register(
    "cellpose",
    "cellbench.features.segment.backends:CellposeBackend",
    summary="Cellpose 3.1.x nuclei + cyto3; needs the cellpose extra and local weight files",
)

_instances: dict[tuple[str, str], SegmentationBackend] = {}


def get_backend(name: str = "classical", device: str = "cpu") -> SegmentationBackend:
    """A (cached) instance of backend ``name``; a backend with a network runs it on ``device``
    (``cellpose``), the others ignore it."""
    cls = SEGMENTERS.get(name)
    key = (name, device if getattr(cls, "uses_device", False) else "cpu")
    if key not in _instances:
        _instances[key] = cls(device) if key[1] != "cpu" else cls()
    return _instances[key]
