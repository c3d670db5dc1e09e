"""Build the static leaderboard site from the committed submissions.

``cellbench leaderboard build --submissions submissions --out site`` writes:

* ``index.html``: one table per dataset, metric suite version, segmenter and protocol, with the
  real reference row pinned on top; stale entries (older suite versions) in their own unranked
  tables; the overall-reward-vs-FID_o plot (inline SVG); the papers' reported figures in separate,
  labelled tables;
* ``entries/<folder>.html``: a page per submission (metadata, links, per-MoA and per-compound
  breakdowns, sample grid, provenance), with copies of its files in ``entries/<folder>/``.

Everything is inline (CSS, JS, SVG): the page opens from disk without a server or network. The
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
from cellbench.io import atomic_write_text
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


@dataclass(frozen=True)
class Column:
    """A metric column of the verified tables."""

    key: str
    label: str
    higher_is_better: bool
    digits: int
    interval: bool = True
    group: str = "rewards"


def columns() -> tuple[Column, ...]:
    """One column per registered metric (:mod:`cellbench.metrics.registry`) by group (rewards,
    then held-out metrics), the ranking metric first and the others in registry order; per-image
    metrics carry an interval."""
    from cellbench.metrics.registry import GROUPS, RANK_METRIC, specs

    ordered = sorted(  # stable: registry order within a group
        specs(), key=lambda s: (GROUPS.index(s.group), s.name != RANK_METRIC)
    )
    return tuple(
        Column(s.name, s.label, s.higher_is_better, s.digits, s.per_image, s.group) for s in ordered
    )


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
        return (
            f"{state}-{self.dataset}-suite{self.suite}-{self.segmenter}-{self.protocol_name}-"
            f"{self.protocol_sha256[:8]}{art}"
        )

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


def trade_off_plot(table: Table) -> dict | None:
    """Coordinates of the overall-reward-vs-FID_o scatter of one table (None without points)."""
    points = []
    for row in table.rows:
        x, y = row.value("fid_o"), row.value("overall")
        if x is not None and y is not None:
            points.append(
                {
                    "x": x,
                    "y": y,
                    "label": row.model_name,
                    "kind": row.kind,
                    "href": f"entries/{row.folder}.html",
                }
            )
    if not points:
        return None
    ref = table.reference_doc.get("reference", {}).get("metrics", {})
    rx, ry = (ref.get("fid_o") or {}).get("value"), (ref.get("overall") or {}).get("value")
    if rx is not None and ry is not None:
        points.append(
            {
                "x": rx,
                "y": ry,
                "label": "real reference (split half)",
                "kind": "reference",
                "href": "",
            }
        )
    w, h, left, right, top, bottom = 640, 360, 64, 24, 16, 48
    xs, ys = [p["x"] for p in points], [p["y"] for p in points]
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
        # labels near the right edge are drawn to the left of their point
        p["anchor"] = "end" if p["cx"] > left + 0.6 * (w - left - right) else "start"
        p["lx"] = round(p["cx"] - 8, 2) if p["anchor"] == "end" else round(p["cx"] + 8, 2)
        if len(p["label"]) > 40:
            p["label"] = p["label"][:39] + "…"
        p["title"] = f"{p['label']}: overall {fmt(p['y'], 2)}, FID_o {fmt(p['x'], 2)}"
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
    when = (
        dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc)
        if epoch and epoch.isdigit()
        else dt.datetime.now(dt.timezone.utc)
    )
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
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


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
    verified: list[str | Path] | None = None,
) -> BuildSummary:
    """Write the site for the submissions under ``submissions`` into ``out``.

    ``verified``: reports of ``cellbench submission verify --report`` (one per shard, merged);
    only the entries they verify, with exactly these results, are ranked (docs/leaderboard.md).
    """
    from cellbench.submission.verify import read_reports

    submissions, out = Path(submissions), Path(out)
    subs = load_submissions(submissions)
    _refuse_unrescored(subs)
    tables = group_tables(subs, read_reports(list(verified)) if verified else {})
    env = _template_env()
    style, style_hash = _asset("style.css")
    script, script_hash = _asset("sort.js")
    common = {
        "style": style,
        "style_hash": style_hash,
        "script": script,
        "script_hash": script_hash,
        "columns": columns(),
        "column_groups": column_groups(),
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
        index = env.get_template("index.html.j2").render(
            **common,
            current=current,
            self_reported=self_reported,
            stale=stale,
            plots={t.anchor_id: trade_off_plot(t) for t in current},
            reference_cells={t.anchor_id: reference_cells(t.reference_doc) for t in tables},
            reported=reported_tables(),
            stamp=build_stamp(stamp),
            n_entries=len(subs),
        )
        atomic_write_text(tmp / "index.html", index)
        pages.append("index.html")
        for table in tables:
            for row in table.rows:
                pages.append(_write_entry(env, common, tmp, table, row))
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


def _write_entry(env: Any, common: dict, tmp: Path, table: Table, row: Row) -> str:
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
