"""``cellbench validate-metrics``: every defect at several severities through the real scoring.

For ``bbbc021-sim`` (or any dataset with reference statistics and a classifier), a seeded subset of
the protocol's tasks is answered with the real target crops (the undamaged baseline, which scores
exactly the real reference row) and with the same crops damaged by each defect of
:mod:`cellbench.validation.defects`. Every image set goes through the same
:class:`~cellbench.scoring.Scorer` (segmentation, Inception, MoA classifier) and the same
:func:`~cellbench.results.builder.aggregate` (rewards, bootstrap, FID/KID) as ``cellbench eval``.

Sensitivity of metric r to defect d at severity s: the mean over images of the paired per-image
change r(damaged) - r(undamaged), with a 95% percentile bootstrap interval (the same
:func:`~cellbench.metrics.bootstrap.bootstrap_mean` as the results). FID/KID are set-level numbers:
their change has no interval (the split-half floor gives their noise level). A defect *passes* when
its target metric gets worse at the highest severity with an interval excluding 0 and gets worse at
every step of the severity ladder (strictly monotonic means, on fixed seeds).

Real BBBC021 crops (``--real-crops``, the 68x68 uint16 CellProfiler crops beside the repo) are
brought to 96x96 uint8 and split in two halves per MoA: the reference statistics are computed from
one half (the same :func:`~cellbench.features.reference.compute_reference_stats` as ``cellbench reference
build``) and the other half is damaged and scored by the same
:func:`~cellbench.metrics.rewards.compute_rewards`. There is no MoA classifier for real BBBC021
here, so ``moa`` (and ``moa_swap``) and FID/KID are not computed on them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellbench.errors import CellbenchError
from cellbench.io import atomic_path, atomic_write_text, sha256_bytes
from cellbench.metrics import registry
from cellbench.metrics.bootstrap import bootstrap_mean
from cellbench.metrics.rewards import REWARD_NAMES, SUITE_VERSION
from cellbench.validation.defects import DEFECTS, apply_defect

Progress = Callable[[str, int, int], None]
REPORT_SCHEMA = "cellbench.validation/1"
DEFAULT_SEVERITIES: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
REWARDS_AND_OVERALL: tuple[str, ...] = (*REWARD_NAMES, "overall")
SET_METRICS: tuple[str, ...] = ("fid_o", "kid_o")
#: the set-level held-out metrics (registry ``kind="set_fn"``): one number per image set, no
#: interval, reported where their inputs were computed
HELD_OUT_SET: tuple[str, ...] = tuple(s.name for s in registry.set_fn_metrics())
LOWER_IS_BETTER = registry.lower_is_better()  # the metric registry says which way is worse


#: the fewest test targets the sim suite damages (its set-level metrics compare sets of images)
MIN_SIM_IMAGES = 8
#: the fewest real crops the real suite damages (a bootstrap interval needs two values)
MIN_REAL_IMAGES = 2


def needs_inception(defect: str) -> bool:
    """True when every target of ``defect`` is computed from Inception features or the MoA
    classifier on them, so a run without Inception (``--no-fid``) has nothing to measure it by."""
    return all(
        any(word in registry.spec(t).needs for word in ("Inception", "classifier"))
        for t in DEFECTS[defect].targets
    )


def check_image_count(n: int, option: str, minimum: int) -> None:
    """Refuse ``option`` ``n`` below ``minimum``."""
    if n < minimum:
        raise CellbenchError(f"{option} {n} is too small", fix=f"use at least {minimum}")


def _noop(phase: str, done: int, total: int) -> None:
    return None


def parse_severities(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"0.25,0.5,1"`` -> (0.25, 0.5, 1.0): increasing, each in (0, 1]."""
    if text is None:
        return DEFAULT_SEVERITIES
    if isinstance(text, str):
        try:
            vals = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
        except ValueError:
            raise CellbenchError(
                f"--severities {text!r} is not a comma-separated list of numbers",
                fix="e.g. --severities 0.25,0.5,0.75,1",
            ) from None
    else:
        vals = tuple(float(x) for x in text)
    if not vals or any(not 0 < v <= 1 for v in vals) or list(vals) != sorted(set(vals)):
        raise CellbenchError(
            f"severities {list(vals)} must be increasing values in (0, 1]",
            fix="e.g. --severities 0.25,0.5,0.75,1",
        )
    return vals


def _delta(damaged: np.ndarray, base: np.ndarray, seed: int) -> dict[str, Any]:
    est = bootstrap_mean(np.asarray(damaged, np.float64) - np.asarray(base, np.float64), seed=seed)
    d = est.as_dict()
    return {"delta": d["value"], "ci": d["ci"], "n": d["n"]}


def _verdict(
    curve: list[float | None],
    lower_is_better: bool,
    ci: list | None,
    worst: float | None = None,
) -> dict[str, Any]:
    """Monotonic worsening over [baseline, s1, ..., sk] and a significant drop at sk.

    A step that stays at ``worst`` (the bound of a bounded metric, :attr:`MetricSpec.worst`)
    counts as worse: the metric has nowhere further to go. A curve that starts at its bound is
    not monotonic (nothing fell)."""
    vals = [np.nan if v is None else float(v) for v in curve]
    steps = np.diff(vals)
    worse = steps > 0 if lower_is_better else steps < 0
    if worst is not None and len(vals) > 1 and vals[0] != worst:
        worse |= (steps == 0) & (np.asarray(vals[1:]) == worst)
    monotonic = bool(np.all(worse)) and bool(np.all(np.isfinite(steps)))
    if ci is None or ci[0] is None:
        significant = bool(np.isfinite(steps).all() and monotonic)
    else:
        significant = ci[0] > 0 if lower_is_better else ci[1] < 0
    return {
        "monotonic": monotonic,
        "significant": bool(significant),
        "passed": bool(monotonic and significant),
    }


def _worst(metric: str) -> float | None:
    """The registered bound of ``metric`` (:attr:`MetricSpec.worst`); None when unregistered."""
    return registry.spec(metric).worst if metric in registry.METRICS.names() else None


def summarise_defect(
    defect: str, per_severity: dict[float, dict[str, dict]], baseline: dict[str, float]
) -> dict[str, Any]:
    """Per target metric: the curve over severities and whether it passes."""
    sev = sorted(per_severity)
    out = {}
    for target in DEFECTS[defect].targets:
        if target not in baseline or baseline[target] is None:
            continue
        curve = [baseline[target], *[per_severity[s][target]["value"] for s in sev]]
        top = per_severity[sev[-1]][target]
        out[target] = {
            "curve": curve,
            "delta_at_max": top["delta"],
            "ci_at_max": top.get("ci"),
            **_verdict(curve, target in LOWER_IS_BETTER, top.get("ci"), _worst(target)),
        }
    return out


def summarise_steady(
    defect: str, per_severity: dict[float, dict[str, dict]], baseline: dict[str, float]
) -> dict[str, Any]:
    """Per metric the defect should leave where it is (``DefectSpec.steady``): its curve over
    severities and its change at the highest severity, to set beside the targets' fall."""
    sev = sorted(per_severity)
    out = {}
    for m in DEFECTS[defect].steady:
        if m not in baseline or baseline[m] is None:
            continue
        top = per_severity[sev[-1]][m]
        out[m] = {
            "curve": [baseline[m], *[per_severity[s][m]["value"] for s in sev]],
            "delta_at_max": top["delta"],
            "ci_at_max": top.get("ci"),
        }
    return out


# ------------------------------------------------------------------------------- scored runs
class SimSuite:
    """Damage a seeded subset of a dataset's protocol targets and score it like ``cellbench eval``."""

    def __init__(
        self,
        dataset: str = "bbbc021-sim",
        data_dir: str | Path | None = None,
        *,
        n_images: int = 256,
        seed: int = 0,
        fid: bool = True,
        backend: str = "classical",
        device: str = "cpu",
        progress: Progress = _noop,
    ):
        from cellbench.data.bbbc021 import open_dataset
        from cellbench.protocol import build_protocol
        from cellbench.scoring import Artifacts, Scorer

        self.ds = open_dataset(dataset, data_dir, create_sim=True)
        self.scorer = Scorer(
            Artifacts.for_dataset(self.ds), backend=backend, device=device, use_inception=fid
        )
        self.fid = fid
        self.seed = seed
        self.progress = progress
        full = build_protocol(self.ds, "test", seed)
        check_image_count(n_images, "--n-images", MIN_SIM_IMAGES)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(full), size=min(n_images, len(full)), replace=False))
        self.protocol = full.iloc[pick].reset_index(drop=True)
        self.crops = self.ds.load_crops(self.protocol["target_key"].tolist())
        self.moas = self.protocol["moa"].to_numpy().astype(str)
        self.compounds = self.protocol["compound"].to_numpy().astype(str)
        self.controls = self.ds.load_crops(self.protocol["control_key"].tolist())
        train = self.ds.split("train")
        train = train[~train["is_control"]]["SAMPLE_KEY"].astype(str).to_numpy()
        pick = np.sort(rng.choice(len(train), size=min(len(self.crops), len(train)), replace=False))
        self.train_donors = self.ds.load_crops(train[pick].tolist())
        self.dna_channel = self.ds.card.dna_channel
        self.segs = [
            self.scorer.backend.segment(c, dna_channel=self.dna_channel) for c in self.crops
        ]

    def score(self, images: np.ndarray, label: str) -> tuple[dict, Any, dict[str, np.ndarray]]:
        """The result document, per-image table and per-image features of ``images`` (one per
        subset task). The features are returned apart: in the per-image table the reward columns
        ``nuc_count``, ``roundness`` and ``nuc_in_cyto`` replace the features of the same name."""
        from cellbench.results.builder import aggregate
        from cellbench.scoring import ImageArrays

        features = self.scorer.features(images, use_inception=self.fid, profile=True)
        arrays = ImageArrays(
            task_ids=self.protocol["task_id"].tolist(),
            paths=[label] * len(images),
            pixel_sha256=[sha256_bytes(np.ascontiguousarray(im).tobytes()) for im in images],
            seg=features.seg,
            inception=features.inception,
            profile=features.profile,
        )
        doc, per_image = aggregate(
            self.scorer, self.protocol, arrays, ds=self.ds, seed=self.seed, fid=self.fid
        )
        feats = {n: features.seg[:, j] for j, n in enumerate(self.scorer.feature_names)}
        return doc, per_image, feats

    def damage(self, defect: str, severity: float) -> np.ndarray:
        return apply_defect(
            defect,
            self.crops,
            severity,
            seed=self.seed,
            dna_channel=self.dna_channel,
            segs=self.segs,
            moas=self.moas,
            donors=self.crops,
            donor_moas=self.moas,
            compounds=self.compounds,
            donor_compounds=self.compounds,
            controls=self.controls,
            train_donors=self.train_donors,
        )

    def run(self, defects: Sequence[str], severities: Sequence[float]) -> dict[str, Any]:
        set_level = (list(SET_METRICS) if self.fid else []) + list(HELD_OUT_SET)
        metrics = [*REWARDS_AND_OVERALL, "moa_accuracy", *set_level]
        total = 1 + len(defects) * len(severities)
        done = 0
        self.progress("validation (sim)", done, total)
        base_doc, base_pi, base_feats = self.score(self.crops, "baseline")
        done += 1
        self.progress("validation (sim)", done, total)
        baseline = {m: base_doc["metrics"][m]["value"] for m in metrics}
        ref = base_doc["reference"]["metrics"]
        matches_reference = all(
            base_doc["metrics"][m]["value"] == ref[m]["value"] for m in REWARDS_AND_OVERALL
        )
        results: dict[str, Any] = {}
        features: dict[str, Any] = {"baseline": _feature_means(base_feats)}
        for d in defects:
            per_sev: dict[float, dict[str, dict]] = {}
            for s in severities:
                doc, pi, feats = self.score(self.damage(d, s), f"{d}@{s}")
                row: dict[str, dict] = {}
                for m in metrics:
                    value = doc["metrics"][m]["value"]
                    if m in set_level:
                        delta = (
                            None if value is None or baseline[m] is None else value - baseline[m]
                        )
                        row[m] = {"value": value, "delta": delta, "ci": None, "n": len(pi)}
                    elif baseline[m] is None:
                        row[m] = {"value": None, "delta": None, "ci": None, "n": 0}
                    else:
                        row[m] = {"value": value, **_delta(pi[m], base_pi[m], self.seed)}
                per_sev[s] = row
                features[f"{d}@{s}"] = _feature_means(feats)
                done += 1
                self.progress("validation (sim)", done, total)
            results[d] = {
                "severities": {str(s): per_sev[s] for s in severities},
                "targets": summarise_defect(d, per_sev, baseline),
                "steady": summarise_steady(d, per_sev, baseline),
            }
        return {
            "source": f"{self.ds.name} (test protocol, seed {self.seed})",
            "dataset": {
                "name": self.ds.name,
                "simulated": self.ds.card.simulated,
                "index_sha256": self.ds.index_sha256,
            },
            "n_images": len(self.crops),
            "fid": self.fid,
            "baseline": baseline,
            "baseline_matches_reference_row": matches_reference,
            "split_half_floor": {
                m: base_doc["reference"]["metrics"].get(m, {}).get("value") for m in SET_METRICS
            }
            if self.fid
            else {},
            "scorer": self.scorer.identity(),
            "defects": results,
            "feature_means": features,
            "blind_spots": _count_agreement(base_feats),
        }


def _feature_means(feats: dict[str, np.ndarray]) -> dict[str, float]:
    return {n: round(float(np.mean(v)), 4) for n, v in feats.items()}


def _count_agreement(per_image) -> dict[str, float]:
    nuc = np.asarray(per_image["nuc_count"], np.float64)
    cell = np.asarray(per_image["cell_count"], np.float64)
    corr = float(np.corrcoef(nuc, cell)[0, 1]) if nuc.std() > 0 and cell.std() > 0 else None
    return {
        "fraction_cell_count_equals_nuc_count": round(float(np.mean(nuc == cell)), 4),
        "correlation_cell_count_nuc_count": None if corr is None else round(corr, 4),
    }


# ------------------------------------------------------------------------------ real crops
def load_real_crops(root: str | Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """The 68x68 uint16 real BBBC021 crops of ``root`` as 96x96 uint8 (actin, tubulin, DNA)."""
    import pandas as pd

    from cellbench.features.segment.convert import to_uint8_crop

    root = Path(root)
    index = root / "crop_labels.csv"
    if not index.is_file():
        raise CellbenchError(
            "no crop_labels.csv", path=root, fix="pass the singh_crops_68x68 folder of real crops"
        )
    labels = pd.read_csv(index)
    missing = {"class_folder", "file_name", "moa"} - set(labels.columns)
    if missing:
        raise CellbenchError(f"crop_labels.csv lacks columns {sorted(missing)}", path=index)
    crops = []
    for r in labels.itertuples():
        path = root / r.class_folder / r.file_name
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CellbenchError(f"unreadable crop ({exc})", path=path) from None
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise CellbenchError(f"expected an HxWx3 crop, got {arr.shape}", path=path)
        crops.append(to_uint8_crop(arr, order=(2, 1, 0)))  # (DNA, tub, actin) -> (actin, tub, DNA)
    return np.stack(crops), labels["moa"].to_numpy().astype(str), labels


class RealSuite:
    """The morphology rewards on real crops, with reference statistics from a disjoint half."""

    def __init__(
        self,
        root: str | Path,
        *,
        n_images: int = 256,
        seed: int = 0,
        backend: str = "classical",
        progress: Progress = _noop,
    ):
        from cellbench.features.reference import compute_reference_stats
        from cellbench.features.segment.backends import get_backend

        self.root = Path(root)
        check_image_count(n_images, "--real-n-images", MIN_REAL_IMAGES)
        crops, moas, _ = load_real_crops(root)
        self.backend = get_backend(backend)
        self.seed = seed
        self.progress = progress
        rng = np.random.default_rng(seed)
        ref_idx, tgt_idx = [], []
        for m in sorted(set(moas)):
            idx = rng.permutation(np.flatnonzero(moas == m))
            ref_idx.extend(idx[: len(idx) // 2])
            tgt_idx.extend(idx[len(idx) // 2 :])
        tgt_idx = np.sort(tgt_idx)
        if len(tgt_idx) > n_images:
            tgt_idx = np.sort(rng.choice(tgt_idx, size=n_images, replace=False))
        self.dna_channel = 2
        ref_feats = self.backend.features(crops[np.sort(ref_idx)], dna_channel=2)
        self.reference = compute_reference_stats(
            ref_feats, self.backend.feature_names, moas[np.sort(ref_idx)]
        )
        self.n_reference = len(ref_idx)
        self.crops = crops[tgt_idx]
        self.moas = moas[tgt_idx]
        self.segs = [self.backend.segment(c, dna_channel=2) for c in self.crops]

    def score(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-image rewards and per-image features of ``images``."""
        from cellbench.metrics.rewards import compute_rewards

        seg = self.backend.features(images, dna_channel=self.dna_channel)
        feats = {n: seg[:, j] for j, n in enumerate(self.backend.feature_names)}
        return compute_rewards(feats, None, self.moas, self.reference), feats

    def damage(self, defect: str, severity: float) -> np.ndarray:
        return apply_defect(
            defect, self.crops, severity, seed=self.seed, dna_channel=2, segs=self.segs
        )

    def run(self, defects: Sequence[str], severities: Sequence[float]) -> dict[str, Any]:
        defects = [d for d in defects if not DEFECTS[d].needs_donors]
        metrics = [m for m in REWARDS_AND_OVERALL if m != "moa"]
        total = 1 + len(defects) * len(severities)
        self.progress("validation (real)", 0, total)
        base, base_feats = self.score(self.crops)
        baseline = {m: round(float(np.mean(base[m])), 6) for m in metrics}
        features: dict[str, Any] = {"baseline": _feature_means(base_feats)}
        results: dict[str, Any] = {}
        done = 1
        for d in defects:
            per_sev: dict[float, dict[str, dict]] = {}
            for s in severities:
                r, feats = self.score(self.damage(d, s))
                per_sev[s] = {
                    m: {"value": round(float(np.mean(r[m])), 6), **_delta(r[m], base[m], self.seed)}
                    for m in metrics
                }
                features[f"{d}@{s}"] = _feature_means(feats)
                done += 1
                self.progress("validation (real)", done, total)
            results[d] = {
                "severities": {str(s): per_sev[s] for s in severities},
                "targets": summarise_defect(d, per_sev, baseline),
                "steady": summarise_steady(d, per_sev, baseline),
            }
        return {
            "source": f"real BBBC021 crops ({self.root.name}), 96x96 uint8",
            "n_images": len(self.crops),
            "n_reference": self.n_reference,
            "moas": sorted(set(self.moas)),
            "fid": False,
            "baseline": baseline,
            "segmenter": self.backend.identity(),
            "defects": results,
            "feature_means": features,
            "blind_spots": _count_agreement(base_feats),
        }


# ----------------------------------------------------------------------- segmentation accuracy
def segmentation_accuracy(root: str | Path, backend: str = "classical") -> dict[str, Any]:
    """Nucleus F1 at IoU 0.5 and 0.75 per image and overall on DSB2018-style ground truth.

    ``root`` holds ``images/<id>.png`` and ``labels_derived/<id>.png`` (instance labels). Overall:
    the mean of the per-image F1 and the pooled F1 of all matches (2 TP / (2 TP + FP + FN)).
    """
    from cellbench.features.segment.backends import get_backend
    from cellbench.features.segment.evaluate import dsb_ids, match_instances, read_dsb

    root = Path(root)
    ids = dsb_ids(root)
    if not ids:
        raise CellbenchError(
            "no images/*.png", path=root, fix="pass the dsb2018_stage1_train_subset folder"
        )
    seg = get_backend(backend)
    if seg.name == "classical":
        from cellbench.features.segment.classical import segment_nuclei
    else:

        def segment_nuclei(img: np.ndarray) -> np.ndarray:
            return seg.segment(np.stack([img] * 3, -1), dna_channel=0).nuclei

    rows = []
    for image_id in ids:
        gt_path = root / "labels_derived" / f"{image_id}.png"
        if not gt_path.is_file():
            raise CellbenchError("ground-truth labels missing", path=gt_path)
        img, gt = read_dsb(root, image_id)
        pred = segment_nuclei(img)
        row = {"image": image_id, "height": img.shape[0], "width": img.shape[1]}
        row["n_true"] = int(len(np.unique(gt)) - 1)
        row["n_pred"] = int(len(np.unique(pred)) - 1)
        for iou, tag in ((0.5, "50"), (0.75, "75")):
            tp, fp, fn = match_instances(pred, gt, iou)
            row[f"tp_{tag}"], row[f"fp_{tag}"], row[f"fn_{tag}"] = tp, fp, fn
            den = 2 * tp + fp + fn
            row[f"f1_{tag}"] = 1.0 if den == 0 else round(2 * tp / den, 4)
        rows.append(row)
    overall = {}
    for tag in ("50", "75"):
        tp = sum(r[f"tp_{tag}"] for r in rows)
        fp = sum(r[f"fp_{tag}"] for r in rows)
        fn = sum(r[f"fn_{tag}"] for r in rows)
        overall[f"mean_f1_{tag}"] = round(float(np.mean([r[f"f1_{tag}"] for r in rows])), 4)
        overall[f"pooled_f1_{tag}"] = round(2 * tp / max(2 * tp + fp + fn, 1), 4)
    return {
        "source": str(root.name),
        "n_images": len(rows),
        "n_true_nuclei": int(sum(r["n_true"] for r in rows)),
        "segmenter": seg.identity(),
        "overall": overall,
        "per_image": rows,
    }


# --------------------------------------------------------------------------------- the report
def run_validation(
    out: str | Path,
    *,
    dataset: str = "bbbc021-sim",
    data_dir: str | Path | None = None,
    severities: Sequence[float] = DEFAULT_SEVERITIES,
    n_images: int = 256,
    seed: int = 0,
    fid: bool = True,
    defects: Sequence[str] | None = None,
    real_crops: str | Path | None = None,
    real_n_images: int = 256,
    seg_truth: str | Path | None = None,
    backend: str = "classical",
    device: str = "cpu",
    command: str | None = None,
    progress: Progress = _noop,
) -> dict[str, Any]:
    """Run the validation and write ``out``/report.md, validation.json, CSVs and figures.

    Every file is written atomically and ``report.md`` last, so a folder without it is a run that
    did not finish. ``out`` is made only when the results are in: a refused or failed run leaves
    no folder. Without ``fid`` a defect named in ``defects`` that only Inception features can
    measure (:func:`needs_inception`) is refused.
    """
    from cellbench.validation import figures

    started = time.perf_counter()
    severities = parse_severities(severities)
    if defects is not None and not defects:
        raise CellbenchError("--defects names no defect", fix="name defects, or drop --defects")
    names = list(DEFECTS) if defects is None else list(defects)
    unknown = [d for d in names if d not in DEFECTS]
    if unknown:
        from cellbench.registry import suggest

        err = suggest(unknown[0], list(DEFECTS), "defect")
        raise err
    blind = [d for d in defects or () if not fid and needs_inception(d)]
    if blind:
        raise CellbenchError(
            f"defect(s) {', '.join(blind)} are measured only by metrics that need the Inception "
            "network, which --no-fid skips",
            fix="drop --no-fid, or leave those defects out of --defects",
        )
    check_image_count(n_images, "--n-images", MIN_SIM_IMAGES)
    if real_crops is not None:
        check_image_count(real_n_images, "--real-n-images", MIN_REAL_IMAGES)
    for path, what in ((real_crops, "--real-crops"), (seg_truth, "--seg-truth")):
        if path is not None and not Path(path).is_dir():
            raise CellbenchError(
                f"{what} folder not found", path=path, fix="pass an existing folder"
            )
    sim = SimSuite(
        dataset,
        data_dir,
        n_images=n_images,
        seed=seed,
        fid=fid,
        backend=backend,
        device=device,
        progress=progress,
    )
    doc: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "command": command,
        "metric_suite_version": SUITE_VERSION,
        "seed": seed,
        "severities": list(severities),
        "defects": {
            d: {"targets": list(DEFECTS[d].targets), "summary": DEFECTS[d].summary} for d in names
        },
        "sim": sim.run(names, severities),
    }
    examples = {"sim": _example_grid(sim, names, severities)}
    real = None
    if real_crops is not None:
        real = RealSuite(
            real_crops, n_images=real_n_images, seed=seed, backend=backend, progress=progress
        )
        doc["real"] = real.run(names, severities)
        # the defects the real suite ran (it skips those that need donors: other MoAs,
        # compounds, controls, training crops)
        examples["real"] = _example_grid(real, list(doc["real"]["defects"]), severities)
    if seg_truth is not None:
        progress("segmentation F1", 0, 1)
        doc["segmentation"] = segmentation_accuracy(seg_truth, backend)
        progress("segmentation F1", 1, 1)
    doc["wall_time_s"] = round(time.perf_counter() - started, 1)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # only now: a run that stopped leaves no folder
    files = figures.write_figures(out, doc, examples, real)
    doc["figures"] = files
    _write_tables(out, doc)
    atomic_write_text(out / "validation.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    from cellbench.validation.markdown import render_report

    atomic_write_text(out / "report.md", render_report(doc))
    return doc


def _example_grid(suite, names: Sequence[str], severities: Sequence[float]) -> dict[str, Any]:
    """Two example crops per defect at each severity (for the figure of defects)."""
    idx = [0, len(suite.crops) // 2]
    crops = suite.crops[idx]
    segs = [suite.segs[i] for i in idx]
    grid = {}
    for d in names:
        row = [crops]
        for s in severities:
            if DEFECTS[d].needs_donors:
                full = suite.damage(d, s)
                row.append(full[idx])
            else:
                row.append(
                    apply_defect(
                        d, crops, s, seed=suite.seed, dna_channel=suite.dna_channel, segs=segs
                    )
                )
        grid[d] = row
    return {"severities": [0.0, *severities], "rows": grid}


def _write_tables(out: Path, doc: dict) -> None:
    """sensitivity.csv (one row per source x defect x severity x metric), segmentation_f1.csv."""
    lines = ["source,defect,severity,metric,value,delta,ci_low,ci_high,is_target"]
    for source in ("sim", "real"):
        if source not in doc:
            continue
        for d, res in doc[source]["defects"].items():
            for s, row in res["severities"].items():
                for m, v in row.items():
                    ci = v.get("ci") or [None, None]
                    cells = [v.get("value"), v.get("delta"), ci[0], ci[1]]
                    txt = ["" if c is None else f"{c:.6g}" for c in cells]
                    is_t = int(m in DEFECTS[d].targets)
                    lines.append(f"{source},{d},{s},{m},{','.join(txt)},{is_t}")
    atomic_write_text(out / "sensitivity.csv", "\n".join(lines) + "\n")
    if "segmentation" in doc:
        rows = doc["segmentation"]["per_image"]
        cols = list(rows[0])
        text = (
            ",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows)
        )
        with atomic_path(out / "segmentation_f1.csv") as tmp:
            tmp.write_text(text)
