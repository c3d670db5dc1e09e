"""The official BBBC021 metadata: shipped copy, and the real CSVs beside the repo."""

from __future__ import annotations

import hashlib

import pandas as pd

from cellbench.data.layout import MOAS, moa_table
from tests.conftest import shared_data_or_skip


def test_shipped_moa_table() -> None:
    t = moa_table()
    treated = t[t["compound"] != "DMSO"]
    assert len(treated[["compound", "dose"]].drop_duplicates()) == 103
    assert sorted(treated["moa"].unique()) == list(MOAS)
    assert treated["compound"].nunique() == 38
    assert (t.loc[t["compound"] == "DMSO", "moa"] == "DMSO").all()


def test_shipped_copy_is_byte_identical_to_the_official_file() -> None:
    from importlib import resources

    official = shared_data_or_skip("bbbc021_meta", "BBBC021_v1_moa.csv")
    shipped = (resources.files("cellbench.data") / "resources" / "BBBC021_v1_moa.csv").read_bytes()
    assert hashlib.md5(shipped).hexdigest() == "f200e1afd91a9bab845d6021b44e8298"  # PROVENANCE.md
    assert shipped == official.read_bytes()


def test_real_metadata_parses_to_103_pairs_and_12_moas() -> None:
    meta = shared_data_or_skip("bbbc021_meta")
    moa = pd.read_csv(meta / "BBBC021_v1_moa.csv")
    images = pd.read_csv(meta / "BBBC021_v1_image.csv")
    assert len(images) == 13200
    fields = images.merge(
        moa,
        left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"],
        right_on=["compound", "concentration"],
        how="inner",
    )
    treated = fields[fields["moa"] != "DMSO"]
    pairs = treated[["compound", "concentration"]].drop_duplicates()
    assert len(pairs) == 103
    assert sorted(treated["moa"].unique()) == list(MOAS)
    assert set(fields["moa"]) == set(MOAS) | {"DMSO"}
    assert fields["Image_Metadata_Plate_DAPI"].nunique() == 55
    assert len(fields) == 3848  # fields of view with a MoA-annotated treatment or DMSO
