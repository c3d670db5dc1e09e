"""The real ``cellbench`` command in a subprocess: help, errors, protocol, inspect, images check."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import run_cli


def test_help_lists_groups_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['cellbench', '--help']\n"
        "from cellbench.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'pandas', 'skimage', 'scipy') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout
    for group in ("protocol", "ls", "data", "images"):
        assert group in out.stdout


def test_import_cellbench_does_not_import_torch() -> None:
    code = "import sys, cellbench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_version() -> None:
    from cellbench import __version__

    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"cellbench {__version__}"


def test_ls_datasets_json() -> None:
    res = run_cli("ls", "datasets", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"bbbc021", "bbbc021-sim"}
    assert rows["bbbc021"]["licence"] == "CC BY-NC-SA 3.0"
    assert rows["bbbc021-sim"]["simulated"] is True
    assert rows["bbbc021"]["channels"] == ["actin", "tubulin", "dna"]


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    res = run_cli(
        "protocol",
        "--dataset",
        "bbbc021",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "error:" in lines[0] and "cellbench data download bbbc021" in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "p.csv").exists()
    debug = run_cli("--debug", "protocol", "--dataset", "bbbc021", "--data-dir", str(tmp_path))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_unknown_dataset_suggests() -> None:
    res = run_cli("protocol", "--dataset", "bbbc12")
    assert res.returncode == 2
    assert "unknown dataset 'bbbc12'" in res.stderr and "did you mean" in res.stderr


def test_protocol_command_is_deterministic(mini_root: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a.csv", "b.csv"):
        res = run_cli(
            "protocol",
            "--dataset",
            "bbbc021",
            "--data-dir",
            str(mini_root),
            "--split",
            "test",
            "--seed",
            "0",
            "--out",
            str(tmp_path / name),
        )
        assert res.returncode == 0, res.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    assert outs[0].startswith(b"task_id,control_key,compound,dose,moa,batch,target_key\n")


def test_inspect_command(mini_root: Path) -> None:
    res = run_cli("data", "inspect", str(mini_root), "--json", "--sample", "20")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["counts"]["n_crops"] == 32
    assert report["counts"]["per_split"]["test"] == {"treated": 8, "control": 8}
    assert report["dna_check"]["ok"] is True


def test_inspect_flags_wrong_channel_order(mini_root: Path) -> None:
    for p in mini_root.rglob("*.npy"):
        np.save(p, np.load(p)[..., ::-1].copy())  # DNA moved to channel 0
    res = run_cli("data", "inspect", str(mini_root), "--sample", "20")
    assert res.returncode == 2
    assert "DNA stain looks like channel 0" in res.stderr


def test_images_check_command(mini_root: Path, tmp_path: Path) -> None:
    proto = tmp_path / "p.csv"
    assert (
        run_cli(
            "protocol", "--dataset", "bbbc021", "--data-dir", str(mini_root), "--out", str(proto)
        ).returncode
        == 0
    )
    import pandas as pd

    tasks = pd.read_csv(proto)["task_id"].tolist()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, t in enumerate(tasks):
        np.save(
            imgs / f"{t}.npy",
            np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8),
        )
    ok = run_cli("images", "check", str(imgs), "--protocol", str(proto), "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["good_images"] == len(tasks) and report["problems"] == []
    (imgs / f"{tasks[0]}.npy").write_bytes(b"broken")
    bad = run_cli("images", "check", str(imgs), "--protocol", str(proto))
    assert bad.returncode == 1
    assert f"{tasks[0]}.npy: unreadable or truncated" in bad.stdout


def test_ls_help_names_everything_it_lists() -> None:
    import typer

    from cellbench.cli.main import app

    ls = typer.main.get_group(app).commands["ls"]
    assert set(ls.commands) == {"datasets", "protocols", "models", "metrics", "segmenters"}
    for sub in ls.commands:
        assert sub in (ls.help or ""), f"`cellbench ls --help` does not name {sub!r}"


def test_help_lists_every_command_in_workflow_order() -> None:
    """`cellbench --help` follows a user's workflow; a new command must be placed in the order."""
    import typer
    import typer.main

    from cellbench.cli.app import WORKFLOW_ORDER
    from cellbench.cli.main import app

    group = typer.main.get_command(app)
    with typer.Context(group) as ctx:
        listed = group.list_commands(ctx)
    visible = [n for n in listed if not group.get_command(ctx, n).hidden]
    assert visible == list(WORKFLOW_ORDER)
    out = run_cli("--help")
    assert out.returncode == 0
    # a command's row starts "│ name"; wrapped help lines start "│" and many spaces
    shown = [m.group(1) for m in re.finditer(r"^│ (\S+)", out.stdout, re.M)]
    assert [n for n in shown if n in WORKFLOW_ORDER] == list(WORKFLOW_ORDER)


def test_every_help_text_is_free_of_internal_references() -> None:
    """No command's --help cites the specification or its section numbers."""
    import typer
    import typer.main

    from cellbench.cli.main import app

    def walk(cmd, ctx):
        yield cmd, ctx
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                yield from walk(sub, typer.Context(sub, info_name=name, parent=ctx))

    root = typer.main.get_command(app)
    seen = 0
    for cmd, ctx in walk(root, typer.Context(root, info_name="cellbench")):
        texts = [cmd.help or "", cmd.short_help or ""]
        texts += [getattr(p, "help", None) or "" for p in cmd.params]
        seen += 1
        for text in texts:
            assert not re.search(r"§|\bSPEC\b|\bspec(ification)? section|\bsection \d", text), (
                f"{ctx.command_path}: {text}"
            )
    assert seen > 30


def test_a_dataset_simulated_for_a_command_is_announced(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """`create_sim` says where it simulates before, and the path and size after."""
    from cellbench.data import sim
    from cellbench.data.bbbc021 import open_dataset

    real = sim.write_sim_dataset
    monkeypatch.setattr(
        sim, "write_sim_dataset", lambda root, seed, scale: real(root, seed=seed, scale="tiny")
    )
    ds = open_dataset("bbbc021-sim", tmp_path / "data", create_sim=True)
    err = capsys.readouterr().err
    root = tmp_path / "data" / "bbbc021-sim"
    assert f"bbbc021-sim is not in {root}: simulating it there now" in err
    assert "cellbench data sim --out DIR" in err
    assert re.search(rf"wrote bbbc021-sim: {re.escape(str(root))} \(\d+ files, [\d.]+ [kM]B\)", err)
    assert ds.root == root
    open_dataset("bbbc021-sim", tmp_path / "data", create_sim=True)  # present: no message
    assert capsys.readouterr().err == ""
