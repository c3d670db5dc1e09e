"""Named, versioned evaluation protocols (``cellbench ls protocols``; ``docs/protocols.md``).

A named protocol is a rule that chooses the target crops of a dataset; the task table itself
(same-batch seeded controls, stable task ids, canonical bytes) is :mod:`cellbench.protocol`'s. Every
result records the protocol by name, version and sha256 (:func:`protocol_info`), and the leaderboard
makes one table per dataset version, protocol and metric suite.

=================  ===========================================================================
``cellflux-iid``   the default: every treated crop of split ``test-iid`` (test without the eight
                   CellFlux unseen compounds)
``cellflux-5120``  CellFlux's evaluation set: the first 5,120 ``test-iid`` treated rows in the
                   index CSV's order (on the simulated dataset: the first half of them); FID/KID's
                   real side is exactly the targets of the generated images (the papers' protocol)
``unseen``         every treated crop of split ``test-ood`` (the eight unseen compounds)
=================  ===========================================================================

A protocol file that matches none of them (another seed, a hand-made task list, a whole split from
``cellbench protocol --split``) is recorded as ``custom``.

Changing what a named protocol selects bumps its ``version``; changing the task-table rule
(:data:`cellbench.protocol.PROTOCOL_VERSION`) bumps every named protocol's version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cellbench.errors import ProtocolError
from cellbench.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import DatasetCard

#: the protocol ``cellbench protocol`` and ``cellbench eval`` use when none is named
DEFAULT_PROTOCOL = "cellflux-iid"
#: the name recorded for a protocol that is none of the registered ones
CUSTOM = "custom"
#: CellFlux's evaluation size (``--num_to_cal 5120`` in its evaluation script)
CELLFLUX_EVAL_SIZE = 5120

#: which real crops are FID/KID's real side: every protocol target of the compounds that have a
#: generated image (``compounds``), or exactly the targets of the tasks that have one (``tasks``)
FidReal = Literal["compounds", "tasks"]


@dataclass(frozen=True)
class ProtocolSpec:
    """A named protocol: which treated crops of a dataset are the targets, and what it reproduces.

    Attributes:
        name: registry name (``cellflux-iid``).
        version: bumped whenever the targets it selects change.
        split: the dataset split whose treated crops (and controls) it draws from.
        summary: one line for ``cellbench ls protocols``.
        reproduces: what it has in common with the paper it follows.
        differs: what it does not reproduce.
        first_n: on real data, keep only the first ``first_n`` treated rows of the split in the
            index CSV's row order (None: every treated row).
        sim_first_fraction: on a simulated dataset, keep the first ``floor(fraction * n)`` of the
            split's ``n`` treated rows instead of ``first_n`` (cellbench's choice: the simulator
            is too small for 5,120).
        fid_real: FID/KID's real side (:data:`FidReal`).
        papers: True for the protocol the papers' numbers were made with (labelled so on the
            leaderboard page).
    """

    name: str
    version: str
    split: str
    summary: str
    reproduces: str
    differs: str
    first_n: int | None = None
    sim_first_fraction: float | None = None
    fid_real: FidReal = "compounds"
    papers: bool = False

    def cap(self, card: DatasetCard, n_treated: int) -> int | None:
        """How many of the split's ``n_treated`` treated rows (index order) it keeps; None: all."""
        if self.first_n is None:
            return None
        if card.simulated and self.sim_first_fraction is not None:
            return int(n_treated * self.sim_first_fraction)
        return self.first_n

    def rule(self) -> str:
        """The selection rule in words (``cellbench ls protocols``, the docs)."""
        if self.first_n is None:
            return f"every treated crop of split {self.split}"
        sim = (
            ""
            if self.sim_first_fraction is None
            else f" (simulated data: the first {self.sim_first_fraction:.0%} of them)"
        )
        return f"the first {self.first_n:,} treated rows of split {self.split} in index order{sim}"


PROTOCOLS: Registry[ProtocolSpec] = Registry("protocol")

_SEEDED = (
    "controls: cellbench pairs each target with a same-batch control chosen by the seed "
    "(CellFlux draws one unseeded); "
)
PROTOCOLS.register(
    "cellflux-iid",
    ProtocolSpec(
        name="cellflux-iid",
        version="1",
        split="test-iid",
        summary="the default: every in-distribution treated test crop (the 8 unseen removed)",
        reproduces="CellFlux's in-distribution test compounds and doses (all of their crops)",
        differs=_SEEDED
        + "every treated test crop rather than CellFlux's first 5,120; KID_c is per compound "
        "(CellFlux's released code accumulates it over compounds)",
    ),
    summary="the default: every in-distribution treated test crop (the 8 unseen removed)",
)
PROTOCOLS.register(
    "cellflux-5120",
    ProtocolSpec(
        name="cellflux-5120",
        version="1",
        split="test-iid",
        summary="the papers' protocol: CellFlux's first 5,120 in-distribution test rows",
        reproduces="CellFlux's evaluation set (--num_to_cal 5120, loader without shuffling) and "
        "its real side: as many real images as generated, the targets of the generated tasks "
        "(the protocol behind CellFlux's FID 18.7 and the CellFluxRL table)",
        differs=_SEEDED
        + "KID_c is per compound (cumulative in CellFlux's released code); on bbbc021-sim "
        "the cap is half of the in-distribution treated test rows, not 5,120",
        first_n=CELLFLUX_EVAL_SIZE,
        sim_first_fraction=0.5,
        fid_real="tasks",
        papers=True,
    ),
    summary="the papers' protocol: CellFlux's first 5,120 in-distribution test rows",
)
PROTOCOLS.register(
    "unseen",
    ProtocolSpec(
        name="unseen",
        version="1",
        split="test-ood",
        summary="the 8 compounds CellFlux holds out (its own table)",
        reproduces="the papers' unseen-compound (out-of-distribution) evaluation set",
        differs=_SEEDED + "every treated test crop of the 8 compounds; KID_c per compound",
    ),
    summary="the 8 compounds CellFlux holds out (its own table)",
)


def get_protocol(name: str) -> ProtocolSpec:
    """The named protocol ``name``; an unknown name raises with "did you mean"."""
    return PROTOCOLS.get(name)


def protocol_spec_of(info: dict) -> ProtocolSpec | None:
    """The registered protocol a result's ``protocol`` block names (None: custom or legacy)."""
    name = info.get("name")
    if not name or name == CUSTOM or name not in PROTOCOLS:
        return None
    return PROTOCOLS.get(name)


def select_targets(ds: BBBC021Dataset, spec: ProtocolSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(treated target rows, control rows) of ``spec`` on ``ds``; targets in index order."""
    rows = ds.split(spec.split)
    treated = rows[~rows["is_control"]]
    cap = spec.cap(ds.card, len(treated))
    if cap is not None:
        if len(treated) < cap or cap < 1:
            raise ProtocolError(
                f"protocol {spec.name} takes the first {cap} treated rows of split "
                f"{spec.split}, but {ds.name} has {len(treated)}",
                path=ds.index_path,
                fix=f"use --name {DEFAULT_PROTOCOL} (every crop of the split)",
            )
        treated = treated.iloc[:cap]
    return treated, rows[rows["is_control"]]


def build_named_protocol(ds: BBBC021Dataset, name: str, seed: int = 0) -> pd.DataFrame:
    """The task table of the named protocol ``name`` on ``ds`` (same inputs, same bytes)."""
    from cellbench.protocol import build_tasks

    spec = get_protocol(name)
    treated, controls = select_targets(ds, spec)
    return build_tasks(ds, treated, controls, seed, f"protocol {spec.name}")


def identify_protocol(ds: BBBC021Dataset, table: pd.DataFrame, seed: int) -> ProtocolSpec | None:
    """The registered protocol whose table on ``ds`` at ``seed`` is ``table`` byte for byte.

    Each registered protocol's targets are compared first (cheap); only a match is paired and
    hashed. None: the table is none of them (a ``custom`` protocol).
    """
    from cellbench.protocol import build_tasks, protocol_sha256

    want = set(table["target_key"].astype(str))
    digest = None
    for name in PROTOCOLS.names():
        spec = PROTOCOLS.get(name)
        try:
            treated, controls = select_targets(ds, spec)
        except ProtocolError:
            continue  # the dataset is too small for this protocol: the file cannot be it
        if len(treated) != len(want) or set(treated["SAMPLE_KEY"].astype(str)) != want:
            continue
        digest = digest or protocol_sha256(table)
        built = build_tasks(ds, treated, controls, seed, f"protocol {spec.name}")
        if protocol_sha256(built) == digest:
            return spec
    return None


def protocol_info(
    table: pd.DataFrame,
    spec: ProtocolSpec | None,
    *,
    seed: int,
    built: bool,
    file: str | None = None,
) -> dict:
    """The ``protocol`` block of a result: name, version, sha256, size and where it came from."""
    from cellbench.protocol import PROTOCOL_VERSION, protocol_sha256

    info: dict = {
        "name": CUSTOM if spec is None else spec.name,
        "version": PROTOCOL_VERSION if spec is None else spec.version,
        "sha256": protocol_sha256(table),
        "n_tasks": len(table),
        "fid_real": "compounds" if spec is None else spec.fid_real,
        "built": built,
    }
    if spec is not None:
        info["split"] = spec.split
        info["seed"] = seed
    if file is not None:
        info["file"] = file
    return info
