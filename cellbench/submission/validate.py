"""Checks of a leaderboard submission folder ``submissions/<YYYY-MM-DD>_<model>/``.

A submission holds ``metadata.json`` (schema ``metadata.schema.json``), the ``results.json`` and
``results.per_image.csv`` that ``cellbench eval`` wrote, and optionally a sample grid image and a
``README.md``. :func:`validate_submission` returns one :class:`Problem` per thing wrong; it never
executes anything from the folder and never reads more of a file than its size cap allows.

What is checked:

* layout: folder name, only known regular files (no links, no sub-folders), per-file and folder
  size caps (checked from the file system before any byte is read);
* both JSON files against their published schemas, with strict JSON (no NaN, no duplicate keys);
* the results: made by a supported cellbench version and the current metric suite version, complete
  (no ``--shard`` part, every task of the protocol answered, no image problems), with FID/KID, on a
  dataset version and protocol the leaderboard accepts (``resources/leaderboard/protocols.json``),
  with the classifier, Inception and reference-statistics files that this cellbench ships;
* the numbers: every overall, per-MoA and per-compound mean equals the mean of the per-image
  table within the rounding of the two files, every value lies inside its interval, the image
  hash recomputed from the table equals the one in the results, and the FID/KID details agree
  with the FID/KID values (the overall values, FID_c/KID_c as the means of the per-compound
  values, the image counts);
* the images: ``metadata.json`` names the archive (``images.tar.xz``, or a URL for a large
  real-data set) for results of the current suite; a committed archive has the recorded sha256,
  is extracted within bounds (:mod:`cellbench.submission.archive`) and every row of the
  per-image table decodes from its file to its pixel hash (no re-scoring: that is
  ``cellbench submission verify``);
* against the merged state (a git ref or a folder): an already-merged submission's numbers and
  per-image table are unchanged.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from cellbench._version import __version__
from cellbench.io import loads_json, sha256_bytes
from cellbench.metrics.registry import distance_names, per_image_names, set_fn_metrics
from cellbench.metrics.rewards import SUITE_VERSION
from cellbench.results.document import RESULT_SCHEMA, SCORE_FIELDS
from cellbench.results.schema import result_problems
from cellbench.submission.archive import ARCHIVE_NAME, MAX_COMMITTED_BYTES, images_ref
from cellbench.submission.schema import validate as schema_problems

METADATA_NAME = "metadata.json"
RESULTS_NAME = "results.json"
PER_IMAGE_NAME = "results.per_image.csv"
README_NAME = "README.md"
METADATA_SCHEMA = "cellbench.submission/1"
# the metrics checked (per-image means, FID/KID present) are the registry's
# (cellbench.metrics.registry), read when a submission is checked

KiB, MiB = 1024, 1024 * 1024
#: size caps in bytes, checked with ``lstat`` before a file is opened
SIZE_CAPS: dict[str, int] = {
    METADATA_NAME: 64 * KiB,
    RESULTS_NAME: 4 * MiB,
    PER_IMAGE_NAME: 32 * MiB,
    README_NAME: 64 * KiB,
    ARCHIVE_NAME: MAX_COMMITTED_BYTES,
}
GRID_CAP = 4 * MiB
FOLDER_CAP = 48 * MiB
#: the oldest cellbench whose result files the leaderboard reads (result schema 1 started there)
MIN_RESULT_VERSION = (0, 1, 0)

FOLDER_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})_([A-Za-z0-9][A-Za-z0-9._+-]{0,63})$")
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)")
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission: the file, what is wrong, and a short code."""

    path: str
    message: str
    code: str = "invalid"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Submission:
    """A submission folder as read by :func:`check_submission` (fields None where unreadable)."""

    folder: Path
    name: str
    date: str | None = None
    slug: str | None = None
    metadata: dict | None = None
    results: dict | None = None
    per_image: Path | None = None
    grid: Path | None = None
    #: the per-image table's rows as dicts (column -> text), once read
    rows: list[dict[str, str]] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def suite_version(self) -> str | None:
        return None if self.results is None else self.results.get("metric_suite_version")

    @property
    def is_current(self) -> bool:
        return self.suite_version == SUITE_VERSION


class _Reader:
    """Collects problems for one folder; reads files only within their caps."""

    def __init__(self, sub: Submission):
        self.sub = sub

    def add(self, where: Path | str, message: str, code: str = "invalid") -> None:
        self.sub.problems.append(Problem(str(where), message, code))

    def read_capped(self, path: Path, cap: int) -> bytes | None:
        """The bytes of a regular file of at most ``cap`` bytes; never reads past ``cap``."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            self.add(path, f"cannot be read ({exc.strerror})", "io")
            return None
        if not stat.S_ISREG(st.st_mode):
            self.add(path, "is not a regular file", "layout")
            return None
        if st.st_size > cap:
            self.add(path, f"is {_size(st.st_size)}, over the {_size(cap)} cap", "size")
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            self.add(path, f"cannot be opened ({exc.strerror})", "io")
            return None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(cap + 1)
        if len(data) > cap:
            self.add(path, f"grew past the {_size(cap)} cap while being read", "size")
            return None
        return data

    def read_json(self, path: Path, cap: int) -> Any:
        data = self.read_capped(path, cap)
        return None if data is None else self.parse_json(path, data)

    def parse_json(self, path: Path, data: bytes) -> Any:
        """The JSON document ``data`` read from ``path``; None (with the problem) if it is not."""
        try:
            # depth checked before parsing (no RecursionError); NaN, Infinity, 1e999 refused
            return loads_json(data, object_pairs_hook=_no_duplicates)
        except UnicodeDecodeError:
            self.add(path, "is not UTF-8 text", "json")
        except ValueError as exc:
            self.add(path, f"is not valid JSON ({exc})", "json")
        return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MB" if n >= MiB else f"{n / KiB:.0f} KB" if n >= KiB else f"{n} bytes"


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    m = _VERSION_RE.match(text or "")
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


# ------------------------------------------------------------------------------ reference data
@lru_cache(maxsize=1)
def accepted_protocols() -> tuple[dict, ...]:
    """The dataset versions and protocols the leaderboard accepts (shipped JSON)."""
    ref = resources.files("cellbench") / "resources" / "leaderboard" / "protocols.json"
    return tuple(json.loads(ref.read_text(encoding="utf-8"))["protocols"])


@lru_cache(maxsize=8)
def shipped_artifacts(dataset: str, segmenter: str) -> dict | None:
    """sha256 of the classifier, Inception and reference statistics shipped for ``dataset``."""
    root = Path(str(resources.files("cellbench") / "resources" / dataset))
    card = root / "classifier" / "classifier.json"
    ref = root / f"reference_{segmenter}.json"
    if not card.is_file():
        return None
    doc = json.loads(card.read_text(encoding="utf-8"))
    return {
        "classifier": doc.get("weights_sha256"),
        "inception": doc.get("inception_sha256"),
        "reference_stats": sha256_bytes(ref.read_bytes()) if ref.is_file() else None,
    }


# --------------------------------------------------------------------------------- the checks
def _check_layout(r: _Reader) -> set[str]:
    """Folder name, entries, sizes; returns the names of the regular files present."""
    sub = r.sub
    m = FOLDER_RE.match(sub.name)
    if m is None:
        r.add(
            sub.folder,
            "folder name must be <YYYY-MM-DD>_<model> (model: letters, digits, . _ + -, "
            "at most 64 characters)",
            "naming",
        )
    else:
        try:
            day = dt.date.fromisoformat(m[1])
        except ValueError:
            r.add(sub.folder, f"{m[1]} in the folder name is not a calendar date", "naming")
        else:
            sub.date, sub.slug = m[1], m[2]
            if day > dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1):
                r.add(sub.folder, f"folder date {m[1]} is in the future", "naming")
    files: set[str] = set()
    total = 0
    with os.scandir(sub.folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = sub.folder / entry.name
        if entry.is_symlink():
            r.add(
                path, "is a symbolic link; links are refused (files must lie in the folder)", "path"
            )
        elif entry.is_dir(follow_symlinks=False):
            r.add(path, "sub-folders are not accepted in a submission", "layout")
        elif not entry.is_file(follow_symlinks=False):
            r.add(path, "is not a regular file", "layout")
        else:
            size = entry.stat(follow_symlinks=False).st_size
            total += size
            files.add(entry.name)
    if total > FOLDER_CAP:
        r.add(sub.folder, f"holds {_size(total)}, over the {_size(FOLDER_CAP)} folder cap", "size")
    for name in (METADATA_NAME, RESULTS_NAME, PER_IMAGE_NAME):
        if name not in files:
            r.add(sub.folder / name, "is missing", "missing")
    return files


def _check_metadata(r: _Reader, files: set[str]) -> None:
    sub = r.sub
    path = sub.folder / METADATA_NAME
    if METADATA_NAME not in files:
        return
    doc = r.read_json(path, SIZE_CAPS[METADATA_NAME])
    if doc is None:
        return
    found = schema_problems(doc, "metadata")
    for ptr, msg in found:
        r.add(path, f"{ptr}: {msg}", "schema")
    if not isinstance(doc, dict):
        return
    sub.metadata = doc
    bon = doc.get("best_of_n")
    if (
        isinstance(bon, dict)
        and isinstance(bon.get("n"), int)
        and isinstance(bon.get("used"), bool)
        and bon["used"] != (bon["n"] > 1)
    ):
        r.add(path, "/best_of_n: 'used' must be true exactly when n > 1", "schema")
    grid = doc.get("sample_grid")
    if isinstance(grid, str) and not any(p[0] == "/sample_grid" for p in found):
        gpath = sub.folder / grid
        if grid not in files:
            r.add(path, f"/sample_grid: {grid!r} is not a file of this folder", "path")
        else:
            data = r.read_capped(gpath, GRID_CAP)
            if data is not None:
                if not any(data.startswith(magic) for magic in _IMAGE_MAGIC):
                    r.add(gpath, "is not a PNG or JPEG image", "layout")
                else:
                    sub.grid = gpath
    allowed = {METADATA_NAME, RESULTS_NAME, PER_IMAGE_NAME, README_NAME}
    if isinstance(grid, str):
        allowed.add(grid)
    ref = images_ref(doc)
    if ref is not None and ref.archive == ARCHIVE_NAME:
        allowed.add(ARCHIVE_NAME)
    for name in sorted(files - allowed):
        r.add(
            sub.folder / name,
            "unexpected file (allowed: metadata.json, results.json, results.per_image.csv, "
            "README.md, the sample grid and the images.tar.xz named in metadata.json)",
            "layout",
        )


def _check_results(r: _Reader, files: set[str], *, require_current_suite: bool) -> None:
    sub = r.sub
    path = sub.folder / RESULTS_NAME
    if RESULTS_NAME not in files:
        return
    doc = r.read_json(path, SIZE_CAPS[RESULTS_NAME])
    if doc is None:
        return
    if isinstance(doc, dict) and doc.get("schema") != RESULT_SCHEMA:
        r.add(
            path,
            f"schema is {json.dumps(doc.get('schema'))}, expected {RESULT_SCHEMA!r}: "
            "submit the results.json that `cellbench eval --out results.json` wrote",
            "schema",
        )
        return
    found = result_problems(doc)
    for ptr, msg in found:
        r.add(path, f"{ptr}: {msg}", "schema")
    if found or not isinstance(doc, dict):
        return
    unscored = [k for k in SCORE_FIELDS if k not in doc]
    if unscored:  # the schema allows this for a --shard part only
        shard = (doc.get("partial") or {}).get("shard")
        r.add(
            path,
            f"is a --shard {shard} part: combine all shards with `cellbench eval merge` first"
            if shard
            else f"/: missing required field {unscored[0]!r}",
            "partial" if shard else "schema",
        )
        return
    sub.results = doc

    version = _version_tuple(doc["cellbench_version"])
    current = _version_tuple(__version__)
    if version is None or version < MIN_RESULT_VERSION:
        r.add(
            path,
            f"made by cellbench {doc['cellbench_version']}, older than the oldest supported "
            f"{'.'.join(map(str, MIN_RESULT_VERSION))}: re-score with the current cellbench",
            "version",
        )
    elif current is not None and version > current:
        r.add(
            path,
            f"made by cellbench {doc['cellbench_version']}, newer than this validator "
            f"({__version__}): validate with cellbench >= {doc['cellbench_version']}",
            "version",
        )
    suite = doc["metric_suite_version"]
    if require_current_suite and suite != SUITE_VERSION:
        r.add(
            path,
            f"results are from metric suite version {suite}; the current suite is "
            f"{SUITE_VERSION}: re-score the images with the current cellbench",
            "suite",
        )

    if doc["partial"] is not None:
        shard = doc["partial"].get("shard", "?") if isinstance(doc["partial"], dict) else "?"
        r.add(
            path,
            f"is a --shard {shard} part: combine all shards with `cellbench eval merge` first",
            "partial",
        )
    img, proto = doc["images"], doc["protocol"]
    n_tasks = proto["n_tasks"]
    if (
        img["missing_tasks"]
        or img["n_tasks_covered"] != n_tasks
        or img["n_tasks_expected"] != n_tasks
    ):
        r.add(
            path,
            f"partial result: images answer {img['n_tasks_covered']} of the protocol's "
            f"{n_tasks} tasks; every task needs an image",
            "partial",
        )
    if img["n_problems"]:
        r.add(
            path,
            f"{img['n_problems']} image problem(s) were reported by cellbench eval: fix the images "
            "(`cellbench images check`) and re-score",
            "partial",
        )
    if (
        not doc["complete"]
        and doc["partial"] is None
        and not img["missing_tasks"]
        and not img["n_problems"]
    ):
        r.add(path, "is marked incomplete by cellbench eval", "partial")
    if not doc["fid_computed"] or any(k not in doc["metrics"] for k in distance_names()):
        r.add(path, "has no FID/KID (scored with --no-fid): re-score without --no-fid", "partial")
    elif suite != SUITE_VERSION:
        pass  # an older suite's result (stale) predates the set-level held-out metrics
    elif missing := [s.name for s in set_fn_metrics() if s.name not in doc["metrics"]]:
        r.add(
            path,
            f"has no held-out metric {', '.join(missing)} (scored by an older cellbench): "
            "re-score with this cellbench",
            "partial",
        )
    else:
        for s in set_fn_metrics():
            est = doc["metrics"][s.name]
            if est.get("value") is None and not est.get("absent"):
                r.add(path, f"/metrics/{s.name}/value is null with no reason given", "partial")
            elif "Inception" in str(est.get("absent", "")):
                r.add(
                    path,
                    f"/metrics/{s.name} is absent ({est['absent']}) though FID/KID were computed",
                    "partial",
                )
    if doc.get("overall_comparable") is False:
        r.add(
            path,
            "/overall_comparable is false: overall was summed without moa (scored with "
            "--no-fid) and is never ranked with a full overall; re-score without --no-fid",
            "partial",
        )
    for name in per_image_names():
        est = doc["metrics"][name]
        if est["value"] is None:
            r.add(path, f"/metrics/{name}/value is null (metric not computed)", "partial")
        elif est["n"] != img["n_images"]:
            r.add(
                path,
                f"/metrics/{name}/n is {est['n']} but {img['n_images']} images were scored",
                "partial",
            )

    _check_protocol(r, path, doc)
    _check_artifacts(r, path, doc)


def _protocol_command(p: dict) -> str:
    how = f"--split {p['split']}" if p.get("name", "custom") == "custom" else f"--name {p['name']}"
    return f"`cellbench protocol --dataset {p['dataset']} {how} --seed {p['seed']}`"


def _check_protocol(r: _Reader, path: Path, doc: dict) -> None:
    ds, proto = doc["dataset"], doc["protocol"]
    suite = doc["metric_suite_version"]
    known = [
        p
        for p in accepted_protocols()
        if p["dataset"] == ds["name"] and suite in p.get("suites", [suite])
    ]
    if not known:
        r.add(path, f"dataset {ds['name']!r} has no leaderboard protocol", "protocol")
        return
    same_index = [p for p in known if p["index_sha256"] == ds["index_sha256"]]
    if not same_index:
        made = "; ".join(sorted({p["made_by"] for p in known}))
        r.add(
            path,
            f"dataset {ds['name']} index sha256 {ds['index_sha256'][:12]}... is not the "
            f"leaderboard's version of it (made by: {made})",
            "protocol",
        )
        return
    match = [p for p in same_index if p["protocol_sha256"] == proto["sha256"]]
    if not match:
        names = ", ".join(f"{p.get('name', 'custom')} {_protocol_command(p)}" for p in same_index)
        r.add(
            path,
            f"protocol sha256 {proto['sha256'][:12]}... is none of the leaderboard's "
            f"protocols ({names})",
            "protocol",
        )
        return
    p = match[0]
    if p["n_tasks"] != proto["n_tasks"]:
        r.add(
            path,
            f"/protocol/n_tasks is {proto['n_tasks']}, the leaderboard protocol has "
            f"{p['n_tasks']} tasks",
            "protocol",
        )
    # a result of a cellbench before named protocols records no name: its tasks decide
    if "name" in proto and proto["name"] != p.get("name", "custom"):
        r.add(
            path,
            f"/protocol/name is {proto['name']!r} but its tasks are the leaderboard protocol "
            f"{p.get('name', 'custom')!r}",
            "protocol",
        )


def _check_artifacts(r: _Reader, path: Path, doc: dict) -> None:
    """The artifact set the result was scored with must be a registered one for its dataset
    (:mod:`cellbench.artifacts.registry`: the set shipped for the sim, the published ones)."""
    if doc["metric_suite_version"] != SUITE_VERSION:
        return  # an older suite's artifacts are no longer shipped; the entry is shown as stale
    art = doc.get("artifacts")
    if art is None:
        _check_shipped_hashes(r, path, doc)
        return
    from cellbench.artifacts.manifest import CLASSIFIER_FILES, set_digest
    from cellbench.artifacts.registry import is_registered, published_sets, registered_sets

    files, dataset = art["files"], doc["dataset"]["name"]
    if set_digest(files) != art["sha256"]:
        r.add(path, "/artifacts/sha256 is not the digest of /artifacts/files", "artifact")
        return
    ref_name = f"reference_{doc['segmenter']['name']}.json"
    if (
        files.get(ref_name) != doc["reference_stats_sha256"]
        or files.get(CLASSIFIER_FILES[1]) != doc["weights"]["classifier"]
    ):
        r.add(
            path,
            "/artifacts/files disagree with /reference_stats_sha256 or /weights/classifier",
            "artifact",
        )
        return
    if is_registered(dataset, files):
        return
    published = published_sets(dataset)
    if published:
        e = published[-1]
        fix = (
            f"install the published set (`cellbench artifacts fetch --dataset {dataset} "
            f"--url {e['url']} --sha256 {e['archive_sha256']}`) and re-score"
        )
    elif registered_sets(dataset):
        fix = (
            "score with the artifacts cellbench ships (no locally rebuilt classifier or statistics)"
        )
    else:
        fix = (
            f"no set is published for {dataset} yet: a maintainer registers one "
            '(docs/scoring.md, "Artifacts"), then install it with `cellbench artifacts fetch` '
            "and re-score"
        )
    r.add(
        path,
        f"artifact set {art['sha256'][:12]}... is not a registered set for {dataset}: {fix}",
        "artifact",
    )


def _check_shipped_hashes(r: _Reader, path: Path, doc: dict) -> None:
    """Results without an ``/artifacts`` record: the classifier, Inception and reference hashes
    against the shipped ones; a dataset with nothing shipped must be re-scored."""
    shipped = shipped_artifacts(doc["dataset"]["name"], doc["segmenter"]["name"])
    if shipped is None:
        r.add(
            path,
            "has no /artifacts record: re-score with this cellbench and a registered artifact set",
            "artifact",
        )
        return
    pairs = (
        ("weights/classifier", doc["weights"]["classifier"], shipped["classifier"]),
        ("weights/inception", doc["weights"]["inception"], shipped["inception"]),
        ("reference_stats_sha256", doc["reference_stats_sha256"], shipped["reference_stats"]),
    )
    for where, got, want in pairs:
        if want is None:
            r.add(
                path,
                f"segmenter {doc['segmenter']['name']!r} has no reference statistics shipped "
                f"for {doc['dataset']['name']}: score with the default segmenter",
                "artifact",
            )
            return
        if got != want:
            r.add(
                path,
                f"/{where} is {str(got)[:12]}..., not the shipped {want[:12]}...: score with "
                "the artifacts cellbench ships (no locally retrained classifier or statistics)",
                "artifact",
            )


def _check_best_of_n(r: _Reader) -> None:
    """The metadata's best-of-N must be the N that `cellbench eval` recorded in results.json."""
    meta, res = r.sub.metadata, r.sub.results
    if not isinstance(meta, dict) or not isinstance(res, dict):
        return
    bon = meta.get("best_of_n")
    claimed = bon.get("n") if isinstance(bon, dict) else None
    recorded = res.get("best_of_n", 1)
    if isinstance(claimed, int) and isinstance(recorded, int) and claimed != recorded:
        r.add(
            r.sub.folder / METADATA_NAME,
            f"/best_of_n/n is {claimed} but results.json was scored from best-of-{recorded} "
            f'images; set best_of_n to {{"used": {str(recorded > 1).lower()}, "n": '
            f"{recorded}}}",
            "schema",
        )


def _finite(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def mean_tolerance(values: list[float]) -> float:
    """How far a mean of the per-image table may sit from the results value.

    The table stores 6 significant digits (``%.6g``: error <= 5e-6 |x| per value) and the JSON
    rounds to 6 decimals (error <= 5e-7), so the two means differ by at most
    ``5e-6 * mean(|x|) + 5e-7``; 1e-9 is added for floating-point summation.
    """
    if not values:
        return 0.0
    return 5e-6 * (sum(abs(v) for v in values) / len(values)) + 5e-7 + 1e-9


def _check_per_image(r: _Reader, files: set[str]) -> None:
    sub, doc = r.sub, r.sub.results
    path = sub.folder / PER_IMAGE_NAME
    if PER_IMAGE_NAME not in files or doc is None:
        return
    data = r.read_capped(path, SIZE_CAPS[PER_IMAGE_NAME])
    if data is None:
        return
    sub.per_image = path
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        r.add(path, f"is not a UTF-8 CSV table ({exc})", "table")
        return
    if not rows:
        r.add(path, "is empty", "table")
        return
    header, body = rows[0], rows[1:]
    need = ["task_id", "compound", "pixel_sha256", *per_image_names()]
    missing = [c for c in need if c not in header]
    if missing:
        r.add(path, f"lacks column(s) {', '.join(missing)} written by cellbench eval", "table")
        return
    if any(len(row) != len(header) for row in body):
        bad = next(i for i, row in enumerate(body, start=2) if len(row) != len(header))
        r.add(
            path, f"line {bad} has {len(body[bad - 2])} fields, the header {len(header)}", "table"
        )
        return
    col = {c: header.index(c) for c in need}
    if len(body) != doc["images"]["n_images"]:
        r.add(
            path,
            f"has {len(body)} rows but results.json scored {doc['images']['n_images']} images",
            "numbers",
        )
    lines = sorted(f"{row[col['task_id']]}\t{row[col['pixel_sha256']]}" for row in body)
    if sha256_bytes("\n".join(lines).encode()) != doc["images"]["sha256"]:
        r.add(
            path,
            "task ids and pixel hashes do not give the images sha256 recorded in results.json",
            "numbers",
        )
    sub.rows = [dict(zip(header, row, strict=True)) for row in body]
    by_compound: dict[str, list[list[str]]] = {}
    for row in body:
        by_compound.setdefault(row[col["compound"]], []).append(row)
    by_moa: dict[str, list[list[str]]] = {}
    if "true_moa" in header:
        t = header.index("true_moa")
        for row in body:
            by_moa.setdefault(row[t], []).append(row)
    for metric in per_image_names():
        values = [v for v in (_finite(row[col[metric]]) for row in body) if v is not None]
        if metric == "moa_accuracy" and any(v not in (0.0, 1.0) for v in values):
            r.add(path, "moa_accuracy must be 0 or 1 per image", "numbers")
        _compare_mean(r, path, f"/metrics/{metric}", doc["metrics"][metric], values)
        for compound, crow in sorted(by_compound.items()):
            est = doc["per_compound"].get(compound, {}).get(metric)
            cvals = [v for v in (_finite(x[col[metric]]) for x in crow) if v is not None]
            if est is None:
                r.add(
                    path,
                    f"compound {compound!r} is missing from results.json per_compound",
                    "numbers",
                )
                break
            _compare_mean(r, path, f"/per_compound/{compound}/{metric}", est, cvals)
        for moa, mrows in sorted(by_moa.items()):
            est = (doc.get("per_moa") or {}).get(moa, {}).get(metric)
            mvals = [v for v in (_finite(x[col[metric]]) for x in mrows) if v is not None]
            if est is None:
                r.add(path, f"MoA {moa!r} is missing from results.json per_moa", "numbers")
                break
            _compare_mean(r, path, f"/per_moa/{moa}/{metric}", est, mvals)
    if by_moa:
        extra_moa = sorted(set(doc.get("per_moa") or {}) - set(by_moa))
        if extra_moa:
            r.add(
                path, f"results.json has per_moa entries without images: {extra_moa[:3]}", "numbers"
            )
    extra = sorted(set(doc["per_compound"]) - set(by_compound))
    if extra:
        r.add(path, f"results.json has per_compound entries without images: {extra[:3]}", "numbers")


def _check_pair(r: _Reader, before: int) -> None:
    """results.json and its per-image table are one unit: the table's sha256 must be the
    ``per_image_sha256`` the document records (a document without it, of an older cellbench, is
    not checked). A table of another run beside the document (an interrupted write) can agree with
    every mean; this finds it. Reported only when the table passed the other checks (``before``:
    the number of problems before them), since a table they refuse is refused already."""
    sub, doc = r.sub, r.sub.results
    if sub.per_image is None or doc is None or "per_image_sha256" not in doc:
        return
    if len(sub.problems) > before:
        return
    data = r.read_capped(sub.per_image, SIZE_CAPS[PER_IMAGE_NAME])
    if data is not None and sha256_bytes(data) != doc["per_image_sha256"]:
        r.add(
            sub.per_image,
            f"sha256 {sha256_bytes(data)[:12]}... is not the per_image_sha256 "
            f"{str(doc['per_image_sha256'])[:12]}... recorded in results.json: the table and "
            "the document come from different runs (or an interrupted write)",
            "numbers",
        )


def _compare_mean(r: _Reader, table: Path, where: str, est: dict, values: list[float]) -> None:
    results = r.sub.folder / RESULTS_NAME
    value = est.get("value")
    if value is None:
        return
    if est.get("n") != len(values):
        r.add(
            results,
            f"{where}/n is {est.get('n')} but the per-image table has {len(values)} values",
            "numbers",
        )
        return
    mean = sum(values) / len(values) if values else float("nan")
    tol = mean_tolerance(values)
    if not abs(mean - value) <= tol:
        r.add(
            results,
            f"{where}/value is {value:.6f} but the mean of {table.name} is {mean:.6f} "
            f"(tolerance {tol:.1e}): numbers must be the ones cellbench eval wrote",
            "numbers",
        )
        return
    lo, hi = est.get("ci", [None, None])
    if lo is not None and hi is not None and not (lo - 1e-6 <= value <= hi + 1e-6):
        r.add(results, f"{where}: value {value} lies outside its interval [{lo}, {hi}]", "numbers")


def _close6(stored: Any, raw: Any) -> bool:
    """Whether ``stored`` is ``raw`` rounded to the 6 decimals results keep."""
    if not isinstance(stored, int | float) or not isinstance(raw, int | float):
        return stored is None and raw is None
    return abs(stored - raw) <= 5e-7 + 1e-9 * abs(raw)


def _check_fid_detail(r: _Reader) -> None:
    """FID/KID values against their details: the overall and per-compound values, the means
    that make FID_c and KID_c, the image counts and the compounds (no re-scoring)."""
    doc = r.sub.results
    if doc is None or not isinstance(doc.get("fid_detail"), dict):
        return
    path = r.sub.folder / RESULTS_NAME
    model = doc["fid_detail"].get("model")
    if not isinstance(model, dict):
        return
    metrics, n_images = doc["metrics"], doc["images"]["n_images"]

    def bad(where: str, what: str) -> None:
        r.add(path, f"/fid_detail/model/{where}: {what}", "numbers")

    for name in ("fid_o", "kid_o", "fid_c", "kid_c"):
        est = metrics.get(name) or {}
        if name in model and not _close6(est.get("value"), model[name]):
            bad(name, f"is {model[name]} but /metrics/{name}/value is {est.get('value')}")
        lo, hi = (est.get("ci") or [None, None])[:2]
        v = est.get("value")
        if None not in (lo, hi, v) and not (lo - 1e-6 <= v <= hi + 1e-6):
            r.add(
                path,
                f"/metrics/{name}: value {v} lies outside its interval [{lo}, {hi}]",
                "numbers",
            )
        if "n_gen" in est and est["n_gen"] != n_images:
            r.add(
                path,
                f"/metrics/{name}/n_gen is {est['n_gen']} but {n_images} images were scored",
                "numbers",
            )
    overall = model.get("overall") or {}
    for key, name in (("fid", "fid_o"), ("kid", "kid_o")):
        if key in overall and name in model and overall[key] != model[name]:
            bad(
                f"overall/{key}", f"is {overall[key]} but /fid_detail/model/{name} is {model[name]}"
            )
    if "n_gen" in overall and overall["n_gen"] != n_images:
        bad("overall/n_gen", f"is {overall['n_gen']} but {n_images} images were scored")
    per = model.get("per_compound")
    if not isinstance(per, dict) or not per:
        return
    for key, name in (("fid", "fid_c"), ("kid", "kid_c")):
        vals = [c.get(key) for c in per.values() if isinstance(c, dict)]
        if name in model and all(isinstance(v, int | float) for v in vals):
            mean = sum(vals) / len(vals)
            if abs(mean - model[name]) > 1e-9 * max(1.0, abs(mean)):
                bad(name, f"is {model[name]} but the mean of its per-compound {key} is {mean}")
    # compounds with too few images for a per-compound FID are left out of the details
    counts = {c: v.get("n_gen") for c, v in per.items() if isinstance(v, dict)}
    total = sum(n for n in counts.values() if isinstance(n, int))
    if total > n_images:
        bad("per_compound", f"n_gen sums to {total}, more than the {n_images} images scored")
    unknown = sorted(set(per) - set(doc.get("per_compound") or {}))
    if unknown:
        bad("per_compound", f"names compounds not in /per_compound: {unknown[:3]}")
    for c, n in counts.items():
        want = ((doc.get("per_compound") or {}).get(c, {}).get("overall") or {}).get("n")
        if isinstance(want, int) and n != want:
            bad(f"per_compound/{c}/n_gen", f"is {n} but /per_compound/{c}/overall/n is {want}")
    floor = doc["fid_detail"].get("split_half_floor")
    ref = (doc.get("reference") or {}).get("metrics") or {}
    if isinstance(floor, dict):
        for name in ("fid_o", "kid_o", "fid_c", "kid_c"):
            if name in floor and name in ref and not _close6(ref[name].get("value"), floor[name]):
                r.add(
                    path,
                    f"/reference/metrics/{name}/value is {ref[name].get('value')} but "
                    f"/fid_detail/split_half_floor/{name} is {floor[name]}",
                    "numbers",
                )


def _check_images(r: _Reader, files: set[str], *, required: bool) -> None:
    """The image archive named in metadata.json: present, the recorded sha256 and size,
    extracted within bounds, every per-image row decoding from its file to its pixel hash."""
    import tempfile

    from cellbench.errors import CellbenchError
    from cellbench.io import sha256_file
    from cellbench.submission.archive import SIDE_FILES, extract_archive

    sub = r.sub
    meta_path = sub.folder / METADATA_NAME
    ref = images_ref(sub.metadata)
    if ref is None:
        if required and sub.metadata is not None:
            r.add(
                meta_path,
                "/images is missing: a submission carries the images its results scored "
                "(`cellbench submission pack IMAGES --out images.tar.xz` prints the block)",
                "images",
            )
        return
    if ref.archive is None:
        return  # a URL archive is downloaded and checked by `cellbench submission verify`
    path = sub.folder / ref.archive
    if ref.archive not in files:
        r.add(path, "is missing (named in metadata.json /images/archive)", "images")
        return
    if path.stat().st_size != ref.bytes:
        r.add(
            path,
            f"is {path.stat().st_size} bytes, metadata.json /images/bytes says {ref.bytes}",
            "images",
        )
        return
    if sha256_file(path) != ref.sha256:
        r.add(path, "sha256 differs from metadata.json /images/sha256", "images")
        return
    if sub.rows is None or sub.results is None:
        return
    from cellbench.errors import ImageError
    from cellbench.images import read_image

    with tempfile.TemporaryDirectory(prefix="cellbench-validate-") as tmp:
        try:
            members = set(extract_archive(path, Path(tmp)))
        except CellbenchError as exc:
            r.add(path, exc.message + (f" (fix: {exc.fix})" if exc.fix else ""), "images")
            return
        listed = {row.get("path", "") for row in sub.rows}
        extra = sorted(m for m in members - listed if m not in SIDE_FILES)
        if extra:
            r.add(
                path,
                f"holds {len(extra)} image file(s) the per-image table does not list (first: {extra[0]})",
                "images",
            )
        for row in sub.rows:
            rel = row.get("path", "")
            if rel not in members:
                r.add(
                    path,
                    f"has no file {rel!r} (task {row.get('task_id')} of the per-image table)",
                    "images",
                )
                return
            try:
                arr = read_image(Path(tmp) / rel, allow_constant=True)
            except ImageError as exc:
                r.add(path, f"{rel}: {exc}", "images")
                return
            if sha256_bytes(arr.tobytes()) != row.get("pixel_sha256"):
                r.add(
                    path,
                    f"{rel} decodes to pixels whose sha256 is not the per-image table's "
                    f"pixel_sha256 of task {row.get('task_id')}",
                    "images",
                )
                return


# ------------------------------------------------------------------------ merged submissions
_NUMBER_KEYS = (
    "metrics",
    "per_moa",
    "per_compound",
    "reference",
    "fid_detail",
    "set_detail",
    "images",
)


def numbers_of(doc: dict) -> dict:
    """The parts of a result document that hold its scores (compared for merged submissions)."""
    return {k: doc.get(k) for k in _NUMBER_KEYS}


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60, check=False)


class MergedState:
    """Read-only access to the merged submissions: a git ref (``--base``) or a folder."""

    def __init__(self, *, base: str | None = None, merged_dir: Path | None = None):
        self.base = base
        self.merged_dir = None if merged_dir is None else Path(merged_dir)

    def files(self, folder: Path) -> tuple[dict[str, bytes] | None, str | None]:
        """The merged versions of the folder's results files, or None if never merged.

        Returns ``(files, error)``; ``error`` says why the merged state could not be read.
        """
        names = (RESULTS_NAME, PER_IMAGE_NAME)
        if self.merged_dir is not None:
            old = self.merged_dir / folder.name
            if not old.is_dir():
                return None, None
            return {n: (old / n).read_bytes() for n in names if (old / n).is_file()}, None
        assert self.base is not None
        top = _git(["rev-parse", "--show-toplevel"], folder)
        if top.returncode != 0:
            return None, f"is not inside a git checkout, so --base {self.base} cannot be read"
        root = Path(top.stdout.decode().strip())
        if _git(["rev-parse", "--verify", "--quiet", f"{self.base}^{{commit}}"], root).returncode:
            return None, f"git ref {self.base!r} not found (fetch it, e.g. `git fetch origin main`)"
        rel = folder.resolve().relative_to(root.resolve()).as_posix()
        out: dict[str, bytes] = {}
        for n in names:
            shown = _git(["show", f"{self.base}:{rel}/{n}"], root)
            if shown.returncode == 0:
                out[n] = shown.stdout
        return (out or None), None


def _check_merged(r: _Reader, old: dict[str, bytes], where: str) -> None:
    """Compare the folder's results with their merged versions ``old``.

    An entry re-made under a newer metric suite by ``cellbench leaderboard rescore`` (recorded in
    its metadata's ``rescored``) may change its numbers: ``cellbench submission verify`` re-scores
    its images to check them.
    """
    sub = r.sub
    before = None
    if RESULTS_NAME in old:
        try:
            before = json.loads(old[RESULTS_NAME])
        except ValueError:
            before = None
    rescored = (sub.metadata or {}).get("rescored")
    if (
        isinstance(before, dict)
        and sub.results is not None
        and isinstance(rescored, dict)
        and rescored.get("metric_suite_version") == sub.results.get("metric_suite_version")
        and before.get("metric_suite_version") != sub.results.get("metric_suite_version")
    ):
        return
    if RESULTS_NAME in old and (
        sub.results is None or before is None or numbers_of(before) != numbers_of(sub.results)
    ):
        r.add(
            sub.folder / RESULTS_NAME,
            f"numbers of an already-merged submission changed (compared with {where}): "
            "add a new dated folder instead of editing a merged one",
            "merged",
        )
    if PER_IMAGE_NAME in old:
        path = sub.folder / PER_IMAGE_NAME
        current = path.read_bytes() if sub.per_image is not None else None
        if current != old[PER_IMAGE_NAME]:
            r.add(
                path,
                f"per-image table of an already-merged submission changed (compared with {where})",
                "merged",
            )


# ---------------------------------------------------------------------------------- public API
def check_submission(
    path: str | Path,
    *,
    require_current_suite: bool = True,
    merged: MergedState | None = None,
) -> Submission:
    """Read and check a submission folder; the problems are in ``.problems`` (empty if valid)."""
    folder = Path(path)
    sub = Submission(folder=folder, name=folder.name)
    r = _Reader(sub)
    if folder.is_symlink():
        r.add(folder, "is a symbolic link; submit a real folder", "path")
        return sub
    if not folder.is_dir():
        r.add(
            folder, "is not a folder (a submission is submissions/<YYYY-MM-DD>_<model>/)", "missing"
        )
        return sub
    old: dict[str, bytes] | None = None
    if merged is not None:
        old, error = merged.files(folder)
        if error is not None:
            r.add(folder, error, "merged")
    files = _check_layout(r)
    _check_metadata(r, files)
    # an already-merged entry was accepted under its suite: it may be stale, never edited
    strict_suite = require_current_suite and old is None
    _check_results(r, files, require_current_suite=strict_suite)
    before = len(sub.problems)
    _check_per_image(r, files)
    _check_pair(r, before)
    _check_fid_detail(r)
    _check_images(r, files, required=sub.is_current and old is None)
    _check_best_of_n(r)
    if old is not None and merged is not None:
        _check_merged(r, old, merged.base or str(merged.merged_dir))
    return sub


def validate_submission(
    path: str | Path,
    *,
    base: str | None = None,
    merged_dir: str | Path | None = None,
    require_current_suite: bool = True,
) -> list[Problem]:
    """Every problem of the submission folder ``path`` (an empty list when it is valid).

    Args:
        path: ``submissions/<YYYY-MM-DD>_<model>/``.
        base: a git ref holding the merged submissions (e.g. ``origin/main``): a folder that
            exists there must keep its numbers.
        merged_dir: without git, a folder holding the merged submissions, compared the same way.
        require_current_suite: refuse results of an older metric suite version; ``False``
            accepts them (shown as stale on the leaderboard). An already-merged folder (found at
            ``base`` or in ``merged_dir``) may always be stale, but its numbers must not change.
    """
    merged = (
        MergedState(base=base, merged_dir=None if merged_dir is None else Path(merged_dir))
        if base is not None or merged_dir is not None
        else None
    )
    return check_submission(
        path, require_current_suite=require_current_suite, merged=merged
    ).problems


def submission_folders(root: str | Path) -> list[Path]:
    """The entries of a submissions folder that should be submissions (sorted).

    Everything except ``README.md`` and the ``schemas/`` copy counts, so a misnamed folder or a
    stray file is reported rather than skipped.
    """
    root = Path(root)
    skip = {"README.md", "schemas"}
    return sorted(p for p in root.iterdir() if p.name not in skip and not p.name.startswith("."))


def removed_submissions(root: str | Path, base: str) -> list[Problem]:
    """Merged submission folders (at git ref ``base``) that no longer exist under ``root``."""
    root = Path(root)
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top.returncode != 0:
        return [
            Problem(
                str(root),
                f"is not inside a git checkout, so --base {base} cannot be read",
                "merged",
            )
        ]
    repo = Path(top.stdout.decode().strip())
    rel = root.resolve().relative_to(repo.resolve()).as_posix()
    listed = _git(["ls-tree", "--name-only", f"{base}:{rel}"], repo)
    if listed.returncode != 0:
        return []  # no submissions folder at the base: nothing was merged
    out = []
    for name in listed.stdout.decode().split("\n"):
        if FOLDER_RE.match(name) and not (root / name).exists():
            out.append(
                Problem(
                    str(root / name), f"merged submission was removed (present at {base})", "merged"
                )
            )
    return out


def is_submission_folder(path: Path) -> bool:
    """Whether ``path`` looks like one submission (rather than a folder of submissions)."""
    return bool(FOLDER_RE.match(path.name)) or any(
        (path / n).exists() for n in (METADATA_NAME, RESULTS_NAME)
    )


def validate_paths(
    paths: list[str | Path],
    *,
    base: str | None = None,
    merged_dir: str | Path | None = None,
    allow_stale: bool = False,
) -> dict[str, list[Problem]]:
    """Validate submission folders; a folder of submissions is expanded to its entries.

    With ``base`` and a folder of submissions, merged entries that were removed are reported too.
    Returns the problems per submission folder (in order; empty lists for valid ones).
    """
    merged = (
        MergedState(base=base, merged_dir=None if merged_dir is None else Path(merged_dir))
        if base is not None or merged_dir is not None
        else None
    )
    out: dict[str, list[Problem]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not path.is_symlink() and not is_submission_folder(path):
            folders = submission_folders(path)
            if base is not None:
                gone = removed_submissions(path, base)
                if gone:
                    out[str(path)] = gone
        else:
            folders = [path]
        for folder in folders:
            sub = check_submission(folder, require_current_suite=not allow_stale, merged=merged)
            out[str(folder)] = sub.problems
    return out
