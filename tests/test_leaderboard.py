"""``cellbench leaderboard build``: tables, ranking, stale entries, reported rows, plot, determinism."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cellbench.errors import CellbenchError
from cellbench.leaderboard import build_leaderboard
from cellbench.leaderboard.build import MARKER, VALIDATION_DOC, columns
from cellbench.metrics.rewards import SUITE_VERSION
from tests.conftest import REPO, run_cli
from tests.test_submission import edit_json, make_submission, metadata

EVIL = "<img src=x onerror=\"document.title='pwned'\"><script>window.__xss=1</script>"
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


def demo_submissions(root: Path) -> Path:
    """Four entries: two models (one named with HTML/JS), an anchor, and a stale one."""
    subs = root / "submissions"

    def fid(folder: Path, value: float) -> None:
        edit_json(folder / "results.json", lambda d: d["metrics"]["fid_o"].update(value=value))

    good = make_submission(
        subs, "2026-01-15_toy-model", seed=0, meta=metadata(sample_grid="samples.png")
    )
    (good / "samples.png").write_bytes(PNG_1PX)
    fid(good, 40.0)
    evil = make_submission(
        subs,
        "2026-01-16_evil",
        seed=1,
        meta=metadata(model={"name": EVIL, "version": "1"}, best_of_n={"used": True, "n": 4}),
    )
    fid(evil, 25.0)
    edit_json(evil / "results.json", lambda d: d.update(best_of_n=4))  # as eval records it
    anchor = make_submission(
        subs,
        "2026-01-17_identity",
        seed=2,
        meta=metadata(kind="anchor", model={"name": "identity", "version": "1"}),
    )
    fid(anchor, 60.0)
    old = make_submission(subs, "2025-06-01_old-model", seed=3)
    edit_json(old / "results.json", lambda d: d.update(metric_suite_version="0"))
    # an older suite's entry without its images: it cannot be re-scored, so it is shown stale
    (old / "images.tar.xz").unlink()
    edit_json(old / "metadata.json", lambda d: d.pop("images"))
    return subs


def verified_report(subs: Path, names: list[str], path: Path) -> Path:
    """A report as `cellbench submission verify --report` writes it for entries it verified
    (the re-scoring itself is tested in tests/test_submission_verify.py)."""
    from cellbench.io import sha256_bytes
    from cellbench.submission.verify import EntryReport, report_document

    reps = [
        EntryReport(
            n,
            "verified",
            results_sha256=sha256_bytes((subs / n / "results.json").read_bytes()),
            per_image_sha256=sha256_bytes((subs / n / "results.per_image.csv").read_bytes()),
        )
        for n in names
    ]
    path.write_text(json.dumps(report_document(reps, None)))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("board")
    subs = demo_submissions(root)
    out = root / "site"
    names = ["2026-01-15_toy-model", "2026-01-16_evil", "2026-01-17_identity"]
    report = verified_report(subs, names, root / "verified.json")
    build_leaderboard(subs, out, stamp="STAMP-1", verified=[report])
    return subs, out


def _rows(html: str, table_id: str) -> list[str]:
    section = html.split(f'id="{table_id}"', 1)[1].split("</section>", 1)[0]
    body = section.split('<tbody class="entries">', 1)[1].split("</tbody>", 1)[0]
    return re.findall(r'<tr data-entry="([^"]+)"', body)


def _table_ids(html: str) -> list[str]:
    return re.findall(r'<section class="board" id="([^"]+)"', html)


def test_tables_ranking_and_stale_entries(site: tuple[Path, Path]) -> None:
    subs, out = site
    html = (out / "index.html").read_text()
    current, stale = _table_ids(html)
    assert current.startswith(f"current-bbbc021-sim-suite{SUITE_VERSION}-")
    assert stale.startswith("stale-bbbc021-sim-suite0-")
    rows = _rows(html, current)
    assert sorted(rows) == ["2026-01-15_toy-model", "2026-01-16_evil", "2026-01-17_identity"]
    overall = {
        r: json.loads((subs / r / "results.json").read_text())["metrics"]["overall"]["value"]
        for r in rows
    }
    assert rows == sorted(rows, key=lambda r: -overall[r])  # best overall first
    ranks = re.findall(
        r'<tr data-entry="([^"]+)"[^>]*>\s*<td class="num" data-sort="(\d*)">', html.split(stale)[0]
    )
    ranked = {r: k for r, k in ranks}
    assert ranked["2026-01-17_identity"] == ""  # the anchor is never ranked
    models = [r for r in rows if r != "2026-01-17_identity"]
    assert [ranked[r] for r in models] == ["1", "2"]
    assert _rows(html, stale) == ["2025-06-01_old-model"]
    stale_section = html.split(f'id="{stale}"', 1)[1].split("</section>", 1)[0]
    assert ">rank<" not in stale_section and 'class="badge stale"' in html
    assert "simulated" in html  # bbbc021-sim is labelled as such


def test_every_metric_with_direction_and_interval(site: tuple[Path, Path]) -> None:
    _, out = site
    html = (out / "index.html").read_text()
    head = html.split('<tbody class="reference">', 1)[0].rsplit("<thead>", 1)[1]
    for col in columns():
        arrow = "↑" if col.higher_is_better else "↓"
        assert re.search(rf">{re.escape(col.label)} <span class=\"dir\"[^>]*>{arrow}<", head), col
    assert "real reference" in html and "split half" in html
    assert re.search(r'<span class="ci">\[-?\d+\.\d+, -?\d+\.\d+\]</span>', html)
    assert VALIDATION_DOC in html and "How we know the metrics work" in html


def test_html_in_a_model_name_is_text(site: tuple[Path, Path]) -> None:
    _, out = site
    for page in [out / "index.html", out / "entries" / "2026-01-16_evil.html"]:
        html = page.read_text()
        assert "<script>window.__xss" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_reported_rows_are_separate_and_cited(site: tuple[Path, Path]) -> None:
    _, out = site
    html = (out / "index.html").read_text()
    verified, reported = html.split('<h2 id="reported">', 1)
    assert "CellFluxRL + best-of-4" not in verified
    assert "arXiv:2603.21743" in reported and "arXiv:2502.09775" in reported
    assert "3.15" in reported and "18.7" in reported and "Protocol differences" in reported
    assert reported.count('class="badge reported"') == 8  # 5 + 3 rows, each labelled


def test_plot_has_a_point_per_current_entry_and_the_reference(site: tuple[Path, Path]) -> None:
    _, out = site
    html = (out / "index.html").read_text()
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert svg.count("<circle") == 3 and svg.count('class="pt reference"') == 1
    assert "FID_o" in svg and "overall reward" in svg
    assert "&lt;img src=x onerror=&#34;" in svg and "<img" not in svg  # labels escaped


def test_self_contained_page(site: tuple[Path, Path]) -> None:
    _, out = site
    for page in [out / "index.html", *sorted((out / "entries").glob("*.html"))]:
        html = page.read_text()
        assert "<script src" not in html and "<link" not in html
        assert not re.search(r'src="https?:', html)
        assert "Content-Security-Policy" in html


def test_detail_page(site: tuple[Path, Path]) -> None:
    subs, out = site
    page = (out / "entries" / "2026-01-15_toy-model.html").read_text()
    doc = json.loads((subs / "2026-01-15_toy-model" / "results.json").read_text())
    for moa in doc["per_moa"]:
        assert f">{moa}</th>" in page
    for text in ("A. Researcher", "https://github.com/example/toy", "Provenance", "MIT"):
        assert text in page
    assert 'src="2026-01-15_toy-model/samples.png"' in page
    files = out / "entries" / "2026-01-15_toy-model"
    assert (files / "samples.png").read_bytes() == PNG_1PX
    assert (files / "results.json").read_bytes() == (
        subs / "2026-01-15_toy-model" / "results.json"
    ).read_bytes()
    evil = (out / "entries" / "2026-01-16_evil.html").read_text()
    assert "No sample grid was submitted" in evil and "best-of-N</th><td>yes, N = 4" in evil


def test_same_inputs_same_bytes_except_the_stamp(site: tuple[Path, Path], tmp_path: Path) -> None:
    subs, out = site
    again = tmp_path / "again"
    build_leaderboard(subs, again, stamp="STAMP-2", verified=[subs.parent / "verified.json"])
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert first == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in first:
        a, b = (out / rel).read_bytes(), (again / rel).read_bytes()
        if rel == Path("index.html"):
            diff = [
                (x, y)
                for x, y in zip(a.decode().splitlines(), b.decode().splitlines(), strict=True)
                if x != y
            ]
            assert len(diff) == 1 and "STAMP-1" in diff[0][0] and "STAMP-2" in diff[0][1]
        else:
            assert a == b, rel


def test_rebuild_replaces_a_previous_build_only(site: tuple[Path, Path], tmp_path: Path) -> None:
    subs, _ = site
    out = tmp_path / "site"
    build_leaderboard(subs, out, stamp="a")
    (out / "stale-file.html").write_text("old")
    build_leaderboard(subs, out, stamp="b")
    assert not (out / "stale-file.html").exists() and (out / MARKER).is_file()
    other = tmp_path / "docs"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(CellbenchError, match="not a leaderboard build"):
        build_leaderboard(subs, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_invalid_submission_stops_the_build(tmp_path: Path) -> None:
    broken = tmp_path / "submissions"
    make_submission(broken, "2026-02-01_ok")
    bad = make_submission(broken, "2026-02-02_bad", seed=5)
    edit_json(bad / "results.json", lambda d: d["metrics"]["moa"].update(value=0.9))
    out = tmp_path / "site"
    res = run_cli("leaderboard", "build", "--submissions", str(broken), "--out", str(out))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "2026-02-02_bad/results.json" in lines[0]
    assert "/metrics/moa/value" in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site.")]  # no leftovers


def test_cli_build(site: tuple[Path, Path], tmp_path: Path) -> None:
    subs, _ = site
    report = subs.parent / "verified.json"
    res = run_cli(
        "leaderboard", "build", "--submissions", str(subs), "--out", str(tmp_path / "s"),
        "--verified", str(report),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "4 entries, 1 ranked table(s), 0 self-reported, 1 stale table(s)" in res.stderr
    assert (tmp_path / "s" / "index.html").is_file()


def test_committed_submissions_build(tmp_path: Path) -> None:
    entries = sorted((REPO / "submissions").glob("*_*/results.json"))
    if not entries:
        pytest.skip("no reference entries committed yet (bench/pipelines/make_submissions.py)")
    summary = build_leaderboard(REPO / "submissions", tmp_path / "site", stamp="x")
    assert summary.n_entries == len(entries)
    html = (tmp_path / "site" / "index.html").read_text()
    for results in entries:
        assert f'data-entry="{results.parent.name}"' in html


def test_one_table_per_named_protocol_the_papers_one_labelled(tmp_path: Path) -> None:
    """cellflux-iid, cellflux-5120 and a result without a protocol name (an older cellbench, suite 2,
    the whole test split) make three tables, in registry order, the papers' protocol labelled."""
    from cellbench.results.builder import write_results
    from cellbench.submission.validate import accepted_protocols
    from tests.test_submission import _per_image, results_doc, with_images

    subs = tmp_path / "submissions"
    make_submission(subs, "2026-01-15_iid-model", seed=0)
    entries = {p["name"]: p for p in accepted_protocols() if p["dataset"] == "bbbc021-sim"}
    for folder, name, seed in (
        ("2026-01-16_paper-model", "cellflux-5120", 1),
        ("2026-01-17_old", "custom", 2),
    ):
        entry = entries[name]
        table = _per_image(entry["n_tasks"], seed)
        doc = results_doc(table)
        doc["protocol"] = {
            "name": name,
            "version": entry["protocol_version"],
            "sha256": entry["protocol_sha256"],
            "n_tasks": entry["n_tasks"],
            "built": True,
            "split": entry["split"],
            "seed": 0,
        }
        if name == "custom":
            # as a result of a cellbench before named protocols (metric suite 2): a stale table
            del doc["protocol"]["name"]
            doc["metric_suite_version"] = "2"
        (subs / folder).mkdir(parents=True)
        write_results(doc, table, None, subs / folder / "results.json")
        meta = metadata() if name == "custom" else with_images(subs / folder, table)
        (subs / folder / "metadata.json").write_text(json.dumps(meta, indent=2))
    out = tmp_path / "site"
    build_leaderboard(subs, out, stamp="S")
    html = (out / "index.html").read_text()
    ids = _table_ids(html)
    assert [i.split("-")[5] for i in ids] == ["cellflux", "cellflux", "custom"], ids
    assert "-cellflux-iid-" in ids[0] and "-cellflux-5120-" in ids[1]
    assert [_rows(html, i) for i in ids] == [
        ["2026-01-15_iid-model"],
        ["2026-01-16_paper-model"],
        ["2026-01-17_old"],
    ]
    section = html.split(f'id="{ids[1]}"', 1)[1].split("</section>", 1)[0]
    assert "protocol cellflux-5120 v1 (the papers&#39; protocol)" in section
    assert "papers" not in html.split(f'id="{ids[0]}"', 1)[1].split("</section>", 1)[0]
    assert "custom protocol" in html.split(f'id="{ids[2]}"', 1)[1].split("</section>", 1)[0]


def test_overall_without_moa_is_labelled_and_never_ranked() -> None:
    """A --no-fid overall (validator refuses it; a hand-made table could hold one) is not ranked."""
    from types import SimpleNamespace

    from cellbench.leaderboard.build import Row, _rank, metric_cell

    def row(name: str, overall: float, comparable: bool | None) -> Row:
        doc: dict = {"metrics": {"overall": {"value": overall, "ci": [0.0, 1.0], "n": 5}}}
        if comparable is None:  # a result written before the flag: fid_computed decides
            doc["fid_computed"] = False
        else:
            doc["overall_comparable"] = comparable
            doc["overall_components"] = ["nuc_in_cyto", "roundness"]
        return Row(SimpleNamespace(name=name, results=doc, metadata={"kind": "model"}))

    rows = [row("a", 1.0, True), row("b", 9.0, False), row("c", 0.5, True), row("d", 8, None)]
    _rank(rows)
    assert [r.folder for r in rows] == ["a", "c", "b", "d"]
    assert [r.rank for r in rows] == [1, 2, None, None]
    overall = next(c for c in columns() if c.key == "overall")
    cell = metric_cell(rows[2].doc, overall)
    assert cell.text == "9.00" and cell.interval == "not comparable: no moa (--no-fid)"
    assert "nuc_in_cyto + roundness" in cell.title
    assert metric_cell(rows[0].doc, overall).interval == "[0.00, 1.00]"


def test_distance_cells_show_interval_and_small_n_warning() -> None:
    from cellbench.leaderboard.build import metric_cell

    cols = {c.key: c for c in columns()}
    doc = {
        "metrics": {
            "fid_o": {"value": 50.0, "n_gen": 9, "n_real": 9, "ci": [45.0, 56.5], "n_boot": 1000},
            "fid_c": {
                "value": 90.0,
                "n_gen": 9,
                "n_real": 9,
                "small_n": {
                    "threshold": 30,
                    "compounds": 3,
                    "below": 2,
                    "min_images": 4,
                    "warning": "FID_c averages 2 of 3 compounds ...",
                },
            },
        }
    }
    fid_o = metric_cell(doc, cols["fid_o"])
    assert fid_o.interval == "[45.00, 56.50]" and "1000 resamples" in fid_o.title
    fid_c = metric_cell(doc, cols["fid_c"])
    assert fid_c.interval == "⚠ 2/3 compounds n < 30" and "FID_c averages 2 of 3" in fid_c.title


def test_only_verified_entries_are_ranked(site: tuple[Path, Path], tmp_path: Path) -> None:
    """Without a report nothing is ranked: the entries are shown apart, labelled self-reported;
    a report for other bytes (results edited after verification) does not verify them."""
    subs, _ = site
    copy = tmp_path / "submissions"
    shutil.copytree(subs, copy)
    report = verified_report(
        copy, ["2026-01-15_toy-model", "2026-01-17_identity"], tmp_path / "r.json"
    )
    edit_json(copy / "2026-01-15_toy-model" / "results.json", lambda d: d.update(wall_time_s=2.0))
    summary = build_leaderboard(copy, tmp_path / "site", stamp="x", verified=[report])
    assert (summary.n_tables, summary.n_self_reported, summary.n_stale) == (1, 1, 1)
    html = (tmp_path / "site" / "index.html").read_text()
    ranked, self_reported, _stale = _table_ids(html)
    assert ranked.startswith("current-") and self_reported.startswith("unverified-")
    assert _rows(html, ranked) == ["2026-01-17_identity"]  # an anchor: shown, not ranked
    assert sorted(_rows(html, self_reported)) == ["2026-01-15_toy-model", "2026-01-16_evil"]
    section = html.split(f'id="{self_reported}"', 1)[1].split("</section>", 1)[0]
    assert ">rank<" not in section and 'class="badge self-reported"' in section
    page = (tmp_path / "site" / "entries" / "2026-01-16_evil.html").read_text()
    assert "self-reported" in page and "rank " not in page
    summary = build_leaderboard(copy, tmp_path / "site2", stamp="x")
    assert (summary.n_tables, summary.n_self_reported) == (0, 1)


def test_an_older_suite_entry_with_images_must_be_rescored(tmp_path: Path) -> None:
    subs = tmp_path / "submissions"
    old = make_submission(subs, "2025-06-01_old-model", seed=3)
    edit_json(old / "results.json", lambda d: d.update(metric_suite_version="0"))
    with pytest.raises(CellbenchError, match="leaderboard rescore"):
        build_leaderboard(subs, tmp_path / "site", stamp="x")


def test_site_folder_has_the_usual_permissions(tmp_path: Path) -> None:
    """The site is built in a temporary folder (mkdtemp: 0700) and moved into place: it must get a
    published folder's usual mode, not stay private."""
    import os

    subs = tmp_path / "submissions"
    subs.mkdir()
    old = os.umask(0o022)
    try:
        build_leaderboard(subs, tmp_path / "site", stamp="S")
    finally:
        os.umask(old)
    assert (tmp_path / "site").stat().st_mode & 0o777 == 0o755
