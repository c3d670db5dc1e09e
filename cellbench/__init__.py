"""cellbench: benchmark toolkit and leaderboard for virtual cell image generators.

``import cellbench`` is light (no torch, no torchmetrics); heavy parts load when first used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cellbench._version import __version__
from cellbench.errors import CellbenchError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["CellbenchError", "CellbenchMetric", "RewardModel", "__version__", "evaluate"]


def __getattr__(name: str):
    """Heavy parts on first use: :class:`cellbench.CellbenchMetric` (the in-memory metric,
    torchmetrics-based) and :class:`cellbench.RewardModel` (per-image rewards)."""
    if name == "CellbenchMetric":
        from cellbench.scoring.metric import CellbenchMetric

        return CellbenchMetric
    if name == "RewardModel":
        from cellbench.scoring.reward_model import RewardModel

        return RewardModel
    raise AttributeError(f"module 'cellbench' has no attribute {name!r}")


def evaluate(
    images: str | os.PathLike | np.ndarray | torch.Tensor,
    dataset: str = "bbbc021-sim",
    *,
    task_ids: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    protocol: str | os.PathLike | None = None,
    protocol_name: str | None = None,
    seed: int = 0,
    backend: str = "classical",
    fid: bool = True,
    strict: bool = False,
    shard: str | tuple[int, int] | None = None,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Score generated images on a dataset's protocol; return the result document of ``cellbench eval``.

    ``images`` is either a folder (a layout of :mod:`cellbench.images`: manifest, files named by
    task or compound folders; each file checked), scored by :func:`cellbench.evaluation.evaluate`,
    or a batch in memory: a uint8 tensor or array of shape (B, 96, 96, 3) or (B, 3, 96, 96) with
    ``task_ids``, one protocol task id per image, scored through
    :class:`cellbench.CellbenchMetric`. Both run the same pipeline, so the same images give the
    same document either way (docs/scoring.md, "Scoring from Python").

    Args:
        images: folder of image files, or a uint8 batch (then ``task_ids`` is required).
        dataset: dataset name (``cellbench ls datasets``).
        task_ids: the task of each image of an in-memory batch; not for a folder.
        data_dir: data folder (see ``cellbench.paths``).
        protocol: protocol CSV (its name is found from its content); without it the named
            protocol ``protocol_name`` is built with ``seed``.
        protocol_name: a registered protocol (``cellbench ls protocols``; default
            ``cellflux-iid``).
        seed: pairing seed of a built protocol (and the seed a file is identified at), and the
            seed of the bootstrap and KID subsets.
        backend: segmentation backend.
        fid: compute FID/KID, the ``moa`` reward and MoA accuracy (the Inception pass).
        strict: raise if any image has a problem or any task has no image.
        shard: ``"K/N"``: score only shard K of N of a folder's tasks (``cellbench eval merge``
            combines the shards); an in-memory batch takes none.
        device: device of the Inception network.
        out: where to write ``results.json`` (and its per-image CSV beside it).
        progress: called as ``progress(phase, done, total)`` while a folder is scored.

    Returns:
        The result document; an in-memory batch gives ``images.layout`` ``"memory"`` and
        ``images.folder`` ``None``.
    """
    options = {
        "data_dir": data_dir,
        "protocol": protocol,
        "protocol_name": protocol_name,
        "seed": seed,
        "backend": backend,
        "fid": fid,
        "strict": strict,
        "device": device,
        "out": out,
    }
    if isinstance(images, (str, os.PathLike)):
        if task_ids is not None:
            raise CellbenchError(
                "task_ids are for an in-memory batch; a folder's files name their tasks",
                path=images,
                fix="drop task_ids",
            )
        from cellbench.evaluation import evaluate as evaluate_folder

        if progress is not None:
            options["progress"] = progress
        return evaluate_folder(images, dataset, shard=shard, **options)
    if shard is not None:
        raise CellbenchError(
            "an in-memory batch takes no shard",
            fix="split the work over batches or processes with cellbench.CellbenchMetric",
        )
    from cellbench.scoring.metric import evaluate_batch

    return evaluate_batch(images, task_ids, dataset, **options)
