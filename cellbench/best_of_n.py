"""Best-of-N test-time scaling: N candidates per task, keep the one with the highest reward.

CellFluxRL's test-time scaling (SPEC section 5): a generator draws N candidates for every task,
each is scored with :class:`cellbench.scoring.RewardModel` (the ``overall`` reward by default, the
pipeline of ``cellbench eval``) and the best is kept. Selecting with the metric inflates that
metric: FID/KID are the independent check, and the image folder says that N > 1 was used in its
``generation.json`` sidecar, which ``cellbench eval`` copies into the result.

Candidate k of batch b uses the seed that :func:`cellbench.generators.write_generated` gives
image k of batch b (``SeedSequence([seed, k, b])``), so candidate 0 is the plain N = 1 image and
best-of-1 writes exactly what ``cellbench generate`` writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench.images import GENERATION_FILE  # the sidecar ``cellbench eval`` reads
from cellbench.io import atomic_path, atomic_write_text, sha256_file

GENERATION_FORMAT = "cellbench-generation"
GENERATION_FORMAT_VERSION = 1


def select_best(candidates: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The highest-scoring candidate of every task.

    Args:
        candidates: (N, T, ...) N candidates for each of T tasks.
        scores: (N, T) the score of each candidate; NaN counts as the lowest score.

    Returns ``(best, index)``: (T, ...) the chosen candidates and (T,) their index k. Ties go to
    the lowest k. A task whose scores are all NaN is an error.
    """
    cands = np.asarray(candidates)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or cands.shape[:2] != s.shape:
        raise ValueError(
            f"candidates {cands.shape[:2]} and scores {s.shape} must both start with (N, T)"
        )
    if s.shape[0] < 1:
        raise ValueError("need at least one candidate")
    nan = np.isnan(s)
    if nan.all(axis=0).any():
        bad = int(np.flatnonzero(nan.all(axis=0))[0])
        raise ValueError(f"task {bad} has no scored candidate (all scores are NaN)")
    index = np.where(nan, -np.inf, s).argmax(axis=0)
    best = cands[index, np.arange(s.shape[1])]
    return best, index


def checkpoint_sha256(checkpoint: str | Path | None) -> str | None:
    """sha256 of the weights file a checkpoint path designates (None when there is none).

    A file is hashed as is; a folder by its ``model.safetensors``, or for a run folder the one of
    its last ``checkpoints/step-*`` folder (the rule the trainable generators load by).
    """
    if checkpoint is None:
        return None
    p = Path(checkpoint)
    if p.is_file():
        return sha256_file(p)
    if (p / "model.safetensors").is_file():
        return sha256_file(p / "model.safetensors")
    steps = sorted(
        d
        for d in (p / "checkpoints").glob("step-*")
        if (d / "model.safetensors").is_file() and (d / "state.json").is_file()
    )
    return sha256_file(steps[-1] / "model.safetensors") if steps else None


def generation_record(
    *,
    model: str,
    checkpoint: str | Path | None,
    best_of_n: int,
    seed: int,
    selection_reward: str | None = "overall",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``generation.json`` document of an image folder (what made the images and how)."""
    return {
        "format": GENERATION_FORMAT,
        "format_version": GENERATION_FORMAT_VERSION,
        "model": model,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "best_of_n": int(best_of_n),
        "selection_reward": selection_reward if best_of_n > 1 else None,
        "seed": int(seed),
        **(extra or {}),
    }


def read_generation_record(folder: str | Path) -> dict[str, Any] | None:
    """The ``generation.json`` of an image folder, or None if it has none."""
    path = Path(folder) / GENERATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CellbenchError(
            f"unreadable generation record ({type(exc).__name__})",
            path=path,
            fix="regenerate the images or delete the file",
        ) from None
    if not isinstance(data, dict) or data.get("format") != GENERATION_FORMAT:
        raise CellbenchError(
            "not a cellbench generation record",
            path=path,
            fix="regenerate the images or delete the file",
        )
    n = data.get("best_of_n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CellbenchError(
            f"best_of_n must be a positive integer, got {n!r}", path=path, fix="regenerate"
        )
    return data


def write_generated_best_of_n(
    gen: Any,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    out: str | Path,
    *,
    n: int,
    model: str,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 64,
    reward_model: Any = None,
    selection_reward: str = "overall",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``<task_id>.npy`` = the best of ``n`` candidates per task, and ``generation.json``.

    ``reward_model`` is a :class:`cellbench.scoring.RewardModel` (built for ``ds`` when None);
    candidates are ranked by its ``selection_reward`` output. ``generation.json`` is written last
    (atomically), after every image, and a stale one is removed first, so a folder whose record
    exists is complete. Returns the record.
    """
    if n < 1:
        raise CellbenchError("--best-of must be at least 1")
    if reward_model is None:
        from cellbench.scoring import RewardModel

        reward_model = RewardModel(ds.name, data_dir=ds.root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / GENERATION_FILE).unlink(missing_ok=True)
    total = len(protocol)
    chosen: list[int] = []
    chosen_scores: list[float] = []
    mean_scores: list[float] = []
    for b, start in enumerate(range(0, total, batch_size)):
        rows = protocol.iloc[start : start + batch_size]
        controls = ds.load_crops(rows["control_key"].tolist())
        compounds = rows["compound"].tolist()
        doses = [float(d) for d in rows["dose"]]
        cands = []
        for k in range(n):
            s = int(np.random.SeedSequence([seed, k, b]).generate_state(1)[0])
            imgs = gen.generate(controls, compounds, doses, seed=s)
            if imgs.shape != controls.shape or imgs.dtype != np.uint8:
                raise CellbenchError(
                    f"generator {model} returned {imgs.shape} {imgs.dtype}, expected "
                    f"{controls.shape} uint8",
                    fix="report this as a bug of that generator",
                )
            cands.append(imgs)
        stack = np.stack(cands)  # (n, B, H, W, 3)
        moas = rows["moa"].astype(str).tolist()
        out_r = reward_model(stack.reshape(-1, *stack.shape[2:]), moas * n)
        if selection_reward not in out_r:
            raise CellbenchError(
                f"the reward model has no {selection_reward!r} reward",
                fix=f"choose one of {', '.join(sorted(out_r))}",
            )
        scores = np.asarray(out_r[selection_reward], np.float64).reshape(n, len(rows))
        best, index = select_best(stack, scores)
        for task, img in zip(rows["task_id"], best, strict=True):
            with atomic_path(out / f"{task}.npy", suffix=".npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, img)
        chosen += [int(i) for i in index]
        chosen_scores += [float(scores[i, j]) for j, i in enumerate(index)]
        mean_scores += [float(np.nanmean(scores[:, j])) for j in range(len(rows))]
        if on_progress is not None:
            on_progress(start + len(rows), total)
    scorer = getattr(reward_model, "scorer", None)
    from cellbench.metrics.rewards import SUITE_VERSION

    record = generation_record(
        model=model,
        checkpoint=checkpoint,
        best_of_n=n,
        seed=seed,
        selection_reward=selection_reward,
        extra={
            "generator_version": str(getattr(gen, "version", "0")),
            "batch_size": int(batch_size),
            "n_tasks": total,
            "selection": {
                "metric_suite_version": SUITE_VERSION,
                "scorer": None if scorer is None else scorer.identity(),
                "mean_selected": _mean(chosen_scores),
                "mean_of_candidates": _mean(mean_scores),
                "chosen_index_counts": np.bincount(np.array(chosen, int), minlength=n).tolist(),
                "task_ids": [str(t) for t in protocol["task_id"]],
                "chosen_index": chosen,
            },
        },
    )
    atomic_write_text(out / GENERATION_FILE, json.dumps(record, indent=2) + "\n")
    return record


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 6) if finite else None
