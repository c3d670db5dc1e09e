"""Content provenance (``cellbench/data/content.py``): the digest of the crop bytes an evaluation
reads changes with any crop's bytes, not with order, and refuses crops it must not read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.content import crop_file_sha256s, digest_of, protocol_crop_digests
from cellbench.errors import DataError
from cellbench.protocol import build_protocol


def test_digest_follows_the_bytes_not_the_order(mini_ds: BBBC021Dataset) -> None:
    table = build_protocol(mini_ds, "test", 0)
    keys = [*table["target_key"], *table["control_key"]]
    shas = crop_file_sha256s(mini_ds, keys)
    for key in keys:  # each file's sha256, computed here independently
        assert shas[key] == hashlib.sha256(mini_ds.crop_path(key).read_bytes()).hexdigest()
    first = protocol_crop_digests(mini_ds, table)
    assert first["n_crops"] == len(set(keys))
    assert first["crops_sha256"] == digest_of(crop_file_sha256s(mini_ds, keys[::-1]))
    assert first["targets_sha256"] == digest_of(shas, table["target_key"])
    assert first["targets_sha256"] != first["crops_sha256"]
    # one pixel of one control changes the crops' digest but not the targets'
    path = mini_ds.crop_path(table["control_key"].iloc[0])
    crop = np.load(path)
    crop[0, 0, 0] ^= 1
    np.save(path, crop)
    after = protocol_crop_digests(mini_ds, table)
    assert after["crops_sha256"] != first["crops_sha256"]
    assert after["targets_sha256"] == first["targets_sha256"]


def test_missing_or_escaping_crops_are_refused(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    table = build_protocol(mini_ds, "test", 0)
    target = mini_ds.crop_path(table["target_key"].iloc[0])
    outside = tmp_path / "outside.npy"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    with pytest.raises(DataError, match="crop file is missing") as err:
        protocol_crop_digests(mini_ds, table)
    assert str(target) in str(err.value)
    os.symlink(outside, target)  # a crop that is a link leaving the dataset folder
    with pytest.raises(DataError, match="resolves outside the dataset folder"):
        protocol_crop_digests(mini_ds, table)
