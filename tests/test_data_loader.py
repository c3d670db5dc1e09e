"""The BBBC021 loader: layout, STATE encodings, splits, pairing, and every bad input it must refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.data import layout
from cellbench.data.bbbc021 import BBBC021Dataset, load_crop_file, open_dataset
from cellbench.data.catalog import get_card
from cellbench.errors import DataError, UnknownNameError
from tests.conftest import build_mini_dataset


def _index(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / layout.INDEX_RELPATH, index_col=0)


def _write_index(root: Path, df: pd.DataFrame) -> None:
    df.to_csv(root / layout.INDEX_RELPATH, index=True)


def test_reads_mini_dataset(mini_ds: BBBC021Dataset) -> None:
    assert len(mini_ds.index) == 32
    assert mini_ds.index["is_control"].sum() == 16
    assert set(mini_ds.compounds) == {"taxol", "nocodazole", "cytochalasin D"}
    assert mini_ds.compound("taxol").doses == (0.3, 3.0)
    assert mini_ds.compound("taxol").moa == "Microtubule stabilizers"
    crop = mini_ds.load_crop(mini_ds.index["SAMPLE_KEY"].iloc[0])
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
    assert mini_ds.fingerprint("taxol").shape == (1024,)
    assert len(mini_ds.index_sha256) == 64


def test_both_state_encodings_agree(tmp_path: Path) -> None:
    a = BBBC021Dataset(build_mini_dataset(tmp_path / "a", state_style="int"), get_card("bbbc021"))
    b = BBBC021Dataset(build_mini_dataset(tmp_path / "b", state_style="str"), get_card("bbbc021"))
    assert a.index["is_control"].tolist() == b.index["is_control"].tolist()


def test_sample_key_rule() -> None:
    assert str(layout.sample_key_to_relpath("Week1_22123_B02_s1_7")) == "Week1/22123/B02_s1_7.npy"
    assert (
        str(layout.sample_key_to_relpath("Week1_22123_B02_s1_7.npy")) == "Week1/22123/B02_s1_7.npy"
    )


def test_splits(mini_ds: BBBC021Dataset) -> None:
    train, test = mini_ds.split("train"), mini_ds.split("test")
    assert len(train) + len(test) == len(mini_ds.index)
    iid = mini_ds.split("test-iid")
    ood = mini_ds.split("test-ood")
    assert "cytochalasin D" not in set(iid["CPD_NAME"])  # one of the CellFlux unseen compounds
    assert set(ood.loc[~ood["is_control"], "CPD_NAME"]) == {"cytochalasin D"}
    assert ood["is_control"].any()
    with pytest.raises(UnknownNameError, match="did you mean 'test'"):
        mini_ds.split("tset")


def test_pairing_same_batch_seeded_and_order_independent(mini_ds: BBBC021Dataset) -> None:
    rows = mini_ds.split("test")
    treated, controls = rows[~rows["is_control"]], rows[rows["is_control"]]
    a = mini_ds.pair_controls(treated, controls, seed=0)
    again = mini_ds.pair_controls(treated.iloc[::-1], controls.iloc[::-1], seed=0)[::-1]
    assert a == again
    batch_of = dict(zip(mini_ds.index["SAMPLE_KEY"], mini_ds.index["BATCH"], strict=True))
    for t, c in zip(treated["SAMPLE_KEY"], a, strict=True):
        assert batch_of[t] == batch_of[c]
        assert c in set(controls["SAMPLE_KEY"])
    seeds = {tuple(mini_ds.pair_controls(treated, controls, seed=s)) for s in range(6)}
    assert len(seeds) > 1


def test_unknown_compound_suggests(mini_ds: BBBC021Dataset) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'taxol'") as info:
        mini_ds.compound("taxoll")
    assert "bbbc021_df_all.csv" in str(info.value)
    with pytest.raises(UnknownNameError):
        mini_ds.fingerprint("nonexistent-drug")


def test_index_missing_column(mini_root: Path) -> None:
    _write_index(mini_root, _index(mini_root).drop(columns=["BATCH"]))
    with pytest.raises(DataError, match=r"lacks column\(s\) BATCH") as info:
        BBBC021Dataset(mini_root, get_card("bbbc021"))
    assert str(mini_root / layout.INDEX_RELPATH) in str(info.value)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("STATE", "maybe", "unknown STATE"),
        ("SPLIT", "valid", "unknown SPLIT"),
        ("DOSE", "lots", "non-numeric DOSE"),
    ],
)
def test_index_bad_values(mini_root: Path, column: str, value: str, message: str) -> None:
    df = _index(mini_root)
    df[column] = df[column].astype(object)
    df.loc[df.index[3], column] = value
    _write_index(mini_root, df)
    with pytest.raises(DataError, match=message):
        BBBC021Dataset(mini_root, get_card("bbbc021"))


def test_duplicate_sample_key(mini_root: Path) -> None:
    df = _index(mini_root)
    df.loc[df.index[1], "SAMPLE_KEY"] = df.loc[df.index[0], "SAMPLE_KEY"]
    _write_index(mini_root, df)
    with pytest.raises(DataError, match="more than once"):
        BBBC021Dataset(mini_root, get_card("bbbc021"))


@pytest.mark.parametrize(
    "key",
    [
        "Week1_..__x",
        "../../etc_passwd_x",
        "Week1_22123_../../../evil",
        "/abs_path_x",
        "Week1_a\\b_c",
    ],
)
def test_sample_key_leaving_dataset_is_refused(mini_root: Path, key: str) -> None:
    df = _index(mini_root)
    df.loc[df.index[0], "SAMPLE_KEY"] = key
    _write_index(mini_root, df)
    with pytest.raises(DataError, match="SAMPLE_KEY") as info:
        BBBC021Dataset(mini_root, get_card("bbbc021"))
    assert "bbbc021_df_all.csv" in str(info.value)


def test_symlink_escape_is_refused(mini_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "B00_s1_0.npy", np.zeros((96, 96, 3), np.uint8))
    week = mini_root / "Week9"
    week.mkdir()
    (week / "99999").symlink_to(outside)
    df = _index(mini_root)
    df.loc[df.index[0], "SAMPLE_KEY"] = "Week9_99999_B00_s1_0"
    _write_index(mini_root, df)
    ds = BBBC021Dataset(mini_root, get_card("bbbc021"))
    with pytest.raises(DataError, match="outside the dataset folder"):
        ds.load_crop("Week9_99999_B00_s1_0")


def test_corrupt_and_truncated_crops(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((96, 96, 3), np.uint8))
    truncated = tmp_path / "trunc.npy"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"this is not numpy")
    for bad in (truncated, garbage):
        with pytest.raises(DataError, match="corrupt or truncated") as info:
            load_crop_file(bad)
        assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((96, 96), np.uint8),
        np.zeros((64, 64, 3), np.uint8),
        np.zeros((96, 96, 3), np.float32),
    ],
)
def test_crop_wrong_shape_or_dtype(tmp_path: Path, arr: np.ndarray) -> None:
    p = tmp_path / "x.npy"
    np.save(p, arr)
    with pytest.raises(DataError, match=r"expected \(96, 96, 3\) uint8"):
        load_crop_file(p)


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cellbench data download bbbc021"):
        open_dataset("bbbc021", tmp_path)
    with pytest.raises(DataError, match="cellbench data sim"):
        open_dataset("bbbc021-sim", tmp_path)


def test_data_dir_may_be_the_dataset_root(mini_root: Path) -> None:
    ds = open_dataset("bbbc021", mini_root)
    assert ds.root == mini_root


def test_data_dir_from_environment(mini_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = mini_root.parent / "datasets"
    parent.mkdir()
    (parent / "bbbc021").symlink_to(mini_root)
    monkeypatch.setenv("CELLBENCH_DATA_DIR", str(parent))
    assert open_dataset("bbbc021").root == parent / "bbbc021"


def test_torch_dataset(mini_ds: BBBC021Dataset) -> None:
    import torch

    from cellbench.data.torch_dataset import PairedCropDataset, from_model_range

    tds = PairedCropDataset(mini_ds, split="train", seed=3)
    assert len(tds) == 8
    item = tds[0]
    assert item["control"].shape == (3, 96, 96) and item["target"].dtype == torch.float32
    assert float(item["target"].min()) >= -1.0 and float(item["target"].max()) <= 1.0
    assert item["fingerprint"].shape == (1024,)
    assert (
        tds.compounds[item["compound_idx"]]
        == mini_ds.index.set_index("SAMPLE_KEY").loc[item["target_key"], "CPD_NAME"]
    )
    assert layout.MOAS[item["moa_idx"]] == mini_ds.compound(tds.compounds[item["compound_idx"]]).moa
    # uint8 -> model range -> uint8 is lossless
    back = from_model_range(item["target"])
    assert np.array_equal(back, mini_ds.load_crop(item["target_key"]))
    # the pairing is seeded: same seed and epoch -> same controls; a new epoch redraws
    again = PairedCropDataset(mini_ds, split="train", seed=3)
    assert [again[i]["control_key"] for i in range(8)] == [tds[i]["control_key"] for i in range(8)]
    before = [tds[i]["control_key"] for i in range(8)]
    changed = False
    for epoch in range(1, 6):
        tds.set_epoch(epoch)
        changed |= [tds[i]["control_key"] for i in range(8)] != before
    assert changed
