"""The generator registry, the two anchors and `cellbench generate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import UnknownNameError
from cellbench.generation import read_generation_record
from cellbench.generators import GENERATORS, get_generator_class, write_generated
from cellbench.protocol import build_protocol
from tests.conftest import run_cli


def test_registry_lists_anchors_and_suggests() -> None:
    assert {"identity", "real-shuffle"} <= set(GENERATORS.names())
    with pytest.raises(UnknownNameError, match="did you mean 'identity'"):
        get_generator_class("identiy")


def test_identity_returns_controls(mini_ds: BBBC021Dataset) -> None:
    gen = get_generator_class("identity").load(mini_ds)
    ctrl = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:3])
    out = gen.generate(ctrl, ["taxol"] * 3, [0.3] * 3, seed=0)
    assert np.array_equal(out, ctrl) and out is not ctrl


def test_real_shuffle_draws_same_compound_training_crops(mini_ds: BBBC021Dataset) -> None:
    gen = get_generator_class("real-shuffle").load(mini_ds)
    ctrl = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:4])
    out = gen.generate(ctrl, ["taxol"] * 4, [3.0] * 4, seed=1)
    idx = mini_ds.index
    pool = idx[(idx["CPD_NAME"] == "taxol") & (idx["DOSE"] == 3.0) & (idx["SPLIT"] == "train")]
    allowed = [mini_ds.load_crop(k) for k in pool["SAMPLE_KEY"]]
    for img in out:
        assert any(np.array_equal(img, a) for a in allowed)
    assert np.array_equal(out, gen.generate(ctrl, ["taxol"] * 4, [3.0] * 4, seed=1))
    with pytest.raises(UnknownNameError, match="did you mean 'taxol'"):
        gen.generate(ctrl[:1], ["taxoll"], [1.0], seed=0)


def test_write_generated_n_per_task(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    table = build_protocol(mini_ds, "test", 0)
    gen = get_generator_class("real-shuffle").load(mini_ds)
    n = write_generated(gen, mini_ds, table, tmp_path / "imgs", n_per_task=2, seed=0, batch_size=3)
    assert n == 2 * len(table)
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert names == sorted(f"{t}_{k}.npy" for t in table["task_id"] for k in (0, 1))


def test_generate_cli_output_is_readable_by_eval(mini_root: Path, tmp_path: Path) -> None:
    proto = tmp_path / "p.csv"
    assert (
        run_cli(
            "protocol", "--dataset", "bbbc021", "--data-dir", str(mini_root), "--out", str(proto)
        ).returncode
        == 0
    )
    res = run_cli(
        "generate",
        "identity",
        "--protocol",
        str(proto),
        "--dataset",
        "bbbc021",
        "--data-dir",
        str(mini_root),
        "--out",
        str(tmp_path / "imgs"),
    )
    assert res.returncode == 0, res.stderr
    check = run_cli("images", "check", str(tmp_path / "imgs"), "--protocol", str(proto), "--json")
    assert check.returncode == 0, check.stdout
    record = read_generation_record(tmp_path / "imgs")  # a weight-free anchor: no hash, 0 weights
    assert record is not None and record["model"] == "identity" and record["complete"] is True
    assert record["checkpoint_sha256"] is None and record["n_parameters"] == 0
    assert record["sampler"] == {} and record["best_of_n"] == 1 and record["dataset"] == "bbbc021"
    bad = run_cli("generate", "nope", "--protocol", str(proto), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown model 'nope'" in bad.stderr


class _StopAfter:
    """Wraps a generator and raises after ``n`` calls: an interrupted `cellbench generate`."""

    def __init__(self, gen: object, n: int) -> None:
        self.gen, self.n, self.calls = gen, n, 0
        self.name = "wrapped"

    def generate(self, *args: object, **kwargs: object) -> np.ndarray:
        if self.calls == self.n:
            raise KeyboardInterrupt
        self.calls += 1
        return self.gen.generate(*args, **kwargs)  # type: ignore[attr-defined]


def test_write_generated_resume_equals_uninterrupted(
    mini_ds: BBBC021Dataset, tmp_path: Path
) -> None:
    table = build_protocol(mini_ds, "test", 0)
    gen = get_generator_class("real-shuffle").load(mini_ds)
    n_batches = -(-len(table) // 2)
    assert n_batches >= 4
    write_generated(gen, mini_ds, table, tmp_path / "full", seed=5, batch_size=2)
    stopped = _StopAfter(gen, 2)
    with pytest.raises(KeyboardInterrupt):
        write_generated(stopped, mini_ds, table, tmp_path / "cut", seed=5, batch_size=2)  # type: ignore[arg-type]
    assert len(list((tmp_path / "cut").glob("*.npy"))) == 4
    again = _StopAfter(gen, n_batches)
    seen: list[tuple[int, int]] = []
    n = write_generated(
        again,  # type: ignore[arg-type]
        mini_ds,
        table,
        tmp_path / "cut",
        seed=5,
        batch_size=2,
        skip_existing=True,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert n == len(table) and again.calls == n_batches - 2
    assert seen[0] == (2, len(table)) and seen[-1] == (len(table), len(table))
    for p in sorted((tmp_path / "full").glob("*.npy")):
        assert np.array_equal(np.load(p), np.load(tmp_path / "cut" / p.name)), p.name


def test_generate_cli_resume_checks_the_settings(mini_root: Path, tmp_path: Path) -> None:
    proto = tmp_path / "p.csv"
    args = ("--dataset", "bbbc021", "--data-dir", str(mini_root))
    assert run_cli("protocol", *args, "--out", str(proto)).returncode == 0
    gen = ("generate", "real-shuffle", "--protocol", str(proto), *args, "--batch-size", "2")
    fresh = run_cli(*gen, "--out", str(tmp_path / "new"), "--resume")
    assert fresh.returncode == 2 and "nothing to resume" in fresh.stderr
    assert not (tmp_path / "new").exists()
    out = tmp_path / "imgs"
    assert run_cli(*gen, "--out", str(out), "--seed", "3").returncode == 0
    first = {p.name: np.load(p) for p in out.glob("*.npy")}
    victims = sorted(first)[:5]
    for name in victims:
        (out / name).unlink()
    other = run_cli(*gen, "--out", str(out), "--seed", "4", "--resume")
    assert other.returncode == 2 and "other settings (seed)" in other.stderr
    assert len(list(out.glob("*.npy"))) == len(first) - 5
    assert read_generation_record(out)["seed"] == 3  # the refused run left the record alone
    same = run_cli(*gen, "--out", str(out), "--seed", "3", "--resume")
    assert same.returncode == 0, same.stderr
    assert read_generation_record(out)["complete"] is True
    assert all(np.array_equal(np.load(out / n), a) for n, a in first.items())
    check = run_cli("images", "check", str(out), "--protocol", str(proto), "--json")
    assert check.returncode == 0, check.stdout
    (out / "generation.json").write_text("[1, 2")
    torn = run_cli(*gen, "--out", str(out), "--seed", "3", "--resume")
    assert torn.returncode == 2 and "unreadable settings of the earlier run" in torn.stderr


def test_read_generation_record_refuses_what_is_not_a_record(tmp_path: Path) -> None:
    """Torn JSON, a JSON list and a foreign object each give one line naming the file."""
    import re

    from cellbench.errors import CellbenchError
    from cellbench.generation import GENERATION_FILE, read_generation_record

    assert read_generation_record(tmp_path) is None
    path = tmp_path / GENERATION_FILE
    for text, message in (
        ('{"format": "cellbench-gen', "unreadable generation record (Unterminated string"),
        ("[1, 2]", "generation record is not a JSON object"),
        ('{"format": "other"}', "not a cellbench generation record"),
    ):
        path.write_text(text)
        with pytest.raises(CellbenchError, match=re.escape(message)) as exc:
            read_generation_record(tmp_path)
        assert str(path) in str(exc.value)
