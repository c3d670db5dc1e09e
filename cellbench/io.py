"""Small file helpers: atomic writes, content hashes and a checked JSON-object reader.

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
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


def temp_dir(prefix: str, parent: str | Path) -> Path:
    """A new empty folder in ``parent`` with the usual permissions (``0777 & ~umask``, e.g. 0755),
    not :func:`tempfile.mkdtemp`'s 0700: for staging folders renamed into place (a dataset)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


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


def _first_existing(path: Path) -> Path | None:
    """``path`` or its nearest ancestor that exists (None: none does, e.g. a relative path)."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return None


def check_out_file(out: str | Path, *, option: str = "--out", fix: str | None = None) -> None:
    """Refuse an output file that is an existing folder, or that lies under a file.

    Args:
        out: the file a command is about to write.
        option: the command-line option that named it (for the message).
        fix: what the user should do (default: name a file in a folder).
    """
    out = Path(out)
    if out.is_dir():
        raise CellbenchError(
            f"{option} names an existing folder", path=out, fix=fix or "name a file, not a folder"
        )
    _check_parents(out, option)


def check_out_folder(out: str | Path, *, option: str = "--out") -> None:
    """Refuse an output folder that exists as a file, or that lies under a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CellbenchError(
            f"{option} names a file, not a folder", path=out, fix=f"name a folder for {option}"
        )
    _check_parents(out, option)


def _check_parents(out: Path, option: str) -> None:
    found = _first_existing(out.parent.absolute())
    if found is not None and not found.is_dir():
        raise CellbenchError(
            f"{option} is inside a file, not a folder ({found})",
            path=out,
            fix=f"name a path in a folder for {option}",
        )


def not_regular_file(path: str | Path, *, follow_links: bool = True) -> str | None:
    """Why ``path`` is not a regular file, or None if it is one.

    A FIFO, socket or device is refused before it is opened (reading a FIFO waits for a writer
    forever); with ``follow_links`` False a symbolic link is refused too. The answer reads like
    ``is a FIFO (named pipe), not a regular file``.
    """
    try:
        mode = (os.stat if follow_links else os.lstat)(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "a device or special file")
    return f"is {kind}, not a regular file"


#: the deepest nesting of arrays and objects :func:`loads_json` accepts (result documents, metadata,
#: manifests and configs nest fewer than 10 levels)
MAX_JSON_DEPTH = 64

_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON ``text``, outside strings (no recursion)."""
    depth = deepest = 0
    for token in _JSON_TOKEN.findall(text):
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number (it overflows to {value})")
    return value


def loads_json(
    text: str | bytes,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse untrusted JSON: nesting deeper than ``max_depth`` (checked before parsing, without
    recursion), ``NaN``, ``Infinity`` and numbers that overflow to infinity (``1e999``) raise a
    :class:`ValueError` saying which, as do malformed text and non-UTF-8 bytes.
    ``object_pairs_hook`` is passed to :func:`json.loads` (e.g. to refuse duplicate keys)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep, more than the {max_depth} allowed")
    return json.loads(
        text,
        parse_constant=_not_a_number,
        parse_float=_finite_float,
        object_pairs_hook=object_pairs_hook,
    )


def read_json(
    path: str | Path, what: str, fix: str, *, error: type[CellbenchError] | None = None
) -> Any:
    """The untrusted JSON document in ``path`` (see :func:`loads_json`); unreadable, not JSON,
    too deeply nested or holding a non-finite number: a one-line ``error`` (default
    :class:`~cellbench.errors.CellbenchError`) that names ``what``, the file and ``fix``."""
    try:
        return loads_json(Path(path).read_bytes())
    except OSError as exc:
        raise (error or CellbenchError)(
            f"cannot read the {what} ({exc.strerror or type(exc).__name__})", path=path, fix=fix
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, depth, non-finite
        raise (error or CellbenchError)(
            f"unreadable {what} ({_first_line(exc)})", path=path, fix=fix
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def read_json_object(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path`` (read with :func:`read_json`); unreadable, not JSON or not an
    object: a one-line :class:`~cellbench.errors.CellbenchError` that names ``what``, the file
    and ``fix``."""
    data = read_json(path, what, fix)
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
