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
