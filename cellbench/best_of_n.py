"""Best-of-N test-time scaling: N candidates per task, keep the one with the highest reward.

CellFluxRL's test-time scaling (docs/cellfluxrl.md, "Best-of-N"): a generator draws N candidates
for every task, each is scored with :class:`cellbench.scoring.RewardModel` (the ``overall`` reward
by default, the pipeline of ``cellbench eval``) and the best is kept. Selecting with the metric
inflates that metric: FID/KID are the independent check, and the image folder says that N > 1 was
used in its ``generation.json`` record (:mod:`cellbench.generation`), which ``cellbench eval``
copies into the result.

Candidate k of batch b uses the seed that :func:`cellbench.generators.write_generated` gives
image k of batch b (``SeedSequence([seed, k, b])``), so candidate 0 is the plain N = 1 image and
best-of-1 writes exactly what ``cellbench generate`` writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench.generation import GENERATION_FILE, generation_record, write_generation_record
from cellbench.io import atomic_path


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


def write_generated_best_of_n(
    gen: Any,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    out: str | Path,
    *,
    n: int,
    model: str,
    seed: int = 0,
    batch_size: int = 64,
    reward_model: Any = None,
    selection_reward: str = "overall",
    dataset: str | None = None,
    protocol_path: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``<task_id>.npy`` = the best of ``n`` candidates per task, and ``generation.json``.

    ``gen`` is a loaded generator (its checkpoint hash and settings go into the record, see
    :func:`cellbench.generation.generation_record`; ``dataset`` and ``protocol_path`` too).
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
        gen,
        model=model,
        seed=seed,
        batch_size=batch_size,
        dataset=dataset,
        protocol=protocol_path,
        best_of_n=n,
        selection_reward=selection_reward,
        extra={
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
    write_generation_record(out, record)
    return record


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 6) if finite else None
