"""Where the scorer finds its artifacts: reference statistics and the MoA classifier.

Artifacts are looked up in this order:

1. ``<dataset root>/cellbench_artifacts/`` (what ``cellbench artifacts build`` writes, or
   ``cellbench artifacts fetch`` installs, for a dataset on this machine; see
   :mod:`cellbench.artifacts`);
2. the copies shipped inside the package (``cellbench/resources/<dataset>/``; for
   ``bbbc021-sim`` built from the simulator at scale ``small``, seed 0).

:class:`Artifacts` is the small object a :class:`cellbench.scoring.Scorer` is built from: it needs
no dataset folder, so the regression set (``cellbench regress``) scores with the shipped artifacts
alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from cellbench.data.catalog import DatasetCard, get_card
from cellbench.errors import CellbenchError
from cellbench.features.reference import reference_filename

if TYPE_CHECKING:
    from cellbench.data.bbbc021 import BBBC021Dataset

#: folder of a dataset's own artifacts, under its root
ARTIFACT_DIR = "cellbench_artifacts"
#: the MoA classifier's folder name
CLASSIFIER = "classifier"


def packaged_artifacts(dataset: str) -> Path | None:
    """The folder of artifacts shipped for ``dataset``, if any."""
    ref = resources.files("cellbench") / "resources" / dataset
    path = Path(str(ref))
    return path if path.is_dir() else None


@dataclass(frozen=True)
class Artifacts:
    """The artifacts of one dataset: its card and where its reference statistics and classifier are.

    Attributes:
        name: the dataset's name (``bbbc021-sim``).
        card: the dataset card (channel order: ``card.dna_channel``).
        local_dir: ``<dataset root>/cellbench_artifacts`` searched first, or None (shipped only).
    """

    name: str
    card: DatasetCard
    local_dir: Path | None = None

    @classmethod
    def for_dataset(cls, ds: BBBC021Dataset) -> Artifacts:
        """A dataset's own ``cellbench_artifacts/`` first, then the shipped copies."""
        return cls(ds.name, ds.card, ds.root / ARTIFACT_DIR)

    @classmethod
    def shipped(cls, name: str) -> Artifacts:
        """Only the artifacts shipped in the package for dataset ``name`` (no dataset folder)."""
        return cls(name, get_card(name), None)

    def find(self, name: str) -> Path:
        """Locate artifact ``name`` (a file or folder); raise with the command that makes it."""
        if self.local_dir is not None and (self.local_dir / name).exists():
            return self.local_dir / name
        packaged = packaged_artifacts(self.name)
        if packaged is not None and (packaged / name).exists():
            return packaged / name
        maker = (
            "cellbench classifier train"
            if name.startswith(CLASSIFIER)
            else "cellbench reference build"
        )
        raise CellbenchError(
            f"no {name} for dataset {self.name}",
            path=self.local_dir if self.local_dir is not None else packaged,
            fix=f"run `{maker} --dataset {self.name}` first",
        )

    def reference_path(self, backend: str) -> Path:
        """The resolved reference-statistics file of segmentation backend ``backend``."""
        return self.find(reference_filename(backend))

    def classifier_path(self) -> Path:
        """The resolved MoA classifier folder."""
        return self.find(CLASSIFIER)


def find_artifact(ds: BBBC021Dataset, name: str) -> Path:
    """Locate artifact ``name`` for ``ds`` (see :meth:`Artifacts.find`)."""
    return Artifacts.for_dataset(ds).find(name)
