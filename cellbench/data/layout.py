"""The IMPA on-disk layout of BBBC021 (shared by the real loader, the simulator and the downloader).

A dataset root holds::

    metadata/bbbc021_df_all.csv     index: an unnamed integer first column, then SAMPLE_KEY, CPD_NAME,
                                    DOSE, ANNOT (MoA), STATE (0/1 or control/trt), BATCH, SPLIT
                                    (train/test), optionally SMILES
    embeddings/csv/emb_fp.csv       compound fingerprints: header ",0,1,...,1023", one row per
                                    compound (DMSO included), integer Morgan counts
    <week>/<plate>/<rest>.npy       one crop per SAMPLE_KEY "<week>_<plate>_<rest>", uint8 HWC 96x96x3

These facts come from the public IMPA and CellFlux loaders; where the two codebases differ (STATE
encoding, a ``.npy`` suffix inside SAMPLE_KEY) both variants are accepted.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import PurePosixPath

import pandas as pd

from cellbench.errors import DataError

INDEX_RELPATH = "metadata/bbbc021_df_all.csv"
FINGERPRINT_RELPATH = "embeddings/csv/emb_fp.csv"
INDEX_COLUMNS: tuple[str, ...] = (
    "SAMPLE_KEY",
    "CPD_NAME",
    "DOSE",
    "ANNOT",
    "STATE",
    "BATCH",
    "SPLIT",
)
CONTROL_COMPOUND = "DMSO"
CONTROL_MOA = "DMSO"
CROP_SIZE = 96
CROP_SHAPE = (CROP_SIZE, CROP_SIZE, 3)
FINGERPRINT_DIM = 1024

#: The eight compounds CellFlux holds out as unseen (out-of-distribution).
CELLFLUX_OOD_COMPOUNDS: tuple[str, ...] = (
    "docetaxel",
    "AZ841",
    "cytochalasin D",
    "simvastatin",
    "cyclohexamide",
    "latrunculin B",
    "epothilone B",
    "lactacystin",
)

#: The 12 BBBC021 mechanisms of action, in a fixed (alphabetical) order used for class indices.
MOAS: tuple[str, ...] = (
    "Actin disruptors",
    "Aurora kinase inhibitors",
    "Cholesterol-lowering",
    "DNA damage",
    "DNA replication",
    "Eg5 inhibitors",
    "Epithelial",
    "Kinase inhibitors",
    "Microtubule destabilizers",
    "Microtubule stabilizers",
    "Protein degradation",
    "Protein synthesis",
)

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-+ ]*$")


def sample_key_to_relpath(key: str) -> PurePosixPath:
    """Map a SAMPLE_KEY to the crop's path relative to the dataset root.

    ``Week1_22123_B02_s1_7`` -> ``Week1/22123/B02_s1_7.npy``. A key that already ends in ``.npy``
    keeps a single suffix. Keys that would leave the dataset root (``..``, absolute parts, path
    separators) are refused.
    """
    if not isinstance(key, str) or not key:
        raise DataError(f"empty or non-text SAMPLE_KEY {key!r}", fix="repair the index CSV")
    if "/" in key or "\\" in key or "\x00" in key:
        raise DataError(
            f"SAMPLE_KEY {key!r} contains a path separator and could point outside the dataset",
            fix="SAMPLE_KEY must be '<week>_<plate>_<name>' with no slashes",
        )
    parts = key.split("_")
    if len(parts) < 3:
        raise DataError(
            f"SAMPLE_KEY {key!r} does not have the form '<week>_<plate>_<name>'",
            fix="repair the index CSV",
        )
    week, plate, rest = parts[0], parts[1], "_".join(parts[2:])
    if not rest.endswith(".npy"):
        rest += ".npy"
    for part in (week, plate, rest):
        if part in (".", "..") or not _SAFE_PART.match(part):
            raise DataError(
                f"SAMPLE_KEY {key!r} has an unsafe path component {part!r}",
                fix="SAMPLE_KEY parts may use letters, digits, '_', '.', '-', '+' and spaces only",
            )
    return PurePosixPath(week, plate, rest)


@functools.lru_cache(maxsize=1)
def moa_table() -> pd.DataFrame:
    """The official BBBC021 compound/concentration/MoA table shipped with cellbench.

    Source: BBBC021_v1_moa.csv (Caie et al. 2010, Broad Bioimage Benchmark Collection; CC BY-NC-SA
    3.0). 103 compound-concentration pairs with a MoA, plus DMSO.
    """
    ref = resources.files("cellbench.data") / "resources" / "BBBC021_v1_moa.csv"
    with ref.open("rb") as fh:
        table = pd.read_csv(fh)
    table = table.rename(columns={"concentration": "dose"})
    return table[["compound", "dose", "moa"]].copy()
