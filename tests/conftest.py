"""Shared fixtures: a hand-built mini dataset in the IMPA layout, and the real data beside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_or_skip(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test where the folder is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path} (only present beside the repo in CI)")
    return path


def _crop(rng: np.random.Generator) -> np.ndarray:
    img = rng.integers(0, 40, size=(96, 96, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:96, :96]
    cy, cx = rng.integers(30, 66, size=2)
    img[..., 2][(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = 220  # a bright nucleus in the DNA channel
    img[..., 1][(yy - cy) ** 2 + (xx - cx) ** 2 < 600] = 120
    return img


def build_mini_dataset(root: Path, *, state_style: str = "int", seed: int = 0) -> Path:
    """Two batches, DMSO plus three compounds (two doses of taxol), both splits.

    ``state_style`` is "int" (0/1, IMPA) or "str" (control/trt, the other codebase).
    """
    rng = np.random.default_rng(seed)
    rows = []
    plan = [("DMSO", 0.0, "DMSO", False)] * 4 + [
        ("taxol", 0.3, "Microtubule stabilizers", True),
        ("taxol", 3.0, "Microtubule stabilizers", True),
        ("nocodazole", 1.0, "Microtubule destabilizers", True),
        ("cytochalasin D", 0.3, "Actin disruptors", True),
    ]
    n = 0
    for b, (week, plate) in enumerate([("Week1", "22123"), ("Week2", "24121")]):
        for split in ("train", "test"):
            for j, (cpd, dose, moa, treated) in enumerate(plan):
                key = f"{week}_{plate}_B{j:02d}_s{1 if split == 'train' else 2}_{n}"
                n += 1
                rel = root / week / plate
                rel.mkdir(parents=True, exist_ok=True)
                np.save(rel / f"B{j:02d}_s{1 if split == 'train' else 2}_{n - 1}.npy", _crop(rng))
                state = (
                    (1 if treated else 0)
                    if state_style == "int"
                    else ("trt" if treated else "control")
                )
                rows.append(
                    {
                        "SAMPLE_KEY": key,
                        "CPD_NAME": cpd,
                        "DOSE": dose,
                        "ANNOT": moa,
                        "STATE": state,
                        "BATCH": f"batch{b}",
                        "SPLIT": split,
                    }
                )
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "metadata" / "bbbc021_df_all.csv", index=True)
    fp = root / "embeddings" / "csv"
    fp.mkdir(parents=True, exist_ok=True)
    names = ["DMSO", "taxol", "nocodazole", "cytochalasin D"]
    table = pd.DataFrame(
        rng.integers(0, 4, size=(len(names), 1024)),
        index=names,
        columns=[str(i) for i in range(1024)],
    )
    table.to_csv(fp / "emb_fp.csv")
    return root


@pytest.fixture(scope="session", autouse=True)
def session_feature_cache(tmp_path_factory: pytest.TempPathFactory):
    """One feature cache (``$CELLBENCH_CACHE_DIR``) for the whole test run, never the user's.

    The cache is keyed by content (dataset index, crop digests, protocol, segmenter, network:
    docs/scoring.md), so every test that scores the same seeded tiny sim shares its reference and
    training-split features instead of running Inception over them again; a test that checks the
    cache itself points ``$CELLBENCH_CACHE_DIR`` at a folder of its own.
    """
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs pytest-xdist workers (one per CPU): each has a basetemp of its own
        # below the run's folder; the cache sits beside them, shared (its writes are atomic).
        base = base.parent
        # One CPU's worth per worker: no scoring process pools and one torch thread, so the
        # workers do not fight over the cores (a test about pools or threads sets its own).
        mp.setenv("CELLBENCH_WORKERS", "1")
        mp.setenv("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
    path = base / "feature-cache"
    mp.setenv("CELLBENCH_CACHE_DIR", str(path))
    yield path
    mp.undo()


def make_tiny_sim(root: Path, mp: pytest.MonkeyPatch):
    """A tiny ``bbbc021-sim`` (seed 0) under ``root/data`` and its default protocol
    (``cellflux-iid``, seed 0: what ``cellbench eval`` builds without ``--protocol``).

    ``mp`` silences progress for as long as the caller keeps it; features go to the run's shared
    cache (:func:`session_feature_cache`). Returns ``(dataset, protocol table)``.
    """
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import get_card
    from cellbench.data.sim import write_sim_dataset
    from cellbench.protocol_registry import DEFAULT_PROTOCOL, build_named_protocol

    mp.setenv("CELLBENCH_PROGRESS", "0")
    write_sim_dataset(root / "data" / "bbbc021-sim", seed=0, scale="tiny")
    ds = BBBC021Dataset(root / "data" / "bbbc021-sim", get_card("bbbc021-sim"))
    return ds, build_named_protocol(ds, DEFAULT_PROTOCOL, 0)


@pytest.fixture
def mini_root(tmp_path: Path) -> Path:
    return build_mini_dataset(tmp_path / "mini")


@pytest.fixture
def mini_ds(mini_root: Path):
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import get_card

    return BBBC021Dataset(mini_root, get_card("bbbc021"))


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the real ``cellbench`` command in a subprocess."""
    full_env = {**os.environ, "CELLBENCH_PROGRESS": "0", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cellbench", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread: tiny networks run faster on one thread (and far faster
    on a busy shared machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: a tiny UNet (a few thousand parameters) for fast tests of the UNet-based generators
TINY_UNET = {
    "base_channels": 8,
    "channel_mult": [1, 2],
    "attention_resolutions": [12],
    "head_channels": 8,
    "patch_size": 2,
}
