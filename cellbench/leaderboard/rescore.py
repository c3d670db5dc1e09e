"""``cellbench leaderboard rescore``: re-make every entry's results under the current metric suite.

Submissions keep their images (:mod:`cellbench.submission.archive`), so a deliberate metric suite
change re-scores the board instead of leaving stale tables: each entry with images is scored again
with the installed toolkit on the protocol its results record, and its ``results.json`` and
``results.per_image.csv`` are replaced as one unit (both written beside the originals first, the
table moved in, then the document); ``metadata.json`` records the re-score in ``rescored``. An
entry without images is left alone (the page shows it in the stale section while its suite is
older).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cellbench.errors import CellbenchError


@dataclass
class Rescored:
    """What happened to one entry: ``rescored``, ``no-images`` or ``failed`` (with the reason)."""

    entry: str
    status: str
    seconds: float = 0.0
    reason: str | None = None
    from_suite: str | None = None


def rescore_entry(folder: str | Path, *, data_dir: str | Path | None = None) -> Rescored:
    """Re-score one submission folder in place (see the module docstring)."""
    from cellbench._version import __version__
    from cellbench.metrics.rewards import SUITE_VERSION
    from cellbench.results.builder import result_paths
    from cellbench.submission.archive import extract_images
    from cellbench.submission.validate import METADATA_NAME, PER_IMAGE_NAME, RESULTS_NAME
    from cellbench.submission.verify import _read_entry, rescore_images

    folder = Path(folder)
    started = time.perf_counter()
    rep = Rescored(folder.name, "failed")
    try:
        meta, doc, _, _ = _read_entry(folder)
        rep.from_suite = doc.get("metric_suite_version")
        with extract_images(folder, download=True) as images:
            if images is None:
                rep.status, rep.reason = "no-images", "no image archive: left as it is"
                return rep
            with tempfile.TemporaryDirectory(prefix=".rescore-", dir=folder.parent) as tmp:
                work = Path(tmp)
                rescore_images(images, doc, work, data_dir=data_dir, check_pinned=False)
                new_json, new_csv, _ = result_paths(work / "results.json")
                meta = dict(meta)
                meta["rescored"] = {
                    "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
                    "cellbench_version": __version__,
                    "metric_suite_version": SUITE_VERSION,
                    "from_suite": rep.from_suite,
                }
                meta_tmp = work / METADATA_NAME
                meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
                # one unit: every new file is complete beside the originals before any replace;
                # the table goes first and the document last, as `cellbench eval` writes them
                staged = []
                for src, name in (
                    (new_csv, PER_IMAGE_NAME),
                    (meta_tmp, METADATA_NAME),
                    (new_json, RESULTS_NAME),
                ):
                    dest = folder / f".{name}.rescore"
                    shutil.copyfile(src, dest)
                    os.chmod(dest, 0o644)
                    staged.append((dest, folder / name))
                for dest, final in staged:
                    os.replace(dest, final)
        rep.status = "rescored"
    except CellbenchError as exc:
        rep.reason = str(exc)
    finally:
        for leftover in folder.glob(".*.rescore"):
            leftover.unlink(missing_ok=True)
        rep.seconds = time.perf_counter() - started
    return rep


def rescore_all(
    submissions: str | Path,
    *,
    data_dir: str | Path | None = None,
    on_entry: Callable[[Rescored], None] | None = None,
) -> list[Rescored]:
    """Re-score every entry of a submissions folder that carries its images."""
    from cellbench.submission.validate import submission_folders

    root = Path(submissions)
    if not root.is_dir():
        raise CellbenchError(
            "submissions folder not found", path=root, fix="pass --submissions DIR"
        )
    out = []
    for folder in submission_folders(root):
        if not folder.is_dir() or folder.is_symlink():
            continue
        rep = rescore_entry(folder, data_dir=data_dir)
        if on_entry is not None:
            on_entry(rep)
        out.append(rep)
    return out
