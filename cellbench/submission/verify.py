"""``cellbench submission verify``: re-score a submission's images and compare every number.

A submission's ``results.json`` is written by its submitter. Verification does not trust it: the
images in the submission's archive (:mod:`cellbench.submission.archive`) are scored again with the
installed toolkit, on the protocol recorded in the results (rebuilt from the dataset and checked
by its sha256) and with the installed artifacts, and the re-computed document is compared with
the submitted one by a walk over the *whole* document (a new metric is covered without a change
here) and over every cell of the per-image table. Only the fields in :data:`VOLATILE` are skipped:
they record how and where the run happened, not what it measured.

Numbers are compared within the tolerance of their metric family
(:data:`cellbench.regress.TOLERANCES`: rounding for the float64 rewards and features, the last
bits of float32 Inception features for the MoA probability and FID/KID), strings, booleans and
keys exactly. Each difference is one line naming the JSON pointer, the submitted and the
computed value. Before scoring, the toolkit's metric suite version, segmenter, classifier,
Inception network, reference statistics and dataset index must be the entry's; otherwise the
entry is *refused*, naming what differs (verify it with the toolkit it was scored by, or re-score
it with ``cellbench leaderboard rescore``). ``docs/leaderboard.md`` describes the trust model.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellbench.errors import CellbenchError
from cellbench.io import sha256_bytes

REPORT_SCHEMA = "cellbench.verify/1"

#: fields of a result document that legitimately differ between two runs on the same images
#: (JSON pointers; a pointer skips its whole subtree). Everything else is compared.
VOLATILE: dict[str, str] = {
    "/git_commit": "the toolkit's git commit",
    "/command": "the command line that ran",
    "/cellbench_version": "the toolkit release (its metric suite and artifacts are compared)",
    "/environment": "host, Python, device and package versions",
    "/wall_time_s": "timing",
    "/merged_from": "the shard files of a merged run",
    "/images/folder": "the folder the images were read from",
    "/protocol/file": "the path of the protocol file",
    "/per_image_sha256": "the per-image table's bytes (its cells are compared one by one)",
}

#: identity fields that must be the toolkit's before anything is re-scored
PINNED = ("segmenter", "weights", "feature_network", "reference_stats_sha256", "artifacts")


@dataclass(frozen=True)
class Difference:
    """One field whose submitted value is not the re-computed one."""

    pointer: str
    submitted: Any
    computed: Any

    def __str__(self) -> str:
        return f"{self.pointer}: submitted {_show(self.submitted)}, computed {_show(self.computed)}"


_ABSENT = object()


def _show(v: Any) -> str:
    return "(absent)" if v is _ABSENT else json.dumps(v)[:120]


@dataclass
class EntryReport:
    """The outcome for one entry: ``verified``, ``failed`` (differences), ``refused`` (toolkit
    differs or the entry cannot be re-scored), ``no-images`` (a current-suite entry without
    images) or ``stale`` (an older suite's entry without images: shown stale, not a failure)."""

    entry: str
    status: str
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    reason: str | None = None
    results_sha256: str | None = None
    per_image_sha256: str | None = None
    images_sha256: str | None = None
    suite: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "reason": self.reason,
            "results_sha256": self.results_sha256,
            "per_image_sha256": self.per_image_sha256,
            "images_sha256": self.images_sha256,
            "metric_suite_version": self.suite,
            "differences": [
                {
                    "pointer": d.pointer,
                    "submitted": None if d.submitted is _ABSENT else d.submitted,
                    "computed": None if d.computed is _ABSENT else d.computed,
                }
                for d in self.differences
            ],
        }


# ------------------------------------------------------------------------------------ comparing
def _family_tolerance(parts: list[str], value: float) -> float:
    """The tolerance of a number at JSON path ``parts`` (its metric's family)."""
    from cellbench.metrics.registry import METRICS
    from cellbench.regress import TOLERANCES, family_tolerance, tolerance_family

    family = "rewards"
    for p in reversed(parts):
        if p.startswith("feat_"):
            family = "features"
            break
        if p in METRICS:  # the metric's class, by the rule `cellbench regress` uses
            family = tolerance_family(p)
            break
        if p.startswith("fid"):
            family = "fid"
            break
        if p.startswith("kid"):
            family = "kid"
            break
    # + 1e-9: two values rounded to 6 decimals from nearly equal numbers differ by 1e-6 at most
    return family_tolerance(family if family in TOLERANCES else "rewards", value) + 1e-9


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def compare_documents(
    submitted: Any, computed: Any, *, skip: dict[str, str] | None = None
) -> list[Difference]:
    """Every difference between two result documents beyond its field's tolerance.

    Walks both documents completely (keys missing on either side are differences); the pointers
    in ``skip`` (default :data:`VOLATILE`) and their subtrees are not compared.
    """
    skip = VOLATILE if skip is None else skip
    out: list[Difference] = []

    def walk(a: Any, b: Any, parts: list[str]) -> None:
        ptr = "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)
        if ptr in skip:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), [*parts, str(k)])
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, [*parts, str(i)])
        elif _is_number(a) and _is_number(b):
            if not (math.isfinite(a) and math.isfinite(b)):
                if a != b:
                    out.append(Difference(ptr, a, b))
            elif abs(a - b) > _family_tolerance(parts, b):
                out.append(Difference(ptr, a, b))
        elif a != b or type(a) is not type(b):
            out.append(Difference(ptr, a, b))

    walk(submitted, computed, [])
    return out


def _cell(text: str) -> float | str:
    try:
        x = float(text)
    except ValueError:
        return text
    return x


def compare_tables(submitted: bytes, computed: bytes, name: str) -> list[Difference]:
    """Every cell of two per-image tables (rows matched by ``task_id`` and ``path``).

    Numbers are compared within their column's tolerance plus the table's 6 significant digits;
    a row or column present on one side only is a difference.
    """

    def rows(data: bytes) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
        table = list(csv.reader(io.StringIO(data.decode("utf-8"))))
        header, body = table[0], table[1:]
        ti, pi = header.index("task_id"), header.index("path")
        return header, {(r[ti], r[pi]): r for r in body}

    out: list[Difference] = []
    try:
        h1, r1 = rows(submitted)
    except (UnicodeDecodeError, csv.Error, ValueError, IndexError) as exc:
        return [Difference(f"{name}", f"unreadable table ({exc})", "a cellbench eval table")]
    h2, r2 = rows(computed)
    if h1 != h2:
        out.append(Difference(f"{name}:header", h1, h2))
        return out
    for key in sorted(set(r1) | set(r2)):
        where = f"{name}:task {key[0]} ({key[1]})"
        if key not in r1 or key not in r2:
            out.append(
                Difference(
                    where, "present" if key in r1 else _ABSENT, "present" if key in r2 else _ABSENT
                )
            )
            continue
        for col, a, b in zip(h1, r1[key], r2[key], strict=True):
            x, y = _cell(a), _cell(b)
            if isinstance(x, float) and isinstance(y, float):
                tol = _family_tolerance([col], y) + 5e-6 * max(abs(x), abs(y))
                if not (x == y or abs(x - y) <= tol):
                    out.append(Difference(f"{where}/{col}", x, y))
            elif a != b:
                out.append(Difference(f"{where}/{col}", a, b))
    return out


# ------------------------------------------------------------------------------------- verifying
def _read_entry(folder: Path) -> tuple[dict, dict, bytes, bytes]:
    """metadata, results, results bytes and per-image table bytes, read within their caps."""
    from cellbench.submission.validate import (
        METADATA_NAME,
        PER_IMAGE_NAME,
        RESULTS_NAME,
        SIZE_CAPS,
        Submission,
        _Reader,
    )

    r = _Reader(Submission(folder=folder, name=folder.name))
    meta = r.read_json(folder / METADATA_NAME, SIZE_CAPS[METADATA_NAME])
    raw = r.read_capped(folder / RESULTS_NAME, SIZE_CAPS[RESULTS_NAME])
    table = r.read_capped(folder / PER_IMAGE_NAME, SIZE_CAPS[PER_IMAGE_NAME])
    # parsed from the bytes whose sha256 the report records: one read, no second look at the file
    doc = r.parse_json(folder / RESULTS_NAME, raw) if raw is not None else None
    if r.sub.problems or not isinstance(meta, dict) or not isinstance(doc, dict) or table is None:
        first = r.sub.problems[0] if r.sub.problems else f"{folder}: not a JSON object"
        raise CellbenchError(str(first), fix=f"run `cellbench submission validate {folder}`")
    assert raw is not None
    return meta, doc, raw, table


def _pinned_differences(doc: dict, ds: Any) -> list[str]:
    """What of the toolkit (suite, dataset index, segmenter, weights, artifacts) is not the entry's."""
    from cellbench.metrics.rewards import SUITE_VERSION
    from cellbench.scoring.artifacts import Artifacts
    from cellbench.scoring.scorer import Scorer

    out = []
    if doc.get("metric_suite_version") != SUITE_VERSION:
        out.append(
            f"metric suite: the entry was scored under suite {doc.get('metric_suite_version')}, "
            f"this toolkit is suite {SUITE_VERSION}"
        )
        return out
    if ds.index_sha256 != doc["dataset"]["index_sha256"]:
        out.append(
            f"dataset index: {ds.name} here is {ds.index_sha256[:12]}..., the entry's "
            f"{doc['dataset']['index_sha256'][:12]}..."
        )
        return out
    scorer = Scorer(
        Artifacts.for_dataset(ds),
        backend=doc["segmenter"]["name"],
        use_inception=bool(doc.get("fid_computed")),
    )
    mine = scorer.identity()
    for key in PINNED:
        if key in doc and json.dumps(mine.get(key), sort_keys=True) != json.dumps(
            doc.get(key), sort_keys=True
        ):
            out.append(
                f"{key}: the toolkit's {_show(mine.get(key))[:60]}, the entry's {_show(doc.get(key))[:60]}"
            )
    return out


def _protocol_table(ds: Any, info: dict) -> Any:
    from cellbench.errors import ProtocolError
    from cellbench.protocol import build_protocol, protocol_sha256
    from cellbench.protocol_registry import PROTOCOLS, build_named_protocol

    if info.get("name") in PROTOCOLS:
        table = build_named_protocol(ds, info["name"], int(info["seed"]))
    elif info.get("split") is not None:
        table = build_protocol(ds, split=info["split"], seed=int(info["seed"]))
    else:
        raise ProtocolError("the entry's protocol cannot be rebuilt (no name or split recorded)")
    if protocol_sha256(table) != info["sha256"]:
        raise ProtocolError(
            f"protocol {info.get('name')} rebuilt here has sha256 {protocol_sha256(table)[:12]}..., "
            f"the entry's is {info['sha256'][:12]}..."
        )
    return table


def rescore_images(
    images: Path,
    doc: dict,
    work: Path,
    *,
    data_dir: str | Path | None,
    check_pinned: bool = True,
) -> tuple[dict, bytes]:
    """Score ``images`` as the entry ``doc`` was scored (its dataset, protocol, seed, segmenter
    and FID setting) with the installed toolkit; the new document and per-image table bytes.

    With ``check_pinned`` the toolkit must have the entry's suite, dataset index and artifacts
    (:class:`CellbenchError` naming what differs otherwise).
    """
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.evaluation import evaluate
    from cellbench.protocol import write_protocol
    from cellbench.results.builder import result_paths

    ds = open_dataset(doc["dataset"]["name"], data_dir, create_sim=True)
    if check_pinned:
        differ = _pinned_differences(doc, ds)
        if differ:
            raise CellbenchError(
                "the installed toolkit differs from the entry's: " + "; ".join(differ),
                fix="verify with the cellbench release the entry was scored with, or re-score "
                "the entry (`cellbench leaderboard rescore`)",
            )
    info = doc["protocol"]
    table = _protocol_table(ds, info)
    kwargs: dict[str, Any] = {}
    if info.get("built"):
        kwargs["protocol_name"] = info["name"]
    else:
        proto_file = work / Path(str(info.get("file") or "protocol.csv")).name
        write_protocol(table, proto_file)
        kwargs["protocol"] = proto_file
    out = work / "results.json"
    new = evaluate(
        images,
        doc["dataset"]["name"],
        data_dir=data_dir,
        seed=int(doc["seed"]),
        backend=doc["segmenter"]["name"],
        fid=bool(doc.get("fid_computed")),
        out=out,
        **kwargs,
    )
    return new, result_paths(out)[1].read_bytes()


def verify_entry(
    folder: str | Path,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> EntryReport:
    """Re-score one submission folder and compare; never raises for a problem of the entry."""
    from cellbench.submission.archive import extract_images

    folder = Path(folder)
    started = time.perf_counter()
    rep = EntryReport(folder.name, "refused")
    try:
        _meta, doc, raw, table = _read_entry(folder)
        rep.results_sha256 = sha256_bytes(raw)
        rep.per_image_sha256 = sha256_bytes(table)
        rep.images_sha256 = (doc.get("images") or {}).get("sha256")
        rep.suite = doc.get("metric_suite_version")
        with extract_images(folder, download=download) as images:
            if images is None:
                from cellbench.metrics.rewards import SUITE_VERSION

                if rep.suite != SUITE_VERSION:  # shown in the stale section, never ranked
                    rep.status = "stale"
                    rep.reason = (
                        f"metric suite {rep.suite} entry without images: cannot be re-scored "
                        "(shown as stale, never ranked)"
                    )
                else:
                    rep.status, rep.reason = "no-images", "the entry carries no image archive"
                return rep
            with tempfile.TemporaryDirectory(prefix="cellbench-verify-") as tmp:
                new, new_table = rescore_images(images, doc, Path(tmp), data_dir=data_dir)
        rep.differences = compare_documents(doc, new) + compare_tables(
            table, new_table, "results.per_image.csv"
        )
        rep.status = "failed" if rep.differences else "verified"
    except CellbenchError as exc:
        rep.status, rep.reason = "refused", str(exc)
    finally:
        rep.seconds = time.perf_counter() - started
    return rep


def shard_entries(folders: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Shard K/N of the entries (sorted by name): positions i with i % N == K - 1."""
    ordered = sorted(folders, key=lambda p: p.name)
    if shard is None:
        return ordered
    k, n = shard
    return ordered[k - 1 :: n]


def verify_paths(
    paths: list[str | Path],
    *,
    data_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    download: bool = True,
    on_entry: Callable[[EntryReport], None] | None = None,
) -> list[EntryReport]:
    """Verify submission folders (a folder of submissions is expanded), one shard of them."""
    from cellbench.submission.validate import is_submission_folder, submission_folders

    folders: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and not p.is_symlink() and not is_submission_folder(p):
            folders.extend(f for f in submission_folders(p) if f.is_dir())
        else:
            folders.append(p)
    out = []
    for f in shard_entries(folders, shard):
        rep = verify_entry(f, data_dir=data_dir, download=download)
        if on_entry is not None:
            on_entry(rep)
        out.append(rep)
    return out


def report_document(reports: list[EntryReport], shard: tuple[int, int] | None) -> dict[str, Any]:
    """The ``--report`` JSON: one record per entry (read by ``leaderboard build --verified``)."""
    from cellbench._version import __version__
    from cellbench.metrics.rewards import SUITE_VERSION

    return {
        "schema": REPORT_SCHEMA,
        "cellbench_version": __version__,
        "metric_suite_version": SUITE_VERSION,
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "entries": {r.entry: r.as_dict() for r in reports},
    }


def read_reports(paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    """The entries of one or more ``--report`` files (shards merged; an entry twice is refused)."""
    from cellbench.io import read_json_object

    merged: dict[str, dict[str, Any]] = {}
    for p in paths:
        doc = read_json_object(
            p,
            "verification report",
            "pass a file written by `cellbench submission verify --report`",
        )
        if doc.get("schema") != REPORT_SCHEMA or not isinstance(doc.get("entries"), dict):
            raise CellbenchError(
                f"is not a verification report (schema {REPORT_SCHEMA})",
                path=p,
                fix="pass a file written by `cellbench submission verify --report`",
            )
        for name, rec in doc["entries"].items():
            if name in merged:
                raise CellbenchError(
                    f"entry {name!r} appears in two reports",
                    path=p,
                    fix="pass each shard's report once",
                )
            merged[name] = rec
    return merged


def is_verified(record: dict[str, Any] | None, results: bytes, table: bytes) -> bool:
    """Whether a report record verifies exactly these results and per-image table bytes."""
    return (
        isinstance(record, dict)
        and record.get("status") == "verified"
        and record.get("results_sha256") == sha256_bytes(results)
        and record.get("per_image_sha256") == sha256_bytes(table)
    )


#: outcomes that do not fail ``cellbench submission verify``
ACCEPTED = ("verified", "stale")


def iter_lines(rep: EntryReport) -> Iterator[str]:
    """The lines ``cellbench submission verify`` prints for one entry."""
    head = f"{rep.entry}: {rep.status} ({rep.seconds:.1f} s)"
    yield head + (f": {rep.reason}" if rep.reason else "")
    for d in rep.differences:
        yield f"{rep.entry}: {d}"
