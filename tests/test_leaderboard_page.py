"""The leaderboard page a researcher shares: downloads, legend, filters' data, column groups, the
scatter's labels and intervals, and the control | generated | real target grid of entry pages.

The same features in a real browser: ``tests/test_browser_page.py``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cellbench.errors import CellbenchError
from cellbench.leaderboard import build as lb
from cellbench.leaderboard import build_leaderboard
from cellbench.leaderboard.build import (
    COLLAPSED_GROUPS,
    DOC_SECTIONS,
    SCORING_DOC,
    columns,
    download_fields,
    legend,
    trade_off_plot,
)
from cellbench.leaderboard.entry_grid import entry_grid
from cellbench.leaderboard.labels import Box, place_labels
from tests.conftest import REPO, build_mini_dataset, make_tiny_sim
from tests.test_leaderboard import EVIL, demo_submissions, verified_report


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("page")
    subs = demo_submissions(root)
    out = root / "site"
    names = ["2026-01-15_toy-model", "2026-01-16_evil", "2026-01-17_identity"]
    build_leaderboard(
        subs, out, stamp="S", verified=[verified_report(subs, names, root / "verified.json")]
    )
    return subs, out


def _results(subs: Path, folder: str) -> dict:
    return json.loads((subs / folder / "results.json").read_text())


# ------------------------------------------------------------------------------ downloads
def test_every_table_has_csv_and_json_downloads_linked_from_the_page(site) -> None:
    _, out = site
    html = (out / "index.html").read_text()
    ids = re.findall(r'<section class="board" id="([^"]+)"', html)
    assert len(ids) == 2
    for table_id in ids:
        section = html.split(f'id="{table_id}"', 1)[1].split("</section>", 1)[0]
        links = re.findall(r'href="(downloads/[^"]+)" download', section)
        assert [Path(x).suffix for x in links] == [".csv", ".json"], links
        for link in links:
            assert (out / link).is_file()
            assert Path(link).stem == table_id  # the anchor is a valid id and file name
            assert re.fullmatch(r"[A-Za-z0-9._-]+", table_id)


def test_download_values_are_exactly_those_of_results_json(site) -> None:
    subs, out = site
    csv_path = next((out / "downloads").glob("current-*.csv"))
    with csv_path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header == download_fields()
    for c in columns():  # stable names: every registered metric, with its interval ends
        assert {c.key, f"{c.key}_ci_low", f"{c.key}_ci_high"} <= set(header)
    recs = [dict(zip(header, r, strict=True)) for r in body]
    assert recs[0]["kind"] == "reference" and recs[0]["folder"] == ""
    html = (out / "index.html").read_text()
    section = html.split('<section class="board" id="current-', 1)[1].split("</section>", 1)[0]
    assert [r["folder"] for r in recs[1:]] == re.findall(r'<tr data-entry="([^"]+)"', section)
    compared = 0
    for rec in recs[1:]:
        doc = _results(subs, rec["folder"])
        for c in columns():
            est = doc["metrics"].get(c.key) or {}
            value = est.get("value")
            assert (rec[c.key] == "") == (value is None), (rec["folder"], c.key)
            if value is not None:
                assert float(rec[c.key]) == value  # exact, not the rounded display
                compared += 1
            if est.get("ci"):
                assert float(rec[f"{c.key}_ci_low"]) == est["ci"][0]
                assert float(rec[f"{c.key}_ci_high"]) == est["ci"][1]
        assert rec["verification"] == "verified"
    assert compared > 40
    # a value with more digits than the page shows survives the round trip
    toy = next(r for r in recs if r["folder"] == "2026-01-15_toy-model")
    overall = _results(subs, "2026-01-15_toy-model")["metrics"]["overall"]["value"]
    assert toy["overall"] == json.dumps(overall) and len(toy["overall"]) > 6
    assert toy["best_of_n"] == "1"
    evil = next(r for r in recs if r["folder"] == "2026-01-16_evil")
    assert evil["model"] == EVIL and evil["best_of_n"] == "4"

    doc = json.loads(csv_path.with_suffix(".json").read_text())
    assert doc["columns"] == header and doc["table"]["current"] is True
    assert [r["folder"] for r in doc["rows"]] == [r["folder"] or None for r in recs]
    ref = _results(subs, recs[1]["folder"])["reference"]["metrics"]
    assert doc["rows"][0]["overall"] == ref["overall"]["value"]
    row = next(r for r in doc["rows"] if r["folder"] == "2026-01-15_toy-model")
    want = _results(subs, "2026-01-15_toy-model")["metrics"]
    assert row["overall"] == want["overall"]["value"]
    assert row["overall_ci_low"] == want["overall"]["ci"][0] and row["fid_o"] == 40.0


# --------------------------------------------------------------------------------- legend
def test_legend_has_every_metric_linked_to_its_definition(site) -> None:
    _, out = site
    html = (out / "index.html").read_text()
    legend_html = html.split('id="legend"', 1)[1].split("</details>", 1)[0]
    entries = legend()
    assert [e["key"] for e in entries] == [c.key for c in columns()]
    for e in entries:
        row = legend_html.split(f'id="metric-{e["key"]}"', 1)[1].split("</tr>", 1)[0]
        assert e["href"] in row and e["href"].startswith(SCORING_DOC)
        assert e["label"] in row
    # every docs section linked exists in docs/scoring.md (GitHub's heading anchors)
    headings = {
        "#" + re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", (REPO / "docs" / "scoring.md").read_text(), re.M)
    }
    assert set(DOC_SECTIONS.values()) <= headings


def test_a_new_metric_gets_a_legend_entry_and_a_column() -> None:
    from cellbench.metrics.registry import MetricSpec, registered

    spec = MetricSpec(
        name="test_sharpness",
        label="sharp.",
        family="fidelity",
        higher_is_better=True,
        digits=3,
        needs="pixels",
        summary="a metric registered by this test",
        kind="set_fn",
        function="cellbench.metrics.prdc:prdc_metrics",
    )
    with registered(spec):
        entry = next(e for e in legend() if e["key"] == "test_sharpness")
        assert entry["summary"] == "a metric registered by this test"
        assert entry["href"] == SCORING_DOC + "#held-out-metrics"
        assert "test_sharpness" in download_fields()
    assert all(e["key"] != "test_sharpness" for e in legend())


# ------------------------------------------------------------------- filters and groups
def test_rows_carry_what_the_filters_read_escaped(site) -> None:
    _, out = site
    html = (out / "index.html").read_text()
    rows = dict(re.findall(r'<tr data-entry="([^"]+)"([^>]*)>', html))
    assert 'data-kind="anchor"' in rows["2026-01-17_identity"]
    assert (
        'data-bon="4"' in rows["2026-01-16_evil"] and 'data-bon="1"' in rows["2025-06-01_old-model"]
    )
    assert 'data-verification="self-reported"' in rows["2025-06-01_old-model"]
    assert all(
        'data-verification="verified"' in r
        for name, r in rows.items()
        if name != "2025-06-01_old-model"
    )
    assert "&lt;script&gt;" in rows["2026-01-16_evil"] and "<script>" not in rows["2026-01-16_evil"]
    assert 'id="filters"' in html and 'role="search"' in html


def test_collapsed_groups_keep_their_summary_columns(site) -> None:
    _, out = site
    html = (out / "index.html").read_text()
    assert f'data-collapsed="{" ".join(COLLAPSED_GROUPS)}"' in html
    pinned = [c.key for c in columns() if c.pinned]
    assert pinned == ["overall", "moa_accuracy", "fid_o"]
    for c in columns():
        head = re.search(rf'<th scope="col" class="num" data-key="{c.key}"[^>]*>', html).group(0)
        assert f'data-group="{c.group}"' in head and ("data-pin" in head) == c.pinned
    assert html.count('class="toggle"') == 4  # two groups in each of the two tables


# ---------------------------------------------------------------------------------- plot
def test_labels_never_overlap_even_when_points_pile_up() -> None:
    rng = np.random.default_rng(0)
    points = [(300 + float(x), 150 + float(y)) for x, y in rng.normal(0, 3, size=(40, 2))]
    texts = [str(i) for i in range(1, 41)]
    boxes = place_labels(points, texts, (64, 16, 616, 312))
    markers = [Box(x - 6, y - 6, 12, 12) for x, y in points]
    for i, a in enumerate(boxes):
        assert a.inside(64, 16, 616, 312)
        assert not any(a.overlaps(b) for b in boxes[i + 1 :]), i
        assert not any(a.overlaps(m) for m in markers), i


def test_plot_numbers_points_and_draws_their_intervals(site) -> None:
    subs, out = site
    tables = lb.group_tables(lb.load_submissions(subs))
    plot = trade_off_plot(tables[0])
    labels = [p["label"] for p in plot["points"]]
    assert labels == ["1", "2", "3", "R"]
    ref = plot["points"][-1]
    assert ref["yci"] == (0.4, 0.6) and ref["xci"] is None  # the demo's reference: no FID interval
    for p in plot["points"][:-1]:
        doc = _results(subs, p["folder"])
        assert p["yci"] == tuple(doc["metrics"]["overall"]["ci"])
        assert p["ybar"][0] > p["cy"] > p["ybar"][1]  # y grows downwards
    html = (out / "index.html").read_text()
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert svg.count('class="bar"') == 3 * 4  # a vertical bar and two caps per point
    key = html.split('<table class="plot-key">', 1)[1].split("</table>", 1)[0]
    assert key.count("<tr>") == 1 + 4 and "&lt;script&gt;" in key
    # an FID_o interval, where results.json has one, is drawn too, inside the axis range
    doc = tables[0].rows[0].doc
    doc["metrics"]["fid_o"]["ci"] = [10.0, 95.0]
    plot = trade_off_plot(tables[0])
    p = plot["points"][0]
    assert p["xci"] == (10.0, 95.0) and p["xbar"][0] < p["cx"] < p["xbar"][1]
    assert plot["x0"] <= p["xbar"][0] and p["xbar"][1] <= plot["x1"]


# ---------------------------------------------------------------------------- entry grid
def _identity_images(ds, table, folder: Path) -> Path:
    """Task-named images: each task's control crop mirrored left-right."""
    folder.mkdir(parents=True)
    for row in table.itertuples():
        np.save(folder / f"{row.task_id}.npy", ds.load_crop(row.control_key)[:, ::-1].copy())
    return folder


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory):
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import get_card
    from cellbench.protocol import build_protocol

    root = tmp_path_factory.mktemp("mini")
    ds = BBBC021Dataset(build_mini_dataset(root / "data"), get_card("bbbc021"))
    table = build_protocol(ds, "test", 0)
    return ds, table, _identity_images(ds, table, root / "images")


def test_entry_grid_holds_control_generated_and_target(mini, tmp_path: Path) -> None:
    from PIL import Image

    ds, table, images = mini
    panels = entry_grid(images, table, ds, tmp_path / "out", per_moa=2)
    assert [p.moa for p in panels] == sorted(table["moa"].unique())
    for panel in panels:
        moa = table[table["moa"] == panel.moa]
        ids = [t.task_id for t in panel.tasks]
        rows = moa[moa["task_id"].isin(ids)]
        assert list(rows["task_id"]) == ids and len(ids) == min(2, len(moa))  # protocol order
        if moa["dose"].nunique() > 1:  # two doses of one compound: one task of each
            assert rows["dose"].nunique() == 2
    assert any(table[table["moa"] == p.moa]["dose"].nunique() > 1 for p in panels)
    for panel in panels:
        rows = table[table["task_id"].isin([t.task_id for t in panel.tasks])]
        pixels = np.asarray(Image.open(tmp_path / "out" / panel.file))
        assert pixels.shape == (2 + 98 * len(rows), 296, 3)
        for i, row in enumerate(rows.itertuples()):
            y = 2 + 98 * i
            control, target = ds.load_crop(row.control_key), ds.load_crop(row.target_key)
            np.testing.assert_array_equal(pixels[y : y + 96, 2:98], control)
            np.testing.assert_array_equal(pixels[y : y + 96, 100:196], control[:, ::-1])
            np.testing.assert_array_equal(pixels[y : y + 96, 198:294], target)
        assert panel.moa in panel.alt and "real target" in panel.alt
    again = entry_grid(images, table, ds, tmp_path / "again", per_moa=2)
    for a, b in zip(panels, again, strict=True):
        assert (tmp_path / "out" / a.file).read_bytes() == (
            tmp_path / "again" / b.file
        ).read_bytes()


def test_entry_grid_refuses_a_folder_without_matching_images(mini, tmp_path: Path) -> None:
    ds, table, _ = mini
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellbenchError, match="no image matched a task"):
        entry_grid(tmp_path / "empty", table, ds, tmp_path / "out")


def test_entry_page_says_why_there_is_no_grid(site, tmp_path: Path) -> None:
    subs, out = site
    page = (out / "entries" / "2026-01-15_toy-model.html").read_text()
    assert "No control | generated | real target grid: the page was built without a dataset" in page
    # with a data folder, an entry without submitted images says so
    build_leaderboard(subs, tmp_path / "site", stamp="S", data_dir=tmp_path / "data")
    page = (tmp_path / "site" / "entries" / "2025-06-01_old-model.html").read_text()
    assert "this entry has no submitted images" in page


def test_build_draws_the_grid_of_an_entry_with_images(site, mini, tmp_path, monkeypatch) -> None:
    """The build's image hook: an entry whose images the archive module yields gets a grid."""
    subs, _ = site
    ds, table, images = mini
    monkeypatch.setattr(
        lb,
        "_entry_images",
        lambda folder: contextlib.nullcontext(
            images if folder.name.endswith("toy-model") else None
        ),
    )
    monkeypatch.setattr(lb._GridSource, "_protocol", lambda self, doc: (ds, table))
    for name in ("a", "b"):
        build_leaderboard(subs, tmp_path / name, stamp="S", data_dir=tmp_path / "data")
    page = (tmp_path / "a" / "entries" / "2026-01-15_toy-model.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)" alt="([^"]+)" class="comparison-image"', page)
    assert len(imgs) == table["moa"].nunique()
    for src, alt in imgs:
        assert (tmp_path / "a" / "entries" / src).is_file() and "control crop" in alt
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files and files == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png")
    )
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    evil = (tmp_path / "a" / "entries" / "2026-01-16_evil.html").read_text()
    assert "this entry has no submitted images" in evil


def test_grid_source_checks_dataset_and_protocol(tmp_path: Path, monkeypatch) -> None:
    from cellbench.protocol import protocol_sha256

    ds, table = make_tiny_sim(tmp_path, monkeypatch)
    source = lb._GridSource(tmp_path / "data")
    doc = {
        "dataset": {"name": "bbbc021-sim", "index_sha256": ds.index_sha256},
        "protocol": {"name": "cellflux-iid", "seed": 0, "sha256": protocol_sha256(table)},
    }
    got_ds, got = source._protocol(doc)
    assert protocol_sha256(got) == protocol_sha256(table) and got_ds.root == ds.root
    wrong = {**doc, "dataset": {"name": "bbbc021-sim", "index_sha256": "0" * 64}}
    with pytest.raises(CellbenchError, match="not the dataset this entry was scored on"):
        source._protocol(wrong)
    with pytest.raises(CellbenchError, match="differs from the entry's"):
        source._protocol({**doc, "protocol": {**doc["protocol"], "seed": 1}})
    with pytest.raises(CellbenchError, match="custom"):
        source._protocol({**doc, "protocol": {"name": "custom", "sha256": "x"}})
    with pytest.raises(CellbenchError, match="not in the build's --data-dir"):
        lb._GridSource(tmp_path / "nowhere")._protocol(doc)
