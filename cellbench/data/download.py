"""Fetch the real BBBC021 crops (IMPA preprocessing) from Zenodo record 8307629.

The crops live in one ~12.5 GB zip, ``IMPA_reproducibility.zip``, holding one ``.tar`` per dataset
under ``IMPA_reproducibility/datasets/``. Only the BBBC021 part is needed, so
:class:`~cellbench.data.remote_zip.RemoteZip` reads the zip's central directory with HTTP range
requests and fetches single members (resumable, checked against the sizes and CRC32 of the central
directory). If the server ignores range requests, the whole zip is downloaded (resumably) into a
work folder beside the destination and read with :class:`~cellbench.data.remote_zip.LocalZip`.

:func:`download_bbbc021` then extracts ``bbbc021_all.tar`` into a temporary sibling of the
destination (through :class:`cellbench.extract.SafeTar`: refusing absolute paths, ``..``, links,
device and sparse files, and bounding the bytes written while writing them), strips the tar's top folder,
adds ``embeddings/csv/emb_fp.csv``, checks the layout of :mod:`cellbench.data.layout`, and only then
renames the folder into place.

The fingerprints are optional (README, "Download"): CellFlux's own configuration reads ``emb_fp.csv``
from the IMPA git repository, so the archive may lack it. They come from a file the user passes
(``fingerprints=``, checked by :func:`check_fingerprint_file` against the dataset's compounds), else
from the tar or another zip member; without either the dataset installs without them (scoring never
reads them; a generator conditioning on compounds says how to add them, see
:func:`install_fingerprints`).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from cellbench.data import layout
from cellbench.data.remote_zip import (
    REDOWNLOAD_FIX,
    LocalZip,
    MemberSource,
    ProgressFn,
    RangesUnsupported,
    RemoteZip,
    ZipMember,
    check_free_space,
    download_whole,
)
from cellbench.errors import DataError, DownloadError
from cellbench.extract import ExtractLimits, SafeTar, tar_error_text, unsafe_name_reason
from cellbench.io import atomic_path, temp_dir

IMPA_ZENODO_URL = "https://zenodo.org/records/8307629/files/IMPA_reproducibility.zip"

_CHUNK = 1 << 20
_NOT_FOUND_FIX = "check the URL (BBBC021 is in Zenodo record 8307629) or try again later"
_TAR_NAME_RE = re.compile(r"bbbc021[^/]*\.(tar|tar\.gz|tgz)$", re.IGNORECASE)
_FP_NAME = "emb_fp.csv"
_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_UNSAFE_FIX = "the archive is unsafe; do not use it and report it"

#: the most members the BBBC021 tar may list (docs/real-data.md: about 100K crops, plus folders)
MAX_TAR_MEMBERS = 2_000_000
#: the largest file of the BBBC021 tar (a crop is 27 KB, the index CSV a few MB)
MAX_TAR_MEMBER_BYTES = 256 << 20
#: the most the BBBC021 extraction writes in all (docs/real-data.md: about 2.8 GB installed); also
#: bounded by the free disk space of the destination, counted while writing
MAX_TAR_TOTAL_BYTES = 64 << 30


# ---------------------------------------------------------------------------------------------
# Choosing members


def _candidates_text(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) or "none"


def _select_tar(members: list[ZipMember], where: str) -> ZipMember:
    """The BBBC021 tar among the zip members (``.../bbbc021_all.tar`` preferred)."""
    files = [m for m in members if not m.is_dir]
    exact = [m for m in files if m.name.lower().endswith("bbbc021_all.tar")]
    loose = [m for m in files if _TAR_NAME_RE.search(m.name)]
    found = exact or loose
    if not found:
        archives = [
            m.name
            for m in files
            if re.search(r"\.(tar|tar\.gz|tgz|zip)$", m.name, re.I) or "bbbc" in m.name.lower()
        ]
        raise DownloadError(
            "no BBBC021 tar (a member ending in 'bbbc021_all.tar') in the zip; candidates: "
            + _candidates_text(archives or [m.name for m in files]),
            path=where,
            fix="check the URL (BBBC021 is in Zenodo record 8307629, IMPA_reproducibility.zip)",
        )
    found.sort(key=lambda m: ("/datasets/" not in f"/{m.name}", len(m.name)))
    chosen = found[0]
    reason = unsafe_name_reason(chosen.name)
    if reason:
        raise DownloadError(
            f"zip member {chosen.name!r} {reason}; refusing it",
            path=where,
            fix="the archive is unsafe; do not use it",
        )
    return chosen


def _read_index_compounds(index_csv: Path) -> set[str]:
    with open(index_csv, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if "CPD_NAME" not in header:
            return set()
        col = header.index("CPD_NAME")
        return {row[col] for row in reader if len(row) > col}


def _read_fp_names(fp_csv: Path) -> set[str]:
    with open(fp_csv, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        return {row[0] for row in reader if row}


def _fetch_fingerprints(
    source: MemberSource,
    members: list[ZipMember],
    index_csv: Path,
    work: Path,
    *,
    on_progress: ProgressFn | None,
) -> Path | None:
    """Find, fetch and return the BBBC021 ``emb_fp.csv`` among the zip members (None if absent).

    None also where several candidates exist and none covers half of the index's compounds.
    """
    candidates = [
        m
        for m in members
        if not m.is_dir and m.name.lower().endswith(_FP_NAME) and not unsafe_name_reason(m.name)
    ]
    if not candidates:
        return None
    preferred = [m for m in candidates if "bbbc021" in m.name.lower()] or candidates
    preferred.sort(key=lambda m: len(m.name))
    if len(preferred) == 1:
        return source.fetch_member(preferred[0], work / _FP_NAME, on_progress=on_progress)
    # Several candidates: keep the one whose rows cover the compounds of the index best.
    compounds = _read_index_compounds(index_csv)
    best: tuple[float, Path] | None = None
    for i, member in enumerate(preferred):
        path = source.fetch_member(member, work / f"fp-candidate-{i}.csv", on_progress=on_progress)
        names = _read_fp_names(path)
        cover = len(compounds & names) / len(compounds) if compounds else 0.0
        if best is None or cover > best[0]:
            best = (cover, path)
    if best is None or best[0] < 0.5:
        return None
    return best[1]


# ---------------------------------------------------------------------------------------------
# Fingerprints a user supplies

_FP_FIX = (
    "pass the IMPA repository's emb_fp.csv (header ',0,1,...,1023', one row per compound), "
    "or leave out --fingerprints"
)


def check_fingerprint_file(path: str | Path, compounds: Iterable[str] | None = None) -> int:
    """Check a user's fingerprint CSV; return the number of compounds (rows) it holds.

    The file must read as the layout's ``emb_fp.csv`` (:mod:`cellbench.data.layout`): a first column
    of compound names, then exactly the value columns ``0 .. 1023``, numeric and finite, no
    compound twice. With ``compounds`` (the dataset index's CPD_NAME values), every treated
    compound must have a row (the control, DMSO, may be absent).

    Raises:
        DataError: one line naming the file, what is wrong with it and the fix.
    """
    from cellbench.data.bbbc021 import read_fingerprint_csv

    path = Path(path)
    if not path.is_file():
        raise DataError("no such fingerprint file", path=path, fix=_FP_FIX)
    try:
        table = read_fingerprint_csv(path)
    except DataError as exc:
        exc.fix = _FP_FIX  # a user's file: the fix is another file, not a re-download
        raise
    expected = [str(i) for i in range(layout.FINGERPRINT_DIM)]
    if [str(c) for c in table.columns] != expected:
        raise DataError(
            f"fingerprint CSV has {table.shape[1]} value columns, expected the "
            f"{layout.FINGERPRINT_DIM} columns 0..{layout.FINGERPRINT_DIM - 1}",
            path=path,
            fix=_FP_FIX,
        )
    dup = table.index[table.index.duplicated()]
    if len(dup):
        raise DataError(
            f"fingerprint CSV lists compound {dup[0]!r} more than once", path=path, fix=_FP_FIX
        )
    if compounds is not None:
        treated = sorted(set(compounds) - {layout.CONTROL_COMPOUND})
        missing = [c for c in treated if c not in set(table.index)]
        if missing:
            raise DataError(
                f"fingerprint CSV covers {len(treated) - len(missing)} of the dataset's "
                f"{len(treated)} compounds; missing: {_candidates_text(missing, limit=6)}",
                path=path,
                fix=_FP_FIX,
            )
    return len(table)


def install_fingerprints(root: str | Path, path: str | Path) -> Path:
    """Check ``path`` against the dataset at ``root`` and copy it to ``embeddings/csv/emb_fp.csv``.

    The copy is written beside its destination and renamed into place, so a failure leaves the
    dataset as it was. The same bytes already in place are a no-op; different fingerprints
    already in place are refused (remove the file first to replace them).

    Returns:
        The installed file.

    Raises:
        DataError: a bad file (see :func:`check_fingerprint_file`) or differing fingerprints.
    """
    root, path = Path(root), Path(path)
    check_fingerprint_file(path, _read_index_compounds(root / layout.INDEX_RELPATH))
    dest = root / layout.FINGERPRINT_RELPATH
    if dest.is_file():
        if dest.read_bytes() == path.read_bytes():
            return dest
        raise DataError(
            "the dataset already has different fingerprints",
            path=dest,
            fix=f"remove {dest} first to replace them with {path}",
        )
    with atomic_path(dest) as tmp:  # the usual file permissions, renamed into place
        shutil.copyfile(path, tmp)
    return dest


# ---------------------------------------------------------------------------------------------
# Tar extraction


def _tar_prefix(infos: list[tarfile.TarInfo], tar_path: Path) -> str:
    """The folder prefix in front of ``metadata/bbbc021_df_all.csv`` (e.g. ``bbbc021_all/``)."""
    hits = [
        _norm_tar_name(i.name)
        for i in infos
        if i.isfile() and f"/{_norm_tar_name(i.name)}".endswith("/" + layout.INDEX_RELPATH)
    ]
    if not hits:
        raise DownloadError(
            f"the BBBC021 tar holds no {layout.INDEX_RELPATH}; first members: "
            + _candidates_text(i.name for i in infos[:12]),
            path=tar_path,
            fix="check the URL (BBBC021 is in Zenodo record 8307629, IMPA_reproducibility.zip)",
        )
    best = min(hits, key=len)
    return best[: len(best) - len(layout.INDEX_RELPATH)]


def _norm_tar_name(name: str) -> str:
    norm = name.replace("\\", "/")
    while norm.startswith("./"):
        norm = norm[2:]
    return norm


def _extract_limits(target: Path) -> ExtractLimits:
    """The bounds of the BBBC021 extraction: the constants, and the free disk space of ``target``."""
    try:
        free = shutil.disk_usage(target).free
    except OSError:
        free = MAX_TAR_TOTAL_BYTES
    return ExtractLimits(
        max_members=MAX_TAR_MEMBERS,
        max_member_bytes=MAX_TAR_MEMBER_BYTES,
        max_total_bytes=min(MAX_TAR_TOTAL_BYTES, free),
    )


def _extract_tar(tar_path: Path, target: Path) -> None:
    """Extract the BBBC021 tar into ``target``, stripping its top folder, refusing unsafe members.

    Every member header is checked before anything is written (:class:`cellbench.extract.SafeTar`):
    absolute paths, ``..``, symlinks, hardlinks, devices, FIFOs, sparse files, more than
    :data:`MAX_TAR_MEMBERS` members, a declared size over :data:`MAX_TAR_MEMBER_BYTES` raise a
    :class:`DownloadError` naming the member; bytes are then counted while written, so no member
    passes its declared size and the whole passes neither :data:`MAX_TAR_TOTAL_BYTES` nor the free
    disk space. A refused tar is deleted (it is never extracted again).
    """
    try:
        with SafeTar(tar_path, _extract_limits(target), fix=_UNSAFE_FIX) as tar:
            prefix = _tar_prefix(tar.members, tar_path)

            def rename(name: str) -> str | None:
                norm = _norm_tar_name(name)
                return norm[len(prefix) :] if norm.startswith(prefix) else None

            tar.extract(target, rename)
    except DownloadError:
        tar_path.unlink(missing_ok=True)  # unsafe or not BBBC021: never extract it again
        raise
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        tar_path.unlink(missing_ok=True)
        raise DownloadError(
            f"the BBBC021 tar is unreadable ({tar_error_text(exc)}); it was deleted",
            path=tar_path,
            fix=REDOWNLOAD_FIX,
        ) from None


def _verify_layout(root: Path) -> None:
    """Check an extracted dataset: the index CSV and the first crops exist."""
    index = root / layout.INDEX_RELPATH
    if not index.is_file():
        raise DownloadError(
            f"the extracted dataset has no {layout.INDEX_RELPATH}", path=root, fix=REDOWNLOAD_FIX
        )
    with open(index, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if "SAMPLE_KEY" not in header:
            raise DownloadError(
                "the extracted index CSV has no SAMPLE_KEY column", path=index, fix=REDOWNLOAD_FIX
            )
        col = header.index("SAMPLE_KEY")
        for row in itertools.islice(reader, 5):
            if len(row) <= col:
                continue
            crop = root / layout.sample_key_to_relpath(row[col])
            if not crop.is_file():
                raise DownloadError(
                    f"the extracted dataset lacks the crop of {row[col]!r}",
                    path=crop,
                    fix=REDOWNLOAD_FIX,
                )


# ---------------------------------------------------------------------------------------------
# The public entry point


def is_complete(root: str | Path) -> bool:
    """True if ``root`` holds an installed BBBC021 dataset (its index CSV; fingerprints optional).

    A dataset folder appears only by renaming a verified staging folder into place, so its index
    marks a finished download.
    """
    return (Path(root) / layout.INDEX_RELPATH).is_file()


def has_fingerprints(root: str | Path) -> bool:
    """True if the dataset at ``root`` holds ``embeddings/csv/emb_fp.csv``."""
    return (Path(root) / layout.FINGERPRINT_RELPATH).is_file()


def _zip_filename(url: str) -> str:
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name if _SAFE_FILENAME.match(name) else "archive.zip"


def _fetch_tar(
    source: MemberSource, members: list[ZipMember], work: Path, where: str, report: ProgressFn
) -> tuple[ZipMember, Path]:
    """Fetch (or reuse from an earlier run) the verified BBBC021 tar into ``work``."""
    member = _select_tar(members, where)
    base = PurePosixPath(member.name).name
    tar_path = work / (base if _SAFE_FILENAME.match(base) else "bbbc021_all.tar")
    if tar_path.is_file() and tar_path.stat().st_size == member.size:
        return member, tar_path  # verified earlier: it is renamed into place only once verified
    part = tar_path.with_name(tar_path.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    extra = member.compressed_size - have + (member.size if member.method != 0 else 0)
    check_free_space(work, extra + member.size)
    return member, source.fetch_member(member, tar_path, on_progress=report)


def download_bbbc021(
    dest_root: str | Path,
    *,
    url: str = IMPA_ZENODO_URL,
    fingerprints: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch only the BBBC021 members of the IMPA zip and leave the dataset at ``dest_root``.

    ``dest_root`` is the folder that will contain ``metadata/``, ``embeddings/`` and ``Week*/``. If
    it already holds an installed dataset it is returned at once, without a network request (after
    installing ``fingerprints`` into it, if given). Partial downloads are kept in
    ``.<name>.download/`` beside ``dest_root`` and resumed by the next call; the dataset folder
    appears only once it is complete and verified. The fingerprints are optional: check
    :func:`has_fingerprints` afterwards.

    Args:
        dest_root: the dataset folder to create.
        url: the zip's URL (default: Zenodo record 8307629).
        fingerprints: a fingerprint CSV to install as ``emb_fp.csv`` (e.g. the IMPA repository's);
            its form is checked before any network request, its compounds once the index is
            extracted. Without it the archive's ``emb_fp.csv`` is used where there is one.
        on_progress: called as ``on_progress(done_bytes, total_bytes)`` while bytes arrive; the
            total grows if a further member (the fingerprints) must be fetched.
        timeout: seconds to wait for the server on each network operation.

    Returns:
        ``dest_root``.

    Raises:
        DownloadError: network/HTTP failures, data failing verification, unsafe archive members,
            a zip without BBBC021, or a non-empty ``dest_root`` that is not a complete dataset.
        DataError: a bad ``fingerprints`` file (nothing is installed then).
    """
    dest_root = Path(dest_root).expanduser().absolute()
    fp_file = None if fingerprints is None else Path(fingerprints).expanduser().absolute()
    if fp_file is not None:
        check_fingerprint_file(fp_file)  # its form, before any byte is fetched
    if is_complete(dest_root):
        if fp_file is not None:
            install_fingerprints(dest_root, fp_file)
        return dest_root
    if dest_root.exists() and (not dest_root.is_dir() or any(dest_root.iterdir())):
        raise DownloadError(
            "exists but is not a complete BBBC021 dataset; refusing to overwrite it",
            path=dest_root,
            fix="remove or rename the folder, or choose another destination",
        )
    parent = dest_root.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / f".{dest_root.name}.download"
    work.mkdir(exist_ok=True)
    for stale in parent.glob(f".{dest_root.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)

    try:
        _fetch_and_install(
            dest_root, work, url=url, fp_file=fp_file, on_progress=on_progress, timeout=timeout
        )
    finally:
        with contextlib.suppress(OSError):
            work.rmdir()  # only if empty: partial downloads stay for the next run
    return dest_root


def _fetch_and_install(
    dest_root: Path,
    work: Path,
    *,
    url: str,
    fp_file: Path | None,
    on_progress: ProgressFn | None,
    timeout: float,
) -> None:
    """Fetch the members into ``work``, extract into a staging folder, rename onto ``dest_root``."""
    parent = dest_root.parent
    offset = 0

    def report(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(offset + done, offset + total)

    source: MemberSource
    try:
        source = RemoteZip(url, timeout=timeout, not_found_fix=_NOT_FOUND_FIX)
        members = source.members()
        tar_member, tar_path = _fetch_tar(source, members, work, url, report)
    except RangesUnsupported:
        zip_path = download_whole(
            url,
            work / _zip_filename(url),
            timeout=timeout,
            on_progress=on_progress,
            not_found_fix=_NOT_FOUND_FIX,
        )
        source = LocalZip(zip_path)
        members = source.members()
        tar_member, tar_path = _fetch_tar(source, members, work, str(zip_path), lambda d, t: None)

    staging = temp_dir(f".{dest_root.name}.partial-", parent)  # 0755 under umask 022, not 0700
    try:
        _extract_tar(tar_path, staging)
        _verify_layout(staging)
        fp_dest = staging / layout.FINGERPRINT_RELPATH
        if fp_file is not None:  # the user's file wins over the archive's
            fp_dest.unlink(missing_ok=True)
            install_fingerprints(staging, fp_file)
        elif not fp_dest.is_file():
            if isinstance(source, RemoteZip):
                offset = tar_member.compressed_size
            fp_path = _fetch_fingerprints(
                source,
                members,
                staging / layout.INDEX_RELPATH,
                work,
                on_progress=report if isinstance(source, RemoteZip) else None,
            )
            if fp_path is not None:
                fp_dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fp_path, fp_dest)
        if dest_root.is_dir():
            dest_root.rmdir()  # checked empty above
        os.replace(staging, dest_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
