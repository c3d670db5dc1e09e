"""Publishing and installing an artifact set: ``cellbench artifacts pack`` and ``fetch``.

``pack`` writes a deterministic ``.tar.gz`` of a built set (its ``MANIFEST.json`` and the files it
lists, sorted, mode 0644, owner 0, mtime 0, gzip header without name or time): the same set gives
the same archive bytes, so its sha256 can be published beside the URL.

``fetch`` downloads an archive, bounded while streaming (:data:`MAX_ARCHIVE_BYTES`), checks its
sha256 against the published one *before* opening it, then extracts it member by member through
:class:`cellbench.extract.SafeTar`: only regular files with the names an artifact set has
(:func:`allowed_member`), no links, sparse files, no path leaving the target folder, each at most
:data:`MAX_MEMBER_BYTES` and all at most :data:`MAX_TOTAL_BYTES` (counted while writing, not
trusted from the header). The extracted manifest must verify and name the dataset being
installed; then the set replaces the dataset's ``cellbench_artifacts/`` files
(:func:`cellbench.artifacts.build.install_staged`). Nothing is installed unless every check passes.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from cellbench.artifacts.manifest import CLASSIFIER_FILES, MANIFEST_NAME, read_manifest
from cellbench.errors import CellbenchError, DownloadError
from cellbench.extract import ExtractLimits, SafeTar, tar_error_text

#: the largest archive ``fetch`` accepts (a set is a few MB)
MAX_ARCHIVE_BYTES = 256 << 20
#: the largest file of a set ``fetch`` writes
MAX_MEMBER_BYTES = 128 << 20
#: the most members an archive may have
MAX_MEMBERS = 64
#: the most all files of a set together may write
MAX_TOTAL_BYTES = 512 << 20
_CHUNK = 1 << 16
_REFERENCE_RE = re.compile(r"^reference_[A-Za-z0-9_.-]{1,64}\.json$")
UNSAFE_FIX = "the archive is unsafe or not a cellbench artifact set; do not use it and report it"


def allowed_member(name: str) -> bool:
    """True for the relative paths an artifact set may hold (manifest, reference, classifier)."""
    return name == MANIFEST_NAME or name in CLASSIFIER_FILES or bool(_REFERENCE_RE.match(name))


def pack(folder: str | Path, dest: str | Path) -> str:
    """Write the set in ``folder`` (verified against its manifest) to ``dest``; return its sha256."""
    from cellbench.io import atomic_path, sha256_file

    folder = Path(folder)
    doc = read_manifest(folder, verify=True)
    names = sorted([MANIFEST_NAME, *doc["files"]])
    with (
        atomic_path(dest) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf,
    ):
        for name in names:
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return sha256_file(dest)


def download_bounded(
    url: str,
    dest: Path,
    *,
    max_bytes: int | None = None,
    timeout: float = 60.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> str:
    """Stream ``url`` into ``dest``, refusing more than ``max_bytes`` (default
    :data:`MAX_ARCHIVE_BYTES`) whatever the headers say; return the sha256."""
    from cellbench.data.remote_zip import _network_error, _open

    max_bytes = MAX_ARCHIVE_BYTES if max_bytes is None else max_bytes
    resp = _open(url, timeout=timeout, not_found_fix="check the URL of the published set")
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else 0
    too_big = DownloadError(
        f"the archive is larger than {max_bytes} bytes; refusing it",
        path=url,
        fix="check the URL: a cellbench artifact set is a few MB",
    )
    if total > max_bytes:
        resp.close()
        raise too_big
    h, got = hashlib.sha256(), 0
    with resp, open(dest, "wb") as out:
        while True:
            try:
                chunk = resp.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _network_error(url, exc, timeout) from None
            if not chunk:
                break
            got += len(chunk)
            if got > max_bytes:
                raise too_big
            h.update(chunk)
            out.write(chunk)
            if on_progress is not None:
                on_progress(got, total)
    if total and got != total:
        raise DownloadError(
            f"the connection closed after {got} of {total} bytes",
            path=url,
            fix="run the same command again",
        )
    return h.hexdigest()


def extract_set(archive: Path, target: Path, *, max_member: int | None = None) -> None:
    """Extract an artifact archive into the empty folder ``target``; refuse anything unexpected.

    Through :class:`cellbench.extract.SafeTar`: at most :data:`MAX_MEMBERS` regular files with the
    names of a set, no links, folders, sparse or special files; each at most ``max_member``
    (default :data:`MAX_MEMBER_BYTES`) and all together at most :data:`MAX_TOTAL_BYTES`, counted
    while writing. On a refusal nothing extracted is left.
    """
    max_member = MAX_MEMBER_BYTES if max_member is None else max_member
    limits = ExtractLimits(
        max_members=MAX_MEMBERS, max_member_bytes=max_member, max_total_bytes=MAX_TOTAL_BYTES
    )
    seen: set[str] = set()

    def check(info: tarfile.TarInfo) -> str | None:
        if not allowed_member(info.name):
            return "is not a file of an artifact set"
        if info.name in seen:
            return "appears twice"
        seen.add(info.name)
        return None

    try:
        with SafeTar(archive, limits, fix=UNSAFE_FIX, allow_dirs=False, check=check) as tar:
            tar.extract(target)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DownloadError(
            f"unreadable artifact archive ({tar_error_text(exc)})", path=archive, fix=UNSAFE_FIX
        ) from None
    if MANIFEST_NAME not in seen:
        raise DownloadError(f"the archive has no {MANIFEST_NAME}", path=archive, fix=UNSAFE_FIX)


def fetch(
    url: str,
    sha256: str,
    out: Path,
    *,
    dataset: str,
    index_sha256: str,
    on_progress: Callable[[int, int], None] | None = None,
    timeout: float = 60.0,
) -> dict:
    """Download, verify and install a published set into ``out``; return its manifest record."""
    from cellbench.artifacts.build import install_staged
    from cellbench.artifacts.manifest import set_files

    want = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise CellbenchError(
            f"--sha256 {sha256!r} is not a sha256 (64 hexadecimal digits)",
            fix="pass the sha256 published beside the archive's URL",
        )
    created = not out.exists()  # a refused fetch leaves no folder it made
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=out))
    try:
        archive = work / "set.tar.gz"
        got = download_bounded(url, archive, timeout=timeout, on_progress=on_progress)
        if got != want:
            raise DownloadError(
                f"the archive's sha256 is {got}, not the published {want}; nothing was installed",
                path=url,
                fix="check the URL and the sha256 you were given (or download again)",
            )
        staging = work / "set"
        staging.mkdir()
        extract_set(archive, staging)
        doc = read_manifest(staging, verify=True)
        if set(doc["files"]) | {MANIFEST_NAME} != {
            str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()
        }:
            raise DownloadError(
                "the archive's files are not exactly those its manifest lists",
                path=url,
                fix=UNSAFE_FIX,
            )
        if doc.get("dataset") != dataset:
            raise CellbenchError(
                f"the archive is an artifact set for {doc.get('dataset')!r}, not {dataset!r}",
                path=url,
                fix=f"fetch the set published for {dataset}",
            )
        if doc.get("dataset_index_sha256") != index_sha256:
            raise CellbenchError(
                f"the set was built from {dataset} index {str(doc.get('dataset_index_sha256'))[:12]}..., "
                f"this dataset's index is {index_sha256[:12]}...",
                path=url,
                fix="download the dataset version the set was published for "
                "(`cellbench data download`), or build your own set",
            )
        (staging / MANIFEST_NAME).unlink()
        for stale in set_files(out):  # the installed set is exactly the published one
            if stale not in doc["files"]:
                (out / stale).unlink()
        return install_staged(staging, out, dataset, index_sha256)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
