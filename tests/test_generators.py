"""The generator registry, the two anchors and `cellbench generate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import UnknownNameError
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
    bad = run_cli("generate", "nope", "--protocol", str(proto), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown model 'nope'" in bad.stderr
