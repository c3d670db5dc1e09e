"""The evaluation protocol: the list of generation tasks every generator is scored on.

One task per treated real target crop of a split, with a control crop from the same batch chosen
by a seeded, order-independent rule (:func:`cellbench.data.bbbc021.seeded_choice`). Same dataset,
split and seed -> byte-identical CSV. ``task_id`` is derived from the (target, control) pair, so
it is stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
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


#: a task_id names image files (``<task_id>.npy``, ``<task_id>_<k>.png``): letters, digits, ``_``,
#: ``-`` and ``.``, not starting with a dot (no path separators, no ``..``); real ones are
#: :func:`task_id_for`'s ``t`` + 12 hex digits
_SAFE_TASK_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_REMAKE = "re-make the protocol with `cellbench protocol`"


def _line(i: int) -> int:
    """The CSV line of table row ``i`` (the header is line 1)."""
    return i + 2


def read_protocol(path: str | Path) -> pd.DataFrame:
    """Read and check a protocol CSV written by :func:`write_protocol`.

    Every cell must be filled, ``dose`` a finite number and ``task_id`` a safe file name (it
    names image files); :func:`check_against_dataset` checks the rows against a dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(
            "protocol file not found",
            path=path,
            fix="make one with `cellbench protocol --dataset NAME --out FILE`",
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ProtocolError(f"unreadable protocol CSV ({exc})", path=path) from None
    missing = [c for c in PROTOCOL_COLUMNS if c not in table.columns]
    if missing:
        raise ProtocolError(
            f"protocol lacks column(s) {', '.join(missing)}",
            path=path,
            fix="regenerate it with `cellbench protocol`",
        )
    if table.empty:
        raise ProtocolError(
            "protocol has no tasks (a header and no rows)",
            path=path,
            fix="make one with `cellbench protocol --dataset NAME --out FILE`",
        )
    cells = table.loc[:, list(PROTOCOL_COLUMNS)]
    empty = cells.isna() | (cells.fillna("").apply(lambda col: col.str.strip()) == "")
    if empty.to_numpy().any():
        i = int(empty.any(axis=1).to_numpy().argmax())
        columns = [c for c in PROTOCOL_COLUMNS if empty.iloc[i][c]]
        raise ProtocolError(
            f"line {_line(i)} has empty cell(s): {', '.join(columns)}",
            path=path,
            fix="fill every cell, or " + _REMAKE,
        )
    unsafe = ~table["task_id"].str.fullmatch(_SAFE_TASK_ID)
    if unsafe.any():
        i = int(unsafe.to_numpy().argmax())
        raise ProtocolError(
            f"line {_line(i)}: task_id {table['task_id'].iloc[i]!r} is not a safe file name "
            "(letters, digits, _, - and . only, not starting with a dot, at most 128 characters)",
            path=path,
            fix=_REMAKE,
        )
    if table["task_id"].duplicated().any():
        raise ProtocolError(
            "protocol has empty or duplicated task_id values",
            path=path,
            fix="regenerate it with `cellbench protocol`",
        )
    dose = pd.to_numeric(table["dose"], errors="coerce")
    bad = dose.isna() | ~np.isfinite(dose.to_numpy(dtype=float))
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise ProtocolError(
            f"line {_line(i)}: dose {table['dose'].iloc[i]!r} is not a finite number",
            path=path,
            fix=_REMAKE,
        )
    table["dose"] = dose.astype(float)
    return table


def check_against_dataset(table: pd.DataFrame, dataset: BBBC021Dataset, path: str | Path) -> None:
    """Refuse a protocol whose rows disagree with ``dataset`` (:class:`ProtocolError`).

    Each ``target_key`` must be a treated crop of the dataset whose compound, dose (to CSV round
    trip precision), MoA and batch are the row's, and each ``control_key`` a control (DMSO) crop
    of the same batch: what :func:`build_tasks` writes, so a protocol of ``cellbench protocol``
    always passes, and a forged row cannot change a score.
    """
    index = dataset.index.set_index("SAMPLE_KEY")
    unknown = [k for k in table["target_key"] if k not in index.index]
    if unknown:
        raise ProtocolError(
            f"{len(unknown)} target_key(s) are not in dataset {dataset.name} "
            f"(first: {unknown[0]!r})",
            path=path,
            fix=f"make the protocol from this dataset: cellbench protocol --dataset {dataset.name}",
        )
    target = index.reindex(table["target_key"]).reset_index(drop=True)
    control = index.reindex(table["control_key"]).reset_index(drop=True)
    keys = table["target_key"].to_numpy()
    checks: list[tuple[np.ndarray, Callable[[int], str]]] = [
        (
            target["is_control"].to_numpy(dtype=bool),
            lambda i: f"target_key {keys[i]!r} is a control crop, not a treated one",
        )
    ]
    for column, field in (("compound", "CPD_NAME"), ("moa", "ANNOT"), ("batch", "BATCH")):
        mine, truth = table[column].astype(str).to_numpy(), target[field].astype(str).to_numpy()
        checks.append(
            (
                mine != truth,
                lambda i, c=column, m=mine, t=truth: (
                    f"{c} is {m[i]!r}, the dataset's record of target_key {keys[i]!r} says {t[i]!r}"
                ),
            )
        )
    dose, true_dose = table["dose"].to_numpy(dtype=float), target["DOSE"].to_numpy(dtype=float)
    checks.append(
        (
            ~np.isclose(dose, true_dose, rtol=1e-8, atol=1e-12),
            lambda i: (
                f"dose is {dose[i]:.10g}, the dataset's record of target_key {keys[i]!r} "
                f"says {true_dose[i]:.10g}"
            ),
        )
    )
    ckeys = table["control_key"].to_numpy()
    checks += [
        (
            control["BATCH"].isna().to_numpy(),
            lambda i: f"control_key {ckeys[i]!r} is not in dataset {dataset.name}",
        ),
        (
            control["is_control"].eq(False).to_numpy(),
            lambda i: f"control_key {ckeys[i]!r} is not a control (DMSO) crop",
        ),
        (
            control["BATCH"].fillna(table["batch"]).astype(str).to_numpy()
            != table["batch"].astype(str).to_numpy(),
            lambda i: (
                f"control_key {ckeys[i]!r} is of batch {control['BATCH'][i]!r}, "
                f"the task's batch is {table['batch'].iloc[i]!r}"
            ),
        ),
    ]
    bad = np.column_stack([flags for flags, _ in checks])
    if bad.any():
        i = int(bad.any(axis=1).argmax())
        _, say = checks[int(bad[i].argmax())]
        raise ProtocolError(
            f"line {_line(i)} (task_id {table['task_id'].iloc[i]}): {say(i)}",
            path=path,
            fix=_REMAKE,
        )
