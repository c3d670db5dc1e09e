"""The shared leaderboard page in real headless Chromium (as ``tests/test_browser.py``): a
1,366x768 screen without horizontal scroll, collapsible column groups (keyboard too), search and
filters, downloads, the metric legend, distinct scatter labels with interval bars, the entry
pages' control | generated | real target grid, and hostile names shown as text.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from cellbench.leaderboard import build as lb
from cellbench.leaderboard.build import SCORING_DOC, build_leaderboard, columns
from tests.conftest import build_mini_dataset
from tests.test_browser import Browser, chromium  # noqa: F401 -- the fixture
from tests.test_leaderboard import EVIL, demo_submissions, verified_report
from tests.test_submission import edit_json, make_submission, metadata

pytestmark = pytest.mark.slow

CROWD = 6  # entries piled up near one point of the scatter


def _site(root: Path) -> Path:
    """The demo entries, the HTML-named one with an HTML description too, six entries crowded
    at nearly one point, and a comparison grid for the toy model (mini dataset images)."""
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import get_card
    from cellbench.protocol import build_protocol

    subs = demo_submissions(root)
    edit_json(subs / "2026-01-16_evil" / "metadata.json", lambda d: d.update(description=EVIL))
    for i in range(CROWD):
        folder = make_submission(
            subs,
            f"2026-01-2{i}_crowd-{i}",
            seed=10 + i,
            meta=metadata(model={"name": f"crowd model {i}", "version": "1"}),
        )
        edit_json(
            folder / "results.json",
            lambda d, i=i: d["metrics"]["fid_o"].update(value=40.0 + 0.05 * i),
        )
    ds = BBBC021Dataset(build_mini_dataset(root / "data"), get_card("bbbc021"))
    table = build_protocol(ds, "test", 0)
    images = root / "images"
    images.mkdir()
    for row in table.itertuples():
        np.save(images / f"{row.task_id}.npy", ds.load_crop(row.control_key)[::-1].copy())
    with pytest.MonkeyPatch.context() as mp:
        # the images an archive would yield (cellbench.submission.archive.extract_images)
        mp.setattr(
            lb,
            "_entry_images",
            lambda f: contextlib.nullcontext(images if f.name.endswith("toy-model") else None),
        )
        mp.setattr(lb._GridSource, "_protocol", lambda self, doc: (ds, table))
        names = [f.name for f in sorted(subs.iterdir()) if f.name.startswith("2026-")]
        report = verified_report(subs, names, root / "verified.json")
        build_leaderboard(
            subs, root / "site", stamp="browser", data_dir=root / "data", verified=[report]
        )
    return root / "site"


@pytest.fixture(scope="module")
def board(chromium: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    root = tmp_path_factory.mktemp("page-browser")
    site = _site(root)
    browser = Browser(chromium, root / "profile")
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False},
        session=browser.session,
    )
    try:
        yield browser, site
    finally:
        browser.close()


def _key(browser: Browser, key: str) -> None:
    """Press a key on the focused element, as a keyboard user does."""
    code = {"Enter": 13, " ": 32}[key]
    for kind in ("keyDown", "keyUp"):
        params = {"type": kind, "key": key, "windowsVirtualKeyCode": code}
        if kind == "keyDown":
            params["text"] = "\r" if key == "Enter" else " "
        browser.call("Input.dispatchKeyEvent", params, session=browser.session)


FITS_JS = """(() => ({
  doc: document.scrollingElement.scrollWidth,
  boxes: Array.from(document.querySelectorAll('.scroll')).map(d => [d.scrollWidth, d.clientWidth]),
  right: Math.max(...Array.from(document.querySelectorAll('table')).map(
    t => t.getBoundingClientRect().right)),
}))()"""
HEADS_JS = """Array.from(document.querySelector('table.ranked').tHead.rows[1].cells)
  .filter(h => !h.hidden && h.dataset.key).map(h => h.dataset.key)"""
GROUPS_JS = """Array.from(document.querySelector('table.ranked tr.groups').cells)
  .filter(c => c.dataset.group).map(c => [c.dataset.group, c.colSpan])"""


def test_fits_1366_and_groups_collapse_by_keyboard(board) -> None:
    browser, site = board
    browser.open((site / "index.html").as_uri())
    assert browser.js("window.innerWidth") == 1366
    fits = browser.js(FITS_JS)
    assert fits["doc"] <= 1366, fits
    assert all(sw <= cw for sw, cw in fits["boxes"]), fits  # no table scrolls sideways either
    assert fits["right"] <= 1366, fits
    every = [c.key for c in columns()]
    collapsed = [c.key for c in columns() if c.group == "rewards" or c.pinned]
    assert browser.js(HEADS_JS) == collapsed
    n_rewards = sum(c.group == "rewards" for c in columns())
    assert browser.js(GROUPS_JS) == [["rewards", n_rewards], ["held-out", 2]]
    # the body cells follow their headers: a hidden column hides in every row
    hidden_cells = browser.js(
        "document.querySelectorAll('table.ranked tbody tr')[1].querySelectorAll('td[hidden]').length"
    )
    assert hidden_cells == len(every) - len(collapsed)

    toggle = "document.querySelector('table.ranked button.toggle[data-group=\"held-out\"]')"
    assert browser.js(f"{toggle}.getAttribute('aria-expanded')") == "false"
    browser.js(f"{toggle}.focus()")
    _key(browser, "Enter")
    assert browser.js(f"{toggle}.getAttribute('aria-expanded')") == "true"
    assert browser.js(HEADS_JS) == every
    assert browser.js(GROUPS_JS) == [["rewards", n_rewards], ["held-out", len(every) - n_rewards]]
    _key(browser, " ")
    assert browser.js(HEADS_JS) == collapsed
    # the rewards group collapses to its summary column too
    browser.js(
        "document.querySelector('table.ranked button.toggle[data-group=\"rewards\"]').click()"
    )
    assert browser.js(HEADS_JS) == [c.key for c in columns() if c.pinned]
    # sorting still works on the visible columns, with hidden ones in place
    browser.js("document.querySelector('table.ranked th[data-key=\"fid_o\"] button').click()")
    vals = browser.js(
        """(() => { const t = document.querySelector('table.ranked');
        const i = Array.from(t.tHead.rows[1].cells).findIndex(h => h.dataset.key === 'fid_o');
        return Array.from(t.tBodies[1].rows).map(r => parseFloat(r.cells[i].dataset.sort)); })()"""
    )
    assert vals == sorted(vals)
    assert browser.errors() == []


FILTER_JS = """(() => {
  const set = (id, v) => { const el = document.getElementById(id); el.value = v;
    el.dispatchEvent(new Event(el.tagName === 'INPUT' ? 'input' : 'change')); };
  set('filter-text', %s); set('filter-kind', %s); set('filter-bon', %s);
  set('filter-verification', %s);
  return {shown: Array.from(document.querySelectorAll('tbody.entries tr'))
                   .filter(r => !r.hidden).map(r => r.dataset.entry),
          refs: Array.from(document.querySelectorAll('tbody.reference tr')).filter(r => !r.hidden).length,
          count: document.getElementById('filter-count').textContent};
})()"""


def _filter(browser: Browser, text="", kind="", bon="", ver="") -> dict:
    return browser.js(FILTER_JS % tuple(json.dumps(v) for v in (text, kind, bon, ver)))


def test_search_and_filters(board) -> None:
    browser, site = board
    browser.open((site / "index.html").as_uri())
    total = 4 + CROWD
    assert browser.js("document.getElementById('filters').hidden") is False
    everything = _filter(browser)
    assert (
        len(everything["shown"]) == total
        and everything["count"] == f"{total} of {total} entries shown"
    )
    assert _filter(browser, text="TOY-model")["shown"] == ["2026-01-15_toy-model"]
    assert _filter(browser, text="synthetic submission crowd 3")["shown"] == ["2026-01-23_crowd-3"]
    # a description with markup is searched as text
    assert _filter(browser, text="<script>window.__xss")["shown"] == ["2026-01-16_evil"]
    assert _filter(browser, kind="anchor")["shown"] == ["2026-01-17_identity"]
    assert _filter(browser, bon="best")["shown"] == ["2026-01-16_evil"]
    single = _filter(browser, bon="single")["shown"]
    assert len(single) == total - 1 and "2026-01-16_evil" not in single
    verified = _filter(browser, ver="verified")
    assert len(verified["shown"]) == total - 1 and "2025-06-01_old-model" not in verified["shown"]
    assert verified["count"] == f"{total - 1} of {total} entries shown"
    self_reported = _filter(browser, ver="self-reported")
    assert self_reported["shown"] == ["2025-06-01_old-model"]  # the stale entry, not re-scored
    assert self_reported["refs"] == 2  # the reference rows stay
    assert _filter(browser, text="model", kind="model", bon="best")["shown"] == []
    # Enter in the search box does not submit the form (CSP forbids form actions)
    browser.js("document.getElementById('filter-text').focus()")
    _key(browser, "Enter")
    assert browser.js("location.href").endswith("index.html")
    assert browser.errors() == []


def test_downloads_and_legend(board) -> None:
    browser, site = board
    browser.open((site / "index.html").as_uri())
    links = browser.js(
        "Array.from(document.querySelectorAll('p.downloads a')).map(a => [a.textContent, a.href, a.hasAttribute('download')])"
    )
    assert [t for t, _, _ in links] == ["CSV", "JSON", "CSV", "JSON"]
    for _, href, dl in links:
        path = Path(unquote(urlparse(href).path))
        assert dl and path.is_file() and path.parent == site / "downloads"
    browser.js("document.querySelector('#legend summary').click()")
    assert browser.js("document.getElementById('legend').open") is True
    legend = browser.js(
        """Array.from(document.querySelectorAll('#legend tbody tr')).map(r => [r.id,
           r.querySelector('a').href, r.getBoundingClientRect().height > 0])"""
    )
    assert [x[0] for x in legend] == [f"metric-{c.key}" for c in columns()]
    assert all(href.startswith(SCORING_DOC) and shown for _, href, shown in legend)
    assert browser.js(FITS_JS)["doc"] <= 1366  # the open legend fits too
    assert browser.errors() == []


LABELS_JS = """(() => {
  const svg = document.querySelector('figure.plot svg');
  const box = e => { const b = e.getBBox(); return [b.x, b.y, b.width, b.height]; };
  return {labels: Array.from(svg.querySelectorAll('text.label')).map(t => [t.textContent, box(t)]),
          marks: Array.from(svg.querySelectorAll('g.pt circle, g.pt rect')).map(box),
          bars: svg.querySelectorAll('line.bar').length,
          key: Array.from(document.querySelectorAll('table.plot-key tbody tr')).map(
            r => r.cells[0].textContent)};
})()"""


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_scatter_labels_are_distinct_with_interval_bars(board) -> None:
    browser, site = board
    browser.open((site / "index.html").as_uri())
    got = browser.js(LABELS_JS)
    labels = got["labels"]
    n = 3 + CROWD + 1  # entries of the current table and the reference
    assert [t for t, _ in labels] == [str(i) for i in range(1, n)] + ["R"]
    assert got["key"] == [t for t, _ in labels]  # every number is in the key
    for i, (text, a) in enumerate(labels):
        assert a[2] > 0 and a[3] > 0
        for other, b in labels[i + 1 :]:
            assert not _overlap(a, b), (text, other, a, b)
        for m in got["marks"]:
            assert not _overlap(a, m), (text, a, m)
    assert got["bars"] == 3 * n  # every point has its overall interval (bar and two caps)
    assert browser.errors() == []


def test_entry_pages_grid_or_its_absence_and_escaping(board) -> None:
    browser, site = board
    browser.open((site / "entries" / "2026-01-15_toy-model.html").as_uri())
    imgs = browser.js(
        """Array.from(document.querySelectorAll('img.comparison-image')).map(i =>
           [i.naturalWidth, i.naturalHeight, i.alt])"""
    )
    assert len(imgs) == 3  # the mini dataset's three MoAs
    for w, h, alt in imgs:
        assert w == 296 and h in (100, 198) and "control crop" in alt and "real target" in alt
    heads = browser.js(
        "Array.from(document.querySelector('.panel-head').children).map(s => s.textContent)"
    )
    assert heads == ["control", "generated", "real target"]
    assert browser.js(FITS_JS)["doc"] <= 1366
    assert browser.errors() == []

    browser.open((site / "entries" / "2026-01-16_evil.html").as_uri())
    note = browser.js("document.getElementById('comparison-note').textContent")
    assert note == "No control | generated | real target grid: this entry has no submitted images."
    assert browser.js("typeof window.__xss") == "undefined"
    assert browser.js("document.title") != "pwned"
    assert browser.js(f"document.body.innerText.split({json.dumps(EVIL)}).length - 1") >= 2
    browser.open((site / "index.html").as_uri())
    assert browser.js("typeof window.__xss") == "undefined"
    assert re.search(r"window\.__xss", browser.js("document.body.innerText"))
    assert browser.errors() == []


def test_without_script_every_column_shows_and_no_dead_controls(board) -> None:
    browser, site = board
    browser.call("Emulation.setScriptExecutionDisabled", {"value": True}, session=browser.session)
    try:
        browser.open((site / "index.html").as_uri())
        form = "getComputedStyle(document.getElementById('filters')).display"
        assert browser.js(form) == "none"
        toggles = (
            "Array.from(document.querySelectorAll('button.toggle')).filter(b => b.offsetParent)"
        )
        assert browser.js(f"{toggles}.length") == 0
        assert browser.js(HEADS_JS) == [c.key for c in columns()]
    finally:
        browser.call(
            "Emulation.setScriptExecutionDisabled", {"value": False}, session=browser.session
        )
    assert browser.errors() == []
