"""Bounded archive extraction (cellbench.extract) against hostile archives crafted in tmp_path.

Each test names the defence it covers; each fails if that defence is removed: sparse members,
members inflating past their declared size, archives past the total budget or the member count,
and partial output left after a failure. The callers (BBBC021 download, artifact fetch, zip
members) are covered through a loopback HTTP server in tests/test_download.py,
tests/test_artifacts.py and below.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from cellbench.data.remote_zip import LocalZip, RemoteZip
from cellbench.errors import DownloadError
from cellbench.extract import Budget, ExtractLimits, SafeTar, copy_member, inflate_member
from tests.loopback_http import loopback_server

FIX = "do not use it"
WIDE = ExtractLimits(max_members=1000, max_member_bytes=64 << 20, max_total_bytes=256 << 20)
BOMB = 50_000_000  # bytes of zeros a small compressed member inflates to


def gnu_sparse_member(name: str, stored: bytes, realsize: int) -> bytes:
    """A GNU 'S' (old sparse format) member: ``stored`` at the end of ``realsize`` bytes of hole."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(stored)
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))

    def octal(n: int) -> bytes:
        return b"%011o\0" % n

    buf[386:398], buf[398:410] = octal(realsize - len(stored)), octal(len(stored))
    buf[482] = 0  # no extended sparse headers
    buf[483:495] = octal(realsize)
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf) + stored + b"\0" * (-len(stored) % 512)


def pax_sparse_member(name: str, stored: bytes, realsize: int) -> bytes:
    """A PAX (GNU sparse 0.1) member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(stored)
        info.pax_headers = {
            "GNU.sparse.size": str(realsize),
            "GNU.sparse.map": f"{realsize - len(stored)},{len(stored)}",
        }
        tf.addfile(info, io.BytesIO(stored))
    return buf.getvalue()[: -(tarfile.RECORDSIZE - 512 * 3)]  # without the end-of-archive blocks


def append_members(tar: bytes, tail: bytes) -> bytes:
    """The tar ``tar`` with the raw members ``tail`` added after its last member."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + last.size + (-last.size % 512)
    return tar[:end] + tail + b"\0" * 1024


def tar_of(files: dict[str, bytes], *, tail: bytes = b"") -> bytes:
    """A plain tar of ``files`` followed by the raw members in ``tail``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return append_members(buf.getvalue(), tail)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _extract(archive: Path, limits: ExtractLimits, target: Path, rename=None) -> list[Path]:
    with SafeTar(archive, limits, fix=FIX) as tar:
        return tar.extract(target, rename)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------ tar members
@pytest.mark.parametrize("make", [gnu_sparse_member, pax_sparse_member], ids=["gnu", "pax"])
def test_sparse_member_is_refused_before_anything_is_written(tmp_path: Path, make) -> None:
    # 5 MB of hole is within every bound: only the sparse rule refuses it
    blob = tar_of({"a.txt": b"ok"}, tail=make("hole.bin", b"evil", 5_000_000))
    archive = _write(tmp_path / "a.tar", blob)
    with tarfile.open(archive) as tf:
        assert [m.issparse() for m in tf.getmembers()] == [False, True]  # crafted as meant
    target = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"'hole\.bin' is a sparse file") as err:
        _extract(archive, WIDE, target)
    assert str(archive) in str(err.value) and FIX in str(err.value)
    assert _files(target) == []


def test_gzip_bomb_after_a_ten_byte_member_writes_ten_bytes(tmp_path: Path) -> None:
    # the tar header says 10 bytes; the gzip stream inflates to 50 MB of zeros behind it
    raw = tar_of({"small.txt": b"0123456789"}) + b"\0" * BOMB
    archive = _write(tmp_path / "bomb.tar.gz", gzip.compress(raw, compresslevel=9))
    assert archive.stat().st_size < 200_000
    with SafeTar(archive, WIDE, fix=FIX) as tar:
        written = tar.extract(tmp_path / "out")
    assert [p.read_bytes() for p in written] == [b"0123456789"]
    assert tar.budget.total == 10


def test_compressed_member_past_the_member_limit_is_refused(tmp_path: Path) -> None:
    raw = tar_of({"zeros.bin": b"\0" * BOMB})
    archive = _write(tmp_path / "z.tar.gz", gzip.compress(raw, compresslevel=9))
    limits = ExtractLimits(max_members=10, max_member_bytes=1 << 20, max_total_bytes=1 << 30)
    with pytest.raises(DownloadError, match=r"'zeros\.bin' is larger than 1048576 bytes"):
        _extract(archive, limits, tmp_path / "out")
    assert _files(tmp_path / "out") == []


def test_members_past_the_total_budget_are_refused(tmp_path: Path) -> None:
    # each member is within its own limit; together they pass the budget
    files = {f"m{i}.bin": b"\0" * 300_000 for i in range(10)}
    archive = _write(tmp_path / "t.tar.gz", gzip.compress(tar_of(files)))
    limits = ExtractLimits(max_members=100, max_member_bytes=1 << 20, max_total_bytes=1 << 20)
    with pytest.raises(DownloadError, match=r"more than 1048576 bytes in all"):
        _extract(archive, limits, tmp_path / "out")
    assert _files(tmp_path / "out") == []


def test_too_many_members_are_refused_while_reading_headers(tmp_path: Path) -> None:
    files = {f"f{i:04d}": b"" for i in range(500)}
    archive = _write(tmp_path / "many.tar", tar_of(files))
    limits = ExtractLimits(max_members=100, max_member_bytes=1 << 20, max_total_bytes=1 << 20)
    with pytest.raises(DownloadError, match=r"more than 100 members \(at 'f0100'\)"):
        SafeTar(archive, limits, fix=FIX)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "fifo", "chr"])
def test_paths_leaving_the_target_links_and_devices_stay_refused(tmp_path: Path, kind: str) -> None:
    info = tarfile.TarInfo("x")
    if kind == "dotdot":
        info.name = "a/../../evil"
    elif kind == "absolute":
        info.name = str(tmp_path / "evil")
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "ok.txt"
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        info.type = tarfile.CHRTYPE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        tf.addfile(info)
    archive = _write(tmp_path / "a.tar", buf.getvalue())
    with pytest.raises(DownloadError, match=rf"archive member {info.name!r} is"):
        _extract(archive, WIDE, tmp_path / "out")
    assert _files(tmp_path / "out") == [] and not (tmp_path / "evil").exists()


def test_a_renamed_member_leaving_the_target_is_refused(tmp_path: Path) -> None:
    archive = _write(tmp_path / "a.tar", tar_of({"top/a.txt": b"a"}))
    with pytest.raises(DownloadError, match="leaving the target folder"):
        _extract(archive, WIDE, tmp_path / "out", lambda name: "../" + name)
    assert not (tmp_path / "top").exists()


def test_a_failure_part_way_removes_what_was_written(tmp_path: Path) -> None:
    # the headers are fine; the third member (a second d/one.txt) is refused while writing
    one = tar_of({"d/one.txt": b"1" * 1000})[:-1024]
    blob = tar_of({"d/one.txt": b"1" * 1000, "d/e/two.txt": b"2" * 5000}, tail=one)
    archive = _write(tmp_path / "dup.tar", blob)
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("the caller's file")
    with SafeTar(archive, WIDE, fix=FIX) as tar:
        assert [m.name for m in tar.members] == ["d/one.txt", "d/e/two.txt", "d/one.txt"]
        with pytest.raises(DownloadError, match=r"'d/one\.txt' is there twice"):
            tar.extract(target)
    assert _files(target) == [target / "kept.txt"]  # d/, d/e/ and their files were removed


# ------------------------------------------------------------------------- streams that lie
def test_a_stream_longer_than_declared_is_stopped_at_the_bound() -> None:
    src, out = io.BytesIO(b"\0" * BOMB), io.BytesIO()
    budget = Budget(WIDE, where="x.zip", fix=FIX)
    with pytest.raises(DownloadError, match=r"'m' is larger than its declared 10 bytes"):
        copy_member(src, out, name="m", declared=10, budget=budget)
    assert out.tell() == 0 and src.tell() <= 1 << 20  # nothing written, one chunk read


def test_the_total_budget_spans_members() -> None:
    limits = ExtractLimits(max_members=10, max_member_bytes=600, max_total_bytes=1000)
    budget = Budget(limits, where="x.zip", fix=FIX)
    out = io.BytesIO()
    copy_member(io.BytesIO(b"a" * 600), out, name="a", declared=600, budget=budget)
    with pytest.raises(DownloadError, match="more than 1000 bytes in all"):
        copy_member(io.BytesIO(b"b" * 600), out, name="b", declared=600, budget=budget)
    assert out.getvalue() == b"a" * 600


def test_a_deflate_bomb_inflates_no_further_than_its_declared_size() -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = comp.compress(b"\0" * BOMB) + comp.flush()
    out = io.BytesIO()
    budget = Budget(WIDE, where="x.zip", fix=FIX)
    with pytest.raises(DownloadError, match="larger than its declared 10 bytes"):
        inflate_member(io.BytesIO(raw), out, name="m", declared=10, budget=budget)
    assert out.tell() == 0
    ok = io.BytesIO()
    assert inflate_member(
        io.BytesIO(raw),
        ok,
        name="m",
        declared=BOMB,
        budget=Budget(ExtractLimits(1, BOMB, BOMB), where="x.zip", fix=FIX),
    ) == (BOMB, zlib.crc32(b"\0" * BOMB), True)


def _lying_zip(declared: int) -> bytes:
    """A zip with one deflate member of 50 MB of zeros whose central directory says ``declared``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/zeros.bin", b"\0" * BOMB)
    blob = bytearray(buf.getvalue())
    cd = blob.index(b"PK\x01\x02")
    blob[cd + 24 : cd + 28] = struct.pack("<L", declared)  # uncompressed size
    blob[22:26] = struct.pack("<L", declared)  # and in the local header
    return bytes(blob)


def test_remote_zip_member_with_a_lying_size_is_stopped(tmp_path: Path) -> None:
    blob = _lying_zip(10)
    with loopback_server() as served:
        served.serve(blob)
        remote = RemoteZip(served.url, timeout=5.0)
        (member,) = remote.members()
        assert member.size == 10
        work = tmp_path / "work"
        with pytest.raises(DownloadError, match=r"larger than its declared 10 bytes"):
            remote.fetch_member(member, work / "zeros.bin")
    assert _files(work) == []  # neither the output, its temporary nor the .part


def test_local_zip_member_with_a_lying_size_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "lying.zip", _lying_zip(10))
    local = LocalZip(path)
    (member,) = local.members()
    with pytest.raises(DownloadError, match=r"corrupt|declared"):
        local.fetch_member(member, tmp_path / "out" / "zeros.bin")
    assert _files(tmp_path / "out") == [] and not path.exists()
