"""``cellbench regress``: re-score fixed reference images and fail if any score moved.

The regression set (``tests/regress/`` in the source tree) holds a few ``bbbc021-sim`` test crops,
some deliberately damaged copies of them (``images.npy``, described in ``images.csv``), a disjoint
set of real crops of the same compounds for FID/KID (``real.npy``, ``real.csv``) and the expected
scores (``expected.json``). :func:`run_regress` scores them with the real pipeline (the
:class:`cellbench.scoring.Scorer` that ``cellbench eval`` uses: segmenter, shipped reference
statistics, Inception network and MoA classifier; bootstrap means; FID/KID) and compares every
number with its tolerance (:data:`TOLERANCES`).

A deliberate change to a metric must bump the metric suite version
(``cellbench.metrics.rewards.SUITE_VERSION`` + a CHANGELOG line); ``cellbench regress --update``
then rewrites ``expected.json`` (commit it with the change).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellbench._version import __version__
from cellbench.errors import CellbenchError
from cellbench.io import atomic_path, atomic_write_text, sha256_bytes

SCHEMA = "cellbench.regress/1"
DATASET = "bbbc021-sim"
SEED = 0

#: absolute tolerance (abs) plus a relative one (rel * |expected|) per family of numbers. The
#: segmentation features and the z-scored rewards are float64 functions of integer pixel counts
#: and must agree to rounding; the MoA probability goes through the float32 Inception network,
#: whose last bits can differ between CPUs and BLAS builds; FID takes a matrix square root of a
#: rank-deficient covariance on a small set, so it gets a relative tolerance.
TOLERANCES: dict[str, dict[str, float]] = {
    "features": {"abs": 1e-6, "rel": 0.0},
    "rewards": {"abs": 1e-6, "rel": 0.0},
    "moa": {"abs": 1e-4, "rel": 0.0},
    "overall": {"abs": 5e-4, "rel": 0.0},
    "moa_accuracy": {"abs": 0.0, "rel": 0.0},
    "fid": {"abs": 1e-3, "rel": 1e-3},
    "kid": {"abs": 1e-5, "rel": 1e-3},
    # set-level held-out metrics: fractions of images or compounds (a neighbour flipped by a
    # last-digit change of the Inception features moves one of them by 1/n)
    "retrieval": {"abs": 1e-3, "rel": 0.0},
    "prdc": {"abs": 1e-3, "rel": 0.0},
    # morphology-profile metrics: float64 from the masks and pixels (only summation order moves)
    "profile": {"abs": 1e-5, "rel": 0.0},
    "memorisation": {"abs": 1e-3, "rel": 0.0},
}
BUMP_REMINDER = (
    "A deliberate change to a metric needs a metric suite version bump "
    "(SUITE_VERSION in cellbench/metrics/rewards.py and a CHANGELOG line), then "
    "`cellbench regress --update` and a commit of tests/regress/expected.json."
)


def tolerance_family(name: str) -> str:
    """The tolerance class of a compared number: a metric's is in its registry entry."""
    from cellbench.metrics.registry import METRICS, spec

    if name.startswith("feature:"):
        return "features"
    if name.startswith("profile:"):
        return "profile"
    return spec(name).tolerance if name in METRICS else "rewards"


def default_folder() -> Path:
    """``tests/regress`` of the source checkout this cellbench was imported from."""
    folder = Path(__file__).resolve().parents[1] / "tests" / "regress"
    if not folder.is_dir():
        raise CellbenchError(
            "the regression set lives in the source checkout (tests/regress), not found here",
            path=folder,
            fix="run from a clone of the cellbench repository or pass --folder",
        )
    return folder


# ------------------------------------------------------------------------------ the image set
#: the columns of the image tables (``images.csv``, ``real.csv``) that :func:`score_set` reads
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "images.csv": ("label", "source", "compound", "moa"),
    "real.csv": ("source", "compound", "moa"),
}
_SET_FIX = "restore it from git (or re-make the set with cellbench.regress.make_set)"


def _read_table(path: Path) -> list[dict[str, str]]:
    """The rows of an image table, with its columns (:data:`TABLE_COLUMNS`) and known MoAs."""
    from cellbench.data.layout import MOAS

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError as exc:
        raise CellbenchError(f"cannot read ({exc.strerror})", path=path) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CellbenchError(f"unreadable image table ({exc})", path=path, fix=_SET_FIX) from None
    missing = [c for c in TABLE_COLUMNS[path.name] if c not in columns]
    if missing:
        raise CellbenchError(
            f"image table has no {', '.join(missing)} column(s) (columns: {', '.join(columns)})",
            path=path,
            fix=_SET_FIX,
        )
    if not rows:
        raise CellbenchError("image table lists no image", path=path, fix=_SET_FIX)
    for line, row in enumerate(rows, start=2):
        if row["moa"] not in MOAS:
            raise CellbenchError(
                f"line {line}: moa {row['moa']!r} is not a known MoA", path=path, fix=_SET_FIX
            )
    return rows


def _load_array(path: Path, table: Path, n: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CellbenchError(
            f"unreadable image array ({exc})", path=path, fix="restore it from git"
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.shape[1:] != (96, 96, 3):
        raise CellbenchError(
            f"expected a uint8 (N, 96, 96, 3) array, got {getattr(arr, 'dtype', type(arr))} "
            f"{getattr(arr, 'shape', '')}",
            path=path,
            fix="restore it from git",
        )
    if len(arr) != n:
        raise CellbenchError(
            f"holds {len(arr)} images but {table.name} lists {n}: one of the two was changed",
            path=path,
            fix=f"restore {path.name} and {table.name} from git",
        )
    return arr


def load_set(folder: Path) -> dict[str, Any]:
    """The committed arrays and their tables (each checked; errors name the file at fault)."""
    images_t = _read_table(folder / "images.csv")
    real_t = _read_table(folder / "real.csv")
    return {
        "images": _load_array(folder / "images.npy", folder / "images.csv", len(images_t)),
        "images_table": images_t,
        "real": _load_array(folder / "real.npy", folder / "real.csv", len(real_t)),
        "real_table": real_t,
    }


# ---------------------------------------------------------------------------------- scoring
def score_set(folder: Path) -> dict[str, Any]:
    """Score the committed set with the real pipeline; returns the document ``expected.json`` holds."""
    from cellbench.metrics.bootstrap import bootstrap_mean
    from cellbench.metrics.fid import fid_kid_summary
    from cellbench.metrics.registry import SetInputs, compute_set, distance_names, set_fn_names
    from cellbench.metrics.rewards import SUITE_VERSION
    from cellbench.results.builder import per_image_values
    from cellbench.scoring import Artifacts, Scorer

    data = load_set(folder)
    scorer = Scorer(Artifacts.shipped(DATASET), use_inception=True)
    images, table = data["images"], data["images_table"]
    moas = np.array([r["moa"] for r in table])
    compounds = np.array([r["compound"] for r in table])
    feats = scorer.features(images, profile=True)
    seg = feats.seg
    real_inc = scorer.inception_features(data["real"])
    rewards = per_image_values(scorer, seg, feats.probs, moas)  # every registered per-image metric
    fid = fid_kid_summary(
        feats.inception, compounds, real_inc, [r["compound"] for r in data["real_table"]], seed=SEED
    )
    real_table = data["real_table"]
    held_out = compute_set(
        set_fn_names(),
        SetInputs(
            compounds=compounds,
            moas=moas,
            real_compounds=np.array([r["compound"] for r in real_table]),
            real_moas=np.array([r["moa"] for r in real_table]),
            seed=SEED,
            gen_inception=feats.inception,
            real_inception=real_inc,
        ),
    )
    per_image: dict[str, list[float | None]] = {
        f"feature:{name}": _finite_list(seg[:, j]) for j, name in enumerate(scorer.feature_names)
    }
    for j, name in enumerate(scorer.profile_names):  # the morphology profile's columns
        per_image[f"profile:{name}"] = _finite_list(feats.profile[:, j])
    for m, values in rewards.items():
        per_image[m] = _finite_list(values)
    return {
        "schema": SCHEMA,
        "metric_suite_version": SUITE_VERSION,
        "made_by": f"cellbench {__version__} (`cellbench regress --update`)",
        "identity": scorer.identity(),
        "inputs": {
            "images.npy": sha256_bytes((folder / "images.npy").read_bytes()),
            "real.npy": sha256_bytes((folder / "real.npy").read_bytes()),
        },
        "tolerances": TOLERANCES,
        "labels": [r["label"] for r in table],
        "per_image": per_image,
        "means": {m: bootstrap_mean(v, seed=SEED).as_dict() for m, v in rewards.items()},
        "fid_kid": {name: _finite_list([getattr(fid, name)])[0] for name in distance_names()},
        "held_out": {name: r.value for name, r in held_out.items()},
    }


def _finite_list(values: Any) -> list[float | None]:
    """Floats for JSON; NaN and infinities become null (compared as "missing")."""
    return [float(v) if math.isfinite(float(v)) else None for v in np.asarray(values).ravel()]


# ------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Moved:
    """One number outside its tolerance."""

    metric: str
    where: str
    expected: float | None
    got: float | None
    tolerance: float

    def __str__(self) -> str:
        if self.expected is None or self.got is None:
            return f"{self.metric} [{self.where}]: expected {self.expected}, got {self.got}"
        delta = self.got - self.expected
        return (
            f"{self.metric} [{self.where}]: {self.expected:.6g} -> {self.got:.6g} "
            f"(moved {delta:+.3g}, tolerance {self.tolerance:.1g})"
        )


@dataclass
class RegressReport:
    """The outcome of a regression run."""

    ok: bool
    folder: Path
    n_compared: int = 0
    moved: list[Moved] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    updated: bool = False

    def lines(self, limit: int = 40) -> list[str]:
        out = list(self.notes)
        if self.updated:
            out.append(f"wrote {self.folder / 'expected.json'} ({self.n_compared} numbers)")
            return out
        if self.ok:
            out.append(
                f"regress ok: {self.n_compared} numbers within tolerance ({self.seconds:.1f} s)"
            )
            return out
        metrics = sorted({m.metric for m in self.moved})
        out.append(
            f"REGRESSION: {len(self.moved)} of {self.n_compared} numbers moved beyond tolerance "
            f"in {len(metrics)} metric(s): {', '.join(metrics)}"
        )
        out += [f"  {m}" for m in self.moved[:limit]]
        if len(self.moved) > limit:
            out.append(f"  ... and {len(self.moved) - limit} more")
        out.append(BUMP_REMINDER)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "folder": str(self.folder),
            "n_compared": self.n_compared,
            "seconds": round(self.seconds, 2),
            "updated": self.updated,
            "notes": self.notes,
            "moved": [
                {
                    "metric": m.metric,
                    "where": m.where,
                    "expected": m.expected,
                    "got": m.got,
                    "tolerance": m.tolerance,
                }
                for m in self.moved
            ],
        }


def family_tolerance(
    family: str, expected: float, tolerances: dict[str, dict[str, float]] | None = None
) -> float:
    """How far a number of tolerance class ``family`` may move from ``expected``
    (``abs + rel * |expected|`` of :data:`TOLERANCES`, or of ``tolerances``)."""
    t = (TOLERANCES if tolerances is None else tolerances)[family]
    return t["abs"] + t["rel"] * abs(expected)


def _tol(name: str, expected: float, tolerances: dict[str, dict[str, float]]) -> float:
    return family_tolerance(tolerance_family(name), expected, tolerances)


def _close(expected: float | None, got: float | None, tol: float) -> bool:
    if expected is None or got is None:
        return expected is None and got is None
    if math.isnan(expected) or math.isnan(got):
        return math.isnan(expected) and math.isnan(got)
    return abs(got - expected) <= tol


def compare(expected: dict, got: dict) -> tuple[int, list[Moved]]:
    """Compare two scored documents; the tolerances are this cellbench's :data:`TOLERANCES`."""
    moved: list[Moved] = []
    n = 0
    labels = expected.get("labels", [])

    def check(name: str, where: str, e: float | None, g: float | None) -> None:
        nonlocal n
        n += 1
        tol = _tol(name, e if e is not None else 0.0, TOLERANCES)
        if not _close(e, g, tol):
            moved.append(Moved(name, where, e, g, tol))

    for name, values in expected["per_image"].items():
        new = got["per_image"].get(name)
        if new is None or len(new) != len(values):
            moved.append(Moved(name, "per-image values", None, None, 0.0))
            continue
        for i, (e, g) in enumerate(zip(values, new, strict=True)):
            label = labels[i] if i < len(labels) else ""
            check(name, f"image {i} {label}".strip(), e, g)
    for name, est in expected["means"].items():
        new = got["means"].get(name, {})
        check(name, "mean", est.get("value"), new.get("value"))
        for k, side in enumerate(("ci low", "ci high")):
            e_ci, g_ci = est.get("ci") or [None, None], new.get("ci") or [None, None]
            check(name, f"mean {side}", e_ci[k], g_ci[k])
    for name, value in expected["fid_kid"].items():
        check(name, "set", value, got["fid_kid"].get(name))
    for name, value in expected.get("held_out", {}).items():
        check(name, "set", value, got.get("held_out", {}).get(name))
    return n, moved


_NUMBER = {"type": ["number", "null"]}
#: what :func:`run_regress` and :func:`compare` read of ``expected.json`` (:func:`score_set`)
EXPECTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "metric_suite_version", "identity", "per_image", "means", "fid_kid"],
    "properties": {
        "schema": {"const": SCHEMA},
        "metric_suite_version": {"type": "string"},
        "identity": {"type": "object"},
        "labels": {"type": "array", "items": {"type": "string"}},
        "per_image": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": _NUMBER},
        },
        "means": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "value": _NUMBER,
                    "ci": {
                        "type": ["array", "null"],
                        "items": _NUMBER,
                        "minItems": 2,
                        "maxItems": 2,
                    },
                },
            },
        },
        "fid_kid": {"type": "object", "additionalProperties": _NUMBER},
        "held_out": {"type": "object", "additionalProperties": _NUMBER},
    },
}


def read_expected(path: Path) -> dict[str, Any]:
    """The expected scores in ``path``, checked against :data:`EXPECTED_SCHEMA`."""
    from cellbench.io import read_json
    from cellbench.submission.schema import Validator, first_problem

    fix = "restore it from git, or re-make it with `cellbench regress --update`"
    if not path.is_file():
        raise CellbenchError(
            "no expected scores", path=path, fix="run `cellbench regress --update`"
        )
    doc = read_json(path, "expected scores", fix)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise CellbenchError(f"not a {SCHEMA} file", path=path, fix=fix)
    found = Validator(EXPECTED_SCHEMA).problems(doc)
    if found:
        raise CellbenchError(
            f"damaged expected scores ({first_problem(found)})", path=path, fix=fix
        )
    return doc


def run_regress(folder: str | Path, *, update: bool = False) -> RegressReport:
    """Score the set in ``folder``; compare with (or, with ``update``, rewrite) ``expected.json``."""
    folder = Path(folder)
    started = time.perf_counter()
    expected_path = folder / "expected.json"
    expected = None if update else read_expected(expected_path)  # before the scoring: it is quick
    got = score_set(folder)
    report = RegressReport(ok=True, folder=folder)
    if update:
        atomic_write_text(expected_path, json.dumps(got, indent=1, allow_nan=False) + "\n")
        report.updated = True
        report.n_compared = (
            sum(len(v) for v in got["per_image"].values())
            + 3 * len(got["means"])
            + len(got["fid_kid"])
            + len(got["held_out"])
        )
        report.seconds = time.perf_counter() - started
        return report
    assert expected is not None
    new = sorted(set(got["held_out"]) - set(expected.get("held_out", {})))
    if new:
        report.notes.append(
            f"note: {', '.join(new)} not in expected.json (not compared; a metric added since: "
            "`cellbench regress --update`)"
        )
    if expected.get("inputs") != got["inputs"]:
        report.notes.append(
            "note: the committed images differ from the ones the expected scores were made from"
        )
    if expected["metric_suite_version"] != got["metric_suite_version"]:
        report.ok = False
        report.notes.append(
            f"REGRESSION: expected scores are for metric suite {expected['metric_suite_version']}, "
            f"this cellbench is suite {got['metric_suite_version']}: after a deliberate bump, run "
            "`cellbench regress --update` and commit tests/regress/expected.json"
        )
    for key in ("segmenter", "weights", "reference_stats_sha256", "feature_network"):
        if expected["identity"].get(key) != got["identity"].get(key):
            report.notes.append(
                f"note: {key} differs from the one the expected scores were made with "
                f"({json.dumps(expected['identity'].get(key))[:80]} -> "
                f"{json.dumps(got['identity'].get(key))[:80]})"
            )
    report.n_compared, report.moved = compare(expected, got)
    if report.moved:
        report.ok = False
    report.seconds = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------- making the set
DAMAGES: tuple[str, ...] = ("blank", "noise", "channels-reversed", "blur", "saturated", "inverted")


def damage(img: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A deliberately damaged copy of a uint8 crop (deterministic)."""
    from scipy import ndimage

    x = img.astype(np.float64)
    if kind == "blank":
        out = np.zeros_like(x)
    elif kind == "noise":
        out = np.random.default_rng(seed).integers(0, 256, size=img.shape)
    elif kind == "channels-reversed":
        out = x[..., ::-1]
    elif kind == "blur":
        out = ndimage.gaussian_filter(x, sigma=(3.0, 3.0, 0.0))
    elif kind == "saturated":
        out = x * 4.0
    elif kind == "inverted":
        out = 255.0 - x
    else:
        raise ValueError(f"unknown damage {kind!r}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def make_set(data_dir: str | Path, folder: str | Path, *, per_moa: int = 2) -> None:
    """Write ``images.npy/csv`` and ``real.npy/csv`` from the ``bbbc021-sim`` test split.

    For each MoA, the compound with the most treated test crops (ties: alphabetical) gives its
    first ``per_moa`` crops (by sample key) to the scored images and the next ``per_moa`` to the
    real set; the first crop of the first len(DAMAGES) MoAs is then added once more per damage.
    """
    from cellbench.data.bbbc021 import open_dataset

    ds = open_dataset(DATASET, data_dir)
    test = ds.split("test")
    test = test[~test["is_control"]]
    rows_img: list[dict[str, str]] = []
    rows_real: list[dict[str, str]] = []
    for moa in sorted(test["ANNOT"].unique()):
        block = test[test["ANNOT"] == moa]
        counts = block.groupby("CPD_NAME").size()
        best = sorted(counts.index, key=lambda c: (-counts[c], c))[0]
        keys = sorted(block[block["CPD_NAME"] == best]["SAMPLE_KEY"])
        if len(keys) < 2 * per_moa:
            raise CellbenchError(f"compound {best} has only {len(keys)} test crops", path=ds.root)
        for k in keys[:per_moa]:
            rows_img.append({"label": f"{best}:{k}", "source": k, "compound": best, "moa": moa})
        for k in keys[per_moa : 2 * per_moa]:
            rows_real.append({"source": k, "compound": best, "moa": moa})
    images = list(ds.load_crops([r["source"] for r in rows_img]))
    sources = [rows_img[i * per_moa] for i in range(len(DAMAGES))]
    for j, (kind, src) in enumerate(zip(DAMAGES, sources, strict=True)):
        crop = ds.load_crops([src["source"]])[0]
        images.append(damage(crop, kind, seed=j))
        rows_img.append({**src, "label": f"{kind}:{src['source']}"})
    real = ds.load_crops([r["source"] for r in rows_real])
    folder = Path(folder)
    for name, arr in (("images.npy", np.stack(images)), ("real.npy", np.asarray(real))):
        with atomic_path(folder / name, suffix=".npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr.astype(np.uint8), allow_pickle=False)
    for name, rows, cols in (
        ("images.csv", rows_img, list(TABLE_COLUMNS["images.csv"])),
        ("real.csv", rows_real, list(TABLE_COLUMNS["real.csv"])),
    ):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(folder / name, buf.getvalue())
