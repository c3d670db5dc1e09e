"""The dataset registry and its one-line cards (``cellbench ls datasets``).

A card says where a dataset comes from, its licence, size, channel order and splits. Channel order
is a property of the dataset, read by every metric from here -- never hard-coded in a metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cellbench.paths import data_dir as resolve_data_dir
from cellbench.registry import Registry


@dataclass(frozen=True)
class DatasetCard:
    """What a person needs to know about a dataset before using it."""

    name: str
    title: str
    source: str
    licence: str
    size: str
    channels: tuple[str, ...]
    splits: tuple[str, ...]
    version: str
    simulated: bool = False

    @property
    def dna_channel(self) -> int:
        """Index of the DNA stain in every crop."""
        return self.channels.index("dna")

    def root(self, data_dir: str | Path | None = None) -> Path:
        """The dataset's folder: ``<data-dir>/<name>``, or ``data_dir`` itself when it is a root."""
        base = resolve_data_dir(data_dir)
        from cellbench.data.layout import INDEX_RELPATH

        if (base / INDEX_RELPATH).is_file():
            return base
        return base / self.name


#: Split names shared by BBBC021 and its simulator (see ``cellbench.data.bbbc021.SPLITS``).
SPLIT_NAMES = ("train", "test", "train-iid", "test-iid", "test-ood")

DATASETS: Registry[DatasetCard] = Registry("dataset")

DATASETS.register(
    "bbbc021",
    DatasetCard(
        name="bbbc021",
        title="BBBC021 MCF-7 single-cell crops (IMPA preprocessing)",
        source="Caie et al. 2010 / Broad BBBC021; crops from IMPA, Zenodo record 8307629",
        licence="CC BY-NC-SA 3.0",
        size="about 100K crops, 96x96x3 uint8 (one member of a 12.5 GB zip)",
        channels=("actin", "tubulin", "dna"),
        splits=SPLIT_NAMES,
        version="impa-1",
    ),
    summary="real BBBC021 crops; fetch with `cellbench data download bbbc021`",
)
DATASETS.register(
    "bbbc021-sim",
    DatasetCard(
        name="bbbc021-sim",
        title="Simulated BBBC021 in the IMPA layout (the embedded default)",
        source="procedural simulator in cellbench.data.sim; real compound/dose/MoA table",
        licence="MIT (generated data); MoA table CC BY-NC-SA 3.0",
        size="tiny, small or demo scale (a few hundred to tens of thousands of crops)",
        channels=("actin", "tubulin", "dna"),
        splits=SPLIT_NAMES,
        version="sim-1",
        simulated=True,
    ),
    summary="simulated stand-in, made locally with `cellbench data sim`",
)


def get_card(name: str) -> DatasetCard:
    """The card of dataset ``name`` (unknown names raise with suggestions)."""
    return DATASETS.get(name)
