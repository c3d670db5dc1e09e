"""Tests for cellbench.data.download against a local HTTP server on 127.0.0.1.

The served zip mimics IMPA_reproducibility.zip (Zenodo 8307629) in miniature: a BBBC021 tar, the
fingerprint CSV and unrelated dataset tars that must never be fetched when ranges work. The zip comes
in two variants, with and without the fingerprint member (``make_zip(include_fp=...)``): CellFlux
reads ``emb_fp.csv`` from the IMPA git repository, so the real archive may lack it.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cellbench.data import layout
from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.catalog import get_card
from cellbench.data.download import download_bbbc021, has_fingerprints
from cellbench.data.remote_zip import RemoteZip
from cellbench.errors import DataError, DownloadError
from tests.loopback_http import Served, loopback_server
from tests.test_extract import append_members, gnu_sparse_member, pax_sparse_member

TAR_NAME = "IMPA_reproducibility/datasets/bbbc021_all.tar"
FP_NAME = "IMPA_reproducibility/embeddings/csv/emb_fp.csv"
KEYS = ("Week1_22123_B02_s1_1", "Week1_22123_B02_s1_2", "Week1_22123_C05_s2_3")
COMPOUNDS = ("DMSO", "taxol", "taxol")
TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------
# The miniature IMPA zip


def _crop(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=layout.CROP_SHAPE, dtype=np.uint8)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _index_csv() -> bytes:
    lines = [",SAMPLE_KEY,CPD_NAME,DOSE,ANNOT,STATE,BATCH,SPLIT"]
    for i, (key, cpd) in enumerate(zip(KEYS, COMPOUNDS, strict=True)):
        moa = "DMSO" if cpd == "DMSO" else "Microtubule stabilizers"
        state = 0 if cpd == "DMSO" else 1
        lines.append(f"{i},{key},{cpd},{0.0 if state == 0 else 3.0},{moa},{state},Week1,train")
    return ("\n".join(lines) + "\n").encode()


def _fp_csv(names: tuple[str, ...] = ("DMSO", "taxol"), shift: int = 0) -> bytes:
    header = "," + ",".join(str(i) for i in range(layout.FINGERPRINT_DIM))
    rows = [
        f"{c}," + ",".join(str((i + j + shift) % 3) for j in range(1024))
        for i, c in enumerate(names)
    ]
    return ("\n".join([header, *rows]) + "\n").encode()


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is None:
        tf.addfile(info)
    else:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def make_tar(*, fp_in_tar: bool = False, evil: tarfile.TarInfo | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "bbbc021_all", type=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "bbbc021_all/metadata", type=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "bbbc021_all/" + layout.INDEX_RELPATH, _index_csv())
        if fp_in_tar:
            _add(tf, "bbbc021_all/" + layout.FINGERPRINT_RELPATH, _fp_csv())
        for i, key in enumerate(KEYS):
            _add(tf, "bbbc021_all/" + str(layout.sample_key_to_relpath(key)), _npy_bytes(_crop(i)))
        if evil is not None:
            tf.addfile(evil, io.BytesIO(b"evil" * (evil.size // 4)) if evil.size else None)
    return buf.getvalue()


def make_zip(
    *,
    method: int = zipfile.ZIP_DEFLATED,
    tar: bytes | None = None,
    tar_name: str = TAR_NAME,
    include_fp: bool = True,
    include_tar: bool = True,
    force_zip64: bool = False,
    extra: dict[str, bytes] | None = None,
) -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as zf:
        # Unrelated datasets (incompressible), before and after the BBBC021 members.
        zf.writestr(
            "IMPA_reproducibility/datasets/cpg0000_all.tar",
            rng.integers(0, 256, 600_000, dtype=np.uint8).tobytes(),
            compress_type=zipfile.ZIP_STORED,
        )
        if include_tar:
            info = zipfile.ZipInfo(tar_name, date_time=(2023, 8, 30, 12, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=force_zip64) as out:
                out.write(tar if tar is not None else make_tar())
        if include_fp:
            zf.writestr(FP_NAME, _fp_csv(), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(
            "IMPA_reproducibility/datasets/rxrx1_all.tar",
            rng.integers(0, 256, 1_500_000, dtype=np.uint8).tobytes(),
            compress_type=zipfile.ZIP_STORED,
        )
        zf.writestr("IMPA_reproducibility/README.md", b"IMPA reproducibility data\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def data_range(blob: bytes, name: str) -> tuple[int, int]:
    """(offset of the member's data, compressed size) inside the zip ``blob``."""
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        info = zf.getinfo(name)
    n_name, n_extra = np.frombuffer(
        blob[info.header_offset + 26 : info.header_offset + 30], dtype="<u2"
    )
    return info.header_offset + 30 + int(n_name) + int(n_extra), info.compress_size


# ---------------------------------------------------------------------------------------------
# The local server (tests/loopback_http.py)


@pytest.fixture
def served() -> Iterator[Served]:
    with loopback_server("/records/8307629/files/IMPA.zip") as s:
        yield s


def check_dataset(root: Path, fp: bytes | None = _fp_csv()) -> None:
    """The dataset at ``root`` is the served one, with fingerprint bytes ``fp`` (None: none)."""
    assert (root / layout.INDEX_RELPATH).read_bytes() == _index_csv()
    if fp is None:
        assert not (root / layout.FINGERPRINT_RELPATH).exists() and not has_fingerprints(root)
        assert not (root / "embeddings").exists()
    else:
        assert (root / layout.FINGERPRINT_RELPATH).read_bytes() == fp
    for i, key in enumerate(KEYS):
        arr = np.load(root / layout.sample_key_to_relpath(key))
        assert arr.dtype == np.uint8 and arr.shape == layout.CROP_SHAPE
        np.testing.assert_array_equal(arr, _crop(i))
    assert not (root / "bbbc021_all").exists()  # the tar's top folder is stripped
    leftovers = [p.name for p in root.parent.iterdir() if p.name.startswith(f".{root.name}.")]
    assert leftovers == []  # no work folder, no staging folder


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_download_via_ranges_fetches_only_bbbc021(served: Served, tmp_path: Path, method: int):
    blob = make_zip(method=method)
    served.serve(blob)
    progress: list[tuple[int, int]] = []
    dest = tmp_path / "bbbc021"
    out = download_bbbc021(
        dest, url=served.url, timeout=TIMEOUT, on_progress=lambda d, t: progress.append((d, t))
    )
    assert out == dest.absolute()
    check_dataset(dest)
    assert all(r is not None and r.startswith("bytes=") for r in served.state.requests)
    assert served.state.bytes_served < len(blob) // 4  # the unrelated tars were never fetched
    assert progress and progress[-1][0] == progress[-1][1] > 0
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(progress))


def test_zip64_central_directory(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A tiny ZIP64 limit makes zipfile write ZIP64 extra fields, the ZIP64 EOCD record and locator.
    with monkeypatch.context() as m:
        m.setattr(zipfile, "ZIP64_LIMIT", 1 << 10)
        blob = make_zip(force_zip64=True)
    assert b"PK\x06\x06" in blob[-200:] and b"PK\x06\x07" in blob[-200:]
    # As in a >4 GiB zip: the classic EOCD defers every count/size/offset to the ZIP64 record...
    eocd = blob.rindex(b"PK\x05\x06")
    blob = blob[: eocd + 8] + b"\xff" * 12 + blob[eocd + 20 :]
    # ...and central directory entries keep sizes and offsets in ZIP64 extra fields.
    assert blob.count(b"\xff" * 8) >= 2
    served.serve(blob)
    members = {m.name: m for m in RemoteZip(served.url, timeout=TIMEOUT).members()}
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for info in zf.infolist():
            got = members[info.filename]
            assert (got.compressed_size, got.size, got.crc32, got.header_offset) == (
                info.compress_size,
                info.file_size,
                info.CRC,
                info.header_offset,
            )
    dest = download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT)
    check_dataset(dest)


def test_fallback_when_ranges_refused(served: Served, tmp_path: Path):
    blob = make_zip()
    served.serve(blob)
    served.state.ranges = False
    progress: list[tuple[int, int]] = []
    dest = download_bbbc021(
        tmp_path / "bbbc021",
        url=served.url,
        timeout=TIMEOUT,
        on_progress=lambda d, t: progress.append((d, t)),
    )
    check_dataset(dest)
    assert served.state.bytes_served >= len(blob)
    assert progress[-1] == (len(blob), len(blob))


@pytest.mark.parametrize("server_resumes", [True, False])
def test_fallback_download_is_resumable(served: Served, tmp_path: Path, server_resumes: bool):
    blob = make_zip()
    served.serve(blob)
    # Ranges refused on the probe: the whole zip is fetched; the first transfer is cut.
    served.state.refuse_probe, served.state.ranges = True, server_resumes
    served.state.cut_at_start, served.state.cut_after = 0, len(blob) // 3
    dest = tmp_path / "bbbc021"
    with pytest.raises(DownloadError, match="connection closed"):
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    parts = list(tmp_path.rglob("*.zip.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == len(blob) // 3
    served.reset_log()
    check_dataset(download_bbbc021(dest, url=served.url, timeout=TIMEOUT))
    assert f"bytes={len(blob) // 3}-" in served.state.requests


def test_interrupted_download_resumes(served: Served, tmp_path: Path):
    blob = make_zip()
    served.serve(blob)
    start, size = data_range(blob, TAR_NAME)
    half = size // 2
    served.state.cut_at_start, served.state.cut_after = start, half
    dest = tmp_path / "bbbc021"
    with pytest.raises(DownloadError, match="resumes") as err:
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    assert "connection closed" in str(err.value)
    assert not dest.exists()
    parts = list(tmp_path.rglob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == half
    served.reset_log()
    download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    assert f"bytes={start + half}-{start + size - 1}" in served.state.requests
    check_dataset(dest)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_corrupted_data_is_refused_and_redownloaded(served: Served, tmp_path: Path, method: int):
    blob = make_zip(method=method)
    served.serve(blob)
    start, size = data_range(blob, TAR_NAME)
    served.state.corrupt = (start + size // 2, start + size // 2 + 16)
    dest = tmp_path / "bbbc021"
    with pytest.raises(DownloadError, match="re-download") as err:
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    assert "corrupt" in str(err.value)
    assert not dest.exists()
    assert list(tmp_path.rglob("*.part")) == []
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    served.state.corrupt = None
    check_dataset(download_bbbc021(dest, url=served.url, timeout=TIMEOUT))


def _evil_members(tmp_path: Path) -> dict[str, tarfile.TarInfo]:
    dotdot = tarfile.TarInfo("bbbc021_all/../../evil.txt")
    dotdot.size = 8
    absolute = tarfile.TarInfo(str(tmp_path / "abs_evil.txt"))
    absolute.size = 8
    symlink = tarfile.TarInfo("bbbc021_all/Week1/link")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, str(tmp_path / "target.txt")
    hardlink = tarfile.TarInfo("bbbc021_all/Week1/hard")
    hardlink.type, hardlink.linkname = tarfile.LNKTYPE, "bbbc021_all/" + layout.INDEX_RELPATH
    device = tarfile.TarInfo("bbbc021_all/dev")
    device.type = tarfile.CHRTYPE
    return {
        "dotdot": dotdot,
        "absolute": absolute,
        "symlink": symlink,
        "hardlink": hardlink,
        "device": device,
    }


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_unsafe_tar_member_is_refused(served: Served, tmp_path: Path, kind: str):
    evil = _evil_members(tmp_path)[kind]
    served.serve(make_zip(tar=make_tar(evil=evil)))
    dest = tmp_path / "a" / "b" / "bbbc021"
    with pytest.raises(DownloadError, match="refusing") as err:
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    assert repr(evil.name) in str(err.value)
    assert not dest.exists()
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"evil.txt", "abs_evil.txt", "link", "target.txt", "hard", "dev"}
    assert not [p for p in dest.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("make", [gnu_sparse_member, pax_sparse_member], ids=["gnu", "pax"])
def test_sparse_tar_member_is_refused(served: Served, tmp_path: Path, make) -> None:
    hole = make("bbbc021_all/Week1/hole.npy", b"evil", 5_000_000)
    served.serve(make_zip(tar=append_members(make_tar(), hole)))
    dest = tmp_path / "bbbc021"
    with pytest.raises(DownloadError, match=r"'bbbc021_all/Week1/hole\.npy' is a sparse file"):
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    assert not dest.exists() and not list(tmp_path.rglob("*.npy"))
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        ("MAX_TAR_MEMBERS", 5, "more than 5 members"),
        ("MAX_TAR_MEMBER_BYTES", 20_000, "is larger than 20000 bytes"),
        ("MAX_TAR_TOTAL_BYTES", 50_000, "more than 50000 bytes in all"),
    ],
)
def test_tar_past_its_bounds_is_refused(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit, value, message
) -> None:
    import cellbench.data.download as download

    monkeypatch.setattr(download, limit, value)  # the tar: 6 members, 3 crops of 27,776 bytes
    served.serve(make_zip())
    dest = tmp_path / "bbbc021"
    with pytest.raises(DownloadError, match=message):
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    assert not dest.exists() and not list(tmp_path.rglob("*.npy"))
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", p.stat().st_mode & 0o777) for p in root.rglob("*")}


@pytest.mark.parametrize("fingerprints", ["archive", "user"])
def test_installed_dataset_has_the_usual_permissions(
    served: Served, tmp_path: Path, fingerprints: str
) -> None:
    served.serve(make_zip())
    user_fp = tmp_path / "emb_fp.csv"
    user_fp.write_bytes(_fp_csv())
    old = os.umask(0o022)
    try:
        dest = download_bbbc021(
            tmp_path / "bbbc021",
            url=served.url,
            timeout=TIMEOUT,
            fingerprints=user_fp if fingerprints == "user" else None,
        )
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o755  # not tempfile.mkdtemp's 0700
    assert _modes(dest) == {("dir", 0o755), ("file", 0o644)}
    assert (dest / layout.FINGERPRINT_RELPATH).stat().st_mode & 0o777 == 0o644


def test_unsafe_zip_member_name_is_refused(served: Served, tmp_path: Path):
    served.serve(make_zip(tar_name="../../bbbc021_all.tar"))
    with pytest.raises(DownloadError, match=r"\.\."):
        download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT)
    assert not (tmp_path / "bbbc021").exists()


def test_zip_without_bbbc021_lists_candidates(served: Served, tmp_path: Path):
    served.serve(make_zip(include_tar=False))
    with pytest.raises(DownloadError, match=r"bbbc021_all\.tar") as err:
        download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT)
    assert "rxrx1_all.tar" in str(err.value) and "cpg0000_all.tar" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no dataset, no empty work folder


def test_fingerprints_inside_the_tar(served: Served, tmp_path: Path):
    served.serve(make_zip(tar=make_tar(fp_in_tar=True), include_fp=False))
    check_dataset(download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT))


def test_fingerprints_chosen_among_several_candidates(served: Served, tmp_path: Path):
    other = b",0,1\nsiRNA-1,0,1\nsiRNA-2,1,0\n"
    served.serve(make_zip(extra={"IMPA_reproducibility/embeddings/rxrx1/emb_fp.csv": other}))
    check_dataset(download_bbbc021(tmp_path / "one", url=served.url, timeout=TIMEOUT))
    # A member whose path names bbbc021 wins over the others.
    served.serve(
        make_zip(include_fp=False, extra={"x/bbbc021/emb_fp.csv": _fp_csv(), "y/emb_fp.csv": other})
    )
    check_dataset(download_bbbc021(tmp_path / "two", url=served.url, timeout=TIMEOUT))


@pytest.mark.parametrize("ranges", [True, False])
@pytest.mark.parametrize("include_fp", [True, False])
def test_download_finishes_with_or_without_the_fingerprint_member(
    served: Served, tmp_path: Path, include_fp: bool, ranges: bool
):
    served.serve(make_zip(include_fp=include_fp))
    served.state.ranges = ranges
    dest = download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT)
    check_dataset(dest, _fp_csv() if include_fp else None)
    ds = BBBC021Dataset(dest, get_card("bbbc021"))
    assert ds.has_fingerprints is include_fp
    assert ds.load_crop(KEYS[2]).shape == layout.CROP_SHAPE  # what scoring reads is there
    if include_fp:
        np.testing.assert_array_equal(ds.fingerprint("taxol")[:4], [1, 2, 0, 1])
    else:  # what needs them says where they go and how to get them, in one line
        with pytest.raises(DataError) as err:
            ds.fingerprint("taxol")
        text = str(err.value)
        assert "\n" not in text and str(dest / layout.FINGERPRINT_RELPATH) in text
        assert f"cellbench data download bbbc021 --data-dir {dest} --fingerprints emb_fp.csv" in (
            text
        )


@pytest.mark.parametrize("include_fp", [True, False])
def test_fingerprints_option_installs_the_users_file(
    served: Served, tmp_path: Path, include_fp: bool
):
    mine = tmp_path / "emb_fp.csv"
    mine.write_bytes(_fp_csv(("taxol", "DMSO", "aspirin"), shift=1))
    served.serve(make_zip(include_fp=include_fp))
    dest = download_bbbc021(
        tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT, fingerprints=mine
    )
    check_dataset(dest, mine.read_bytes())  # the user's file wins over the archive's
    ds = BBBC021Dataset(dest, get_card("bbbc021"))
    np.testing.assert_array_equal(ds.fingerprint("taxol")[:4], [1, 2, 0, 1])
    assert FP_NAME.encode() not in b"".join(  # the archive's member was never fetched
        r.encode() for r in served.state.requests if r
    )


def _bad_fingerprint_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a bad fingerprint file, what its error says)."""
    files = {
        "narrow": (b",0,1\nDMSO,0,1\ntaxol,1,0\n", "2 value columns, expected the 1024"),
        "text": (_fp_csv().replace(b"taxol,1,", b"taxol,x,"), "non-numeric"),
        "empty": (_fp_csv(()), "no rows"),
        "twice": (_fp_csv(("DMSO", "taxol", "taxol")), "'taxol' more than once"),
        "binary": (b"\x00\xff\x00PK\x03\x04", "fingerprint CSV"),
    }
    out = {}
    for name, (data, says) in files.items():
        path = tmp_path / f"{name}.csv"
        path.write_bytes(data)
        out[name] = (path, says)
    out["absent"] = (tmp_path / "nowhere.csv", "no such fingerprint file")
    return out


@pytest.mark.parametrize("kind", ["narrow", "text", "empty", "twice", "binary", "absent"])
def test_bad_fingerprints_refused_before_any_request(served: Served, tmp_path: Path, kind: str):
    path, says = _bad_fingerprint_files(tmp_path)[kind]
    served.serve(make_zip(include_fp=False))
    dest = tmp_path / "data" / "bbbc021"
    with pytest.raises(DataError) as err:
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT, fingerprints=path)
    text = str(err.value)
    assert says in text and str(path) in text and "fix: pass the IMPA repository's" in text
    assert served.state.requests == [] and not (tmp_path / "data").exists()


def test_fingerprints_missing_a_compound_leave_nothing_installed(served: Served, tmp_path: Path):
    partial = tmp_path / "partial.csv"
    partial.write_bytes(_fp_csv(("DMSO", "nocodazole")))
    served.serve(make_zip(include_fp=False))
    dest = tmp_path / "bbbc021"
    with pytest.raises(DataError, match=r"covers 0 of the dataset's 1 compounds; missing: 'taxol'"):
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT, fingerprints=partial)
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # The verified tar stays in the work folder: the retry with a good file fetches nothing.
    served.reset_log()
    good = tmp_path / "good.csv"
    good.write_bytes(_fp_csv())
    download_bbbc021(dest, url=served.url, timeout=TIMEOUT, fingerprints=good)
    check_dataset(dest)
    assert served.state.bytes_served < 70_000  # the central directory only, never the tar again


def test_fingerprints_added_to_an_installed_dataset_without_network(served: Served, tmp_path: Path):
    served.serve(make_zip(include_fp=False))
    dest = download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT)
    check_dataset(dest, None)
    served.state.status = 500  # any request would now fail
    served.reset_log()
    bad = tmp_path / "partial.csv"
    bad.write_bytes(_fp_csv(("DMSO",)))
    with pytest.raises(DataError, match="missing: 'taxol'"):
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT, fingerprints=bad)
    check_dataset(dest, None)  # a bad file leaves the dataset as it was
    good = tmp_path / "emb_fp.csv"
    good.write_bytes(_fp_csv())
    for _ in range(2):  # the second call finds the same bytes in place: a no-op
        assert download_bbbc021(dest, url=served.url, timeout=TIMEOUT, fingerprints=good) == dest
        check_dataset(dest)
    other = tmp_path / "other.csv"
    other.write_bytes(_fp_csv(shift=2))
    with pytest.raises(DataError, match="already has different fingerprints") as err:
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT, fingerprints=other)
    assert f"remove {dest / layout.FINGERPRINT_RELPATH} first" in str(err.value)
    check_dataset(dest)
    assert served.state.requests == []
    assert [p.name for p in (dest / "embeddings" / "csv").iterdir()] == ["emb_fp.csv"]


def test_second_call_is_idempotent_without_network(served: Served, tmp_path: Path):
    served.serve(make_zip())
    dest = download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT)
    served.reset_log()
    assert download_bbbc021(dest, url=served.url, timeout=TIMEOUT) == dest
    assert served.state.requests == []
    check_dataset(dest)


def test_non_empty_incomplete_destination_is_refused(served: Served, tmp_path: Path):
    served.serve(make_zip())
    dest = tmp_path / "bbbc021"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="not a complete"):
        download_bbbc021(dest, url=served.url, timeout=TIMEOUT)
    assert served.state.requests == []
    assert (dest / "notes.txt").read_text() == "mine"


def test_http_error_names_url(served: Served, tmp_path: Path):
    served.state.status = 404
    with pytest.raises(DownloadError, match="404") as err:
        download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=TIMEOUT)
    assert served.url in str(err.value)
    assert "BBBC021 is in Zenodo record 8307629" in str(err.value)  # the downloader's own fix


def test_timeout_is_reported(served: Served, tmp_path: Path):
    served.serve(make_zip())
    served.state.delay = 1.5
    with pytest.raises(DownloadError, match="timed out") as err:
        download_bbbc021(tmp_path / "bbbc021", url=served.url, timeout=0.3)
    assert served.url in str(err.value) and "resumes" in str(err.value)


def test_unreachable_host(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/IMPA_reproducibility.zip"
    with pytest.raises(DownloadError, match="cannot reach") as err:
        download_bbbc021(tmp_path / "bbbc021", url=url, timeout=TIMEOUT)
    assert url in str(err.value) and "network" in str(err.value)


# ---------------------------------------------------------------------------------------------
# The command line, end to end: download, then the loader and the protocol read what arrived


def test_cli_download_then_protocol(served: Served, tmp_path: Path):
    from tests.conftest import run_cli

    served.serve(make_zip())
    res = run_cli("data", "download", "bbbc021", "--data-dir", str(tmp_path), "--url", served.url)
    assert res.returncode == 0, res.stderr
    check_dataset(tmp_path / "bbbc021")
    proto = run_cli(
        "protocol",
        "--dataset",
        "bbbc021",
        "--data-dir",
        str(tmp_path),
        "--split",
        "train",
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert proto.returncode == 0, proto.stderr
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert len(lines) == 3  # header + the two taxol crops, each paired with the DMSO crop
    assert all(",Week1_22123_B02_s1_1," in ln for ln in lines[1:])


def test_cli_download_unreachable_is_one_line(tmp_path: Path):
    from tests.conftest import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run_cli(
        "data",
        "download",
        "bbbc021",
        "--data-dir",
        str(tmp_path),
        "--url",
        f"http://127.0.0.1:{port}/IMPA.zip",
    )
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert (
        lines[-1].startswith("error: http://127.0.0.1")
        and "run the same command again" in lines[-1]
    )
    assert sum(ln.startswith("error:") for ln in lines) == 1
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "bbbc021" / "metadata").exists()


def test_cli_download_without_fingerprints_warns_then_adds_them(served: Served, tmp_path: Path):
    from tests.conftest import run_cli

    served.serve(make_zip(include_fp=False))
    data = ("data", "download", "bbbc021", "--data-dir", str(tmp_path), "--url", served.url)
    res = run_cli(*data)
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "bbbc021"
    check_dataset(dest, None)
    warning = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "scoring does not need them" in warning[0]
    assert f"--data-dir {dest} --fingerprints emb_fp.csv" in warning[0]
    proto = run_cli(
        "protocol", "--dataset", "bbbc021", "--data-dir", str(tmp_path), "--split", "train",
        "--out", str(tmp_path / "p.csv"),
    )  # fmt: skip
    assert proto.returncode == 0, proto.stderr  # the evaluation side needs no fingerprints
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3
    # A bad file: one line naming it and the fix, the dataset unchanged.
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b",0,1\nDMSO,0,1\n")
    res = run_cli(*data, "--fingerprints", str(bad))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert lines[-1].startswith(f"error: {bad}: fingerprint CSV has 2 value columns")
    assert "fix: pass the IMPA repository's emb_fp.csv" in lines[-1]
    check_dataset(dest, None)
    # The good file is added to the installed dataset; no warning any more.
    good = tmp_path / "emb_fp.csv"
    good.write_bytes(_fp_csv())
    res = run_cli(*data, "--fingerprints", str(good))
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr and "Adding fingerprints" in res.stderr
    check_dataset(dest)
