"""In-memory scoring in the torchmetrics manner: :class:`CellbenchMetric` (docs/scoring.md,
"Scoring from Python").

``update(images, task_ids)`` featurises a batch of uint8 crops at once and keeps only per-image
arrays; ``compute()`` returns the result document of ``cellbench eval`` on the same images. The
states are exactly the per-image arrays that ``cellbench eval --shard K/N`` saves and
``cellbench eval merge`` concatenates, so they merge exactly: two metrics merged with
:meth:`~torchmetrics.Metric.merge_state`, any batch split, or the processes of a ``torchrun`` job
(synchronised by torchmetrics over ``torch.distributed``) give the single-process document, number
for number. Each state is a list of tensors gathered with ``dist_reduce_fx="cat"``:

========================  ===========  ===========================================================
state                     dtype        per image
========================  ===========  ===========================================================
``task_index``            int64        position of the image's task in the protocol
``pixel_sha256``          uint8 (32)   sha256 of the HWC uint8 pixels (the digest of ``results.json``)
``constant_value``        int32        the value of a one-value image, else -1 (reported, as eval)
``seg``                   float64 (6)  segmentation features
``inception``             float32      Inception pool3 features (only with ``fid=True``)
``profile``               float64 (P)  morphology profile (:mod:`cellbench.features.profile`)
========================  ===========  ===========================================================

This module (and so torchmetrics) is imported only when :class:`CellbenchMetric` is first used:
``import cellbench`` stays free of torch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cellbench.errors import CellbenchError
from cellbench.scoring.inputs import as_numpy, check_crops

#: what an in-memory result puts in ``images.layout`` (a folder result names its folder layout)
MEMORY_LAYOUT = "memory"
#: the ``path`` of an in-memory image in problem reports and the per-image table
MEMORY_PATH = "<memory>"


class _Pipeline:
    """The dataset, protocol and scorer of one metric: the one place that calls the scoring code
    of ``cellbench eval`` (so a move of that code changes only this class)."""

    def __init__(
        self,
        dataset: str,
        *,
        data_dir: str | Path | None,
        protocol: str | Path | None,
        protocol_name: str | None,
        seed: int,
        backend: str,
        fid: bool,
        device: str,
    ):
        from cellbench.data.bbbc021 import open_dataset
        from cellbench.evaluation import load_protocol_for
        from cellbench.scoring.artifacts import Artifacts
        from cellbench.scoring.scorer import Scorer

        self.ds = open_dataset(dataset, data_dir, create_sim=True)
        self.table, self.protocol_info = load_protocol_for(self.ds, protocol, protocol_name, seed)
        self.scorer = Scorer(
            Artifacts.for_dataset(self.ds), backend=backend, device=device, use_inception=fid
        )
        self.n_seg = len(self.scorer.feature_names)
        self.n_profile = len(self.scorer.profile_names)
        self.backend = backend

    def features(
        self, crops: np.ndarray, *, fid: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(segmentation features float64, Inception features float32 or None, morphology
        profiles float64) of uint8 HWC crops."""
        f = self.scorer.features(crops, use_inception=fid, profile=True)
        return f.seg, f.inception, f.profile

    def document(
        self,
        arrays: dict[str, Any],
        *,
        seed: int,
        fid: bool,
        device: str,
        started: float,
    ) -> tuple[dict, pd.DataFrame]:
        """The result document and per-image table of per-image arrays in protocol order."""
        from cellbench.results.builder import build_document
        from cellbench.scoring.arrays import ImageArrays

        doc, per_image = build_document(
            self.scorer,
            self.ds,
            self.table,
            self.protocol_info,
            ImageArrays(**arrays),
            {"layout": MEMORY_LAYOUT, "folder": None},
            seed=seed,
            fid=fid,
            shard=None,
            device=device,
            started=started,
            generation=None,  # as `cellbench eval` on a folder without a generation record
        )
        return doc, per_image

    @staticmethod
    def write(doc: dict, per_image: pd.DataFrame, out: str | Path) -> None:
        """Write ``results.json`` and its per-image CSV as ``cellbench eval --out`` does."""
        from cellbench.results.builder import write_results

        write_results(doc, per_image, None, out)


def as_crops(images: Any) -> np.ndarray:
    """A batch of uint8 crops, (B, 96, 96, 3) or (B, 3, 96, 96), as a uint8 (B, 96, 96, 3) array.

    Raises :class:`CellbenchError` for anything else: floats are refused rather than guessed at
    (``cellbench.data.torch_dataset.from_model_range`` turns model-range floats into crops); the
    shape checks are those of :func:`cellbench.scoring.inputs.check_crops`.
    """
    arr = as_numpy(images)
    if arr.dtype != np.uint8:
        raise CellbenchError(
            f"images have dtype {arr.dtype}, expected uint8",
            fix="convert model outputs in [-1, 1] with "
            "cellbench.data.torch_dataset.from_model_range(x)",
        )
    if arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[-1] != 3:  # channels-first
        arr = arr.transpose(0, 2, 3, 1)
    return check_crops(arr)


class CellbenchMetric(Metric):
    """The result document of ``cellbench eval``, accumulated from batches of images in memory.

    >>> metric = CellbenchMetric("bbbc021-sim")          # doctest: +SKIP
    >>> for images, task_ids in batches:                 # uint8 (B, 96, 96, 3) or (B, 3, 96, 96)
    ...     metric.update(images, task_ids)
    >>> doc = metric.compute()                           # the document `cellbench eval` writes
    >>> doc["metrics"]["overall"]["value"], doc["metrics"]["fid_o"]["value"]

    Each image answers one task of the protocol (its ``task_id``), once. Under ``torchrun`` each
    process updates with its own share of the tasks and ``compute()`` returns on every process the
    document of all of them (torchmetrics gathers the states over the default process group; on
    NCCL move the metric to the process's GPU with ``metric.to(device)`` first).

    Args:
        dataset: dataset whose protocol, reference statistics and classifier define the scores.
        data_dir: data folder (see ``cellbench.paths``).
        protocol: protocol CSV (its name is found from its content); without it the named
            protocol ``protocol_name`` is built with ``seed``.
        protocol_name: a registered protocol (``cellbench ls protocols``; default
            ``cellflux-iid``).
        seed: pairing seed of a built protocol (and the seed a file is identified at), and the
            seed of the bootstrap and KID subsets.
        backend: segmentation backend.
        fid: compute the Inception features (FID/KID, the ``moa`` reward and MoA accuracy).
        device: device of the Inception network (the states live on the metric's own device).
        **kwargs: torchmetrics options (``process_group``, ``sync_on_compute``, ...).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    task_index: list[torch.Tensor]
    pixel_sha256: list[torch.Tensor]
    constant_value: list[torch.Tensor]
    seg: list[torch.Tensor]
    inception: list[torch.Tensor]

    def __init__(
        self,
        dataset: str = "bbbc021-sim",
        *,
        data_dir: str | Path | None = None,
        protocol: str | Path | None = None,
        protocol_name: str | None = None,
        seed: int = 0,
        backend: str = "classical",
        fid: bool = True,
        device: str = "cpu",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self._pipeline = _Pipeline(
            dataset,
            data_dir=data_dir,
            protocol=protocol,
            protocol_name=protocol_name,
            seed=seed,
            backend=backend,
            fid=fid,
            device=device,
        )
        self.seed = seed
        self.fid = fid
        self.feature_device = device
        self._task_ids: list[str] = self._pipeline.table["task_id"].tolist()
        self._position = {t: i for i, t in enumerate(self._task_ids)}
        self._busy_s = 0.0  # time spent in update(), reported as part of the wall time
        # (trailing shape, dtype) of every state, for empty states in synchronisation
        self._specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "task_index": ((), torch.int64),
            "pixel_sha256": ((32,), torch.uint8),
            "constant_value": ((), torch.int32),
            "seg": ((self._pipeline.n_seg,), torch.float64),
            "profile": ((self._pipeline.n_profile,), torch.float64),
        }
        if fid:
            self._specs["inception"] = ((2048,), torch.float32)
        for name in self._specs:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        #: the per-image table of the last :meth:`compute` (``results.per_image.csv``)
        self.per_image: pd.DataFrame | None = None

    @property
    def protocol(self) -> pd.DataFrame:
        """The protocol table whose tasks the images answer."""
        return self._pipeline.table

    def update(self, images: torch.Tensor | np.ndarray, task_ids: Sequence[str]) -> None:
        """Featurise a batch: ``images`` uint8 (B, 96, 96, 3) or (B, 3, 96, 96), one task id each.

        Raises :class:`CellbenchError` for a wrong dtype or shape, a task id the protocol does not
        have, or a task given twice (in this batch or an earlier one).
        """
        t0 = time.perf_counter()
        crops = as_crops(images)
        if isinstance(task_ids, str) or len(task_ids) != len(crops):
            raise CellbenchError(
                f"{len(crops)} images but "
                + ("one string" if isinstance(task_ids, str) else f"{len(task_ids)} task ids"),
                fix="pass a list with one task id per image",
            )
        unknown = [t for t in task_ids if t not in self._position]
        if unknown:
            raise CellbenchError(
                f"{len(unknown)} task id(s) are not in the protocol (first: {unknown[0]!r})",
                fix="use the task_id column of metric.protocol",
            )
        if not len(crops):
            return
        index = np.array([self._position[t] for t in task_ids], dtype=np.int64)
        values, counts = np.unique(index, return_counts=True)
        seen = set(dim_zero_cat(self.task_index).tolist()) if len(self.task_index) else set()
        repeated = values[counts > 1].tolist() or sorted(seen.intersection(index.tolist()))
        if repeated:
            raise CellbenchError(
                f"task {self._task_ids[repeated[0]]!r} has more than one image",
                fix="give each task one image (call reset() to start a new evaluation)",
            )
        seg, inc, prof = self._pipeline.features(crops, fid=self.fid)
        flat = crops.reshape(len(crops), -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        # the digest `cellbench eval` takes of each image read from a file: sha256 of HWC uint8
        digests = [hashlib.sha256(c.tobytes()).digest() for c in crops]
        new = {
            "task_index": torch.from_numpy(index),
            "pixel_sha256": torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).view(
                len(crops), 32
            ),
            "constant_value": torch.from_numpy(
                np.where(lo == hi, lo.astype(np.int32), np.int32(-1))
            ),
            "seg": torch.from_numpy(np.asarray(seg, np.float64)),
            "profile": torch.from_numpy(np.asarray(prof, np.float64)),
        }
        if inc is not None:
            new["inception"] = torch.from_numpy(np.asarray(inc, np.float32))
        for name, value in new.items():
            getattr(self, name).append(value.to(self.device))
        self._busy_s += time.perf_counter() - t0

    def forward(self, images: torch.Tensor | np.ndarray, task_ids: Sequence[str]) -> None:
        """``metric(images, task_ids)`` is :meth:`update` (a document per batch would cost a whole
        aggregate, bootstrap and FID included, for a number nobody reports)."""
        self.update(images, task_ids)

    def _scoring(self) -> tuple:
        """What must agree between metrics whose states are merged."""
        pipe = self._pipeline
        return (
            pipe.ds.index_sha256,
            pipe.protocol_info["sha256"],
            self.seed,
            self.fid,
            pipe.backend,
        )

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's images (or a ``metric_state`` dict of one) to this one's.

        A metric of another dataset, protocol, seed, backend or ``fid`` setting is refused: its
        task positions and features mean something else.
        """
        if (
            isinstance(incoming_state, CellbenchMetric)
            and incoming_state._scoring() != self._scoring()
        ):
            raise CellbenchError(
                "cannot merge metrics of different datasets, protocols, seeds, backends or fid",
                fix="merge metrics built with the same arguments",
            )
        super().merge_state(incoming_state)

    def _arrays(self) -> dict[str, Any]:
        """The (synchronised) states as ``ImageArrays`` fields, in protocol order."""
        states = self.task_index if isinstance(self.task_index, list) else [self.task_index]
        if sum(t.numel() for t in states) == 0:
            raise CellbenchError(
                "no image to score", fix="call update(images, task_ids) before compute()"
            )
        cat = {
            name: dim_zero_cat(getattr(self, name)).cpu().to(dtype).reshape(-1, *shape)
            for name, (shape, dtype) in self._specs.items()
        }
        index = cat["task_index"].numpy()
        order = np.argsort(index, kind="stable")
        index = index[order]
        twice = index[1:][index[1:] == index[:-1]]
        if len(twice):
            raise CellbenchError(
                f"task {self._task_ids[twice[0]]!r} has more than one image (merged or gathered)",
                fix="give each task to one process or metric only",
            )
        task_ids = [self._task_ids[i] for i in index]
        constant = cat["constant_value"].numpy()[order]
        return {
            "task_ids": task_ids,
            "paths": [MEMORY_PATH] * len(task_ids),
            "pixel_sha256": [bytes(row).hex() for row in cat["pixel_sha256"].numpy()[order]],
            "seg": cat["seg"].numpy()[order],
            "inception": cat["inception"].numpy()[order] if self.fid else None,
            "profile": cat["profile"].numpy()[order],
            # a one-value image is reported and still scored, as `cellbench eval` does
            "problems": [
                {"path": MEMORY_PATH, "task_id": t, "problem": f"image is one constant value ({v})"}
                for t, v in zip(task_ids, constant.tolist(), strict=True)
                if v >= 0
            ],
        }

    def compute(self) -> dict:
        """The result document of all images given so far (all processes', when distributed)."""
        started = time.perf_counter() - self._busy_s
        doc, self.per_image = self._pipeline.document(
            self._arrays(),
            seed=self.seed,
            fid=self.fid,
            device=self.feature_device,
            started=started,
        )
        return doc

    def reset(self) -> None:
        """Forget every image (the dataset, protocol and networks stay loaded)."""
        super().reset()
        self._busy_s = 0.0
        self.per_image = None

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any = None) -> None:
        # a process without images holds empty lists, which torchmetrics would replace by 1-d
        # float tensors that cannot be gathered with the other processes' (N, 2048) or uint8
        # ones: give it empty tensors of the right shape and dtype (the local states are
        # restored after compute, as torchmetrics does)
        for name, (shape, dtype) in self._specs.items():
            if not getattr(self, name):
                setattr(self, name, [torch.zeros((0, *shape), dtype=dtype, device=self.device)])
        kwargs = {} if dist_sync_fn is None else {"dist_sync_fn": dist_sync_fn}
        super()._sync_dist(process_group=process_group, **kwargs)


def evaluate_batch(
    images: torch.Tensor | np.ndarray,
    task_ids: Sequence[str] | None,
    dataset: str = "bbbc021-sim",
    *,
    strict: bool = False,
    out: str | Path | None = None,
    **options: Any,
) -> dict:
    """``cellbench.evaluate`` of an in-memory batch: the document of exactly these images.

    ``options`` are those of :class:`CellbenchMetric` (``data_dir``, ``protocol``, ``seed`` ...);
    ``strict`` raises unless the result is complete (every task answered, no one-value image);
    ``out`` is written as ``cellbench eval --out`` writes it.
    """
    if task_ids is None:
        raise CellbenchError(
            "an in-memory batch needs task_ids",
            fix="call evaluate(images, dataset, task_ids=[...]), one protocol task id per image",
        )
    # sync_on_compute=False: exactly this batch, also inside a torchrun process
    metric = CellbenchMetric(dataset, sync_on_compute=False, **options)
    metric.update(images, task_ids)
    doc = metric.compute()
    if strict and not doc["complete"]:
        raise CellbenchError(
            f"{doc['images']['n_problems']} problem(s), {doc['images']['missing_tasks']} "
            "task(s) without an image",
            fix="answer every task with an image that is not one constant value, or drop strict",
        )
    if out is not None:
        metric._pipeline.write(doc, metric.per_image, out)
    return doc
