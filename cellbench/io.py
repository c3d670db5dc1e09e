"""Small file helpers: atomic writes, content hashes and a checked JSON-object reader.

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cellbench.errors import CellbenchError

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(dest: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically and return ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` with ``\\n`` line endings to ``dest`` atomically."""
    return atomic_write_bytes(dest, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def is_within(path: str | Path, folder: str | Path) -> bool:
    """True if ``path`` resolves to a location inside ``folder`` (symlinks and ``..`` resolved).

    A symbolic link loop is not inside anything (False, not an exception)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except (ValueError, RuntimeError, OSError):  # RuntimeError/OSError: a link loop
        return False
    return True


def read_json_object(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; unreadable, not JSON or not an object: a one-line
    :class:`~cellbench.errors.CellbenchError` that names ``what``, the file and ``fix``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CellbenchError(
            f"unreadable {what} ({type(exc).__name__})", path=path, fix=fix
        ) from None
    if not isinstance(data, dict):
        raise CellbenchError(f"{what} is not a JSON object", path=path, fix=fix)
    return data


def tree_size(path: str | Path) -> tuple[int, int]:
    """``(files, bytes)`` of the regular files under ``path`` (links not followed; 0, 0 if absent)."""
    files = size = 0
    root = Path(path)
    if root.is_file():
        return 1, root.stat().st_size
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                files += 1
                size += p.stat().st_size
    return files, size
