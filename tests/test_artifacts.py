"""cellbench artifacts: byte-identical builds, the set's digest, pack, fetch (loopback) and the registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cellbench.artifacts import archive
from cellbench.artifacts.manifest import (
    MANIFEST_NAME,
    hash_files,
    manifest_bytes,
    read_manifest,
    set_digest,
)
from cellbench.errors import CellbenchError, DownloadError
from tests.loopback_http import Served, loopback_server

INDEX_SHA = "ab" * 32


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------- deterministic build
def test_head_training_is_thread_independent_and_uses_the_flip_variants():
    from cellbench.features.classifier import train_head

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(96, 4, 32)).astype(np.float32)
    labels = rng.integers(0, 12, size=96)

    def weights(x: np.ndarray, threads: int) -> bytes:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            head = train_head(x, labels, epochs=3, seed=5)
        finally:
            torch.set_num_threads(before)
        assert torch.get_num_threads() == before  # restored after the one-thread training
        return b"".join(v.numpy().tobytes() for v in head.state_dict().values())

    one = weights(feats, 1)
    assert weights(feats, 2) == one
    moved = feats.copy()
    moved[:, 3] += 1.0  # only the (rows, columns)-flipped variant changes
    assert weights(moved, 1) != one


@pytest.mark.slow
def test_inception_features_do_not_depend_on_threads_or_batch():
    """The measurement the build's determinism rests on (this CPU; docs/scoring.md)."""
    from cellbench.features.inception import InceptionFeatures

    crops = np.random.default_rng(1).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    inc = InceptionFeatures(device="cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = inc(crops)
        torch.set_num_threads(2)
        b = inc(crops)
        c = inc(crops[:2])
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(a, b) and np.array_equal(a[:2], c)


@pytest.mark.slow
def test_build_is_byte_identical_for_two_runs_and_two_thread_counts(mini_ds, tmp_path: Path):
    from cellbench.artifacts.build import build_artifacts
    from cellbench.features.classifier import load_classifier

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, rec1 = build_artifacts(mini_ds, out=tmp_path / "one", epochs=3)
        torch.set_num_threads(2)
        out2, rec2 = build_artifacts(mini_ds, out=tmp_path / "two", epochs=3)
        _, rec3 = build_artifacts(mini_ds, out=tmp_path / "one", epochs=3)  # a rebuild in place
    finally:
        torch.set_num_threads(before)
    assert rec1 == rec2 == rec3
    assert sorted(rec1["files"]) == [
        "classifier/classifier.json",
        "classifier/classifier.safetensors",
        "reference_classical.json",
    ]
    assert _sha(out1 / MANIFEST_NAME) == _sha(out2 / MANIFEST_NAME)
    assert read_manifest(out1)["sha256"] == rec1["sha256"] == set_digest(rec1["files"])
    assert not [p for p in out1.iterdir() if p.name.startswith(".")]  # no staging left behind
    card = load_classifier(out1 / "classifier")[1]
    # train-iid: cytochalasin D (a CellFlux unseen compound) is not trained on; 2 batches x 3
    assert card["n_train"] == 6
    assert card["training_compounds"]["Actin disruptors"] == []
    assert card["training_compounds"]["Microtubule stabilizers"] == ["taxol"]
    assert card["test_metrics"]["n"] == 6  # test-iid treated crops
    assert "seconds" not in json_text(out1 / "classifier" / "classifier.json")


def json_text(path: Path) -> str:
    return path.read_text()


# ------------------------------------------------------------------------------ pack / fetch
def make_set(folder: Path, dataset: str = "bbbc021", payload: bytes = b"weights") -> dict:
    """A consistent artifact set (files and manifest) without training anything."""
    (folder / "classifier").mkdir(parents=True, exist_ok=True)
    (folder / "reference_classical.json").write_text('{"per_moa": {}}\n')
    (folder / "classifier" / "classifier.json").write_text('{"classes": []}\n')
    (folder / "classifier" / "classifier.safetensors").write_bytes(payload)
    files = hash_files(folder, ["reference_classical.json", *archive.CLASSIFIER_FILES])
    (folder / MANIFEST_NAME).write_bytes(manifest_bytes(dataset, INDEX_SHA, files))
    return read_manifest(folder)


def test_pack_is_deterministic_and_round_trips(tmp_path: Path):
    doc = make_set(tmp_path / "set")
    a = archive.pack(tmp_path / "set", tmp_path / "a.tar.gz")
    (tmp_path / "set" / "reference_classical.json").touch()  # a new mtime changes nothing
    b = archive.pack(tmp_path / "set", tmp_path / "b.tar.gz")
    assert a == b == _sha(tmp_path / "a.tar.gz")
    archive.extract_set(tmp_path / "a.tar.gz", tmp_path / "x")
    assert read_manifest(tmp_path / "x")["sha256"] == doc["sha256"]


def test_pack_refuses_a_set_that_does_not_match_its_manifest(tmp_path: Path):
    make_set(tmp_path / "set")
    (tmp_path / "set" / "classifier" / "classifier.safetensors").write_bytes(b"other")
    with pytest.raises(
        CellbenchError, match=r"classifier\.safetensors is missing or does not match"
    ):
        archive.pack(tmp_path / "set", tmp_path / "a.tar.gz")


@pytest.fixture
def served():
    with loopback_server("/sets/bbbc021.tar.gz") as s:
        yield s


def _fetch(served: Served, sha: str, out: Path) -> dict:
    return archive.fetch(
        served.url, sha, out, dataset="bbbc021", index_sha256=INDEX_SHA, timeout=5.0
    )


def test_fetch_installs_the_published_set(served: Served, tmp_path: Path):
    doc = make_set(tmp_path / "set")
    sha = archive.pack(tmp_path / "set", tmp_path / "set.tar.gz")
    served.serve((tmp_path / "set.tar.gz").read_bytes())
    out = tmp_path / "root" / "cellbench_artifacts"
    out.mkdir(parents=True)
    (out / "reference_cellpose.json").write_text("{}")  # a stale file of an older set
    (out / "README.md").write_text("kept")
    rec = _fetch(served, sha.upper(), out)
    assert rec["sha256"] == doc["sha256"]
    assert _sha(out / MANIFEST_NAME) == _sha(tmp_path / "set" / MANIFEST_NAME)
    assert not (out / "reference_cellpose.json").exists()
    assert (out / "README.md").read_text() == "kept"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_fetch_with_a_wrong_hash_installs_nothing(served: Served, tmp_path: Path):
    make_set(tmp_path / "set")
    sha = archive.pack(tmp_path / "set", tmp_path / "set.tar.gz")
    served.serve((tmp_path / "set.tar.gz").read_bytes())
    out = tmp_path / "out"
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(DownloadError, match=f"sha256 is {sha}, not the published {wrong}"):
        _fetch(served, wrong, out)
    assert not out.exists()  # the folder it made is removed again
    with pytest.raises(CellbenchError, match="not a sha256"):
        _fetch(served, "abc", out)


def test_fetch_refuses_a_set_for_another_dataset_version(served: Served, tmp_path: Path):
    make_set(tmp_path / "set")
    sha = archive.pack(tmp_path / "set", tmp_path / "set.tar.gz")
    served.serve((tmp_path / "set.tar.gz").read_bytes())
    with pytest.raises(CellbenchError, match="built from bbbc021 index ababababab"):
        archive.fetch(served.url, sha, tmp_path / "o", dataset="bbbc021", index_sha256="cd" * 32)
    assert not (tmp_path / "o" / MANIFEST_NAME).exists()


def _hostile(kind: str, folder: Path) -> bytes:
    """An archive with a valid manifest plus one hostile member."""
    make_set(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name in (MANIFEST_NAME, "reference_classical.json", *archive.CLASSIFIER_FILES):
            tf.add(folder / name, arcname=name)
        info = tarfile.TarInfo()
        if kind == "dotdot":
            info.name, info.size = "../evil.json", 4
        elif kind == "absolute":
            info.name, info.size = "/tmp/evil.json", 4
        elif kind == "symlink":
            info.name, info.type, info.linkname = "reference_x.json", tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.name, info.type, info.linkname = "reference_x.json", tarfile.LNKTYPE, MANIFEST_NAME
        elif kind == "foreign":
            info.name, info.size = "run.sh", 4
        elif kind == "oversize":
            info.name, info.size = "reference_big.json", 4096
        tf.addfile(info, io.BytesIO(b"evil" * (info.size // 4)) if info.size else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind", ["dotdot", "absolute", "symlink", "hardlink", "foreign", "oversize"]
)
def test_fetch_refuses_a_hostile_archive(
    served: Served, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1024)
    blob = _hostile(kind, tmp_path / "set")
    served.serve(blob)
    out = tmp_path / "root" / "cellbench_artifacts"
    with pytest.raises(DownloadError, match=r"archive member .* is"):
        _fetch(served, hashlib.sha256(blob).hexdigest(), out)
    assert not out.exists()  # nothing written, no staging left, no empty folder
    assert not (tmp_path / "root" / "evil.json").exists()


@pytest.mark.parametrize("kind", ["sparse", "many", "total"])
def test_fetch_refuses_an_archive_past_its_bounds(
    served: Served, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
):
    from tests.test_extract import append_members, gnu_sparse_member

    make_set(tmp_path / "set")
    archive.pack(tmp_path / "set", tmp_path / "set.tar.gz")
    tar = gzip.decompress((tmp_path / "set.tar.gz").read_bytes())
    if kind == "sparse":  # 4 KB of hole: only the sparse rule refuses it
        tar = append_members(tar, gnu_sparse_member("reference_x.json", b"{}", 4096))
        message = r"'reference_x\.json' is a sparse file"
    elif kind == "many":
        monkeypatch.setattr(archive, "MAX_MEMBERS", 2)
        message = "more than 2 members"
    else:
        monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 100)
        message = "more than 100 bytes in all"
    blob = gzip.compress(tar)
    served.serve(blob)
    out = tmp_path / "root" / "cellbench_artifacts"
    with pytest.raises(DownloadError, match=message):
        _fetch(served, hashlib.sha256(blob).hexdigest(), out)
    assert not out.exists()


def test_fetch_bounds_the_download(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 1000)
    blob = b"x" * 5000
    served.serve(blob)
    with pytest.raises(DownloadError, match="larger than 1000 bytes"):
        _fetch(served, hashlib.sha256(blob).hexdigest(), tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- registry
def test_registry_knows_the_shipped_sim_set_and_no_real_set_yet():
    from cellbench.artifacts.registry import is_registered, published_sets, shipped_set
    from cellbench.scoring.artifacts import packaged_artifacts

    shipped = shipped_set("bbbc021-sim")
    folder = packaged_artifacts("bbbc021-sim")
    assert shipped is not None and folder is not None
    ref = _sha(folder / "reference_classical.json")
    assert shipped["files"]["reference_classical.json"] == ref
    assert is_registered("bbbc021-sim", {"reference_classical.json": ref})
    assert not is_registered("bbbc021-sim", {"reference_classical.json": "0" * 64})
    assert published_sets("bbbc021") == []
    assert not is_registered("bbbc021", {"reference_classical.json": ref})
