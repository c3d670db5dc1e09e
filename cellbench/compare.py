"""Paired comparison of two ``cellbench eval`` results on the same tasks (``cellbench compare``).

Two results of one dataset and protocol answer the same tasks, so the per-task difference B - A
of a per-image metric cancels what the tasks share, and the mean difference has a much tighter
interval than the two results' separate intervals. For each per-image metric this takes the
tasks both results scored (a task with several images counts with the mean of its images), the
differences B - A, and their mean with the seeded percentile bootstrap of
:func:`cellbench.metrics.bootstrap.bootstrap_mean` (tasks resampled with replacement). FID and KID
are properties of an image set, not of a task: they are reported as the two values and their
difference, without an interval. docs/scoring.md ("Comparing two results") describes it.

Only results scored the same way are compared: the same dataset (name and index hash), protocol
(hash), metric suite version, segmenter, reference statistics and artifact set. Anything else is refused,
naming the file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cellbench.errors import CellbenchError
from cellbench.io import read_json
from cellbench.metrics.bootstrap import CI_LEVEL, N_BOOTSTRAP, Estimate, bootstrap_mean
from cellbench.metrics.registry import per_image_names, set_names
from cellbench.metrics.rewards import overall_components
from cellbench.results.builder import check_per_image_digest, result_paths
from cellbench.results.document import RESULT_SCHEMA

#: the most bootstrap resamples ``compare`` draws (one array of n_boot x tasks: memory bound)
MAX_N_BOOT = 100_000

#: the per-image metrics compared task by task, in the order they are reported


def paired_metrics() -> tuple[str, ...]:
    """The per-image metrics compared, ``overall`` first, then the registry's order."""
    return ("overall", *(m for m in per_image_names() if m != "overall"))


#: per task id, per metric: the task's value (the mean over its images)
TaskValues = dict[str, dict[str, float]]

_RESULT_FIX = "pass the results.json that `cellbench eval --out FILE.json` wrote"


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a whole-run result document of ``cellbench eval``; anything else is refused."""
    path = Path(path)
    doc = read_json(path, "result file", _RESULT_FIX)
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != RESULT_SCHEMA:
        raise CellbenchError(
            f"not a cellbench eval result (schema {schema!r}, expected {RESULT_SCHEMA!r})",
            path=path,
            fix=_RESULT_FIX,
        )
    if doc.get("partial"):
        raise CellbenchError(
            f"a --shard {doc['partial'].get('shard')} result holds no per-image scores",
            path=path,
            fix="combine the shards first: cellbench eval merge SHARD.json ... --out FILE.json",
        )
    return doc


def _scoring_identity(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree between two results for their per-task values to be comparable."""
    dataset = doc.get("dataset") or {}
    return {  # checked in this order: the most specific reason first
        # an overall without moa (--no-fid) is another quantity (docs/scoring.md); a --no-fid run
        # also records a smaller artifact set (no classifier), which this explains better
        "overall components": tuple(
            doc.get("overall_components") or overall_components(bool(doc.get("fid_computed")))
        ),
        "dataset": (dataset.get("name"), dataset.get("index_sha256")),
        "protocol": (doc.get("protocol") or {}).get("sha256"),
        "metric suite version": doc.get("metric_suite_version"),
        "segmenter": doc.get("segmenter"),
        "reference statistics": doc.get("reference_stats_sha256"),
        # the classifier and reference statistics behind the rewards (docs/scoring.md "Artifacts");
        # results written before artifact sets were recorded have none
        "artifact set": (doc.get("artifacts") or {}).get("sha256"),
    }


def _describe(what: str, value: Any) -> str:
    if what == "dataset":
        name, sha = value
        return f"{name} (index {str(sha)[:12]})"
    if what in ("protocol", "reference statistics", "artifact set"):
        return str(value)[:12]
    if what == "overall components":
        return " + ".join(value)
    if what == "segmenter" and isinstance(value, Mapping):
        return f"{value.get('name')} v{value.get('version')}"
    return str(value)


def check_comparable(a: Mapping[str, Any], b: Mapping[str, Any], b_path: str | Path) -> None:
    """Raise a :class:`CellbenchError` naming ``b_path`` unless ``b`` was scored like ``a``."""
    ida, idb = _scoring_identity(a), _scoring_identity(b)
    for what, va in ida.items():
        vb = idb[what]
        if vb != va:
            raise CellbenchError(
                f"scored on a different {what} than the first result: {_describe(what, vb)} "
                f"here, {_describe(what, va)} there; refusing to compare",
                path=b_path,
                fix="score both with Inception (without --no-fid)"
                if what == "overall components"
                else "compare results of the same dataset and protocol, scored by the same "
                "cellbench metric suite (`cellbench eval ... --protocol` the same file)",
            )


def read_task_values(csv_path: str | Path, metrics: Iterable[str] | None = None) -> TaskValues:
    """Per task, per metric, the mean over the task's images in a per-image CSV of ``eval``.

    Empty cells (a metric not computed, e.g. ``moa`` in a result scored with ``--no-fid``) are
    skipped, so a task has only the metrics that were scored; any other cell must be a finite
    number (``nan`` and ``inf`` are refused, naming the line).
    """
    csv_path = Path(csv_path)
    metrics = paired_metrics() if metrics is None else tuple(metrics)
    sums: dict[str, dict[str, list[float]]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "task_id" not in (reader.fieldnames or []):
                raise CellbenchError(
                    "not a per-image CSV of cellbench eval (no task_id column)",
                    path=csv_path,
                    fix="score again with `cellbench eval ... --out FILE.json`",
                )
            for line, row in enumerate(reader, start=2):
                per = sums.setdefault(row["task_id"], {m: [] for m in metrics})
                for m in metrics:
                    cell = row.get(m) or ""
                    if cell == "":
                        continue
                    try:
                        value = float(cell)
                    except ValueError:
                        value = math.nan
                    if not math.isfinite(value):  # eval writes a value not computed as empty
                        raise CellbenchError(
                            f"line {line}: {m} is {cell!r}, not a finite number",
                            path=csv_path,
                            fix="score again with `cellbench eval ... --out FILE.json`",
                        )
                    per[m].append(value)
    except FileNotFoundError:
        raise CellbenchError(
            "no per-image CSV beside the result file",
            path=csv_path,
            fix="score again with `cellbench eval ... --out FILE.json` (it writes "
            "FILE.per_image.csv beside FILE.json)",
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CellbenchError(
            f"unreadable per-image CSV ({exc})",
            path=csv_path,
            fix="score again with `cellbench eval ... --out FILE.json`",
        ) from None
    return {t: {m: float(np.mean(v)) for m, v in d.items() if v} for t, d in sums.items()}


def paired_differences(
    a: TaskValues,
    b: TaskValues,
    metrics: Iterable[str] | None = None,
    *,
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
) -> dict[str, Estimate]:
    """Mean of B - A over the tasks both scored, per metric, with its paired bootstrap interval.

    A metric is left out when no shared task has it in both. The interval resamples the tasks
    (:func:`~cellbench.metrics.bootstrap.bootstrap_mean` on the differences, in sorted task order,
    so it is repeatable).
    """
    shared = sorted(set(a) & set(b))
    out: dict[str, Estimate] = {}
    for m in paired_metrics() if metrics is None else metrics:
        tasks = [t for t in shared if m in a[t] and m in b[t]]
        if tasks:
            diff = np.array([b[t][m] - a[t][m] for t in tasks], dtype=np.float64)
            out[m] = bootstrap_mean(diff, seed=seed, n_boot=n_boot)
    return out


def _set_value(doc: Mapping[str, Any], metric: str) -> float | None:
    value = ((doc.get("metrics") or {}).get(metric) or {}).get("value")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def compare_results(
    a_path: str | Path, b_path: str | Path, *, seed: int = 0, n_boot: int | None = None
) -> dict[str, Any]:
    """Compare result B with result A (both ``results.json`` of ``cellbench eval --out``).

    ``n_boot`` defaults to the resamples of ``cellbench eval``'s intervals. Returns a JSON-ready
    document: the two files, the dataset and protocol, task counts, the paired differences B - A
    per per-image metric (``value``, 95% ``ci``, ``n`` tasks) and the set-level FID/KID of both
    with their difference.

    Raises:
        CellbenchError: a file is unreadable, not a whole-run result, lacks its per-image CSV, was
            scored differently from the other (dataset, protocol, suite, segmenter, reference
            statistics), or the two share no task.
    """
    n_boot = N_BOOTSTRAP if n_boot is None else n_boot
    if not 1 <= n_boot <= MAX_N_BOOT:
        raise CellbenchError(
            f"--n-boot must be between 1 and {MAX_N_BOOT} (got {n_boot})",
            fix=f"use the default ({N_BOOTSTRAP}) or fewer resamples",
        )
    a_path, b_path = Path(a_path), Path(b_path)
    doc_a, doc_b = load_result(a_path), load_result(b_path)
    check_comparable(doc_a, doc_b, b_path)
    for doc, path in ((doc_a, a_path), (doc_b, b_path)):
        check_per_image_digest(doc, result_paths(path)[1])
    tasks_a = read_task_values(result_paths(a_path)[1])
    tasks_b = read_task_values(result_paths(b_path)[1])
    shared = set(tasks_a) & set(tasks_b)
    if not shared:
        raise CellbenchError(
            "shares no scored task with the first result",
            path=b_path,
            fix="compare results that answer the same protocol tasks",
        )
    paired = paired_differences(tasks_a, tasks_b, seed=seed, n_boot=n_boot)
    set_level = {}
    for m in set_names():
        va, vb = _set_value(doc_a, m), _set_value(doc_b, m)
        if va is not None and vb is not None:
            set_level[m] = {"a": va, "b": vb, "difference": round(vb - va, 6)}
    return {
        "a": str(a_path),
        "b": str(b_path),
        "dataset": doc_a["dataset"]["name"],
        "protocol_sha256": doc_a["protocol"]["sha256"],
        "n_tasks": {"a": len(tasks_a), "b": len(tasks_b), "shared": len(shared)},
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": CI_LEVEL},
        "paired": {m: est.as_dict() for m, est in paired.items()},
        "set_level": set_level,
    }
