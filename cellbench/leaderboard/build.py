"""Build the static leaderboard site from the committed submissions.

``cellbench leaderboard build --submissions submissions --out site`` writes:

* ``index.html``: one table per dataset, metric suite version, segmenter and protocol, with the
  real reference row pinned on top; stale entries (older suite versions) in their own unranked
  tables; the overall-reward-vs-FID_o plot (inline SVG); the papers' reported figures in separate,
  labelled tables;
* ``downloads/<table id>.csv`` and ``.json``: each table's values exactly as in the entries'
  ``results.json`` (stable column names, :func:`download_fields`), linked above the table;
* ``entries/<folder>.html``: a page per submission (metadata, links, per-MoA and per-compound
  breakdowns, the control | generated | real target grid when ``--data-dir`` is given and the
  entry has images, sample grid, provenance), with copies of its files in ``entries/<folder>/``.

``index.html`` also carries the metric legend (from the metric registry), search and filters
(kind, best-of-N, verification) and column groups that collapse (``board.js``).

Everything is inline or in the site folder (CSS, JS, SVG, PNG): the page opens from disk without a server or network. The
output is deterministic: the same submissions give the same bytes, except the one build-stamp line
of ``index.html`` (fixed with ``--stamp`` or ``SOURCE_DATE_EPOCH``). The site is built in a
temporary folder beside ``--out`` and moved into place only when complete.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cellbench._version import __version__
from cellbench.errors import CellbenchError
from cellbench.io import atomic_write_text, is_within
from cellbench.metrics.registry import GROUP_NOTE
from cellbench.metrics.rewards import SUITE_VERSION
from cellbench.protocol_registry import CUSTOM, PROTOCOLS, protocol_spec_of
from cellbench.submission.validate import (
    METADATA_NAME,
    PER_IMAGE_NAME,
    RESULTS_NAME,
    Submission,
    check_submission,
    submission_folders,
)

REPO_URL = "https://github.com/cellbench/cellbench"
VALIDATION_DOC = f"{REPO_URL}/blob/main/docs/validation.md"
MARKER = ".cellbench-leaderboard"
#: the page's scripts (inlined, allowed by their hashes): sorting, then search/filters/collapse
SCRIPTS: tuple[str, ...] = ("sort.js", "board.js")


#: the columns a collapsed group still shows (the ranking metric, the classifier's accuracy and
#: the scatter's FID_o); a collapsed group with none of them shows its first column
SUMMARY_METRICS: tuple[str, ...] = ("overall", "moa_accuracy", "fid_o")
#: groups collapsed when the page opens, so that the table fits a 1,366-px screen
COLLAPSED_GROUPS: tuple[str, ...] = ("held-out",)
#: where the project's docs define the metrics of each registry family (docs/scoring.md sections)
SCORING_DOC = f"{REPO_URL}/blob/main/docs/scoring.md"
DOC_SECTIONS: dict[str, str] = {
    "fidelity": "#held-out-metrics",
    "diversity": "#held-out-metrics",
    "retrieval": "#held-out-metrics",
    "memorisation": "#held-out-metrics",
    "profile": "#morphology-profile",
}


@dataclass(frozen=True)
class Column:
    """A metric column of the verified tables."""

    key: str
    label: str
    higher_is_better: bool
    digits: int
    interval: bool = True
    group: str = "rewards"
    #: shown while its group is collapsed
    pinned: bool = False


def columns() -> tuple[Column, ...]:
    """One column per registered metric (:mod:`cellbench.metrics.registry`) by group (rewards,
    then held-out metrics), the ranking metric first and the others in registry order; per-image
    metrics carry an interval."""
    from cellbench.metrics.registry import GROUPS, RANK_METRIC, specs

    ordered = sorted(  # stable: registry order within a group
        specs(), key=lambda s: (GROUPS.index(s.group), s.name != RANK_METRIC)
    )
    pinned = {s.name for s in ordered if s.name in SUMMARY_METRICS}
    for group in GROUPS:  # a group without a summary metric keeps its first column
        first = next((s.name for s in ordered if s.group == group), None)
        if first and not any(s.group == group and s.name in pinned for s in ordered):
            pinned.add(first)
    return tuple(
        Column(
            s.name, s.label, s.higher_is_better, s.digits, s.per_image, s.group, s.name in pinned
        )
        for s in ordered
    )


def legend() -> list[dict]:
    """One entry per metric column (the registry is the single source): key, label, direction,
    group, what it measures, what it needs, and the link to its definition in the docs."""
    from cellbench.metrics.registry import GROUP_LABELS, spec

    out = []
    for c in columns():
        s = spec(c.key)
        out.append(
            {
                "key": c.key,
                "label": c.label,
                "arrow": s.arrow,
                "direction": "higher is better" if s.higher_is_better else "lower is better",
                "group": GROUP_LABELS[s.group],
                "summary": s.summary,
                "needs": s.needs,
                "interval": "95% bootstrap interval" if c.interval else "set-level",
                "href": SCORING_DOC + DOC_SECTIONS.get(s.family, ""),
            }
        )
    return out


def column_groups(cols: tuple[Column, ...] | None = None) -> list[dict]:
    """The group heading cells above ``cols`` (default: :func:`columns`): label and span."""
    from cellbench.metrics.registry import GROUP_LABELS

    out: list[dict] = []
    for c in columns() if cols is None else cols:
        if out and out[-1]["group"] == c.group:
            out[-1]["span"] += 1
        else:
            out.append({"group": c.group, "label": GROUP_LABELS[c.group], "span": 1})
    return out


def breakdown_columns() -> tuple[Column, ...]:
    """The columns of the per-MoA and per-compound tables (per-image metrics only)."""
    return tuple(c for c in columns() if c.interval)


# ------------------------------------------------------------------------------- formatting
def fmt(value: float | None, digits: int) -> str:
    """A number for display (``–`` when missing); ``-0.00`` is shown as ``0.00``."""
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def sort_key(value: float | None) -> str:
    """The ``data-sort`` attribute: full precision, empty when missing (sorted last)."""
    return "" if value is None or not math.isfinite(value) else repr(float(value))


@dataclass
class Cell:
    """One metric of one row, ready for the template."""

    text: str
    sort: str
    interval: str = ""
    title: str = ""


def overall_comparable(doc: dict) -> bool:
    """False for a result whose ``overall`` lacks ``moa`` (scored with ``--no-fid``)."""
    if "overall_comparable" in doc:
        return bool(doc["overall_comparable"])
    return bool(doc.get("fid_computed", True))  # results written before the flag


def metric_cell(doc: dict, col: Column) -> Cell:
    est = doc.get("metrics", {}).get(col.key) or {}
    value = est.get("value")
    if col.key == "overall" and not overall_comparable(doc):
        parts = " + ".join(doc.get("overall_components") or ())
        return Cell(
            fmt(value, col.digits),
            sort_key(None),
            "not comparable: no moa (--no-fid)",
            f"overall = {parts}; not ranked",
        )
    if col.interval:
        lo, hi = (est.get("ci") or [None, None])[:2]
        interval = (
            "" if lo is None or hi is None else f"[{fmt(lo, col.digits)}, {fmt(hi, col.digits)}]"
        )
        return Cell(fmt(value, col.digits), sort_key(value), interval, f"n = {est.get('n', '?')}")
    title = f"n_gen = {est.get('n_gen', '?')}, n_real = {est.get('n_real', '?')}"
    if est.get("absent"):
        return Cell("–", "", "", est["absent"])
    lo, hi = (est.get("ci") or [None, None])[:2]
    if lo is not None and hi is not None:  # FID_o, KID_o: over resampled generated images
        title += f"; 95% interval over {est.get('n_boot', '?')} resamples of the generated images"
        return Cell(
            fmt(value, col.digits),
            sort_key(value),
            f"[{fmt(lo, col.digits)}, {fmt(hi, col.digits)}]",
            title,
        )
    small = est.get("small_n") or {}
    if small.get("warning"):  # FID_c over compounds with few images
        return Cell(
            fmt(value, col.digits),
            sort_key(value),
            f"⚠ {small['below']}/{small['compounds']} compounds n < {small['threshold']}",
            f"{title}; {small['warning']}",
        )
    interval = ""
    if col.key == "kid_o":
        std = ((doc.get("fid_detail") or {}).get("model") or {}).get("overall", {}).get("kid_std")
        if std is not None:
            interval = f"± {fmt(std, col.digits)} sd"
    return Cell(fmt(value, col.digits), sort_key(value), interval, title)


def reference_cells(doc: dict) -> list[Cell]:
    ref = doc.get("reference", {}).get("metrics", {})
    cells = []
    for col in columns():
        est = ref.get(col.key) or {}
        value = est.get("value")
        lo, hi = (est.get("ci") or [None, None])[:2]
        interval = (
            f"[{fmt(lo, col.digits)}, {fmt(hi, col.digits)}]"
            if col.interval and lo is not None and hi is not None
            else ("split half" if not col.interval else "")
        )
        cells.append(Cell(fmt(value, col.digits), sort_key(value), interval))
    return cells


# ------------------------------------------------------------------------------------ model
#: the two verification states of a row
VERIFIED, SELF_REPORTED = "verified", "self-reported"


@dataclass
class Row:
    sub: Submission
    rank: int | None = None
    #: ``verified`` when a verification report (``cellbench submission verify --report``) re-scored
    #: exactly these results from the entry's images; ``self-reported`` otherwise (never ranked)
    verification: str = SELF_REPORTED

    @property
    def folder(self) -> str:
        return self.sub.name

    @property
    def meta(self) -> dict:
        return self.sub.metadata or {}

    @property
    def doc(self) -> dict:
        return self.sub.results or {}

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model", {}).get("name", self.folder))

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "model"))

    @property
    def description(self) -> str:
        return str(self.meta.get("description") or "")

    @property
    def best_of_n(self) -> int:
        """N of best-of-N selection (1: one sample per task)."""
        bon = self.meta.get("best_of_n") or {}
        n = bon.get("n", 1) if bon.get("used") else 1
        return n if isinstance(n, int) and n >= 1 else 1

    @property
    def search_text(self) -> str:
        """What the page's search box matches: name, folder and description."""
        return " ".join((self.model_name, self.folder, self.description))

    @property
    def copy_flags(self) -> list[str]:
        """The memorisation flags of the result ("copies training images", "copies its
        input"; :mod:`cellbench.metrics.memorisation`), empty when none."""
        detail = ((self.doc.get("set_detail") or {}).get("memorisation")) or {}
        flags = detail.get("flags") or []
        return [str(f) for f in flags if isinstance(f, str)]

    def value(self, key: str) -> float | None:
        v = (self.doc.get("metrics", {}).get(key) or {}).get("value")
        return v if isinstance(v, int | float) and math.isfinite(v) else None

    def cells(self) -> list[Cell]:
        return [metric_cell(self.doc, c) for c in columns()]


@dataclass
class Table:
    dataset: str
    simulated: bool
    suite: str
    segmenter: str
    protocol_sha256: str
    n_tasks: int
    dataset_version: str = ""
    protocol_name: str = CUSTOM
    protocol_version: str = ""
    #: digest of the artifact set the rows were scored with (None: results older than the record)
    artifacts_sha256: str | None = None
    rows: list[Row] = field(default_factory=list)
    #: the rows' verification: a current suite's verified and self-reported rows are two tables
    verification: str = VERIFIED

    @property
    def protocol_label(self) -> str:
        """The protocol as the page names it (the papers' one says so)."""
        spec = protocol_spec_of({"name": self.protocol_name})
        if spec is None:
            return f"{self.protocol_name} protocol"
        label = f"protocol {spec.name} v{self.protocol_version}"
        return label + (" (the papers' protocol)" if spec.papers else "")

    @property
    def current(self) -> bool:
        return self.suite == SUITE_VERSION

    @property
    def ranked(self) -> bool:
        """Only verified rows of the current suite are ranked."""
        return self.current and self.verification == VERIFIED

    @property
    def anchor_id(self) -> str:
        state = "stale" if not self.current else "current" if self.ranked else "unverified"
        art = "" if self.artifacts_sha256 is None else f"-a{self.artifacts_sha256[:8]}"
        raw = (
            f"{state}-{self.dataset}-suite{self.suite}-{self.segmenter}-{self.protocol_name}-"
            f"{self.protocol_sha256[:8]}{art}"
        )
        # an HTML id and a file name (downloads): no spaces or markup characters
        return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in raw)

    @property
    def reference_doc(self) -> dict:
        return self.rows[0].doc


def _table_key(sub: Submission, verification: str = VERIFIED) -> tuple:
    """One table per dataset version, metric suite, segmenter, protocol (name, version and the
    sha256 of its tasks; a result without a protocol name is ``custom``), artifact set and, in the
    current suite, verification (verified rows apart from self-reported ones)."""
    doc = sub.results or {}
    proto = doc["protocol"]
    current = doc["metric_suite_version"] == SUITE_VERSION
    return (
        doc["dataset"]["name"],
        doc["metric_suite_version"],
        doc["segmenter"]["name"],
        proto["sha256"],
        doc["dataset"].get("version", ""),
        proto.get("name", CUSTOM),
        proto.get("version", ""),
        # ranked together only when scored with the same reference statistics and classifier
        (doc.get("artifacts") or {}).get("sha256"),
        verification if current else "",
    )


def verification_of(sub: Submission, records: dict[str, dict]) -> str:
    """``verified`` when ``records`` (merged verification reports) verify this entry's exact
    results and per-image table bytes; ``self-reported`` otherwise."""
    from cellbench.submission.verify import is_verified

    if sub.results is None or sub.name not in records:
        return SELF_REPORTED
    try:
        results = (sub.folder / RESULTS_NAME).read_bytes()
        table = (sub.folder / PER_IMAGE_NAME).read_bytes()
    except OSError:
        return SELF_REPORTED
    return VERIFIED if is_verified(records[sub.name], results, table) else SELF_REPORTED


def _rank(rows: list[Row]) -> None:
    """Order rows by overall reward (best first, missing last); rank models only (1, 2, 2, 4).

    A row whose ``overall`` lacks ``moa`` (``--no-fid``; the validator refuses these, so only a
    hand-made folder gets here) is placed last and never ranked.
    """
    rows.sort(
        key=lambda r: (
            not overall_comparable(r.doc),
            r.value("overall") is None,
            -(r.value("overall") or 0.0),
            r.folder,
        )
    )
    rank, seen, last = 0, 0, None
    for row in rows:
        if row.kind != "model" or not overall_comparable(row.doc):
            continue
        seen += 1
        v = row.value("overall")
        if v != last:
            rank, last = seen, v
        row.rank = rank


def group_tables(subs: list[Submission], verified: dict[str, dict] | None = None) -> list[Table]:
    """Tables sorted: current suite first (verified before self-reported), then dataset, newer
    suite, segmenter, protocol. ``verified``: the merged verification report records by entry
    (:func:`cellbench.submission.verify.read_reports`); without it no row is verified."""
    groups: dict[tuple, Table] = {}
    for sub in subs:
        how = verification_of(sub, verified or {})
        key = _table_key(sub, how)
        doc = sub.results or {}
        table = groups.get(key)
        if table is None:
            table = groups[key] = Table(
                dataset=key[0],
                simulated=bool(doc["dataset"].get("simulated")),
                suite=key[1],
                segmenter=f"{doc['segmenter']['name']} v{doc['segmenter']['version']}",
                protocol_sha256=key[3],
                n_tasks=int(doc["protocol"]["n_tasks"]),
                dataset_version=key[4],
                protocol_name=key[5],
                protocol_version=key[6],
                artifacts_sha256=key[7],
                verification=how if key[8] else VERIFIED,
            )
        table.rows.append(Row(sub, verification=how))
    tables = list(groups.values())
    for t in tables:
        t.rows.sort(key=lambda r: r.folder)
        first = json.dumps(t.rows[0].doc.get("reference", {}).get("metrics"), sort_keys=True)
        for row in t.rows[1:]:
            if json.dumps(row.doc.get("reference", {}).get("metrics"), sort_keys=True) != first:
                raise CellbenchError(
                    f"real reference row differs from {t.rows[0].folder}'s although the dataset, "
                    "suite, segmenter, protocol and artifacts are the same",
                    path=row.sub.folder / RESULTS_NAME,
                    fix="re-score both with the same cellbench release",
                )
        if t.ranked:
            _rank(t.rows)
        else:
            t.rows.sort(
                key=lambda r: (r.value("overall") is None, -(r.value("overall") or 0.0), r.folder)
            )
    tables.sort(
        key=lambda t: (
            not t.current,
            not t.ranked,
            t.dataset,
            -_suite_order(t.suite),
            t.segmenter,
            _protocol_order(t.protocol_name),
            t.protocol_sha256,
            t.artifacts_sha256 or "",
        )
    )
    return tables


def _protocol_order(name: str) -> int:
    """Registered protocols in registry order (the default first), custom ones last."""
    names = PROTOCOLS.names()
    return names.index(name) if name in names else len(names)


def _suite_order(suite: str) -> float:
    try:
        return float(suite)
    except ValueError:
        return -1.0


# -------------------------------------------------------------------------------- downloads
#: the columns of a downloaded table before the metrics (stable names)
ENTRY_FIELDS: tuple[str, ...] = (
    "rank",
    "folder",
    "model",
    "kind",
    "verification",
    "best_of_n",
    "date",
)


def download_fields() -> list[str]:
    """The column names of the CSV/JSON downloads: :data:`ENTRY_FIELDS`, then for every metric
    (registry order, as the page) ``<key>``, ``<key>_ci_low`` and ``<key>_ci_high``."""
    out = list(ENTRY_FIELDS)
    for c in columns():
        out += [c.key, f"{c.key}_ci_low", f"{c.key}_ci_high"]
    return out


def _metric_values(metrics: dict) -> dict[str, Any]:
    """The values of the metric fields, exactly as in ``results.json`` (None where absent)."""
    out: dict[str, Any] = {}
    for c in columns():
        est = metrics.get(c.key) or {}
        ci = est.get("ci") if isinstance(est.get("ci"), list) else [None, None]
        for name, v in ((c.key, est.get("value")), (f"{c.key}_ci_low", ci[0] if ci else None)):
            out[name] = v if isinstance(v, int | float) and not isinstance(v, bool) else None
        hi = ci[1] if ci and len(ci) > 1 else None
        out[f"{c.key}_ci_high"] = (
            hi if isinstance(hi, int | float) and not isinstance(hi, bool) else None
        )
    return out


def table_records(table: Table) -> list[dict[str, Any]]:
    """The rows of one table for the downloads: the real reference first (``kind`` =
    ``reference``), then the entries in page order; keys are :func:`download_fields`."""
    ref = {
        "rank": None,
        "folder": None,
        "model": "real reference",
        "kind": "reference",
        "verification": None,
        "best_of_n": None,
        "date": None,
        **_metric_values(table.reference_doc.get("reference", {}).get("metrics", {})),
    }
    rows = [ref]
    for row in table.rows:
        rows.append(
            {
                "rank": row.rank,
                "folder": row.folder,
                "model": row.model_name,
                "kind": row.kind,
                "verification": row.verification,
                "best_of_n": row.best_of_n,
                "date": row.sub.date,
                **_metric_values(row.doc.get("metrics", {})),
            }
        )
    return rows


def download_stem(table: Table) -> str:
    """The file name (without suffix) of a table's downloads: its anchor (file-name safe)."""
    return table.anchor_id


#: the first characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> str:
    """A number as its JSON text (the same digits as ``results.json``), empty when missing; text
    that a spreadsheet would run as a formula gets a leading ``'`` (OWASP's advice)."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_downloads(table: Table, folder: Path) -> dict[str, str]:
    """Write ``<stem>.csv`` and ``<stem>.json`` of ``table`` into ``folder``; return their names
    relative to the site root (``downloads/...``)."""
    import csv
    import io

    stem = download_stem(table)
    fields = download_fields()
    records = table_records(table)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for rec in records:
        writer.writerow([_csv_cell(rec[f]) for f in fields])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{stem}.csv", buf.getvalue())
    doc = {
        "schema": "cellbench.leaderboard-table/1",
        "table": {
            "id": table.anchor_id,
            "dataset": table.dataset,
            "dataset_version": table.dataset_version,
            "simulated": table.simulated,
            "metric_suite_version": table.suite,
            "current": table.current,
            "segmenter": table.segmenter,
            "protocol": {
                "name": table.protocol_name,
                "version": table.protocol_version,
                "sha256": table.protocol_sha256,
                "n_tasks": table.n_tasks,
            },
            "artifacts_sha256": table.artifacts_sha256,
        },
        "columns": fields,
        "rows": records,
    }
    atomic_write_text(folder / f"{stem}.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return {"csv": f"downloads/{stem}.csv", "json": f"downloads/{stem}.json"}


# ------------------------------------------------------------------------------------- plot
def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    x = start
    while x <= hi + step * 1e-9:
        ticks.append(round(x, 10))
        x += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _ci(est: dict) -> tuple[float, float] | None:
    lo, hi = ((est or {}).get("ci") or [None, None])[:2]
    ok = all(isinstance(v, int | float) and math.isfinite(v) for v in (lo, hi))
    return (float(lo), float(hi)) if ok else None


def trade_off_plot(table: Table) -> dict | None:
    """The overall-reward-vs-FID_o scatter of one table (None without points).

    Each point carries its 95% intervals on both axes where ``results.json`` has them (FID_o over
    resampled generated images, overall the bootstrap of the mean) as bars, and a number placed so
    that no two labels overlap (:mod:`cellbench.leaderboard.labels`); the key below the plot maps
    each number to its entry. The real reference is ``R``.
    """
    from cellbench.leaderboard.labels import place_labels

    points = []
    for row in table.rows:
        x, y = row.value("fid_o"), row.value("overall")
        if x is not None and y is not None:
            metrics = row.doc.get("metrics", {})
            points.append(
                {
                    "x": x,
                    "y": y,
                    "xci": _ci(metrics.get("fid_o")),
                    "yci": _ci(metrics.get("overall")),
                    "name": row.model_name,
                    "kind": row.kind,
                    "folder": row.folder,
                    "href": f"entries/{row.folder}.html",
                }
            )
    if not points:
        return None
    for i, p in enumerate(points, start=1):
        p["label"] = str(i)
    ref = table.reference_doc.get("reference", {}).get("metrics", {})
    rx, ry = (ref.get("fid_o") or {}).get("value"), (ref.get("overall") or {}).get("value")
    if rx is not None and ry is not None:
        points.append(
            {
                "x": rx,
                "y": ry,
                "xci": _ci(ref.get("fid_o")),
                "yci": _ci(ref.get("overall")),
                "name": "real reference (split half)",
                "kind": "reference",
                "folder": "",
                "href": "",
                "label": "R",
            }
        )
    w, h, left, right, top, bottom = 640, 360, 64, 24, 16, 48
    xs = [v for p in points for v in (p["x"], *(p["xci"] or ()))]
    ys = [v for p in points for v in (p["y"], *(p["yci"] or ()))]
    xt = _nice_ticks(min(0.0, min(xs)), max(xs) * 1.05 + 1e-9)
    yt = _nice_ticks(
        min(ys) - 0.05 * (max(ys) - min(ys) + 1), max(ys) + 0.05 * (max(ys) - min(ys) + 1)
    )

    def px(v: float) -> float:
        return round(left + (v - xt[0]) / (xt[-1] - xt[0]) * (w - left - right), 2)

    def py(v: float) -> float:
        return round(h - bottom - (v - yt[0]) / (yt[-1] - yt[0]) * (h - top - bottom), 2)

    for p in points:
        p["cx"], p["cy"] = px(p["x"]), py(p["y"])
        p["xbar"] = None if p["xci"] is None else (px(p["xci"][0]), px(p["xci"][1]))
        p["ybar"] = None if p["yci"] is None else (py(p["yci"][0]), py(p["yci"][1]))

        def ci_text(ci: tuple[float, float] | None) -> str:
            return "" if ci is None else f" [{fmt(ci[0], 2)}, {fmt(ci[1], 2)}]"

        p["overall_text"] = fmt(p["y"], 2) + ci_text(p["yci"])
        p["fid_text"] = fmt(p["x"], 2) + ci_text(p["xci"])
        p["title"] = (
            f"{p['label']}: {p['name']}: overall {p['overall_text']}, FID_o {p['fid_text']}"
        )
    boxes = place_labels(
        [(p["cx"], p["cy"]) for p in points],
        [p["label"] for p in points],
        (left, top, w - right, h - bottom),
    )
    for p, box in zip(points, boxes, strict=True):
        p["box"] = {"x": round(box.x, 2), "y": round(box.y, 2), "w": box.w, "h": box.h}
        p["lx"], p["ly"] = round(box.x + 1, 2), round(box.y + 11.5, 2)
        bx, by = box.centre
        dx, dy = bx - p["cx"], by - p["cy"]
        d = math.hypot(dx, dy)
        p["leader"] = None
        if d > 16:  # placed away from its point: a leader line from the marker to the box edge
            t = min(
                (box.w / 2) / abs(dx) if dx else math.inf, (box.h / 2) / abs(dy) if dy else math.inf
            )
            p["leader"] = {
                "x1": round(p["cx"] + dx * 5 / d, 2),
                "y1": round(p["cy"] + dy * 5 / d, 2),
                "x2": round(bx - dx * t, 2),
                "y2": round(by - dy * t, 2),
            }
    return {
        "width": w,
        "height": h,
        "x0": left,
        "x1": w - right,
        "y0": top,
        "y1": h - bottom,
        "xticks": [{"v": fmt(t, 0 if float(t).is_integer() else 1), "p": px(t)} for t in xt],
        "yticks": [{"v": fmt(t, 0 if float(t).is_integer() else 1), "p": py(t)} for t in yt],
        "points": points,
    }


# ---------------------------------------------------------------------------------- helpers
def _template_env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cellbench.leaderboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(fmt=fmt)
    return env


def _asset(name: str) -> tuple[Any, str]:
    """A packaged CSS/JS file as trusted markup, and its CSP hash (``sha256-...``)."""
    from markupsafe import Markup

    text = (resources.files("cellbench.leaderboard") / "templates" / name).read_text(
        encoding="utf-8"
    )
    if "</" in text:
        raise ValueError(f"{name} must not contain '</' (it is inlined into the page)")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return Markup(text), f"sha256-{digest}"


def reported_tables() -> list[dict]:
    """The papers' figures (``reported.json``), for the separate "reported" tables."""
    text = (resources.files("cellbench.leaderboard") / "reported.json").read_text(encoding="utf-8")
    tables = json.loads(text)["tables"]
    for t in tables:
        for row in t["rows"]:
            row["cells"] = [fmt(row.get(c["key"]), c["digits"]) for c in t["columns"]]
    return tables


def build_stamp(stamp: str | None = None) -> str:
    """The one line that differs between builds: a UTC time (or ``SOURCE_DATE_EPOCH``)."""
    if stamp is not None:
        return stamp
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.now(dt.timezone.utc)
    if epoch and epoch.isdigit():
        try:
            when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise CellbenchError(
                f"$SOURCE_DATE_EPOCH {epoch} is not a time this machine can show",
                fix="set it to seconds since 1970 (e.g. `git log -1 --format=%ct`) or unset it",
            ) from None
    return f"{when.strftime('%Y-%m-%d %H:%M UTC')}, cellbench {__version__}"


def load_submissions(root: str | Path) -> list[Submission]:
    """Every submission under ``root``, checked (older suite versions allowed: shown as stale)."""
    root = Path(root)
    if not root.is_dir():
        raise CellbenchError(
            "submissions folder not found", path=root, fix="pass --submissions DIR"
        )
    subs, problems = [], []
    for folder in submission_folders(root):
        sub = check_submission(folder, require_current_suite=False)
        problems.extend(sub.problems)
        subs.append(sub)
    if problems:
        raise CellbenchError(
            f"{len(problems)} problem(s) in the submissions, first: {problems[0]}",
            path=root,
            fix=f"run `cellbench submission validate {root}` and fix or remove the entries",
        )
    return subs


def _refuse_unrescored(subs: list[Submission]) -> None:
    """An entry of an older suite that carries its images must be re-scored, not shown stale."""
    from cellbench.submission.archive import images_ref

    for sub in subs:
        if not sub.is_current and images_ref(sub.metadata) is not None:
            raise CellbenchError(
                f"entry {sub.name} is from metric suite {sub.suite_version} but carries its "
                f"images, so it can be re-scored under suite {SUITE_VERSION}",
                path=sub.folder,
                fix="run `cellbench leaderboard rescore` and commit the re-scored entries",
            )


def _prepare_out(out: Path) -> Path:
    """A fresh temporary folder beside ``out``; refuse to replace a folder that is not a site."""
    if out.exists():
        if not out.is_dir() or out.is_symlink():
            raise CellbenchError(
                "--out exists and is not a folder", path=out, fix="pick another --out"
            )
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise CellbenchError(
                "--out is a non-empty folder that is not a leaderboard build",
                path=out,
                fix="pass an empty or new folder",
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    # mkdtemp makes 0700; the site is published, so it gets a folder's usual mode (umask applied)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def _swap_in(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ build
@dataclass
class BuildSummary:
    out: Path
    n_entries: int
    n_tables: int
    n_stale: int
    pages: list[str]
    n_self_reported: int = 0


def build_leaderboard(
    submissions: str | Path,
    out: str | Path,
    *,
    stamp: str | None = None,
    data_dir: str | Path | None = None,
    verified: list[str | Path] | None = None,
) -> BuildSummary:
    """Write the site for the submissions under ``submissions`` into ``out``.

    ``data_dir``: the data folder holding the entries' datasets, for the control | generated |
    real target grids of the entry pages (without it, or for an entry without images, the page
    says why there is no grid).
    ``verified``: reports of ``cellbench submission verify --report`` (one per shard, merged);
    only the entries they verify, with exactly these results, are ranked (docs/leaderboard.md).
    """
    from cellbench.submission.verify import read_reports

    submissions, out = Path(submissions), Path(out)
    stamp = build_stamp(stamp)  # a bad $SOURCE_DATE_EPOCH is refused before any work
    if is_within(out, submissions):  # the site would read as an entry at the next build
        raise CellbenchError(
            "--out is inside the submissions folder", path=out, fix="build the site elsewhere"
        )
    subs = load_submissions(submissions)
    _refuse_unrescored(subs)
    tables = group_tables(subs, read_reports(list(verified)) if verified else {})
    env = _template_env()
    style, style_hash = _asset("style.css")
    scripts = [_asset(name) for name in SCRIPTS]
    grids = _GridSource(None if data_dir is None else Path(data_dir))
    common = {
        "style": style,
        "style_hash": style_hash,
        "scripts": [text for text, _ in scripts],
        "script_hashes": " ".join(f"'{h}'" for _, h in scripts),
        "columns": columns(),
        "column_groups": column_groups(),
        "collapsed_groups": " ".join(COLLAPSED_GROUPS),
        "group_note": GROUP_NOTE,
        "validation_doc": VALIDATION_DOC,
        "repo_url": REPO_URL,
        "suite_version": SUITE_VERSION,
        "version": __version__,
    }
    tmp = _prepare_out(out)
    try:
        pages = []
        current = [t for t in tables if t.ranked]
        self_reported = [t for t in tables if t.current and not t.ranked]
        stale = [t for t in tables if not t.current]
        downloads = {t.anchor_id: write_downloads(t, tmp / "downloads") for t in tables}
        rows = [r for t in tables for r in t.rows]
        index = env.get_template("index.html.j2").render(
            **common,
            current=current,
            self_reported=self_reported,
            stale=stale,
            downloads=downloads,
            legend=legend(),
            kinds=sorted({r.kind for r in rows}),
            plots={t.anchor_id: trade_off_plot(t) for t in current},
            reference_cells={t.anchor_id: reference_cells(t.reference_doc) for t in tables},
            reported=reported_tables(),
            stamp=stamp,
            n_entries=len(subs),
        )
        atomic_write_text(tmp / "index.html", index)
        pages.append("index.html")
        for table in tables:
            for row in table.rows:
                pages.append(_write_entry(env, common, tmp, table, row, grids))
        atomic_write_text(tmp / MARKER, "built by cellbench leaderboard build\n")
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return BuildSummary(out, len(subs), len(current), len(stale), pages, len(self_reported))


def _per_group(doc: dict, key: str) -> list[dict]:
    out = []
    for name, ests in sorted((doc.get(key) or {}).items()):
        cells = []
        for col in breakdown_columns():
            est = ests.get(col.key) or {}
            lo, hi = (est.get("ci") or [None, None])[:2]
            interval = (
                ""
                if lo is None or hi is None
                else f"[{fmt(lo, col.digits)}, {fmt(hi, col.digits)}]"
            )
            cells.append(
                Cell(fmt(est.get("value"), col.digits), sort_key(est.get("value")), interval)
            )
        n = (ests.get("overall") or {}).get("n")
        out.append({"name": name, "n": n, "cells": cells})
    return out


def held_out_per_moa(doc: dict) -> dict | None:
    """The set-level held-out metrics with per-MoA values in ``set_detail`` (precision, recall,
    density, coverage, mAP...): their columns and one row per MoA; None when there are none."""
    detail = doc.get("set_detail") or {}
    cols = [c for c in columns() if isinstance((detail.get(c.key) or {}).get("per_moa"), dict)]
    if not cols:
        return None
    moas = sorted({m for c in cols for m in detail[c.key]["per_moa"]})
    rows = []
    for moa in moas:
        cells = []
        for c in cols:
            v = detail[c.key]["per_moa"].get(moa)
            value = v.get("value") if isinstance(v, dict) else v
            title = (
                f"n_gen = {v.get('n_gen')}, n_real = {v.get('n_real')}"
                if isinstance(v, dict)
                else ""
            )
            cells.append(Cell(fmt(value, c.digits), sort_key(value), "", title))
        rows.append({"name": moa, "cells": cells})
    return {"columns": cols, "rows": rows}


#: the column headings of an entry's comparison grid (the PNG holds pixels only)
GRID_COLUMNS: tuple[str, ...] = ("control", "generated", "real target")
#: tasks shown per MoA in an entry's comparison grid
GRID_PER_MOA = 2


def _entry_images(folder: Path) -> Any:
    """A context manager giving the entry's extracted image folder, or None when it has none
    (:func:`cellbench.submission.archive.extract_images`)."""
    from cellbench.submission.archive import extract_images

    return extract_images(folder)


class _GridSource:
    """The datasets and protocols the entry grids read, opened once per build."""

    def __init__(self, data_dir: Path | None):
        self.data_dir = data_dir
        self._datasets: dict[str, Any] = {}
        self._protocols: dict[tuple, Any] = {}

    def _protocol(self, doc: dict) -> tuple[Any, Any]:
        """(dataset, protocol table) of a result; raises CellbenchError with the reason."""
        from cellbench.data.bbbc021 import open_dataset
        from cellbench.protocol import protocol_sha256
        from cellbench.protocol_registry import build_named_protocol

        ds_info, proto = doc.get("dataset") or {}, doc.get("protocol") or {}
        name = str(ds_info.get("name"))
        if name not in self._datasets:
            try:
                ds = open_dataset(name, self.data_dir)
                ds.index_sha256  # noqa: B018 -- reads the index: a missing dataset fails here
            except (CellbenchError, OSError):
                ds = CellbenchError(f"dataset {name} is not in the build's --data-dir")
            self._datasets[name] = ds
        ds = self._datasets[name]
        if isinstance(ds, CellbenchError):
            raise ds
        if ds.index_sha256 != ds_info.get("index_sha256"):
            raise CellbenchError(f"the build's {name} is not the dataset this entry was scored on")
        spec = protocol_spec_of(proto)
        if spec is None:
            raise CellbenchError("the entry's protocol is custom: the build cannot rebuild it")
        key = (name, spec.name, proto.get("seed", 0))
        if key not in self._protocols:
            self._protocols[key] = build_named_protocol(ds, spec.name, int(proto.get("seed", 0)))
        table = self._protocols[key]
        if protocol_sha256(table) != proto.get("sha256"):
            raise CellbenchError(f"protocol {spec.name} rebuilt here differs from the entry's")
        return ds, table

    def panels(self, row: Row, files_dir: Path) -> dict:
        """The comparison grid of ``row``, its PNGs written into ``files_dir/comparison``:
        ``{"panels": [...], "dir": ..., "note": None}``, or no panels and a ``note`` saying why
        (nothing is left in the folder then)."""
        from cellbench.leaderboard.entry_grid import entry_grid

        out = {"panels": [], "dir": f"{row.folder}/comparison", "note": None}
        if self.data_dir is None:
            return out | {"note": "the page was built without a dataset (no --data-dir)"}
        with _entry_images(row.sub.folder) as images:
            if images is None:
                return out | {"note": "this entry has no submitted images"}
            try:
                ds, table = self._protocol(row.doc)
                panels = entry_grid(
                    images, table, ds, files_dir / "comparison", per_moa=GRID_PER_MOA
                )
            except CellbenchError as exc:
                shutil.rmtree(files_dir / "comparison", ignore_errors=True)
                return out | {"note": f"no grid: {exc.message}"}
        return out | {"panels": panels}


def _write_entry(
    env: Any, common: dict, tmp: Path, table: Table, row: Row, grids: _GridSource
) -> str:
    files_dir = tmp / "entries" / row.folder
    files_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (METADATA_NAME, RESULTS_NAME, PER_IMAGE_NAME):
        shutil.copyfile(row.sub.folder / name, files_dir / name)
        copied.append(name)
    grid = None
    if row.sub.grid is not None:
        shutil.copyfile(row.sub.grid, files_dir / row.sub.grid.name)
        grid = f"{row.folder}/{row.sub.grid.name}"
    doc, meta = row.doc, row.meta
    fid_model = ((doc.get("fid_detail") or {}).get("model") or {}).get("per_compound") or {}
    html = env.get_template("entry.html.j2").render(
        **common,
        row=row,
        table=table,
        meta=meta,
        doc=doc,
        cells=row.cells(),
        reference=reference_cells(table.reference_doc),
        per_moa=_per_group(doc, "per_moa"),
        ref_per_moa=_per_group(doc.get("reference") or {}, "per_moa"),
        per_compound=_per_group(doc, "per_compound"),
        held_out_per_moa=held_out_per_moa(doc),
        fid_per_compound=[
            {
                "name": k,
                "fid": fmt(v.get("fid"), 2),
                "kid": fmt(v.get("kid"), 4),
                "n_gen": v.get("n_gen"),
                "n_real": v.get("n_real"),
            }
            for k, v in sorted(fid_model.items())
        ],
        grid=grid,
        comparison=grids.panels(row, files_dir),
        grid_columns=GRID_COLUMNS,
        files=[f"{row.folder}/{n}" for n in copied],
        provenance=_provenance(doc),
    )
    page = f"entries/{row.folder}.html"
    atomic_write_text(tmp / page, html)
    return page


def _provenance(doc: dict) -> list[tuple[str, str]]:
    ds, proto, img = doc.get("dataset", {}), doc.get("protocol", {}), doc.get("images", {})
    weights = doc.get("weights", {})
    seg = doc.get("segmenter", {})
    return [
        ("cellbench", f"{doc.get('cellbench_version')} (git {str(doc.get('git_commit'))[:12]})"),
        ("metric suite", str(doc.get("metric_suite_version"))),
        ("command", str(doc.get("command"))),
        (
            "dataset",
            f"{ds.get('name')} {ds.get('version')}{' (simulated)' if ds.get('simulated') else ''}",
        ),
        ("dataset index sha256", str(ds.get("index_sha256"))),
        (
            "protocol",
            f"{proto.get('name', CUSTOM)} v{proto.get('version')}, {proto.get('n_tasks')} tasks, "
            f"sha256 {proto.get('sha256')}",
        ),
        ("dataset crops sha256", str(ds.get("crops_sha256"))),
        ("images sha256", f"{img.get('sha256')} ({img.get('n_images')} images)"),
        ("segmenter", f"{seg.get('name')} v{seg.get('version')}"),
        ("classifier sha256", str(weights.get("classifier"))),
        ("Inception sha256", str(weights.get("inception"))),
        ("reference statistics sha256", str(doc.get("reference_stats_sha256"))),
        ("artifact set sha256", str((doc.get("artifacts") or {}).get("sha256"))),
        ("seed", str(doc.get("seed"))),
        ("device", str((doc.get("environment") or {}).get("device"))),
        ("wall time", f"{doc.get('wall_time_s')} s"),
    ]
