"""Where cellbench keeps data and caches.

Data: ``--data-dir``, else ``$CELLBENCH_DATA_DIR``, else the platform's user data folder.
Caches (reference features and the like): ``$CELLBENCH_CACHE_DIR``, else the user cache folder.
Weights fetched on first use (the FID network): ``$CELLBENCH_WEIGHTS_DIR``, else ``weights/`` in the
user data folder.
Nothing is ever written inside the installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from cellbench.io import check_out_folder

DATA_ENV = "CELLBENCH_DATA_DIR"
CACHE_ENV = "CELLBENCH_CACHE_DIR"
WEIGHTS_ENV = "CELLBENCH_WEIGHTS_DIR"


def _folder(path: Path, source: str) -> Path:
    """``path``, refused if it is or lies under something other than a folder (``source`` named
    it): :func:`cellbench.io.check_out_folder`."""
    check_out_folder(path, option=source)
    return path


def data_dir(explicit: str | Path | None = None) -> Path:
    """The folder that holds datasets (one sub-folder per dataset name)."""
    if explicit:
        return _folder(Path(explicit).expanduser(), "--data-dir")
    env = os.environ.get(DATA_ENV)
    if env:
        return _folder(Path(env).expanduser(), f"${DATA_ENV}")
    return Path(platformdirs.user_data_dir("cellbench", appauthor=False))


def cache_dir() -> Path:
    """The folder for content-keyed caches."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return _folder(Path(env).expanduser(), f"${CACHE_ENV}")
    return Path(platformdirs.user_cache_dir("cellbench", appauthor=False))


def weights_dir() -> Path:
    """The folder for network weights fetched on first use (kept by ``cellbench cache clear``)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("cellbench", appauthor=False)) / "weights"
