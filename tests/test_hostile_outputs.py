"""Hostile or damaged inputs met by resumed generation, segment, archives, the leaderboard's
downloads, validate-metrics and the sample grid: one line and exit 2, never a partial output."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cellbench.generation import read_generation_record
from tests.conftest import run_cli


def _one_line_error(proc, *fragments: str) -> None:
    """A refused command: exit 2, one line on stderr holding every fragment, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------- generate --resume
def test_resume_regenerates_a_truncated_image(mini_root: Path, tmp_path: Path) -> None:
    proto = tmp_path / "p.csv"
    args = ("--dataset", "bbbc021", "--data-dir", str(mini_root))
    assert run_cli("protocol", *args, "--out", str(proto)).returncode == 0
    out = tmp_path / "imgs"
    gen = ("generate", "identity", "--protocol", str(proto), *args, "--out", str(out))
    assert run_cli(*gen).returncode == 0
    first = {p.name: np.load(p) for p in out.glob("*.npy")}
    torn, wrong = sorted(first)[:2]
    (out / torn).write_bytes((out / torn).read_bytes()[:200])  # a half-written file
    np.save(out / wrong, np.zeros((4, 4), np.float32))  # readable, of another shape and type
    record = json.loads((out / "generation.json").read_text())
    (out / "generation.json").write_text(json.dumps({**record, "complete": False}))
    again = run_cli(*gen, "--resume")
    assert again.returncode == 0, again.stderr
    assert "regenerated 2 unreadable or incomplete image(s)" in again.stderr
    assert read_generation_record(out)["complete"] is True
    assert all(np.array_equal(np.load(out / n), a) for n, a in first.items())
    check = run_cli("images", "check", str(out), "--protocol", str(proto), "--strict")
    assert check.returncode == 0, check.stdout + check.stderr


# ------------------------------------------------------------------------ segment input listing
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_segment_and_pack_refuse_a_fifo_without_blocking(tmp_path: Path) -> None:
    from cellbench.errors import CellbenchError
    from cellbench.features.segment.io import segment_folder
    from cellbench.submission.archive import pack_images

    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    np.save(src / "a.npy", rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    os.mkfifo(src / "b.npy")  # opening it for reading would wait for a writer forever
    res = run_cli("segment", str(src), "--out", str(tmp_path / "seg"))
    _one_line_error(res, str(src / "b.npy"), "is a FIFO (named pipe), not a regular file")
    assert not (tmp_path / "seg").exists()
    with pytest.raises(CellbenchError, match=r"is a FIFO \(named pipe\)"):
        segment_folder(src / "b.npy", tmp_path / "seg")
    with pytest.raises(CellbenchError, match=r"is a FIFO \(named pipe\), not a regular file"):
        pack_images(src, tmp_path / "x.tar.xz")


# --------------------------------------------------------------------- leaderboard CSV downloads
def test_leaderboard_csv_neutralises_formulas(tmp_path: Path) -> None:
    import csv

    from cellbench.leaderboard import build_leaderboard
    from cellbench.leaderboard.build import _csv_cell
    from tests.test_submission import make_submission, metadata

    formula = '=HYPERLINK("http://evil.example/","x")'
    make_submission(
        tmp_path / "subs", "2026-01-16_evil", meta=metadata(model={"name": formula, "version": "1"})
    )
    build_leaderboard(tmp_path / "subs", tmp_path / "site", stamp="x")
    (path,) = (tmp_path / "site" / "downloads").glob("*.csv")
    rows = list(csv.DictReader(path.open(newline="")))
    assert [r["model"] for r in rows] == ["real reference", "'" + formula]
    numbers = [v for r in rows for k, v in r.items() if k.endswith("_ci_low") and v]
    assert numbers and not any(v.startswith("'") for v in numbers)  # numbers are left alone
    (doc,) = (tmp_path / "site" / "downloads").glob("*.json")
    assert json.loads(doc.read_text())["rows"][1]["model"] == formula  # JSON keeps the exact text
    for text in ("+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert _csv_cell(text) == "'" + text
    assert [_csv_cell(v) for v in (-1.5, 0, "a-b", None)] == ["-1.5", "0", "a-b", ""]


def test_leaderboard_site_is_not_built_inside_the_submissions(tmp_path: Path) -> None:
    """A site inside the submissions folder would read as a bad entry at the next build."""
    from cellbench.errors import CellbenchError
    from cellbench.leaderboard import build_leaderboard
    from tests.test_submission import make_submission

    make_submission(tmp_path / "subs", "2026-01-16_toy")
    for out in (tmp_path / "subs" / "site", tmp_path / "subs"):
        with pytest.raises(CellbenchError, match="inside the submissions folder"):
            build_leaderboard(tmp_path / "subs", out, stamp="x")
    assert sorted(p.name for p in (tmp_path / "subs").iterdir()) == ["2026-01-16_toy"]
    build_leaderboard(tmp_path / "subs", tmp_path / "site", stamp="x")  # elsewhere: built


# ---------------------------------------------------------------------------- image archives
def test_unreadable_image_archive_is_one_line(tmp_path: Path) -> None:
    from cellbench.io import sha256_file
    from cellbench.submission.validate import validate_submission
    from tests.test_submission import edit_json, make_submission

    sub = make_submission(tmp_path / "subs", "2026-01-16_toy")
    archive = sub / "images.tar.xz"
    archive.write_bytes(b"garbage")
    edit_json(
        sub / "metadata.json",
        lambda d: d["images"].update(sha256=sha256_file(archive), bytes=len(b"garbage")),
    )
    (problem,) = [str(p) for p in validate_submission(sub)]
    assert "\n" not in problem and str(archive) in problem, problem
    assert "not a tar archive, plain or compressed with gzip, bzip2 or xz" in problem
    assert "(fix: " in problem and "cellbench submission pack" in problem
    res = run_cli("submission", "validate", str(sub))
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 1 and not any(ln.startswith("- method") for ln in lines), lines


# ----------------------------------------------------------------------------- validate-metrics
def test_validate_metrics_cli_refusal_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "vm"
    res = run_cli(
        "validate-metrics", "--out", str(out), "--data-dir", str(tmp_path), "--no-fid",
        "--defects", "blur,nucleus_grow,moa_swap",
    )  # fmt: skip
    _one_line_error(res, "defect(s) blur, moa_swap are measured only", "--no-fid")
    assert not out.exists()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"fid": False, "defects": ["blur"]}, "defect(s) blur are measured only"),
        ({"defects": []}, "--defects names no defect"),
        ({"n_images": 4}, "--n-images 4 is too small"),
        ({"real_n_images": 0, "real_crops": "."}, "--real-n-images 0 is too small"),
        ({"dataset": "bbbc021-nope"}, "bbbc021-nope"),
    ],
)
def test_validate_metrics_refuses_before_making_its_folder(
    tmp_path: Path, kw: dict, message: str
) -> None:
    from cellbench.errors import CellbenchError
    from cellbench.validation.report import run_validation

    out = tmp_path / "vm"
    with pytest.raises(CellbenchError, match=re.escape(message)):
        run_validation(out, data_dir=tmp_path, **kw)
    assert not out.exists()


def test_which_defects_need_inception() -> None:
    from cellbench.validation.defects import DEFECTS
    from cellbench.validation.report import needs_inception

    blind = {d for d in DEFECTS if needs_inception(d)}
    assert {
        "blur",
        "noise",
        "moa_swap",
        "mode_collapse",
        "compound_swap",
        "training_copies",
    } <= blind
    assert not blind & {"nucleus_grow", "cell_remove", "phenotype_erase"}


# ----------------------------------------------------------------------------------- sample grid
def test_sample_grid_writes_the_format_its_name_says(mini_ds, tmp_path: Path) -> None:
    from PIL import Image

    from cellbench.errors import CellbenchError
    from cellbench.protocol import build_protocol, write_protocol
    from cellbench.submission.grid import sample_grid

    table = build_protocol(mini_ds, split="test", seed=0).head(4)
    write_protocol(table, tmp_path / "p.csv")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for task in table["task_id"]:
        np.save(images / f"{task}.npy", rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    for name, fmt in (("g.png", "PNG"), ("g.JPG", "JPEG"), ("g.jpeg", "JPEG")):
        with Image.open(sample_grid(images, tmp_path / "p.csv", tmp_path / name)) as im:
            assert im.format == fmt, name
    for name in ("g.txt", "g.gif", "g"):
        with pytest.raises(CellbenchError, match=r"--out must end in \.png, \.jpg, \.jpeg"):
            sample_grid(images, tmp_path / "p.csv", tmp_path / name)
        assert not (tmp_path / name).exists()
