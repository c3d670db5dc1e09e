"""The evaluation protocol: the list of generation tasks every generator is scored on.

One task per treated real target crop of a split, with a control crop from the same batch chosen
by a seeded, order-independent rule (:func:`cellbench.data.bbbc021.seeded_choice`). Same dataset,
split and seed -> byte-identical CSV. ``task_id`` is derived from the (target, control) pair, so
it is stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import ProtocolError
from cellbench.io import atomic_write_bytes, sha256_bytes

PROTOCOL_VERSION = "1"
PROTOCOL_COLUMNS = ("task_id", "control_key", "compound", "dose", "moa", "batch", "target_key")


def task_id_for(target_key: str, control_key: str) -> str:
    """A short stable identifier of the (target, control) pair: ``t`` + 12 hex digits."""
    return "t" + hashlib.sha256(f"{target_key}|{control_key}".encode()).hexdigest()[:12]


def build_protocol(dataset: BBBC021Dataset, split: str = "test", seed: int = 0) -> pd.DataFrame:
    """The task table of every treated crop of ``split``, sorted by compound, dose and target key.

    The named protocols (:mod:`cellbench.protocol_registry`) choose their targets first and call
    :func:`build_tasks`; this is the rule for a whole split (a ``custom`` protocol).
    """
    rows = dataset.split(split)
    return build_tasks(
        dataset, rows[~rows["is_control"]], rows[rows["is_control"]], seed, f"split {split!r}"
    )


def build_tasks(
    dataset: BBBC021Dataset,
    treated: pd.DataFrame,
    controls: pd.DataFrame,
    seed: int,
    what: str,
) -> pd.DataFrame:
    """The task table of the ``treated`` index rows, each paired with a same-batch control.

    Args:
        treated: the target rows (index rows of the dataset, any order).
        controls: the control rows to pair from (same split); a batch without one falls back to
            the dataset's other controls of that batch.
        seed: the pairing seed.
        what: what the rows are, for the error message ("split 'test'").
    """
    treated = treated.sort_values(["CPD_NAME", "DOSE", "SAMPLE_KEY"])
    if treated.empty:
        raise ProtocolError(
            f"{what} of {dataset.name} has no treated crops",
            path=dataset.index_path,
            fix="choose another protocol (`cellbench ls protocols`)",
        )
    control_keys = dataset.pair_controls(treated, controls, seed)
    table = pd.DataFrame(
        {
            "task_id": [
                task_id_for(t, c) for t, c in zip(treated["SAMPLE_KEY"], control_keys, strict=True)
            ],
            "control_key": control_keys,
            "compound": treated["CPD_NAME"].to_numpy(),
            "dose": treated["DOSE"].to_numpy(),
            "moa": treated["ANNOT"].to_numpy(),
            "batch": treated["BATCH"].to_numpy(),
            "target_key": treated["SAMPLE_KEY"].to_numpy(),
        }
    )
    if table["task_id"].duplicated().any():  # would need a sha256 prefix collision
        raise ProtocolError("task_id collision", fix="report this as a cellbench bug")
    return table.reset_index(drop=True)


def protocol_bytes(table: pd.DataFrame) -> bytes:
    """The canonical CSV encoding of a protocol table (``\\n`` line ends, fixed float format)."""
    buf = io.StringIO()
    table.loc[:, list(PROTOCOL_COLUMNS)].to_csv(
        buf, index=False, lineterminator="\n", float_format="%.10g"
    )
    return buf.getvalue().encode("utf-8")


def protocol_sha256(table: pd.DataFrame) -> str:
    """Content hash of a protocol (of its canonical CSV bytes)."""
    return sha256_bytes(protocol_bytes(table))


def write_protocol(table: pd.DataFrame, path: str | Path) -> str:
    """Write the protocol atomically; return its sha256."""
    data = protocol_bytes(table)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def read_protocol(path: str | Path) -> pd.DataFrame:
    """Read and check a protocol CSV written by :func:`write_protocol`."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(
            "protocol file not found",
            path=path,
            fix="make one with `cellbench protocol --dataset NAME --out FILE`",
        )
    try:
        table = pd.read_csv(
            path,
            dtype={
                "task_id": str,
                "control_key": str,
                "compound": str,
                "moa": str,
                "batch": str,
                "target_key": str,
            },
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ProtocolError(f"unreadable protocol CSV ({exc})", path=path) from None
    missing = [c for c in PROTOCOL_COLUMNS if c not in table.columns]
    if missing:
        raise ProtocolError(
            f"protocol lacks column(s) {', '.join(missing)}",
            path=path,
            fix="regenerate it with `cellbench protocol`",
        )
    if table["task_id"].isna().any() or table["task_id"].duplicated().any():
        raise ProtocolError(
            "protocol has empty or duplicated task_id values",
            path=path,
            fix="regenerate it with `cellbench protocol`",
        )
    return table
