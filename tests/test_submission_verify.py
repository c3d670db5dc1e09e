"""Submissions carry their images; ``submission verify`` re-scores them; forged entries fail.

The fast tests cover the image archive (bounded extraction, the loopback download), the fast
first gate of ``validate`` (per-MoA means, FID/KID details) and the comparison walk. The slow
module fixture makes one real entry on the tiny simulated dataset (``cellbench eval`` of the
identity answer, its images packed) and verifies it by a real re-score; the forged-entry tests
then verify forged copies of it against that same real re-score (the images are unchanged, so
re-scoring them again would give the same document).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.errors import CellbenchError
from cellbench.submission import archive as arch
from cellbench.submission import verify as ver
from cellbench.submission.validate import validate_submission
from tests.conftest import make_tiny_sim
from tests.loopback_http import loopback_server
from tests.test_submission import codes, edit_json, make_submission


# ---------------------------------------------------------------------------- archive bounds
def _tar(tmp: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    path = tmp / "images.tar"
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, None if data is None else io.BytesIO(data))
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "images"
    (src / "taxol").mkdir(parents=True)
    np.save(src / "taxol" / "t1.npy", np.full((96, 96, 3), 3, np.uint8))
    (src / "generation.json").write_text("{}")
    a = arch.pack_images(src, tmp_path / "a.tar.xz")
    b = arch.pack_images(src, tmp_path / "b.tar.xz")
    assert a == b and (tmp_path / "a.tar.xz").read_bytes() == (tmp_path / "b.tar.xz").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    assert sorted(arch.extract_archive(tmp_path / "a.tar.xz", out)) == [
        "generation.json",
        "taxol/t1.npy",
    ]
    assert (out / "taxol" / "t1.npy").read_bytes() == (src / "taxol" / "t1.npy").read_bytes()


def test_pack_refuses_links(tmp_path: Path) -> None:
    src = tmp_path / "images"
    src.mkdir()
    (tmp_path / "secret.npy").write_bytes(b"x")
    (src / "t1.npy").symlink_to(tmp_path / "secret.npy")
    with pytest.raises(CellbenchError, match="regular files only"):
        arch.pack_images(src, tmp_path / "a.tar.xz")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("../evil.npy", b"x"), "relative POSIX path|'\\.\\.'|leaving the target"),
        (_file("/abs.npy", b"x"), "relative POSIX path|absolute path"),
        (_file("notes.txt", b"x"), "neither an image"),
        (_file(".hidden.npy", b"x"), "hidden"),
    ],
)
def test_unsafe_member_names_are_refused(tmp_path: Path, member, message: str) -> None:
    path = _tar(tmp_path, [member])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CellbenchError, match=message):
        arch.extract_archive(path, out)
    assert not any(out.rglob("*")) and not (tmp_path / "evil.npy").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("t1.npy")
    info.type, info.linkname = kind, "/etc/passwd"
    path = _tar(tmp_path, [(info, None)])
    with pytest.raises(CellbenchError, match=r"link|special file"):
        arch.extract_archive(path, tmp_path)


def test_sparse_member_is_refused_from_its_header(tmp_path: Path) -> None:
    info = tarfile.TarInfo("t1.npy")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    path = _tar(tmp_path, [(info, None)])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CellbenchError, match=r"sparse|special"):
        arch.extract_archive(path, out)


def test_member_inflating_past_its_declared_size_is_refused_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member whose data stream runs past its header's size (a lying stream) is cut."""
    path = _tar(tmp_path, [_file("t1.npy", b"a" * 5000)])
    real = tarfile.TarFile.extractfile

    def lying(self, member):  # the stream yields more than the header declares
        fh = real(self, member)
        member.size = 100
        return fh

    monkeypatch.setattr(tarfile.TarFile, "extractfile", lying)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CellbenchError, match="larger than its declared 100 bytes"):
        arch.extract_archive(path, out)


def test_total_and_member_bounds(tmp_path: Path) -> None:
    path = _tar(tmp_path, [_file(f"t{i}.npy", b"z" * 1000) for i in range(5)])
    for kwargs, message in (
        ({"max_members": 3}, "more than 3 members"),
        ({"max_member_bytes": 999}, "larger than 999 bytes"),
        ({"max_total_bytes": 2500}, "more than 2500 bytes in all"),
    ):
        out = tmp_path / f"out{len(message)}"
        out.mkdir()
        with pytest.raises(CellbenchError, match=message):
            arch.extract_archive(path, out, **kwargs)


def test_xz_bomb_is_bounded(tmp_path: Path) -> None:
    """A small .tar.xz whose member inflates to far more than the total bound stops early."""
    src = tmp_path / "big"
    src.mkdir()
    (src / "t1.npy").write_bytes(b"\0" * (6 << 20))
    arch.pack_images(src, tmp_path / "bomb.tar.xz")
    assert (tmp_path / "bomb.tar.xz").stat().st_size < 10_000
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CellbenchError, match="more than 1048576 bytes in all"):
        arch.extract_archive(tmp_path / "bomb.tar.xz", out, max_total_bytes=1 << 20)
    assert not any(out.iterdir())  # refused from the headers: nothing was written


# ------------------------------------------------------------------------------- URL archives
def test_url_archive_is_downloaded_bounded_and_sha_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "images"
    src.mkdir()
    np.save(src / "t1.npy", np.full((96, 96, 3), 9, np.uint8))
    digest = arch.pack_images(src, tmp_path / "a.tar.xz")
    data = (tmp_path / "a.tar.xz").read_bytes()
    sub = tmp_path / "2026-01-01_remote"
    sub.mkdir()
    with loopback_server("/images.tar.xz") as served:
        served.state.data = data
        meta = {"images": {"url": served.url, "sha256": digest, "bytes": len(data)}}
        (sub / "metadata.json").write_text(json.dumps(meta))
        with arch.extract_images(sub, download=False) as folder:
            assert folder is None  # not cached yet, no download asked
        with arch.extract_images(sub, download=True) as folder:
            assert folder is not None and (folder / "t1.npy").is_file()
        assert arch.cached_archive(digest).read_bytes() == data
        n = len(served.state.requests)
        with arch.extract_images(sub, download=True) as folder:
            assert folder is not None
        assert len(served.state.requests) == n  # the cached copy is used
        # a wrong sha256 is refused and nothing lands in the cache
        bad = "0" * 64
        with pytest.raises(CellbenchError, match="not the 0000"):
            arch.fetch_images(served.url, bad)
        assert not arch.cached_archive(bad).exists()
        # bounded while streaming
        arch.cached_archive(digest).unlink()
        with pytest.raises(CellbenchError, match="larger than 100 bytes"):
            arch.fetch_images(served.url, digest, max_bytes=100)
        assert not arch.cached_archive(digest).exists()


# ------------------------------------------------------------- the fast first gate (validate)
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_submission(tmp_path_factory.mktemp("verify-synthetic"))


@pytest.fixture
def sub(synthetic: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "submissions" / synthetic.name
    shutil.copytree(synthetic, dest)
    return dest


def test_every_per_moa_value_set_to_9_fails_validate(sub: Path) -> None:
    def forge(d: dict) -> None:
        for moa in d["per_moa"].values():
            for est in moa.values():
                est["value"] = 9.0

    edit_json(sub / "results.json", forge)
    problems = validate_submission(sub)
    text = "\n".join(map(str, problems))
    assert set(codes(problems)) == {"numbers"}
    assert "/per_moa/Actin disruptors/overall/value is 9.000000 but the mean" in text


def test_missing_archive_and_wrong_sha_fail_validate(sub: Path) -> None:
    (sub / "images.tar.xz").write_bytes(b"not the archive")
    problems = validate_submission(sub)
    assert codes(problems) == ["images"] and "bytes" in str(problems[0])
    (sub / "images.tar.xz").unlink()
    assert "images.tar.xz: is missing" in str(validate_submission(sub)[0])
    edit_json(sub / "metadata.json", lambda d: d.pop("images"))
    assert "/images is missing" in str(validate_submission(sub)[0])


def test_archive_with_an_extra_or_changed_image_fails_validate(sub: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    out.mkdir()
    arch.extract_archive(sub / "images.tar.xz", out)
    np.save(out / "t000000000001.npy", np.ones((96, 96, 3), np.uint8))  # another image
    np.save(out / "extra.npy", np.ones((96, 96, 3), np.uint8))
    digest = arch.pack_images(out, sub / "images.tar.xz")
    size = (sub / "images.tar.xz").stat().st_size
    edit_json(sub / "metadata.json", lambda d: d["images"].update(sha256=digest, bytes=size))
    text = "\n".join(map(str, validate_submission(sub)))
    assert "1 image file(s) the per-image table does not list (first: extra.npy)" in text
    assert "t000000000001.npy decodes to pixels whose sha256 is not" in text


def test_entries_without_images_are_stale_or_self_reported_never_scored(sub: Path) -> None:
    (sub / "images.tar.xz").unlink()
    edit_json(sub / "metadata.json", lambda d: d.pop("images"))
    rep = ver.verify_entry(sub)
    assert (rep.status, rep.reason) == ("no-images", "the entry carries no image archive")
    edit_json(sub / "results.json", lambda d: d.update(metric_suite_version="0"))
    rep = ver.verify_entry(sub)
    assert rep.status == "stale" and "suite 0 entry without images" in rep.reason
    assert "stale" in ver.ACCEPTED and "no-images" not in ver.ACCEPTED


# ----------------------------------------------------------------------- the comparison walk
def test_compare_documents_walks_everything_but_the_volatile_fields() -> None:
    a = {"metrics": {"fid_o": {"value": 40.0}, "new_metric": {"value": 1.0}}, "wall_time_s": 3}
    b = json.loads(json.dumps(a))
    b["wall_time_s"] = 9
    b["environment"] = {"host": "x"}
    assert ver.compare_documents(a, b) == []
    b["metrics"]["new_metric"]["value"] = 1.01
    b["metrics"]["fid_o"]["extra"] = True
    found = {d.pointer: d for d in ver.compare_documents(a, b)}
    assert set(found) == {"/metrics/new_metric/value", "/metrics/fid_o/extra"}
    assert str(found["/metrics/new_metric/value"]) == (
        "/metrics/new_metric/value: submitted 1.0, computed 1.01"
    )
    # within rounding: a last-digit flip of a 6-decimal value is not a difference
    b = json.loads(json.dumps(a))
    b["metrics"]["new_metric"]["value"] = 1.000001
    assert ver.compare_documents(a, b) == []


# ---------------------------------------------------------- a real entry, re-scored (slow)
@pytest.fixture(scope="module")
def tiny_entry(tmp_path_factory: pytest.TempPathFactory):
    """The identity answer on the tiny sim, scored, packed and verified once by a real re-score."""
    from cellbench.evaluation import evaluate
    from cellbench.protocol import write_protocol

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("verify")
    ds, table = make_tiny_sim(root, mp)
    write_protocol(table, root / "protocol.csv")
    images = root / "images"
    images.mkdir()
    for r in table.itertuples():
        np.save(images / f"{r.task_id}.npy", ds.load_crop(r.control_key))
    entry = root / "submissions" / "2026-01-15_identity"
    entry.mkdir(parents=True)
    evaluate(
        images,
        "bbbc021-sim",
        data_dir=root / "data",
        protocol=root / "protocol.csv",
        seed=0,
        out=entry / "results.json",
    )
    digest = arch.pack_images(images, entry / arch.ARCHIVE_NAME)
    size = (entry / arch.ARCHIVE_NAME).stat().st_size
    meta = {"images": {"archive": arch.ARCHIVE_NAME, "sha256": digest, "bytes": size}}
    (entry / "metadata.json").write_text(json.dumps(meta))
    seen: dict = {}
    real = ver.rescore_images

    def recording(*args, **kwargs):
        seen["out"] = real(*args, **kwargs)
        return seen["out"]

    mp.setattr(ver, "rescore_images", recording)
    rep = ver.verify_entry(entry, data_dir=root / "data")
    mp.setattr(ver, "rescore_images", real)
    yield {"root": root, "entry": entry, "report": rep, "rescored": seen["out"], "mp": mp}
    mp.undo()


def _forged(tiny_entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the real entry whose re-score is the fixture's real one (same images)."""
    dest = tmp_path / tiny_entry["entry"].name
    shutil.copytree(tiny_entry["entry"], dest)
    monkeypatch.setattr(ver, "rescore_images", lambda *a, **k: tiny_entry["rescored"])
    return dest


@pytest.mark.slow
def test_a_real_entry_verifies(tiny_entry) -> None:
    rep = tiny_entry["report"]
    print(f"verify of the tiny identity entry: {rep.seconds:.1f} s")
    assert rep.status == "verified", [str(d) for d in rep.differences] or rep.reason
    assert rep.differences == [] and rep.seconds > 0
    doc, table = tiny_entry["rescored"]
    assert doc["metrics"]["fid_o"]["value"] is not None and b"pixel_sha256" in table


@pytest.mark.slow
def test_hand_set_fid_o_fails_verify_naming_the_field(
    tiny_entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _forged(tiny_entry, tmp_path, monkeypatch)
    edit_json(entry / "results.json", lambda d: d["metrics"]["fid_o"].update(value=1.5))
    rep = ver.verify_entry(entry, data_dir=tiny_entry["root"] / "data")
    assert rep.status == "failed"
    assert [d.pointer for d in rep.differences] == ["/metrics/fid_o/value"]
    assert rep.differences[0].submitted == 1.5
    # the fast gate sees it too: FID_o no longer agrees with its own details
    text = "\n".join(map(str, validate_submission(entry, require_current_suite=False)))
    assert "/fid_detail/model/fid_o: is " in text and "/metrics/fid_o/value is 1.5" in text
    genuine = "\n".join(
        map(str, validate_submission(tiny_entry["entry"], require_current_suite=False))
    )
    assert "/fid_detail" not in genuine and "per_moa" not in genuine  # the real entry agrees


@pytest.mark.slow
def test_per_moa_set_to_9_fails_verify(tiny_entry, tmp_path: Path, monkeypatch) -> None:
    entry = _forged(tiny_entry, tmp_path, monkeypatch)

    def forge(d: dict) -> None:
        for moa in d["per_moa"].values():
            for est in moa.values():
                est["value"] = 9.0

    edit_json(entry / "results.json", forge)
    rep = ver.verify_entry(entry, data_dir=tiny_entry["root"] / "data")
    pointers = {d.pointer for d in rep.differences}
    doc = json.loads((entry / "results.json").read_text())
    expected = {f"/per_moa/{m}/{k}/value" for m, v in doc["per_moa"].items() for k in v}
    assert rep.status == "failed" and expected <= pointers


@pytest.mark.slow
def test_consistently_forged_entry_fails_verify(tiny_entry, tmp_path: Path, monkeypatch) -> None:
    """Per-image table edited, every mean recomputed from it and FID set low: validate's first
    gate cannot see it (the numbers agree with the table), verify names the fields."""
    from cellbench.results.builder import _estimates, _grouped

    entry = _forged(tiny_entry, tmp_path, monkeypatch)
    table = pd.read_csv(entry / "results.per_image.csv")
    table["overall"] = table["overall"] + 5.0
    table.to_csv(entry / "results.per_image.csv", index=False, float_format="%.6g")
    values = {"overall": table["overall"].to_numpy()}

    def forge(d: dict) -> None:
        d["metrics"].update(_estimates(values, ("overall",), d["seed"]))
        for g, est in _grouped(
            values, ("overall",), table["compound"].to_numpy(), d["seed"]
        ).items():
            d["per_compound"][g].update(est)
        for g, est in _grouped(
            values, ("overall",), table["true_moa"].to_numpy(), d["seed"]
        ).items():
            d["per_moa"][g].update(est)
        d["metrics"]["fid_o"]["value"] = 3.0

    edit_json(entry / "results.json", forge)
    rep = ver.verify_entry(entry, data_dir=tiny_entry["root"] / "data")
    pointers = [d.pointer for d in rep.differences]
    assert rep.status == "failed"
    assert "/metrics/overall/value" in pointers and "/metrics/fid_o/value" in pointers
    assert any(
        p.startswith("results.per_image.csv:task ") and p.endswith("/overall") for p in pointers
    )
    assert any(p.startswith("/per_moa/") for p in pointers)


@pytest.mark.slow
def test_other_suite_is_refused_naming_it(tiny_entry, tmp_path: Path) -> None:
    """The real re-score path refuses before scoring when the suite differs."""
    entry = tmp_path / tiny_entry["entry"].name
    shutil.copytree(tiny_entry["entry"], entry)
    edit_json(entry / "results.json", lambda d: d.update(metric_suite_version="0"))
    rep = ver.verify_entry(entry, data_dir=tiny_entry["root"] / "data")
    assert rep.status == "refused" and rep.seconds < 60
    assert "metric suite: the entry was scored under suite 0" in (rep.reason or "")


@pytest.mark.slow
def test_cli_verify_prints_time_writes_the_report_and_the_board_ranks_it(
    tiny_entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cellbench submission verify DIR --report` (as CI runs it; re-score as in the fixture):
    a line per entry with its seconds, a difference line per forged field, exit 1 on any; the
    report verifies exactly those results for `leaderboard build --verified`."""
    from typer.testing import CliRunner

    from cellbench.cli.main import app
    from cellbench.leaderboard.build import verification_of
    from cellbench.submission.validate import check_submission

    subs = tmp_path / "submissions"
    _forged(tiny_entry, subs, monkeypatch)
    forged = shutil.copytree(subs / "2026-01-15_identity", subs / "2026-01-16_forged")
    edit_json(forged / "results.json", lambda d: d["metrics"]["fid_o"].update(value=1.5))
    report = tmp_path / "report.json"
    res = CliRunner().invoke(
        app,
        ["submission", "verify", str(subs), "--report", str(report), "--data-dir",
         str(tiny_entry["root"] / "data")],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("2026-01-15_identity: verified (") and lines[0].endswith(" s)")
    assert lines[1].startswith("2026-01-16_forged: failed (")
    assert lines[2] == "2026-01-16_forged: /metrics/fid_o/value: submitted 1.5, computed " + str(
        tiny_entry["rescored"][0]["metrics"]["fid_o"]["value"]
    )
    records = ver.read_reports([report])
    assert verification_of(check_submission(subs / "2026-01-15_identity"), records) == "verified"
    assert verification_of(check_submission(forged), records) == "self-reported"
    # sharding by entry: two shard reports cover both entries once, merged exactly
    for k in (1, 2):
        CliRunner().invoke(
            app,
            ["submission", "verify", str(subs), "--shard", f"{k}/2", "--report",
             str(tmp_path / f"r{k}.json"), "--data-dir", str(tiny_entry["root"] / "data")],
        )  # fmt: skip
    merged = ver.read_reports([tmp_path / "r1.json", tmp_path / "r2.json"])
    assert {k: v["status"] for k, v in merged.items()} == {
        "2026-01-15_identity": "verified",
        "2026-01-16_forged": "failed",
    }
    with pytest.raises(CellbenchError, match="appears in two reports"):
        ver.read_reports([report, tmp_path / "r1.json"])


@pytest.mark.slow
def test_rescore_remakes_an_older_suite_entry_and_leaves_entries_without_images(
    tiny_entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`leaderboard rescore` replaces results.json and the table with the re-score of the images
    (here the fixture's real re-score, written as `rescore_images` writes it), records it in the
    metadata, and leaves an entry without images alone."""
    from cellbench.leaderboard.rescore import rescore_all
    from cellbench.metrics.rewards import SUITE_VERSION

    subs = tmp_path / "submissions"
    entry = shutil.copytree(tiny_entry["entry"], subs / "2026-01-15_identity")
    edit_json(entry / "results.json", lambda d: d.update(metric_suite_version="0"))
    (entry / "results.per_image.csv").write_text("old table\n")
    bare = shutil.copytree(entry, subs / "2026-01-14_bare")
    (bare / "images.tar.xz").unlink()
    edit_json(bare / "metadata.json", lambda d: d.pop("images"))
    before = {p.name: p.read_bytes() for p in bare.iterdir()}
    doc, table = tiny_entry["rescored"]
    calls = []

    def fake(images: Path, old: dict, work: Path, **kwargs):
        calls.append((sorted(p.name for p in images.iterdir())[:1], old["metric_suite_version"]))
        (work / "results.json").write_text(json.dumps(doc))
        (work / "results.per_image.csv").write_bytes(table)
        return doc, table

    monkeypatch.setattr(ver, "rescore_images", fake)
    reps = {r.entry: r for r in rescore_all(subs, data_dir=tiny_entry["root"] / "data")}
    assert reps["2026-01-14_bare"].status == "no-images"
    assert {p.name: p.read_bytes() for p in bare.iterdir()} == before
    assert reps["2026-01-15_identity"].status == "rescored" and calls[0][1] == "0"
    assert json.loads((entry / "results.json").read_text()) == doc
    assert (entry / "results.per_image.csv").read_bytes() == table
    meta = json.loads((entry / "metadata.json").read_text())
    assert meta["rescored"]["metric_suite_version"] == SUITE_VERSION
    assert meta["rescored"]["from_suite"] == "0" and "images" in meta
    assert not list(entry.glob(".*")) and not list(subs.glob(".rescore-*"))
