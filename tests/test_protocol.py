"""The evaluation protocol: deterministic bytes, stable task ids, same-batch controls."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import ProtocolError
from cellbench.protocol import (
    PROTOCOL_COLUMNS,
    build_protocol,
    protocol_bytes,
    read_protocol,
    task_id_for,
    write_protocol,
)


def test_protocol_rows_and_columns(mini_ds: BBBC021Dataset) -> None:
    table = build_protocol(mini_ds, "test", seed=0)
    assert tuple(table.columns) == PROTOCOL_COLUMNS
    assert len(table) == 8  # treated test crops
    assert table["task_id"].is_unique
    batch_of = dict(zip(mini_ds.index["SAMPLE_KEY"], mini_ds.index["BATCH"], strict=True))
    split_of = dict(zip(mini_ds.index["SAMPLE_KEY"], mini_ds.index["SPLIT"], strict=True))
    for _, row in table.iterrows():
        assert batch_of[row["control_key"]] == row["batch"] == batch_of[row["target_key"]]
        assert split_of[row["control_key"]] == "test"
        assert row["task_id"] == task_id_for(row["target_key"], row["control_key"])
    assert list(table["compound"]) == sorted(table["compound"])


def test_protocol_bytes_are_deterministic(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    a = write_protocol(build_protocol(mini_ds, "test", 0), tmp_path / "a.csv")
    b = write_protocol(build_protocol(mini_ds, "test", 0), tmp_path / "b.csv")
    assert a == b
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    seeds = {protocol_bytes(build_protocol(mini_ds, "test", s)) for s in range(8)}
    assert len(seeds) > 1  # the seed does choose the controls


def test_task_ids_are_stable_constants() -> None:
    # Golden value: changing the task_id rule breaks every existing image folder.
    assert (
        task_id_for("Week1_22123_B02_s1_7", "Week1_22123_B01_s1_3")
        == "t"
        + (
            __import__("hashlib")
            .sha256(b"Week1_22123_B02_s1_7|Week1_22123_B01_s1_3")
            .hexdigest()[:12]
        )
    )
    assert task_id_for("a_b_c", "d_e_f") == "tc718369baa85"


def test_read_protocol_round_trip(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    table = build_protocol(mini_ds, "test", 0)
    write_protocol(table, tmp_path / "p.csv")
    back = read_protocol(tmp_path / "p.csv")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_read_protocol_errors(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="not found"):
        read_protocol(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("task_id,compound\nt1,taxol\n")
    with pytest.raises(ProtocolError, match="lacks column"):
        read_protocol(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text(",".join(PROTOCOL_COLUMNS) + "\nt1,c,x,1,m,b,t\nt1,c,x,1,m,b,t2\n")
    with pytest.raises(ProtocolError, match="duplicated task_id"):
        read_protocol(dup)


# ------------------------------------------------------------------------------ named protocols
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BBBC021Dataset:
    from cellbench.data.catalog import get_card
    from cellbench.data.sim import write_sim_dataset

    root = tmp_path_factory.mktemp("tiny") / "bbbc021-sim"
    write_sim_dataset(root, seed=0, scale="tiny")
    return BBBC021Dataset(root, get_card("bbbc021-sim"))


def _raw_index(ds: BBBC021Dataset) -> pd.DataFrame:
    """The index CSV read directly (row order as in the file), independent of the loader."""
    return pd.read_csv(ds.index_path, dtype=str, keep_default_na=False)


def test_named_protocol_task_counts_on_the_tiny_sim(tiny: BBBC021Dataset) -> None:
    from cellbench.data.layout import CELLFLUX_OOD_COMPOUNDS
    from cellbench.protocol_registry import PROTOCOLS, build_named_protocol

    raw = _raw_index(tiny)
    treated_test = raw[(raw["SPLIT"] == "test") & (raw["STATE"] == "1")]
    ood = treated_test["CPD_NAME"].isin(CELLFLUX_OOD_COMPOUNDS)
    counts = {n: len(build_named_protocol(tiny, n, 0)) for n in PROTOCOLS.names()}
    # golden counts of the tiny sim (seed 0), measured 2026-12-06; the index gives the same
    assert counts == {"cellflux-iid": 84, "cellflux-5120": 42, "unseen": 19}
    assert counts["cellflux-iid"] == int((~ood).sum())
    assert counts["unseen"] == int(ood.sum())
    assert counts["cellflux-5120"] == int((~ood).sum()) // 2
    assert counts["cellflux-iid"] + counts["unseen"] == len(build_protocol(tiny, "test", 0))


def test_named_protocols_are_deterministic(tiny: BBBC021Dataset, tmp_path: Path) -> None:
    from cellbench.protocol_registry import PROTOCOLS, build_named_protocol

    for name in PROTOCOLS.names():
        a = write_protocol(build_named_protocol(tiny, name, 0), tmp_path / f"{name}-a.csv")
        b = write_protocol(build_named_protocol(tiny, name, 0), tmp_path / f"{name}-b.csv")
        assert a == b, name
        assert (tmp_path / f"{name}-a.csv").read_bytes() == (
            tmp_path / f"{name}-b.csv"
        ).read_bytes()
    seeds = {protocol_bytes(build_named_protocol(tiny, "cellflux-iid", s)) for s in range(4)}
    assert len(seeds) > 1  # the seed chooses the controls


def test_cellflux_5120_is_the_first_rows_in_index_order_and_a_strict_subset(
    tiny: BBBC021Dataset,
) -> None:
    from cellbench.data.layout import CELLFLUX_OOD_COMPOUNDS
    from cellbench.protocol_registry import build_named_protocol

    raw = _raw_index(tiny)
    iid = raw[
        (raw["SPLIT"] == "test")
        & (raw["STATE"] == "1")
        & ~raw["CPD_NAME"].isin(CELLFLUX_OOD_COMPOUNDS)
    ]
    first = iid["SAMPLE_KEY"].iloc[: len(iid) // 2]
    p5120 = build_named_protocol(tiny, "cellflux-5120", 0)
    assert set(p5120["target_key"]) == set(first)
    # not merely "some half": the second half of the index's rows is left out
    assert not set(p5120["target_key"]) & set(iid["SAMPLE_KEY"].iloc[len(iid) // 2 :])
    full = build_named_protocol(tiny, "cellflux-iid", 0)
    rows = full.set_index("task_id")
    assert set(p5120["task_id"]) < set(full["task_id"])  # same pairs, strictly fewer
    pd.testing.assert_frame_equal(
        rows.loc[p5120["task_id"]].reset_index(), p5120, check_dtype=False
    )


def test_cellflux_5120_takes_5120_rows_on_real_data(mini_ds: BBBC021Dataset) -> None:
    from cellbench.protocol_registry import build_named_protocol, get_protocol

    spec = get_protocol("cellflux-5120")
    assert spec.cap(mini_ds.card, 100_000) == 5120 and spec.fid_real == "tasks"
    with pytest.raises(ProtocolError, match=r"first 5120 treated rows .* bbbc021 has 6 "):
        build_named_protocol(mini_ds, "cellflux-5120", 0)


def test_unseen_holds_only_the_eight_held_out_compounds(tiny: BBBC021Dataset) -> None:
    from cellbench.data.layout import CELLFLUX_OOD_COMPOUNDS
    from cellbench.protocol_registry import build_named_protocol

    unseen = build_named_protocol(tiny, "unseen", 0)
    iid = build_named_protocol(tiny, "cellflux-iid", 0)
    assert set(unseen["compound"]) == set(CELLFLUX_OOD_COMPOUNDS)
    assert len(CELLFLUX_OOD_COMPOUNDS) == 8
    assert not set(iid["compound"]) & set(CELLFLUX_OOD_COMPOUNDS)


def test_a_protocol_file_is_named_by_its_content(tiny: BBBC021Dataset, tmp_path: Path) -> None:
    from cellbench.evaluation import load_protocol_for
    from cellbench.protocol_registry import build_named_protocol

    for name in ("cellflux-iid", "cellflux-5120", "unseen"):
        path = tmp_path / f"{name}.csv"
        write_protocol(build_named_protocol(tiny, name, 3), path)
        _, info = load_protocol_for(tiny, path, None, 3)
        assert (info["name"], info["version"], info["built"]) == (name, "1", False), name
        assert info["seed"] == 3 and info["file"] == str(path)
        # identified at another seed: the controls differ, so it is not the registered protocol
        assert load_protocol_for(tiny, path, None, 0)[1]["name"] == "custom"
    # a task dropped, or a whole split: custom
    cut = tmp_path / "cut.csv"
    write_protocol(build_named_protocol(tiny, "cellflux-iid", 0).iloc[1:], cut)
    assert load_protocol_for(tiny, cut, None, 0)[1]["name"] == "custom"
    whole = tmp_path / "whole.csv"
    write_protocol(build_protocol(tiny, "test", 0), whole)
    info = load_protocol_for(tiny, whole, None, 0)[1]
    assert info["name"] == "custom" and info["fid_real"] == "compounds" and "seed" not in info
    # without a file: the default named protocol, built
    table, info = load_protocol_for(tiny, None, None, 0)
    assert info["name"] == "cellflux-iid" and info["built"] is True and info["split"] == "test-iid"
    assert info["n_tasks"] == len(table) == 84
    with pytest.raises(ProtocolError, match="not both"):
        load_protocol_for(tiny, whole, "unseen", 0)


def test_unknown_protocol_name_suggests(tiny: BBBC021Dataset, tmp_path: Path) -> None:
    from cellbench.errors import UnknownNameError
    from cellbench.evaluation import load_protocol_for
    from cellbench.protocol_registry import build_named_protocol

    with pytest.raises(
        UnknownNameError, match="unknown protocol 'cellflux-512'; did you mean 'cellflux-5120'"
    ):
        build_named_protocol(tiny, "cellflux-512", 0)
    with pytest.raises(ProtocolError, match="pass --protocol-name unseen"):
        load_protocol_for(tiny, "unseen", None, 0)


def test_fid_real_side_follows_the_protocol() -> None:
    import numpy as np

    from cellbench.results.builder import real_side

    protocol = pd.DataFrame({"task_id": ["a", "b", "c", "d"], "compound": ["x", "x", "y", "z"]})
    scored, compounds = np.array(["a", "c"]), np.array(["x", "y"])
    assert real_side(protocol, scored, compounds, "tasks").tolist() == [True, False, True, False]
    assert real_side(protocol, scored, compounds, "compounds").tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="unknown FID real side"):
        real_side(protocol, scored, compounds, "all")


def test_cli_protocol_by_name_ls_and_errors(tiny: BBBC021Dataset, tmp_path: Path) -> None:
    import json

    from tests.conftest import run_cli

    ds = ("--dataset", "bbbc021-sim", "--data-dir", str(tiny.root))
    res = run_cli("protocol", *ds, "--name", "unseen", "--out", str(tmp_path / "u.csv"))
    assert res.returncode == 0, res.stderr
    assert "protocol unseen: 19 tasks (8 compounds" in res.stderr
    res = run_cli("protocol", *ds, "--out", str(tmp_path / "d.csv"))  # default: cellflux-iid
    assert res.returncode == 0 and "protocol cellflux-iid: 84 tasks" in res.stderr
    bad = run_cli("protocol", *ds, "--name", "cellflux-ii", "--out", str(tmp_path / "x.csv"))
    assert bad.returncode == 2 and "did you mean 'cellflux-iid'" in bad.stderr
    assert not (tmp_path / "x.csv").exists()
    both = run_cli("protocol", *ds, "--name", "unseen", "--split", "test")
    assert both.returncode == 2 and "give one" in both.stderr
    old = run_cli("eval", str(tmp_path), *ds, "--split", "test")
    assert old.returncode == 2 and "--protocol-name cellflux-iid" in old.stderr
    assert "Traceback" not in old.stderr
    listed = run_cli("ls", "protocols", "--json")
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["cellflux-iid", "cellflux-5120", "unseen"]
    assert [r["default"] for r in rows] == [True, False, False]
    assert all(r["version"] and r["reproduces"] and r["differs"] for r in rows)
    text = run_cli("ls", "protocols").stdout.splitlines()
    assert len(text) == 3 and text[1].startswith("cellflux-5120")
