"""Build and write the result document (:mod:`cellbench.results.document`).

:func:`build_document` is the one function that makes a result document, for a whole run, for one
``--shard K/N`` part and for a merge of shards: ``cellbench eval`` and ``cellbench eval merge``
both call it, so a merged document cannot lose a field that the unsharded run writes (the best-of-N
record included). Everything after the per-image arrays is done by :func:`aggregate`, on the same
arrays in the same order either way, so a merged result equals the unsharded one exactly.

The metrics come from the registry (:mod:`cellbench.metrics.registry`): every per-image metric is
averaged with a bootstrap interval overall, per MoA and per compound and written to the per-image
table, every set-level distance is computed once against the real targets of the evaluated
compounds. ``docs/scoring.md`` describes the result file.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellbench._version import __version__
from cellbench.data.content import protocol_crop_digests
from cellbench.data.layout import MOAS
from cellbench.errors import CellbenchError
from cellbench.io import atomic_path, check_out_file, is_within, sha256_bytes, sha256_file
from cellbench.metrics.bootstrap import bootstrap_mean, grouped_bootstrap
from cellbench.metrics.registry import (
    GROUP_NOTE,
    TOO_FEW,
    PerImageInputs,
    SetInputs,
    compute_per_image,
    compute_set,
    distance_metrics,
    grouped,
    jsonable,
    per_image_names,
    set_fn_metrics,
)
from cellbench.metrics.rewards import OVERALL_WEIGHTS, SUITE_VERSION, overall_components
from cellbench.results.document import RESULT_SCHEMA
from cellbench.scoring.images import control_arrays, reference_arrays
from cellbench.scoring.training_set import copy_inputs

if TYPE_CHECKING:
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.metrics.fid import CompoundScores
    from cellbench.scoring.arrays import ImageArrays
    from cellbench.scoring.images import ControlArrays
    from cellbench.scoring.scorer import Scorer

Progress = Callable[[str, int, int], None]


def _noop(phase: str, done: int, total: int) -> None:
    return None


# ------------------------------------------------------------------------------------ aggregate
def _too_few(metric: str) -> str:
    """Why a FID/KID value could not be computed (too few images for the set it compares)."""
    if metric in ("fid_c", "kid_c"):
        return "not computed: no compound has 2 or more images on both sides"
    return "not computed: fewer than 2 images on a side"


def _estimates(values: dict[str, np.ndarray], names: tuple[str, ...], seed: int) -> dict:
    return {m: bootstrap_mean(values[m], seed=seed).as_dict() for m in names}


def _grouped(
    values: dict[str, np.ndarray], names: tuple[str, ...], groups: np.ndarray, seed: int
) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m in names:
        for g, est in grouped_bootstrap(values[m], groups, seed=seed).items():
            out.setdefault(g, {})[m] = est.as_dict()
    return out


def per_image_values(
    scorer: Scorer, seg: np.ndarray, probs: np.ndarray | None, moas: np.ndarray
) -> dict[str, np.ndarray]:
    """Every registered per-image metric of images with segmentation features ``seg``."""
    names = per_image_names()
    if not len(moas):
        return {m: np.zeros(0) for m in names}
    suite = scorer.rewards(seg, probs, moas)
    features = {name: seg[:, j] for j, name in enumerate(scorer.feature_names)}
    return compute_per_image(names, PerImageInputs(features, probs, moas, suite))


def aggregate(
    scorer: Scorer,
    protocol: pd.DataFrame,
    arrays: ImageArrays,
    *,
    seed: int,
    fid: bool,
    ds: BBBC021Dataset,
    fid_real: str = "compounds",
    targets_sha256: str | None = None,
    progress: Progress = _noop,
) -> tuple[dict, pd.DataFrame]:
    """Means with intervals, set-level distances and the reference row from per-image arrays.

    Args:
        ds: the dataset whose real target crops make the reference row.
        fid_real: FID/KID's real side, the protocol's rule
            (:data:`cellbench.protocol_registry.FidReal`): ``compounds``, every target of the
            compounds with an image; ``tasks``, exactly the targets of the tasks with an image.
        targets_sha256: digest of the target crops' bytes (:mod:`cellbench.data.content`), the
            reference-feature cache key; None computes it.
    """
    names = per_image_names()
    by_task = protocol.set_index("task_id")
    task_ids = np.array(arrays.task_ids, dtype=str)
    n = len(task_ids)
    moas = by_task.loc[task_ids, "moa"].to_numpy().astype(str) if n else np.array([], str)
    compounds = by_task.loc[task_ids, "compound"].to_numpy().astype(str) if n else np.array([], str)
    use_inc = fid and arrays.inception is not None and scorer.head is not None
    probs = scorer.moa_probs(arrays.inception) if use_inc and n else None
    values = per_image_values(scorer, arrays.seg, probs, moas)

    ref_seg, ref_inc, ref_prof = reference_arrays(
        scorer,
        ds,
        protocol,
        use_inception=use_inc,
        targets_sha256=targets_sha256,
        progress=progress,
    )
    ref_probs = scorer.moa_probs(ref_inc) if use_inc else None
    ref_moas = protocol["moa"].to_numpy().astype(str)
    ref_compounds = protocol["compound"].to_numpy().astype(str)
    ref_values = per_image_values(scorer, ref_seg, ref_probs, ref_moas)

    metrics = _estimates(values, names, seed)
    reference = {
        "description": "the protocol's real target crops scored by the same pipeline",
        "metrics": _estimates(ref_values, names, seed),
        "per_moa": _grouped(ref_values, names, ref_moas, seed),
    }
    fid_doc: dict[str, Any] | None = None
    if use_inc and n:
        from cellbench.metrics.fid import (
            SET_BOOTSTRAP,
            fid_kid_summary,
            split_half_floor,
            split_half_indices,
        )

        progress("FID/KID", 0, 2)
        evaluated = real_side(protocol, task_ids, compounds, fid_real)
        real_feats, real_cpds = ref_inc[evaluated], ref_compounds[evaluated]
        # FID and KID need 2 or more images on each side: with fewer they are absent, not an error
        summary = floor = None
        if n >= 2 and len(real_feats) >= 2:
            summary = fid_kid_summary(
                arrays.inception, compounds, real_feats, real_cpds, seed=seed, n_boot=SET_BOOTSTRAP
            )
        gen_counts = {c: int((compounds == c).sum()) for c in np.unique(compounds)}
        if min(map(len, split_half_indices(real_cpds, seed, gen_counts=gen_counts))) >= 2:
            floor = split_half_floor(
                real_feats, real_cpds, seed, gen_counts=gen_counts, kid_seed=seed
            )
        progress("FID/KID", 2, 2)
        for s in distance_metrics():  # fid_kid_summary's fields (checked by register_metric)
            value = float(getattr(summary, s.name)) if summary is not None else float("nan")
            ref_value = float(getattr(floor, s.name)) if floor is not None else float("nan")
            metrics[s.name] = {
                "value": round(value, 6),
                "n_gen": n,
                "n_real": int(evaluated.sum()),
                **(
                    summary.intervals[s.name].as_dict()
                    if summary is not None and s.name in summary.intervals
                    else {}
                ),
            }
            reference["metrics"][s.name] = {"value": round(ref_value, 6)}
            # a NaN value becomes null below; these reasons say which images were too few
            if not np.isfinite(value):
                metrics[s.name]["absent"] = _too_few(s.name)
            if not np.isfinite(ref_value):
                reference["metrics"][s.name]["absent"] = _too_few(s.name) + " (split half)"
        if "fid_c" in metrics and summary is not None:
            metrics["fid_c"]["small_n"] = small_n_record(summary.compounds)
        fid_doc = {
            "model": summary.to_dict() if summary is not None else None,
            "split_half_floor": floor.to_dict() if floor is not None else None,
        }
        reference["fid_note"] = "split half: each compound's real crops, one half against the other"

    set_detail: dict[str, Any] | None = None
    if set_fn_metrics() and n:
        progress("held-out set metrics", 0, 2)
        inputs = held_out_inputs(
            scorer,
            ds,
            protocol,
            arrays,
            seed=seed,
            use_inception=use_inc,
            fid_real=fid_real,
            reference=(ref_inc, ref_prof),
            progress=progress,
        )
        metrics_set, reference_set, set_detail = set_fn_values(inputs)
        progress("held-out set metrics", 2, 2)
        metrics.update(metrics_set)
        reference["metrics"].update(reference_set)
        reference["set_note"] = (
            "split half: each compound's real crops, one half as the generated side against the "
            "other"
        )

    per_image = pd.DataFrame(
        {
            "task_id": arrays.task_ids,
            "path": arrays.paths,
            "compound": compounds,
            "true_moa": moas,
            # segmentation features (prefixed: several share a name with a reward column)
            **{
                f"feat_{name}": arrays.seg[:, j] if n else []
                for j, name in enumerate(scorer.feature_names)
            },
            **{m: values[m] for m in names},
            "pred_moa": [MOAS[k] for k in probs.argmax(1)] if probs is not None else [""] * n,
            "pixel_sha256": arrays.pixel_sha256,
        }
    )
    # a value that came out NaN (too few images for that metric: a k-NN with k or fewer images,
    # a bootstrap of 3) is written as absent with the reason; NaN elsewhere (an interval, a
    # detail) as null: JSON has no NaN
    for table in (metrics, reference["metrics"]):
        for est in table.values():
            value = est.get("value")
            if isinstance(value, float) and not np.isfinite(value):
                est["value"] = None
                est.setdefault("absent", TOO_FEW)
    doc = {
        "metrics": metrics,
        **overall_record(metrics, moa_computed=probs is not None or (use_inc and not n)),
        "per_moa": _grouped(values, names, moas, seed) if n else {},
        "per_compound": _grouped(values, names, compounds, seed) if n else {},
        "reference": reference,
        "fid_detail": fid_doc,
        "set_detail": set_detail,
        "metric_groups": {g: [s.name for s in members] for g, members in grouped()},
        "metric_groups_note": GROUP_NOTE,
        "overall_weights": OVERALL_WEIGHTS,
    }
    return jsonable(doc, digits=None), per_image


def held_out_inputs(
    scorer: Scorer,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    arrays: ImageArrays,
    *,
    seed: int,
    use_inception: bool,
    fid_real: str = "compounds",
    reference: tuple[np.ndarray | None, np.ndarray] | None = None,
    targets_sha256: str | None = None,
    progress: Progress = _noop,
) -> SetInputs:
    """What the ``kind="set_fn"`` metrics of :func:`aggregate` are given for a scored image set.

    The real side follows the protocol's ``fid_real`` rule, the profiles are centred on their
    batches' DMSO controls (:func:`centred_profiles`), and the copy inputs come from the cached
    training-split features (:func:`cellbench.scoring.training_set.copy_inputs`). ``reference``
    is the (Inception, profile) pair of :func:`cellbench.scoring.images.reference_arrays` when the
    caller has it already; None reads it (from the cache). ``bench/studies/reward_hacking.py``
    resamples these inputs for its paired intervals.
    """
    by_task = protocol.set_index("task_id")
    task_ids = np.array(arrays.task_ids, dtype=str)
    compounds = by_task.loc[task_ids, "compound"].to_numpy().astype(str)
    moas = by_task.loc[task_ids, "moa"].to_numpy().astype(str)
    if reference is None:
        _, ref_inc, ref_prof = reference_arrays(
            scorer,
            ds,
            protocol,
            use_inception=use_inception,
            targets_sha256=targets_sha256,
            progress=progress,
        )
    else:
        ref_inc, ref_prof = reference
    ref_compounds = protocol["compound"].to_numpy().astype(str)
    ref_moas = protocol["moa"].to_numpy().astype(str)
    evaluated = real_side(protocol, task_ids, compounds, fid_real)
    needs = {i for s in set_fn_metrics() for i in s.inputs}
    controls = None
    if needs & {"control_inception", "control_profile"}:
        controls = control_arrays(
            scorer, ds, protocol, task_ids, use_inception=use_inception, progress=progress
        )
    gen_prof, real_prof, control_prof = centred_profiles(
        arrays.profile,
        by_task.loc[task_ids, "batch"].to_numpy(),
        ref_prof[evaluated],
        protocol["batch"].to_numpy()[evaluated],
        controls,
    )
    return SetInputs(
        compounds=compounds,
        moas=moas,
        real_compounds=ref_compounds[evaluated],
        real_moas=ref_moas[evaluated],
        seed=seed,
        gen_inception=arrays.inception if use_inception else None,
        gen_profile=gen_prof,
        real_inception=ref_inc[evaluated] if ref_inc is not None else None,
        real_profile=real_prof,
        control_inception=controls.inception if controls is not None else None,
        control_profile=control_prof,
        **copy_inputs(
            scorer,
            ds,
            protocol,
            task_ids,
            arrays.pixel_sha256,
            evaluated,
            controls.keys if controls is not None else None,
            needs=needs if use_inception else set(),  # every copy metric needs Inception features
            use_inception=use_inception,
            progress=progress,
        ),
    )


def centred_profiles(
    gen: np.ndarray | None,
    gen_batches: np.ndarray,
    real: np.ndarray,
    real_batches: np.ndarray,
    controls: ControlArrays | None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The morphology profiles that :class:`SetInputs` carries: generated, real and control
    profiles each centred on the mean profile of its own batch's DMSO controls
    (:func:`cellbench.metrics.profile.centre_on_batches`; plate effects shared with the controls
    are not a drug's shift). All None without generated profiles or controls."""
    if gen is None or controls is None or len(controls.profile) < 2:
        return None, None, None
    from cellbench.metrics.profile import centre_on_batches

    cp, cb = controls.profile, controls.batches
    return (
        centre_on_batches(gen, gen_batches, cp, cb),
        centre_on_batches(real, real_batches, cp, cb),
        centre_on_batches(cp, cb, cp, cb),
    )


def small_n_record(scores: CompoundScores) -> dict[str, Any]:
    """How many of the compounds averaged into FID_c have fewer images than FID needs.

    A compound counts as small when its generated or its real side has fewer than
    :data:`cellbench.metrics.fid.FID_C_MIN_IMAGES` images (docs/scoring.md: the threshold's
    measurement); ``warning`` is a sentence when any does, else None.
    """
    from cellbench.metrics.fid import FID_C_MIN_IMAGES

    sizes = {c: min(v.n_gen, v.n_real) for c, v in scores.per_compound.items()}
    small = sorted(c for c, k in sizes.items() if k < FID_C_MIN_IMAGES)
    warning = None
    if small:
        warning = (
            f"FID_c averages {len(small)} of {len(sizes)} compounds with fewer than "
            f"{FID_C_MIN_IMAGES} images a side (smallest {min(sizes.values())}): there its "
            "small-sample bias outweighs the signal; read KID_c"
        )
    return {
        "threshold": FID_C_MIN_IMAGES,
        "compounds": len(sizes),
        "below": len(small),
        "min_images": min(sizes.values()) if sizes else 0,
        "warning": warning,
    }


def overall_record(metrics: dict[str, Any], *, moa_computed: bool) -> dict[str, Any]:
    """What ``overall`` sums and which registered metrics are absent (``--no-fid`` drops some).

    ``overall_comparable`` is False when ``moa`` is not in ``overall`` (no Inception, so no
    classifier): such an ``overall`` is never ranked or compared with a full one.
    """
    from cellbench.metrics.registry import specs

    absent = [s.name for s in specs() if (metrics.get(s.name) or {}).get("value") is None]
    return {
        "overall_components": overall_components(moa_computed),
        "overall_comparable": moa_computed,
        "metrics_not_computed": absent,
    }


def set_fn_values(inputs: SetInputs) -> tuple[dict, dict, dict]:
    """Every ``kind="set_fn"`` metric on ``inputs`` and on its split half (the real reference).

    Returns:
        ``metrics`` entries (value, n_gen, n_real, and ``absent`` with the reason when a needed
        input is missing), the reference row's entries and the ``set_detail`` section (each
        computed metric's detail, the reference's under ``"reference"``).
    """
    names = tuple(s.name for s in set_fn_metrics())
    model = compute_set(names, inputs)
    half = inputs.split_half()
    ref = compute_set(names, half)
    metrics: dict[str, dict] = {}
    reference: dict[str, dict] = {}
    detail: dict[str, dict] = {}
    for name in names:
        m, r = model[name], ref[name]
        metrics[name] = {"value": m.value, "n_gen": inputs.n_gen, "n_real": inputs.n_real}
        reference[name] = {"value": r.value}
        if m.absent is not None:
            metrics[name]["absent"] = m.absent
        if r.absent is not None:
            reference[name]["absent"] = r.absent
        if m.absent is None:
            detail[name] = {**m.detail, "reference": r.detail}
    return metrics, reference, detail


def real_side(
    protocol: pd.DataFrame, task_ids: np.ndarray, compounds: np.ndarray, fid_real: str
) -> np.ndarray:
    """Mask over the protocol's targets: FID/KID's real images under the protocol's rule."""
    if fid_real == "tasks":
        return protocol["task_id"].isin(set(task_ids)).to_numpy()
    if fid_real == "compounds":
        return np.isin(protocol["compound"].to_numpy().astype(str), np.unique(compounds))
    raise ValueError(f"unknown FID real side {fid_real!r}")


# ---------------------------------------------------------------------------------- provenance
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
    for pkg in ("numpy", "scipy", "scikit-image", "torch", "pandas"):
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


def shard_tasks(protocol: pd.DataFrame, shard: tuple[int, int] | None) -> pd.DataFrame:
    """The protocol rows of shard K/N: rows at positions i with i % N == K - 1."""
    if shard is None:
        return protocol
    k, n = shard
    return protocol.iloc[k - 1 :: n]


def best_of_n(generation: dict[str, Any] | None) -> int:
    """Candidates per task behind the images (1 without a generation record)."""
    return int(generation["best_of_n"]) if generation else 1


# ------------------------------------------------------------------------------------ document
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
    generation: dict[str, Any] | None,
    merged_from: list[str] | None = None,
    progress: Progress = _noop,
) -> tuple[dict, pd.DataFrame]:
    """The result document (and per-image table) of a whole run, one shard or a merge of shards.

    Args:
        generation: the image folder's generation record (``generation.json``) or None; sets
            ``best_of_n`` and ``generation`` (best-of-N selection inflates the reward used to
            select; FID/KID are the independent check).
        merged_from: for ``cellbench eval merge``, the shard result files merged.
    """
    covered = set(arrays.task_ids)
    expected = shard_tasks(protocol, shard)["task_id"]
    content = protocol_crop_digests(ds, protocol)
    missing = [t for t in expected if t not in covered]
    doc: dict[str, Any] = {
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
            "crops_sha256": content["crops_sha256"],
            "n_crops": content["n_crops"],
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
    per_image = pd.DataFrame()
    if shard is None:  # a shard part holds arrays only: its scores come from the merge
        scores, per_image = aggregate(
            scorer,
            protocol,
            arrays,
            seed=seed,
            fid=fid,
            ds=ds,
            fid_real=protocol_info.get("fid_real", "compounds"),
            targets_sha256=str(content["targets_sha256"]),
            progress=progress,
        )
        doc.update(scores)
    #: binds the document to its per-image CSV (:func:`write_results`)
    doc["per_image_sha256"] = per_image_digest(per_image)
    doc["environment"] = _environment(device)
    doc["wall_time_s"] = round(time.perf_counter() - started, 2)
    doc["best_of_n"] = best_of_n(generation)
    doc["generation"] = generation
    if merged_from is not None:
        doc["merged_from"] = [str(p) for p in merged_from]
    return doc, per_image


# ------------------------------------------------------------------------------------- writing
def result_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """results.json -> (results.json, results.per_image.csv, results.arrays.npz)."""
    out = Path(out)
    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    return out, out.with_name(stem + ".per_image.csv"), out.with_name(stem + ".arrays.npz")


def per_image_csv(per_image: pd.DataFrame) -> bytes | None:
    """The bytes of the per-image CSV (``<stem>.per_image.csv``), or None for an empty table."""
    if per_image.empty:
        return None
    return per_image.to_csv(index=False, float_format="%.6g", lineterminator="\n").encode("utf-8")


def per_image_digest(per_image: pd.DataFrame) -> str | None:
    """sha256 of :func:`per_image_csv`: the ``per_image_sha256`` of the result document."""
    table = per_image_csv(per_image)
    return None if table is None else sha256_bytes(table)


def _same_file(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` are one file (links resolved; hard links too where both exist)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except (OSError, RuntimeError):  # RuntimeError: a link loop
        return False


def check_out_path(
    out: str | Path,
    *,
    images: str | Path | None = None,
    inputs: Iterable[str | Path | None] = (),
    dataset: str | Path | None = None,
) -> None:
    """Refuse, before any scoring, an ``--out`` the result files cannot be written to.

    The result JSON, its per-image CSV and a shard's arrays (:func:`result_paths`) may not be an
    existing folder, their folder may not be a file, none may be one of the ``inputs`` files (the
    protocol, a shard result: it would be replaced), and none may lie inside the ``images`` folder
    being scored (they would be read as stray files of it next time) or the ``dataset`` folder.
    """
    paths = result_paths(out)
    for path in paths:
        check_out_file(path, fix="name the result file, e.g. --out results/results.json")
    for src in inputs:
        hit = None if src is None else next((p for p in paths if _same_file(p, Path(src))), None)
        if hit is not None:
            raise CellbenchError(
                f"--out would overwrite {hit.name}, an input of this command ({src})",
                path=out,
                fix="write the result to another file",
            )
    for folder, what in ((dataset, "dataset folder"), (images, "image folder being scored")):
        if folder is not None and Path(folder).is_dir():
            inside = [p for p in paths if is_within(p, folder)]
            if inside:
                raise CellbenchError(
                    f"--out writes {inside[0].name} inside the {what} ({folder})",
                    path=out,
                    fix=f"write the result outside the {what.split(' being')[0]}",
                )


def check_per_image_digest(doc: dict, csv_path: str | Path) -> None:
    """Refuse a per-image CSV that is not the one its result document records.

    ``per_image_sha256`` binds the two files; a document without it (older cellbench) is not
    checked, a missing CSV is left to its reader to report.
    """
    want = doc.get("per_image_sha256")
    if want is None or not Path(csv_path).is_file():
        return
    if sha256_file(csv_path) != want:
        raise CellbenchError(
            "per-image CSV is not the one its result document records (per_image_sha256 "
            "differs): written by another run, or an interrupted write",
            path=csv_path,
            fix="score again with `cellbench eval ... --out FILE.json`",
        )


def write_results(
    doc: dict, per_image: pd.DataFrame, arrays: ImageArrays | None, out: str | Path
) -> None:
    """Write the result JSON with its per-image CSV (and a shard's arrays) as one unit.

    Every file is first written in full to a temporary file beside its destination; then the side
    files are renamed into place and the JSON last. The JSON records the sha256 of the CSV
    (``per_image_sha256``) and of a shard's arrays (``partial.arrays_sha256``), so a JSON left
    beside a table of another run (an interruption between two renames) is refused by
    ``cellbench submission validate``, ``cellbench compare`` and ``cellbench eval merge``
    (:func:`check_per_image_digest`). A stale CSV beside a result without a table is removed.
    """
    check_out_path(out)
    json_path, csv_path, npz_path = result_paths(out)
    table = per_image_csv(per_image)
    with contextlib.ExitStack() as stack:
        json_tmp = stack.enter_context(atomic_path(json_path, suffix=".json"))  # renamed last
        if table is not None:
            stack.enter_context(atomic_path(csv_path, suffix=".csv")).write_bytes(table)
        if arrays is not None:
            npz_tmp = stack.enter_context(atomic_path(npz_path, suffix=".npz"))
            with open(npz_tmp, "wb") as fh:
                arrays.write_to(fh)
            if doc.get("partial"):
                doc["partial"]["arrays_sha256"] = sha256_file(npz_tmp)
        doc["per_image_sha256"] = None if table is None else sha256_bytes(table)
        text = json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"
        json_tmp.write_bytes(text.encode("utf-8"))
        if table is None:
            csv_path.unlink(missing_ok=True)
