"""Read a zip file on an HTTP server member by member, with HTTP range requests.

Nothing here knows which dataset the zip holds; :mod:`cellbench.data.download` uses it to take
the BBBC021 part out of the 12.5 GB IMPA zip. :class:`RemoteZip` works in four steps:

1. a 1-byte range request learns the file size and whether ranges work;
2. the last ~66 KiB hold the End Of Central Directory record (and, for a >4 GiB zip, the ZIP64
   locator and record), which say where the central directory is;
3. the central directory lists every member's name, sizes, CRC32 and local header offset;
4. a member's local header + data are fetched by range into a ``.part`` file (resumed from its size
   on the next run), checked against the central directory's size and CRC32 and, for deflate
   members, decompressed in a streaming way.

If the server ignores range requests, :class:`RemoteZip` raises :class:`RangesUnsupported`; the
caller can then fetch the whole zip with :func:`download_whole` (resumable) and read it with
:class:`LocalZip`, which has the same interface. Only the standard library is used for HTTP
(:mod:`urllib.request`), so proxies set in ``HTTPS_PROXY`` are honoured. Every failure is a
:class:`~cellbench.errors.DownloadError` naming the URL or file and the fix.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import re
import shutil
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cellbench._version import __version__
from cellbench.errors import DownloadError
from cellbench.extract import Budget, ExtractLimits, copy_member, inflate_member
from cellbench.io import atomic_path

__all__ = [
    "REDOWNLOAD_FIX",
    "RETRY_FIX",
    "LocalZip",
    "MemberSource",
    "ProgressFn",
    "RangesUnsupported",
    "RemoteZip",
    "ZipMember",
    "check_free_space",
    "download_whole",
    "parse_central_directory",
]

#: ``on_progress(done_bytes, total_bytes)``.
ProgressFn = Callable[[int, int], None]

_CHUNK = 1 << 20
#: Bytes read from the end of the zip: the largest EOCD (22 + 65535 comment) plus the ZIP64 locator.
_TAIL_BYTES = 66 * 1024
_MAX_CENTRAL_DIR = 256 << 20
_USER_AGENT = f"cellbench/{__version__} (+https://github.com/cellbench/cellbench)"

#: the fix of a network failure: the same call resumes from the bytes already saved.
RETRY_FIX = (
    "check the network connection and any proxy settings (HTTPS_PROXY), then run the same command "
    "again; the download resumes from the bytes already saved"
)
#: the fix of data that failed verification (the partial file was deleted).
REDOWNLOAD_FIX = "run the command again to re-download"
_NOT_FOUND_FIX = "check the URL or try again later"

# Zip record layouts (APPNOTE.TXT 4.3).
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIG = b"PK\x03\x04"
_U32_MAX = 0xFFFFFFFF
_U16_MAX = 0xFFFF


# ---------------------------------------------------------------------------------------------
# Zip members


@dataclass(frozen=True)
class ZipMember:
    """One entry of a zip's central directory.

    Attributes:
        name: the member's path inside the zip (``/`` separated).
        compressed_size: bytes of (possibly compressed) data stored in the zip.
        size: bytes after decompression.
        crc32: CRC32 of the decompressed bytes.
        method: compression method (0 stored, 8 deflate; others are not supported).
        header_offset: offset of the member's local file header in the zip.
        flags: general purpose bit flags (bit 0: encrypted).
    """

    name: str
    compressed_size: int
    size: int
    crc32: int
    method: int
    header_offset: int
    flags: int = 0

    @property
    def is_dir(self) -> bool:
        """True for a folder entry."""
        return self.name.endswith("/")


class MemberSource(Protocol):
    """What both :class:`RemoteZip` and :class:`LocalZip` offer: list members, fetch one."""

    def members(self) -> list[ZipMember]: ...

    def fetch_member(
        self, member: ZipMember, dest_file: Path, *, on_progress: ProgressFn | None = None
    ) -> Path: ...


# ---------------------------------------------------------------------------------------------
# HTTP helpers


class RangesUnsupported(DownloadError):
    """The server answered a range request with the whole file."""

    def __init__(self, url: str, total: int | None):
        super().__init__(
            "the server does not support HTTP range requests",
            path=url,
            fix="download the whole zip instead (download_whole, then LocalZip)",
        )
        self.total = total


class _RangeNotSatisfiable(DownloadError):
    """HTTP 416: the requested start lies at or beyond the end of the file."""

    def __init__(self, url: str, total: int | None):
        super().__init__("HTTP 416 Range Not Satisfiable", path=url, fix=REDOWNLOAD_FIX)
        self.total = total


def _network_error(url: str, exc: BaseException, timeout: float) -> DownloadError:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return DownloadError(
                f"no answer within {timeout:g} s (timed out)", path=url, fix=RETRY_FIX
            )
        return DownloadError(f"cannot reach the server ({reason})", path=url, fix=RETRY_FIX)
    if isinstance(exc, TimeoutError):
        return DownloadError(f"no answer within {timeout:g} s (timed out)", path=url, fix=RETRY_FIX)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return DownloadError(f"network error ({text})", path=url, fix=RETRY_FIX)


def _content_range(resp: http.client.HTTPResponse) -> tuple[int, int, int | None] | None:
    match = re.fullmatch(
        r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", resp.headers.get("Content-Range", "") or ""
    )
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _open(
    url: str,
    *,
    timeout: float,
    start: int | None = None,
    end: int | None = None,
    not_found_fix: str = _NOT_FOUND_FIX,
) -> http.client.HTTPResponse:
    """GET ``url`` (optionally ``Range: bytes=start-end``); HTTP and network errors -> DownloadError.

    ``not_found_fix`` is the fix given for HTTP 403, 404 and 410 (where the file is to be found).
    """
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if start is not None:
        headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end))
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as exc:
        raise DownloadError(
            f"not a valid download URL ({exc})", path=url, fix="pass an http:// or https:// URL"
        ) from None
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            exc.close()
        if exc.code == 416:
            match = re.search(
                r"/(\d+)", exc.headers.get("Content-Range", "") if exc.headers else ""
            )
            raise _RangeNotSatisfiable(url, int(match.group(1)) if match else None) from None
        fix = not_found_fix if exc.code in (403, 404, 410) else RETRY_FIX
        raise DownloadError(f"HTTP error {exc.code} {exc.reason}", path=url, fix=fix) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _network_error(url, exc, timeout) from None


def _open_range(
    url: str, start: int, end: int | None, *, timeout: float, not_found_fix: str = _NOT_FOUND_FIX
) -> tuple[http.client.HTTPResponse, int | None]:
    """Open a range request and check the server honoured it; returns (response, file size)."""
    resp = _open(url, timeout=timeout, start=start, end=end, not_found_fix=not_found_fix)
    if resp.status == 206:
        parsed = _content_range(resp)
        if parsed is None or parsed[0] != start or (end is not None and parsed[1] != end):
            resp.close()
            raise DownloadError(
                f"the server answered bytes {start}-{end} with an unexpected Content-Range "
                f"{resp.headers.get('Content-Range')!r}",
                path=url,
                fix=RETRY_FIX,
            )
        return resp, parsed[2]
    length = resp.headers.get("Content-Length")
    resp.close()
    if resp.status == 200:
        raise RangesUnsupported(url, int(length) if length and length.isdigit() else None)
    raise DownloadError(f"unexpected HTTP status {resp.status}", path=url, fix=RETRY_FIX)


def _copy_body(
    resp: http.client.HTTPResponse,
    out: BinaryIO,
    expected: int | None,
    *,
    url: str,
    timeout: float,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Copy the response body into ``out``; raise if fewer than ``expected`` bytes arrive."""
    got = 0
    with resp:
        while expected is None or got < expected:
            want = _CHUNK if expected is None else min(_CHUNK, expected - got)
            try:
                chunk = resp.read(want)
            except (OSError, http.client.HTTPException) as exc:
                raise _network_error(url, exc, timeout) from None
            if not chunk:
                break
            out.write(chunk)
            got += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    if expected is not None and got < expected:
        raise DownloadError(
            f"the connection closed after {got} of {expected} bytes", path=url, fix=RETRY_FIX
        )
    return got


# ---------------------------------------------------------------------------------------------
# Central directory parsing


def _parse_zip64_extra(
    extra: bytes, size: int, compressed: int, offset: int
) -> tuple[int, int, int]:
    """Apply a ZIP64 extended information field (id 0x0001) to the 32-bit header values."""
    pos = 0
    while pos + 4 <= len(extra):
        field_id, field_len = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + field_len]
        pos += 4 + field_len
        if field_id != 1:
            continue
        values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
        if size == _U32_MAX and values:
            size = values.pop(0)
        if compressed == _U32_MAX and values:
            compressed = values.pop(0)
        if offset == _U32_MAX and values:
            offset = values.pop(0)
        break
    return size, compressed, offset


def parse_central_directory(data: bytes) -> list[ZipMember]:
    """Parse the central directory bytes of a zip (ZIP64 extra fields included)."""
    members: list[ZipMember] = []
    pos = 0
    while pos + _CENTRAL.size <= len(data) and data[pos : pos + 4] == _CENTRAL_SIG:
        fields = _CENTRAL.unpack_from(data, pos)
        flags, method, crc = fields[5], fields[6], fields[9]
        compressed, size = fields[10], fields[11]
        name_len, extra_len, comment_len, offset = fields[12], fields[13], fields[14], fields[18]
        start = pos + _CENTRAL.size
        raw_name = data[start : start + name_len]
        extra = data[start + name_len : start + name_len + extra_len]
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        size, compressed, offset = _parse_zip64_extra(extra, size, compressed, offset)
        members.append(ZipMember(name, compressed, size, crc, method, offset, flags))
        pos = start + name_len + extra_len + comment_len
    return members


def _find_eocd(tail: bytes) -> int:
    """Offset of the End Of Central Directory record inside ``tail`` (searched from the end)."""
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        if pos + _EOCD.size <= len(tail):
            comment_len = _EOCD.unpack_from(tail, pos)[7]
            if pos + _EOCD.size + comment_len <= len(tail):
                return pos
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    return -1


# ---------------------------------------------------------------------------------------------
# Remote zip


class RemoteZip:
    """A zip file on an HTTP server, read member by member with HTTP range requests.

    Args:
        url: the zip's URL (redirects are followed).
        timeout: seconds to wait for the server on each network operation.
        not_found_fix: the fix named when the server answers 403, 404 or 410 (e.g. where the file
            is published).

    Raises :class:`RangesUnsupported` when the server ignores ranges; callers can then fall back
    to :func:`download_whole` and :class:`LocalZip`.
    """

    def __init__(
        self, url: str, *, timeout: float = 60.0, not_found_fix: str = _NOT_FOUND_FIX
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.not_found_fix = not_found_fix
        self._size: int | None = None
        self._members: list[ZipMember] | None = None

    @property
    def size(self) -> int:
        """Size of the zip in bytes (learned from a 1-byte range request)."""
        if self._size is None:
            resp, total = self._open_range(0, 0)
            accept = (resp.headers.get("Accept-Ranges") or "").strip().lower()
            resp.close()
            if accept == "none":
                raise RangesUnsupported(self.url, total)
            if total is None:
                raise DownloadError(
                    "the server did not report the file size", path=self.url, fix=RETRY_FIX
                )
            self._size = total
        return self._size

    def read_range(self, start: int, length: int) -> bytes:
        """Return ``length`` bytes of the zip from offset ``start``."""
        if length <= 0:
            return b""
        resp, _ = self._open_range(start, start + length - 1)
        buf = io.BytesIO()
        _copy_body(resp, buf, length, url=self.url, timeout=self.timeout)
        return buf.getvalue()

    def _open_range(self, start: int, end: int) -> tuple[http.client.HTTPResponse, int | None]:
        return _open_range(
            self.url, start, end, timeout=self.timeout, not_found_fix=self.not_found_fix
        )

    def _not_a_zip(self, what: str) -> DownloadError:
        return DownloadError(
            f"not a readable zip file ({what})",
            path=self.url,
            fix="check the URL; if it is right, " + RETRY_FIX,
        )

    def members(self) -> list[ZipMember]:
        """List the zip's members from its central directory (read once, then cached)."""
        if self._members is not None:
            return list(self._members)
        total = self.size
        tail_start = max(0, total - _TAIL_BYTES)
        tail = self.read_range(tail_start, total - tail_start)
        pos = _find_eocd(tail)
        if pos < 0:
            raise self._not_a_zip("no end-of-central-directory record")
        _sig, disk, cd_disk, _n_disk, n_total, cd_size, cd_offset, _clen = _EOCD.unpack_from(
            tail, pos
        )
        loc_pos = pos - _ZIP64_LOCATOR.size
        if loc_pos >= 0 and tail[loc_pos : loc_pos + 4] == _ZIP64_LOCATOR_SIG:
            _s, _d, rec_offset, _disks = _ZIP64_LOCATOR.unpack_from(tail, loc_pos)
            if rec_offset >= tail_start and rec_offset + _ZIP64_EOCD.size <= total:
                rec = tail[rec_offset - tail_start : rec_offset - tail_start + _ZIP64_EOCD.size]
            else:
                rec = self.read_range(rec_offset, _ZIP64_EOCD.size)
            if len(rec) < _ZIP64_EOCD.size or rec[:4] != _ZIP64_EOCD_SIG:
                raise self._not_a_zip("bad ZIP64 end-of-central-directory record")
            fields = _ZIP64_EOCD.unpack(rec)
            disk, cd_disk, n_total, cd_size, cd_offset = (
                fields[4],
                fields[5],
                fields[7],
                fields[8],
                fields[9],
            )
        elif _U32_MAX in (cd_size, cd_offset) or n_total == _U16_MAX:
            raise self._not_a_zip("ZIP64 sizes without a ZIP64 locator")
        if disk != 0 or cd_disk != 0:
            raise self._not_a_zip("multi-part (spanned) zips are not supported")
        if cd_size > _MAX_CENTRAL_DIR or cd_offset + cd_size > total:
            raise self._not_a_zip("central directory out of range")
        if cd_offset >= tail_start:
            central = tail[cd_offset - tail_start : cd_offset - tail_start + cd_size]
        else:
            central = self.read_range(cd_offset, cd_size)
        members = parse_central_directory(central)
        if not members and n_total:
            raise self._not_a_zip("empty or unreadable central directory")
        self._members = members
        return list(members)

    def data_offset(self, member: ZipMember) -> int:
        """Offset of the member's data (after its local header) in the zip."""
        header = self.read_range(member.header_offset, _LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != _LOCAL_SIG:
            raise self._not_a_zip(f"no local header for member {member.name!r}")
        fields = _LOCAL.unpack(header)
        return member.header_offset + _LOCAL.size + fields[10] + fields[11]

    def fetch_member(
        self, member: ZipMember, dest_file: Path, *, on_progress: ProgressFn | None = None
    ) -> Path:
        """Download and verify one member into ``dest_file`` (resumable through ``<dest>.part``).

        The raw member data go to ``<dest_file>.part``; a later call continues with
        ``Range: bytes=N-`` from the ``.part`` size. The complete data are checked against the
        central directory (compressed size, CRC32, uncompressed size); on a mismatch the ``.part`` is
        deleted and a :class:`DownloadError` raised. ``on_progress(done, total)`` counts compressed
        bytes.
        """
        _check_supported(member, self.url)
        dest_file = Path(dest_file)
        dest_file.parent.mkdir(parents=True, exist_ok=True)
        part = dest_file.with_name(dest_file.name + ".part")
        total = member.compressed_size
        have = part.stat().st_size if part.is_file() else 0
        if have > total:
            part.unlink()
            have = 0
        if on_progress is not None:
            on_progress(have, total)
        if have < total:
            start = self.data_offset(member)
            resp, _ = self._open_range(start + have, start + total - 1)
            done = have

            def _tick(n: int) -> None:
                nonlocal done
                done += n
                if on_progress is not None:
                    on_progress(done, total)

            with open(part, "ab") as out:
                _copy_body(
                    resp, out, total - have, url=self.url, timeout=self.timeout, on_chunk=_tick
                )
        _finish_member(member, part, dest_file)
        return dest_file


def _check_supported(member: ZipMember, where: str) -> None:
    if member.flags & 0x1:
        raise DownloadError(
            f"zip member {member.name!r} is encrypted", path=where, fix="use an unencrypted zip"
        )
    if member.method not in (0, 8):
        raise DownloadError(
            f"zip member {member.name!r} uses compression method {member.method} (only stored and "
            "deflate are supported)",
            path=where,
            fix="report this to the cellbench developers",
        )


def _member_limits(member: ZipMember) -> ExtractLimits:
    """One member's bounds: its declared size (checked against the free disk space before the
    download) is the most it may write."""
    return ExtractLimits(max_members=1, max_member_bytes=member.size, max_total_bytes=member.size)


class _Mismatch(Exception):
    """Raised inside a write block so that the temporary output is discarded."""


def _corrupt(member: ZipMember, part: Path, what: str) -> DownloadError:
    part.unlink(missing_ok=True)
    return DownloadError(
        f"downloaded member {member.name!r} is corrupt ({what}); the partial file was deleted",
        path=part,
        fix=REDOWNLOAD_FIX,
    )


def _finish_member(member: ZipMember, part: Path, dest_file: Path) -> None:
    """Verify the raw data in ``part`` and turn them into ``dest_file`` (decompressing deflate)."""
    got = part.stat().st_size if part.is_file() else 0
    if got != member.compressed_size:
        raise _corrupt(member, part, f"{got} bytes instead of {member.compressed_size}")
    crc, size = 0, 0
    if member.method == 0:
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
        if size != member.size or crc != member.crc32:
            raise _corrupt(member, part, "CRC32 or size mismatch")
        os.replace(part, dest_file)
        return
    budget = Budget(_member_limits(member), where=str(part), fix=REDOWNLOAD_FIX)
    try:
        with atomic_path(dest_file) as tmp, open(part, "rb") as src, open(tmp, "wb") as out:
            size, crc, ended = inflate_member(
                src, out, name=member.name, declared=member.size, budget=budget
            )
            if not ended or size != member.size or crc != member.crc32:
                raise _Mismatch("CRC32 or size mismatch after decompression")
    except DownloadError as exc:  # inflated past its declared size: stopped there
        raise _corrupt(member, part, exc.message) from None
    except _Mismatch as exc:
        raise _corrupt(member, part, str(exc)) from None
    except zlib.error as exc:
        raise _corrupt(member, part, f"bad deflate data: {exc}") from None
    part.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Fallback: the whole zip, downloaded and read locally


class LocalZip:
    """A downloaded zip read with :mod:`zipfile`, with the same interface as :class:`RemoteZip`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            path.unlink(missing_ok=True)
            raise DownloadError(
                f"the downloaded zip is unreadable ({exc}); it was deleted",
                path=path,
                fix=REDOWNLOAD_FIX,
            ) from None
        self._members = [
            ZipMember(
                i.filename,
                i.compress_size,
                i.file_size,
                i.CRC,
                i.compress_type,
                i.header_offset,
                i.flag_bits,
            )
            for i in infos
        ]

    def members(self) -> list[ZipMember]:
        """The zip's members, in central directory order."""
        return list(self._members)

    def fetch_member(
        self, member: ZipMember, dest_file: Path, *, on_progress: ProgressFn | None = None
    ) -> Path:
        """Extract one member into ``dest_file`` (atomically); a corrupt zip is deleted."""
        _check_supported(member, str(self.path))
        dest_file = Path(dest_file)
        try:
            with (
                zipfile.ZipFile(self.path) as zf,
                zf.open(member.name) as src,
                atomic_path(dest_file) as tmp,
                open(tmp, "wb") as out,
            ):
                done = 0

                def _tick(chunk: bytes) -> None:
                    nonlocal done
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, member.size)

                budget = Budget(_member_limits(member), where=self.path, fix=REDOWNLOAD_FIX)
                copy_member(
                    src, out, name=member.name, declared=member.size, budget=budget, on_chunk=_tick
                )
        except DownloadError as exc:  # inflated past its declared size: stopped there
            self.path.unlink(missing_ok=True)
            raise DownloadError(
                f"{exc.message}; the zip was deleted", path=self.path, fix=REDOWNLOAD_FIX
            ) from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            self.path.unlink(missing_ok=True)
            raise DownloadError(
                f"member {member.name!r} of the downloaded zip is corrupt ({exc}); the zip was "
                "deleted",
                path=self.path,
                fix=REDOWNLOAD_FIX,
            ) from None
        return dest_file


def download_whole(
    url: str,
    dest: Path,
    *,
    timeout: float,
    on_progress: ProgressFn | None = None,
    not_found_fix: str = _NOT_FOUND_FIX,
) -> Path:
    """Download ``url`` to ``dest`` through ``<dest>.part``, resuming from the ``.part`` size.

    An existing ``dest`` is returned at once. If the server ignores the range of the resume, the
    file is fetched again from its start. ``on_progress(done, total)`` counts bytes of the file;
    ``not_found_fix`` is the fix named on HTTP 403, 404 and 410.
    """
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, timeout=timeout, start=have or None, not_found_fix=not_found_fix)
    except _RangeNotSatisfiable as exc:
        if exc.total == have:
            os.replace(part, dest)
            return dest
        part.unlink(missing_ok=True)
        raise
    parsed = _content_range(resp) if resp.status == 206 else None
    if parsed is not None and parsed[0] == have:
        mode, total = "ab", parsed[2]
        expected = None if total is None else total - have
    else:  # the server sent the whole file: start over
        have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = expected = int(length) if length and length.isdigit() else None
    if total is not None:
        check_free_space(part.parent, total - have)
    done = have

    def _tick(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, total or 0)

    with open(part, mode) as out:
        _copy_body(resp, out, expected, url=url, timeout=timeout, on_chunk=_tick)
    if total is not None and part.stat().st_size != total:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"the downloaded zip has {done} bytes instead of {total}",
            path=url,
            fix=REDOWNLOAD_FIX,
        )
    os.replace(part, dest)
    return dest


def check_free_space(folder: Path, needed: int) -> None:
    """Raise a :class:`DownloadError` if ``folder``'s disk has fewer than ``needed`` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise DownloadError(
            f"not enough free disk space: about {needed / 1e9:.1f} GB needed, "
            f"{free / 1e9:.1f} GB free",
            path=folder,
            fix="free some space or choose another destination folder",
        )
