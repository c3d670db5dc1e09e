"""The generated images of a submission: one ``images.tar.xz`` archive (docs/leaderboard.md).

A submission carries the images its ``results.json`` scored, so the leaderboard can re-score them
(``cellbench submission verify``, ``cellbench leaderboard rescore``) instead of trusting the numbers.
``metadata.json`` names them in its ``images`` block, one of:

* ``{"archive": "images.tar.xz", "sha256": ..., "bytes": ...}``: the archive lies in the
  submission folder (the small simulated-data entries commit it);
* ``{"url": "https://...", "sha256": ..., "bytes": ...}``: a large real-data set is published
  elsewhere; :func:`fetch_images` downloads it (bounded while streaming, into the cache) and checks
  its sha256 before anything reads it.

The archive is the image folder that ``cellbench eval`` read, byte for byte (``.npy``, PNG or TIFF
files in any layout ``eval`` accepts, ``manifest.csv`` and ``generation.json``), as an
xz-compressed tar: lossless, and the files keep the names the per-image table records, so a
re-score gives the same table. :func:`pack_images` writes it deterministically (sorted members,
owner 0, mtime 0, mode 0644). :func:`extract_archive` is the one reader: regular files only, safe
relative names, a bounded member count, each member and the total bounded *while streaming* (a
member that inflates past its declared size, a sparse member, a link or a device is refused).
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cellbench.errors import CellbenchError, DownloadError

ARCHIVE_NAME = "images.tar.xz"
#: files an image archive may hold besides images (``cellbench.images`` reads them)
SIDE_FILES = ("manifest.csv", "generation.json")
#: suffixes of the image files (those ``cellbench eval`` reads)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
#: the largest archive committed in a submission folder
MAX_COMMITTED_BYTES = 40 << 20
#: the largest archive downloaded from a submission's URL
MAX_DOWNLOAD_BYTES = 4 << 30
#: bounds of an extraction: members, bytes of one member, bytes in all, folder depth
MAX_MEMBERS = 200_000
MAX_MEMBER_BYTES = 8 << 20
MAX_TOTAL_BYTES = 8 << 30
MAX_DEPTH = 6
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+,()=-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
UNSAFE_FIX = "the archive is unsafe or not a cellbench image archive: re-make it with `cellbench submission pack`"


@dataclass(frozen=True)
class ImagesRef:
    """Where a submission's images are: ``archive`` (a file of the folder) or ``url``."""

    sha256: str
    bytes: int | None
    archive: str | None = None
    url: str | None = None


def images_ref(metadata: dict[str, Any] | None) -> ImagesRef | None:
    """The ``images`` block of a submission's metadata (None when it has none)."""
    block = (metadata or {}).get("images")
    if not isinstance(block, dict) or not isinstance(block.get("sha256"), str):
        return None
    size = block.get("bytes")
    return ImagesRef(
        sha256=block["sha256"],
        bytes=size if isinstance(size, int) and not isinstance(size, bool) else None,
        archive=block.get("archive") if isinstance(block.get("archive"), str) else None,
        url=block.get("url") if isinstance(block.get("url"), str) else None,
    )


# ------------------------------------------------------------------------------------ member names
def member_problem(name: str) -> str | None:
    """Why ``name`` may not be a member of an image archive (None when it may)."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return "is not a relative POSIX path"
    parts = PurePosixPath(name).parts
    if len(parts) > MAX_DEPTH:
        return f"is nested deeper than {MAX_DEPTH} folders"
    if any(p in ("", ".", "..") or not _NAME_RE.match(p) for p in parts):
        return "has a path part that is empty, '..', hidden or holds unusual characters"
    if len(parts) == 1 and parts[0] in SIDE_FILES:
        return None
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        return f"is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor {' / '.join(SIDE_FILES)}"
    return None


# --------------------------------------------------------------------------------------- writing
def pack_images(folder: str | Path, dest: str | Path) -> str:
    """Write the image folder ``folder`` to ``dest`` as a deterministic ``.tar.xz``; its sha256.

    Every file is kept byte for byte under its relative path; links, special files and files an
    archive may not hold (:func:`member_problem`) are refused with one line.
    """
    from cellbench.io import atomic_path, check_out_file, not_regular_file, sha256_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CellbenchError("is not a folder of images", path=folder)
    check_out_file(dest, fix="name the archive file, e.g. --out images.tar.xz")
    names: list[str] = []
    for root, dirs, files in os.walk(folder):
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                raise CellbenchError(
                    "is a symbolic link; an image archive holds regular files only",
                    path=os.path.join(root, d),
                    fix="copy the files into the image folder",
                )
        for f in files:
            path = Path(root) / f
            rel = path.relative_to(folder).as_posix()
            why = not_regular_file(path, follow_links=False)
            if why is not None:
                raise CellbenchError(
                    f"{why}; an image archive holds regular files only",
                    path=path,
                    fix="copy the files into the image folder",
                )
            why = member_problem(rel)
            if why is not None:
                raise CellbenchError(f"{rel} {why}", path=folder, fix="remove it from the folder")
            names.append(rel)
    if not names:
        raise CellbenchError("holds no image", path=folder)
    with (
        atomic_path(dest) as tmp,
        lzma.open(tmp, "wb", preset=6, check=lzma.CHECK_CRC64) as xz,
        tarfile.open(fileobj=xz, mode="w", format=tarfile.USTAR_FORMAT) as tf,
    ):
        for rel in sorted(names):
            info = tarfile.TarInfo(rel)
            info.size = (folder / rel).stat().st_size
            info.mtime, info.mode, info.uid, info.gid = 0, 0o644, 0, 0
            info.uname = info.gname = ""
            with open(folder / rel, "rb") as fh:
                tf.addfile(info, fh)
    return sha256_file(dest)


# -------------------------------------------------------------------------------------- reading
def extract_archive(
    archive: str | Path,
    target: str | Path,
    *,
    max_members: int = MAX_MEMBERS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> list[str]:
    """Extract an image archive (tar, optionally xz/gzip/bzip2) into the empty folder ``target``.

    Only regular files (and folders) with names :func:`member_problem` accepts, through the
    bounded extraction of :class:`cellbench.extract.SafeTar`: the member count, each member's bytes
    and the total are counted while streaming, so a member that inflates past its declared size
    (or past the bounds) is refused before it is written out, and a sparse member, a link or a
    device is refused from its header. Returns the member names. Raises :class:`DownloadError`
    (one line) on anything else; what was written is removed again.
    """
    from cellbench.extract import ExtractLimits, SafeTar, tar_error_text

    archive, target = Path(archive), Path(target)

    def check(info: tarfile.TarInfo) -> str | None:
        if info.isdir():
            return "has an unsafe name" if member_problem(info.name + "/x.png") else None
        return member_problem(info.name)

    limits = ExtractLimits(max_members, max_member_bytes, max_total_bytes)
    try:
        with SafeTar(archive, limits, fix=UNSAFE_FIX, check=check) as tar:
            files = tar.extract(target)
    except DownloadError:
        raise
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, ValueError) as exc:
        raise DownloadError(
            f"unreadable image archive ({tar_error_text(exc)})", path=archive, fix=UNSAFE_FIX
        ) from None
    if not files:
        raise DownloadError("the archive holds no file", path=archive, fix=UNSAFE_FIX)
    return [f.relative_to(target).as_posix() for f in files]


# ------------------------------------------------------------------------------------ downloading
def cached_archive(sha256: str) -> Path:
    """Where a downloaded archive with this sha256 is kept (the cellbench cache)."""
    from cellbench.paths import cache_dir

    return cache_dir() / "submission-images" / f"{sha256}.tar.xz"


def fetch_images(url: str, sha256: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """The archive at ``url``, downloaded once into the cache and checked against ``sha256``.

    The download is bounded while streaming (``max_bytes``) and lands in the cache only when its
    sha256 is the expected one; a cached copy is re-hashed before it is used.
    """
    from cellbench.artifacts.archive import download_bounded
    from cellbench.io import sha256_file

    want = sha256.strip().lower()
    if not _SHA_RE.match(want):
        raise CellbenchError(f"images sha256 {sha256!r} is not 64 hexadecimal digits")
    if not url.startswith(("https://", "http://")):
        raise CellbenchError(f"images url {url!r} is not http(s)", fix="give an https:// URL")
    dest = cached_archive(want)
    if dest.is_file():
        if sha256_file(dest) == want:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        got = download_bounded(url, tmp, max_bytes=max_bytes)
        if got != want:
            raise DownloadError(
                f"the image archive's sha256 is {got}, not the {want} in metadata.json",
                path=url,
                fix="publish the archive the metadata names, or correct its sha256",
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def archive_path(sub_dir: str | Path, ref: ImagesRef, *, download: bool) -> Path | None:
    """The local archive of a submission's images (downloaded when ``download``), or None."""
    from cellbench.io import sha256_file

    sub_dir = Path(sub_dir)
    if ref.archive is not None:
        path = sub_dir / ref.archive
        if ref.archive != ARCHIVE_NAME or path.is_symlink() or not path.is_file():
            return None
        size = path.stat().st_size
        if size > MAX_COMMITTED_BYTES:
            raise CellbenchError(
                f"is {size} bytes, over the {MAX_COMMITTED_BYTES}-byte cap of a committed archive",
                path=path,
                fix="publish it and give its url in metadata.json",
            )
        if sha256_file(path) != ref.sha256:
            raise CellbenchError(
                "sha256 differs from the one in metadata.json /images/sha256",
                path=path,
                fix="re-make the archive with `cellbench submission pack` and update metadata.json",
            )
        return path
    if ref.url is not None:
        cached = cached_archive(ref.sha256)
        if download:
            return fetch_images(ref.url, ref.sha256)
        return cached if cached.is_file() and sha256_file(cached) == ref.sha256 else None
    return None


@contextlib.contextmanager
def extract_images(sub_dir: str | Path, *, download: bool = False) -> Iterator[Path | None]:
    """The extracted image folder of a submission (a temporary folder), or None without images.

    ``download`` fetches a URL archive not yet in the cache (without it, only a cached copy is
    used). The folder is removed when the ``with`` block ends.
    """
    from cellbench.io import read_json_object

    sub_dir = Path(sub_dir)
    meta_path = sub_dir / "metadata.json"
    meta = (
        read_json_object(meta_path, "submission metadata", "fix metadata.json")
        if meta_path.is_file()
        else None
    )
    ref = images_ref(meta)
    path = None if ref is None else archive_path(sub_dir, ref, download=download)
    if path is None:
        yield None
        return
    work = Path(tempfile.mkdtemp(prefix="cellbench-images-"))
    try:
        folder = work / "images"
        folder.mkdir()
        extract_archive(path, folder)
        yield folder
    finally:
        shutil.rmtree(work, ignore_errors=True)
