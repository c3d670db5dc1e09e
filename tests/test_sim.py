"""The simulated dataset bbbc021-sim: layout, determinism, refusal to overwrite, and MoA signal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.data import layout
from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.catalog import get_card
from cellbench.data.inspect import guess_dna_channel
from cellbench.data.sim import SCALES, write_sim_dataset
from cellbench.errors import DataError


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "bbbc021-sim"
    write_sim_dataset(out, seed=0, scale="tiny")
    return out


def test_layout_matches_the_loader(tiny: Path) -> None:
    raw = pd.read_csv(tiny / layout.INDEX_RELPATH)
    assert raw.columns[0].startswith("Unnamed")  # pandas' unnamed index column, as in IMPA
    assert list(raw.columns[1:]) == list(layout.INDEX_COLUMNS)
    ds = BBBC021Dataset(tiny, get_card("bbbc021-sim"))
    idx = ds.index
    treated = idx[~idx["is_control"]]
    assert len(treated[["CPD_NAME", "DOSE"]].drop_duplicates()) == 103
    assert sorted(treated["ANNOT"].unique()) == list(layout.MOAS)
    assert (idx.loc[idx["is_control"], "CPD_NAME"] == "DMSO").all()
    for (_cpd, _dose), g in treated.groupby(["CPD_NAME", "DOSE"]):
        assert set(g["SPLIT"]) == {"train", "test"}
    for _batch, g in idx[idx["is_control"]].groupby("BATCH"):
        assert set(g["SPLIT"]) == {"train", "test"}
    for key in idx["SAMPLE_KEY"]:
        crop = ds.load_crop(key)  # shape/dtype checked by the loader
        assert crop.shape == (96, 96, 3)
    fp = ds.fingerprints
    assert fp.shape == (39, 1024)  # 38 compounds + DMSO
    assert (fp.to_numpy() >= 0).all() and np.allclose(fp.to_numpy(), np.round(fp.to_numpy()))
    config = json.loads((tiny / "sim_config.json").read_text())
    assert config["seed"] == 0 and config["scale"] == "tiny" and config["simulated"] is True
    assert ds.sim_config is not None


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_sim_dataset(again, seed=0, scale="tiny")
    assert _digest_tree(again) == _digest_tree(tiny)
    other = tmp_path / "other"
    write_sim_dataset(other, seed=1, scale="tiny")
    a, b = _digest_tree(tiny), _digest_tree(other)
    crops = [k for k in a if k.endswith(".npy") and k in b]
    assert crops and all(a[k] != b[k] for k in crops[:20])


@pytest.mark.slow
def test_workers_do_not_change_bytes(tiny: Path, tmp_path: Path) -> None:
    two = tmp_path / "two"
    write_sim_dataset(two, seed=0, scale="tiny", workers=2)
    assert _digest_tree(two) == _digest_tree(tiny)


def test_refuses_non_empty_folder_and_leaves_it_alone(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as info:
        write_sim_dataset(out, seed=0, scale="tiny")
    assert str(out) in str(info.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not any(p.name.startswith(".taken") for p in tmp_path.iterdir())  # no partial left


def test_unknown_scale() -> None:
    with pytest.raises(Exception, match="unknown simulator scale"):
        write_sim_dataset("/nonexistent/x", scale="huge")


def test_scales_promise() -> None:
    assert SCALES["demo"].test_per_pair >= 100
    assert SCALES["tiny"].train_per_pair >= 1 and SCALES["tiny"].test_per_pair >= 1


def test_dna_is_the_compact_bright_channel(tiny: Path) -> None:
    ds = BBBC021Dataset(tiny, get_card("bbbc021-sim"))
    crops = ds.load_crops(ds.index["SAMPLE_KEY"].tolist()[:120])
    observed, fractions = guess_dna_channel(crops)
    assert observed == 2
    assert fractions[2] < 0.8 * min(fractions[0], fractions[1])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> BBBC021Dataset:
    out = tmp_path_factory.mktemp("sim_small") / "bbbc021-sim"
    write_sim_dataset(out, seed=0, scale="small", workers=2)
    return BBBC021Dataset(out, get_card("bbbc021-sim"))


def _dna_objects(crops: np.ndarray) -> tuple[float, float]:
    """Mean over crops of the median DNA-object area and of the object count (Otsu, > 15 px)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    areas, counts = [], []
    for c in crops[..., 2]:
        lab, _ = ndimage.label(c > threshold_otsu(c))
        sizes = np.bincount(lab.ravel())[1:]
        sizes = sizes[sizes > 15]
        areas.append(float(np.median(sizes)) if len(sizes) else 0.0)
        counts.append(len(sizes))
    return float(np.mean(areas)), float(np.mean(counts))


def test_moa_effects_are_in_the_pixels(small: BBBC021Dataset) -> None:
    from skimage.filters import threshold_otsu

    idx = small.index
    top = idx.groupby("CPD_NAME")["DOSE"].transform("max") == idx["DOSE"]

    def crops_of(mask: pd.Series) -> np.ndarray:
        return small.load_crops(idx.loc[mask, "SAMPLE_KEY"].tolist())

    dmso = crops_of(idx["is_control"])
    dmso_area, dmso_count = _dna_objects(dmso)
    # measured on seed 0 / small: DMSO 119 px and 3.2 nuclei; DNA damage 173 px; Aurora 1.8 nuclei
    dna_damage_area, _ = _dna_objects(crops_of((idx["ANNOT"] == "DNA damage") & top))
    assert dna_damage_area > 1.3 * dmso_area
    _, aurora_count = _dna_objects(crops_of((idx["ANNOT"] == "Aurora kinase inhibitors") & top))
    assert aurora_count < 0.75 * dmso_count
    _, epithelial_count = _dna_objects(crops_of((idx["ANNOT"] == "Epithelial") & top))
    assert epithelial_count > 1.3 * dmso_count
    synth = crops_of((idx["ANNOT"] == "Protein synthesis") & top)
    cyto_dmso = np.mean([(c > 0.5 * threshold_otsu(c)).mean() for c in dmso[..., 1]])
    cyto_synth = np.mean([(c > 0.5 * threshold_otsu(c)).mean() for c in synth[..., 1]])
    assert cyto_synth < 0.92 * cyto_dmso  # measured ratio 0.85 (seed 0, small)
