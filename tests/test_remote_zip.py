"""Tests for cellbench.data.remote_zip on its own: a generic zip on a loopback HTTP server.

Nothing here is BBBC021: the zip holds a few stored and deflated members of random and text
bytes, and the reader must list them exactly as :mod:`zipfile` does, fetch each one alone, resume,
refuse corrupt data, and fall back to the whole file when the server ignores ranges.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cellbench.data.remote_zip import (
    LocalZip,
    RangesUnsupported,
    RemoteZip,
    ZipMember,
    download_whole,
    parse_central_directory,
)
from cellbench.errors import DownloadError
from tests.loopback_http import Served, loopback_server

TIMEOUT = 5.0
RNG = np.random.default_rng(3)
CONTENT = {
    "big/random.bin": RNG.integers(0, 256, 400_000, dtype=np.uint8).tobytes(),
    "docs/": b"",
    "docs/notes.txt": b"line of text\n" * 5000,
    "small.txt": b"tiny",
}
METHODS = {"big/random.bin": zipfile.ZIP_STORED, "small.txt": zipfile.ZIP_STORED}


def make_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in CONTENT.items():
            zf.writestr(name, data, compress_type=METHODS.get(name, zipfile.ZIP_DEFLATED))
    return buf.getvalue()


def members_of(blob: bytes) -> list[ZipMember]:
    """The members as :mod:`zipfile` reads them."""
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return [
            ZipMember(
                i.filename,
                i.compress_size,
                i.file_size,
                i.CRC,
                i.compress_type,
                i.header_offset,
                i.flag_bits,
            )
            for i in zf.infolist()
        ]


def data_start(blob: bytes, member: ZipMember) -> int:
    """Offset of a member's data in ``blob`` (after its local header)."""
    off = member.header_offset
    n_name, n_extra = np.frombuffer(blob[off + 26 : off + 30], dtype="<u2")
    return off + 30 + int(n_name) + int(n_extra)


def _recorder(into: list[tuple[int, int]]):
    """An ``on_progress`` callback that appends each (done, total) to ``into``."""
    return lambda done, total: into.append((done, total))


@pytest.fixture
def served() -> Iterator[Served]:
    with loopback_server() as s:
        yield s


def test_members_match_zipfile(served: Served) -> None:
    blob = make_zip()
    served.serve(blob)
    remote = RemoteZip(served.url, timeout=TIMEOUT)
    assert remote.size == len(blob)
    members = remote.members()
    assert members == members_of(blob)
    assert [m.is_dir for m in members] == [False, True, False, False]
    # the central directory is read once: a second listing asks the server nothing
    served.reset_log()
    assert remote.members() == members and served.state.requests == []


def test_parse_central_directory_reads_zip64_extra_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny ZIP64 limit makes zipfile keep sizes and offsets in ZIP64 extra fields.
    with monkeypatch.context() as m:
        m.setattr(zipfile, "ZIP64_LIMIT", 1 << 10)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in CONTENT.items():
                with zf.open(zipfile.ZipInfo(name), "w", force_zip64=True) as out:
                    out.write(data)
    blob = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        start = zf.start_dir
    eocd = blob.rindex(b"PK\x06\x06")  # the central directory ends at the ZIP64 EOCD record
    parsed = parse_central_directory(blob[start:eocd])
    assert [(m.name, m.size, m.compressed_size, m.crc32, m.header_offset) for m in parsed] == [
        (m.name, m.size, m.compressed_size, m.crc32, m.header_offset) for m in members_of(blob)
    ]
    assert parse_central_directory(b"not a central directory") == []


def test_fetch_member_reads_only_that_member(served: Served, tmp_path: Path) -> None:
    blob = make_zip()
    served.serve(blob)
    remote = RemoteZip(served.url, timeout=TIMEOUT)
    by_name = {m.name: m for m in remote.members()}
    for name in ("docs/notes.txt", "small.txt"):  # deflated, stored
        served.reset_log()
        progress: list[tuple[int, int]] = []
        out = remote.fetch_member(
            by_name[name], tmp_path / name.replace("/", "_"), on_progress=_recorder(progress)
        )
        assert out.read_bytes() == CONTENT[name]
        assert not out.with_name(out.name + ".part").exists()
        assert progress[-1] == (by_name[name].compressed_size, by_name[name].compressed_size)
        # local header + the member's data, never the 400 kB random member
        assert served.state.bytes_served < 10_000, name
    served.reset_log()
    big = remote.fetch_member(by_name["big/random.bin"], tmp_path / "random.bin")
    assert big.read_bytes() == CONTENT["big/random.bin"]


def test_interrupted_member_resumes_from_part(served: Served, tmp_path: Path) -> None:
    blob = make_zip()
    served.serve(blob)
    remote = RemoteZip(served.url, timeout=TIMEOUT)
    member = {m.name: m for m in remote.members()}["big/random.bin"]
    start, half = data_start(blob, member), member.compressed_size // 2
    served.state.cut_at_start, served.state.cut_after = start, half
    dest = tmp_path / "random.bin"
    with pytest.raises(DownloadError, match="connection closed") as err:
        remote.fetch_member(member, dest)
    assert served.url in str(err.value) and "resumes" in str(err.value)
    part = tmp_path / "random.bin.part"
    assert part.stat().st_size == half and not dest.exists()
    served.reset_log()
    remote.fetch_member(member, dest)
    assert f"bytes={start + half}-{start + member.compressed_size - 1}" in served.state.requests
    assert dest.read_bytes() == CONTENT["big/random.bin"] and not part.exists()


@pytest.mark.parametrize("name", ["big/random.bin", "docs/notes.txt"])
def test_corrupt_member_is_refused_and_deleted(served: Served, tmp_path: Path, name: str) -> None:
    blob = make_zip()
    served.serve(blob)
    remote = RemoteZip(served.url, timeout=TIMEOUT)
    member = {m.name: m for m in remote.members()}[name]
    mid = data_start(blob, member) + member.compressed_size // 2
    served.state.corrupt = (mid, mid + 8)
    dest = tmp_path / "out.bin"
    with pytest.raises(DownloadError, match="corrupt") as err:
        remote.fetch_member(member, dest)
    assert repr(name) in str(err.value) and "re-download" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the output nor the .part is left


def test_unsupported_members_are_refused(served: Served, tmp_path: Path) -> None:
    served.serve(make_zip())
    remote = RemoteZip(served.url, timeout=TIMEOUT)
    member = remote.members()[0]
    encrypted = ZipMember(**{**member.__dict__, "flags": 1})
    with pytest.raises(DownloadError, match="is encrypted"):
        remote.fetch_member(encrypted, tmp_path / "x")
    bzip2 = ZipMember(**{**member.__dict__, "method": 12})
    with pytest.raises(DownloadError, match="compression method 12"):
        remote.fetch_member(bzip2, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_not_a_zip(served: Served) -> None:
    served.serve(RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DownloadError, match="not a readable zip file") as err:
        RemoteZip(served.url, timeout=TIMEOUT).members()
    assert served.url in str(err.value)


def test_http_error_names_the_url_and_the_given_fix(served: Served, tmp_path: Path) -> None:
    served.state.status = 404
    with pytest.raises(DownloadError, match="HTTP error 404") as err:
        RemoteZip(served.url, timeout=TIMEOUT).members()
    assert served.url in str(err.value) and "check the URL or try again later" in str(err.value)
    with pytest.raises(DownloadError, match="moved elsewhere"):
        RemoteZip(served.url, timeout=TIMEOUT, not_found_fix="moved elsewhere").members()
    with pytest.raises(DownloadError, match="moved elsewhere"):
        download_whole(
            served.url,
            tmp_path / "never-written.zip",
            timeout=TIMEOUT,
            not_found_fix="moved elsewhere",
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("server_resumes", [True, False])
def test_without_ranges_the_whole_zip_reads_the_same(
    served: Served, tmp_path: Path, server_resumes: bool
) -> None:
    blob = make_zip()
    served.serve(blob)
    served.state.ranges = False
    with pytest.raises(RangesUnsupported):
        RemoteZip(served.url, timeout=TIMEOUT).members()
    # download_whole resumes a cut transfer (or starts over where the server ignores the range)
    served.state.ranges = server_resumes
    served.state.cut_at_start, served.state.cut_after = 0, len(blob) // 3
    dest = tmp_path / "archive.zip"
    with pytest.raises(DownloadError, match="connection closed"):
        download_whole(served.url, dest, timeout=TIMEOUT)
    assert (tmp_path / "archive.zip.part").stat().st_size == len(blob) // 3
    progress: list[tuple[int, int]] = []
    download_whole(
        served.url, dest, timeout=TIMEOUT, on_progress=lambda d, t: progress.append((d, t))
    )
    assert dest.read_bytes() == blob and progress[-1] == (len(blob), len(blob))
    assert f"bytes={len(blob) // 3}-" in served.state.requests  # asked to resume (honoured or not)
    local = LocalZip(dest)
    assert local.members() == members_of(blob)
    for member in local.members():
        if not member.is_dir:
            out = local.fetch_member(member, tmp_path / "m.bin")
            assert out.read_bytes() == CONTENT[member.name]


def test_unreadable_local_zip_is_deleted(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DownloadError, match="unreadable") as err:
        LocalZip(bad)
    assert str(bad) in str(err.value) and not bad.exists()
