"""Worker pools from a plain script and from stdin (notebook-like), without a ``__main__`` guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellbench.workers import usable_cpus

REPO = Path(__file__).resolve().parents[1]

# Calls the Python API at top level, as a user's first script does: no `if __name__ == ...`.
UNGUARDED = """\
import sys
import numpy as np
import cellbench
from cellbench.data.layout import MOAS
from cellbench.features.segment import backends
from cellbench.scoring import RewardModel

data, out = sys.argv[1], sys.argv[2]
images = np.load({images!r}, allow_pickle=False)
crops = np.concatenate([images] * 9)[:{n}]
moas = [MOAS[i % len(MOAS)] for i in range(len(crops))]
rewards = RewardModel("bbbc021-sim", data_dir=data, use_moa=False)(crops, moas)
np.savez(out, **{{k: v.numpy() for k, v in rewards.items()}})
print("pool workers:", backends._POOL[0]._max_workers if backends._POOL else 0)
print("done", len(crops))
"""
N_IMAGES = 256  # backends.POOL_MIN_IMAGES: the smallest batch that goes to the pool


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cellbench.data.sim import write_sim_dataset

    data = tmp_path_factory.mktemp("workers") / "data"
    write_sim_dataset(data / "bbbc021-sim", seed=0, scale="tiny")
    return data


@pytest.mark.slow
@pytest.mark.skipif(usable_cpus() < 2, reason="the worker pool needs two CPUs")
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_unguarded_script_uses_the_pool_and_matches_in_process(
    how: str, sim_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cellbench.data.layout import MOAS
    from cellbench.features.segment.backends import POOL_MIN_IMAGES
    from cellbench.scoring import RewardModel

    assert N_IMAGES >= POOL_MIN_IMAGES
    code = UNGUARDED.format(images=str(REPO / "tests/regress/images.npy"), n=N_IMAGES)
    out = tmp_path / "rewards.npz"
    env = {**os.environ, "CELLBENCH_WORKERS": "2", "PYTHONPATH": os.pathsep.join(sys.path)}
    if how == "script":
        script = tmp_path / "score.py"
        script.write_text(code)
        cmd, stdin = [sys.executable, str(script), str(sim_data), str(out)], None
    else:  # like a notebook cell: __main__ has no file
        cmd, stdin = [sys.executable, "-", str(sim_data), str(out)], code
    run = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "BrokenProcessPool" not in run.stderr
    assert run.stdout.splitlines()[-2:] == ["pool workers: 2", f"done {N_IMAGES}"], run.stdout

    # the same rewards in this process, without the pool: identical, bit for bit
    monkeypatch.setenv("CELLBENCH_WORKERS", "1")
    images = np.load(REPO / "tests/regress/images.npy", allow_pickle=False)
    crops = np.concatenate([images] * 9)[:N_IMAGES]
    moas = [MOAS[i % len(MOAS)] for i in range(len(crops))]
    expected = RewardModel("bbbc021-sim", data_dir=sim_data, use_moa=False)(crops, moas)
    got = np.load(out, allow_pickle=False)
    assert sorted(got.files) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value.numpy(), err_msg=name)
