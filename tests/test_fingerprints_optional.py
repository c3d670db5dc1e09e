"""A dataset without compound fingerprints (``emb_fp.csv``): what needs them says how to add them.

The download installs BBBC021 without fingerprints when the archive lacks them (README,
"Download"). Scoring and class-conditioned training (PhenDiff) work; CellFlux, IMPA and CellFluxRL,
which condition on fingerprints, stop with a one-line error naming the missing file and the command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import default_collate

from cellbench.data import layout
from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.catalog import get_card
from cellbench.data.torch_dataset import PairedCropDataset
from cellbench.errors import DataError
from cellbench_baselines.config import resolve_config
from tests.conftest import TINY_UNET, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_CELLFLUX = {"batch_size": 4, "steps": 2, "ckpt_every": 2, "sample_steps": 2, "unet": TINY_UNET}


def _without_fingerprints(root: Path) -> BBBC021Dataset:
    (root / layout.FINGERPRINT_RELPATH).unlink()
    return BBBC021Dataset(root, get_card("bbbc021"))


def _says_how(err: pytest.ExceptionInfo, root: Path, who: str) -> None:
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{root / layout.FINGERPRINT_RELPATH}: "), who
    assert f"`cellbench data download bbbc021 --data-dir {root} --fingerprints emb_fp.csv`" in text
    assert f"or copy it to {root / layout.FINGERPRINT_RELPATH}" in text, who


def test_paired_crops_and_class_conditioned_training_need_no_fingerprints(mini_root: Path):
    from cellbench_baselines.phendiff import PhenDiff

    with_fp = PairedCropDataset(BBBC021Dataset(mini_root, get_card("bbbc021")), "train")[0]
    ds = _without_fingerprints(mini_root)
    item = PairedCropDataset(ds, "train")[0]
    assert "fingerprint" not in item and with_fp["fingerprint"].shape == (1024,)
    assert list(item) == [k for k in with_fp if k != "fingerprint"]  # the rest, same order
    for key in ("control", "target"):
        assert np.array_equal(item[key].numpy(), with_fp[key].numpy())
    model = PhenDiff.trainable(ds, resolve_config(PhenDiff.presets, {"unet": TINY_UNET}))
    pairs = PairedCropDataset(ds, "train")
    batch = default_collate([pairs[i] for i in range(4)])
    assert np.isfinite(model.training_step(batch, 0)["loss"])


def test_fingerprint_generators_say_how_to_get_them(mini_root: Path, tmp_path: Path):
    from cellbench_baselines.cellflux import CellFlux
    from cellbench_baselines.cellflux_rl import NFTTrainable, resolve_rl_config
    from cellbench_baselines.impa import IMPA
    from cellbench_baselines.trainer import train

    base = tmp_path / "base"
    full = BBBC021Dataset(mini_root, get_card("bbbc021"))
    train(CellFlux, "cellflux", full, resolve_config(CellFlux.presets, TINY_CELLFLUX), base)
    rl_cfg = resolve_rl_config({"reward": {"nuc_size": 1.0}}, base)
    ds = _without_fingerprints(mini_root)
    attempts = {
        "cellflux train": lambda: CellFlux.trainable(ds, resolve_config(CellFlux.presets, {})),
        "cellflux load": lambda: CellFlux.load(ds, base),
        "impa train": lambda: IMPA.trainable(ds, dict(IMPA.presets["cpu-small"])),
        "cellfluxrl train": lambda: NFTTrainable(ds, rl_cfg),
    }
    for name, attempt in attempts.items():
        with pytest.raises(DataError) as err:
            attempt()
        _says_how(err, mini_root, name)
    # The command line: one line, no traceback.
    res = run_cli(
        "train", "cellflux", "--dataset", "bbbc021", "--data-dir", str(mini_root),
        "--steps", "1", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert lines[-1].startswith(f"error: {mini_root / layout.FINGERPRINT_RELPATH}: ")
    assert "--fingerprints emb_fp.csv" in lines[-1]
