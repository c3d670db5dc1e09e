"""Reading a generator's images and matching them to protocol tasks (docs/scoring.md).

Three folder layouts are accepted, tried in this order:

1. ``manifest.csv`` with columns ``task_id, path`` (paths relative to the folder);
2. files named by task: ``<task_id>.png`` or ``<task_id>_<k>.png`` for several images per task
   (PNG 8-bit RGB, TIFF, or ``.npy`` uint8 HWC);
3. one sub-folder per compound (``taxol/``, ``cytochalasin_B/`` ...): files named ``<task_id>.*``
   go to that task, other files are dealt to the compound's tasks in sorted order.

Every image is checked: readable, 96x96x3, uint8 or convertible to uint8 without loss, finite, not
one constant value. Each problem is reported with its file; good images stay usable unless the
caller asks for strict mode. A constant image is reported but still scored (a blank output earns
its low score), so a result with one is never marked complete.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellbench.data.layout import CROP_SHAPE
from cellbench.errors import ImageError
from cellbench.generation import GENERATION_FILE  # the record beside the images, not an image
from cellbench.io import is_within

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
MANIFEST_NAME = "manifest.csv"
_MULTI = re.compile(r"^(?P<task>.+)_(?P<k>\d+)$")


@dataclass(frozen=True)
class ImageProblem:
    """One thing wrong with the image folder, tied to a file (and a task when known)."""

    path: str
    problem: str
    task_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class ImageSet:
    """The result of matching a folder to a protocol (no pixels read yet)."""

    folder: Path
    layout: str
    files: dict[str, list[Path]]
    problems: list[ImageProblem] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return sum(len(v) for v in self.files.values())


@dataclass
class LoadedImages:
    """Pixels of the images that passed every check, in protocol order."""

    task_ids: list[str]
    paths: list[Path]
    images: np.ndarray
    problems: list[ImageProblem]
    missing: list[str]


def compound_folder_name(compound: str) -> str:
    """The folder name cellbench expects for a compound (``/`` and spaces become ``_``)."""
    return re.sub(r"[\s/\\]+", "_", compound.strip())


def _norm(name: str) -> str:
    return re.sub(r"[\s_/\\-]+", "", name).lower()


def read_image(path: str | Path, *, allow_constant: bool = False) -> np.ndarray:
    """Read one generated image as uint8 (96, 96, 3); raise :class:`ImageError` if unusable.

    ``allow_constant`` accepts an image of one value (it is still reported by :func:`load_images`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode != "RGB":
                    raise ImageError(
                        f"PNG mode is {im.mode}, expected 8-bit RGB",
                        path=path,
                        fix="save the three stains as an 8-bit RGB PNG",
                    )
                arr = np.asarray(im)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            raise ImageError(
                f"unsupported file type {suffix!r}",
                path=path,
                fix=f"use one of {', '.join(IMAGE_SUFFIXES)}",
            )
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many types for corrupt files
        raise ImageError(
            f"unreadable or truncated image ({type(exc).__name__}: {exc})",
            path=path,
            fix="re-export the file",
        ) from None
    return check_image_array(arr, path, allow_constant=allow_constant)


def check_image_array(
    arr: np.ndarray, path: str | Path = "<array>", *, allow_constant: bool = False
) -> np.ndarray:
    """Check shape, dtype and values of one image; return it as uint8 (96, 96, 3)."""
    if not isinstance(arr, np.ndarray) or arr.dtype == object:
        raise ImageError("not a numeric array", path=path)
    if arr.shape != CROP_SHAPE:
        hint = (
            " (channels first? cellbench wants channels last)" if arr.shape == (3, 96, 96) else ""
        )
        raise ImageError(
            f"shape {arr.shape}, expected (96, 96, 3){hint}",
            path=path,
            fix="write 96x96 images with the three stains as channels, HWC",
        )
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ImageError(f"dtype {arr.dtype} is not an image type", path=path, fix="save as uint8")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ImageError(
                "image has NaN or infinite values", path=path, fix="check the generator output"
            )
        lo, hi = arr.min(), arr.max()
        integral = np.issubdtype(arr.dtype, np.integer) or bool(np.all(arr == np.round(arr)))
        if lo < 0 or hi > 255 or not integral:
            raise ImageError(
                f"{arr.dtype} values in [{lo:g}, {hi:g}] cannot become uint8 without loss",
                path=path,
                fix="scale to integers 0..255 and save as uint8",
            )
        arr = arr.astype(np.uint8)
    if arr.min() == arr.max() and not allow_constant:
        raise ImageError(
            f"image is one constant value ({int(arr.flat[0])})",
            path=path,
            fix="check the generator output",
        )
    return arr


def discover_images(folder: str | Path, protocol: pd.DataFrame) -> ImageSet:
    """Match the files of ``folder`` to the tasks of ``protocol`` (no pixels are read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(
            "image folder not found", path=folder, fix="pass the folder your generator wrote"
        )
    tasks = protocol["task_id"].astype(str).tolist()
    task_set = set(tasks)
    if (folder / MANIFEST_NAME).is_file():
        files, problems = _from_manifest(folder, task_set)
        layout = "manifest"
    else:
        top = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name != GENERATION_FILE
        )
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if any(_task_of(p, task_set) for p in top) or not subdirs:
            files, problems = _from_task_names(top, task_set)
            layout = "task_id"
        else:
            files, problems = _from_compound_folders(subdirs, protocol)
            layout = "compound-folders"
    ordered = {t: sorted(files[t]) for t in tasks if t in files}
    missing = [t for t in tasks if t not in files]
    return ImageSet(folder, layout, ordered, problems, missing)


def _task_of(path: Path, task_set: set[str]) -> str | None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    stem = path.stem
    if stem in task_set:
        return stem
    m = _MULTI.match(stem)
    if m and m.group("task") in task_set:
        return m.group("task")
    return None


def _from_task_names(
    paths: list[Path], task_set: set[str]
) -> tuple[dict[str, list[Path]], list[ImageProblem]]:
    files: dict[str, list[Path]] = {}
    problems: list[ImageProblem] = []
    seen_stems: dict[str, Path] = {}
    for p in paths:
        task = _task_of(p, task_set)
        if task is None:
            why = (
                f"unsupported file type {p.suffix!r}"
                if p.suffix.lower() not in IMAGE_SUFFIXES
                else "file name is not a task_id of the protocol"
            )
            problems.append(ImageProblem(str(p), why))
            continue
        if p.stem in seen_stems:
            problems.append(
                ImageProblem(
                    str(p), f"duplicate of {seen_stems[p.stem].name} (same task and index)", task
                )
            )
            continue
        seen_stems[p.stem] = p
        files.setdefault(task, []).append(p)
    return files, problems


def _from_manifest(
    folder: Path, task_set: set[str]
) -> tuple[dict[str, list[Path]], list[ImageProblem]]:
    mpath = folder / MANIFEST_NAME
    try:
        manifest = pd.read_csv(mpath, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ImageError(f"unreadable manifest ({exc})", path=mpath) from None
    if not {"task_id", "path"} <= set(manifest.columns):
        raise ImageError(
            "manifest needs columns task_id and path",
            path=mpath,
            fix="write a CSV header 'task_id,path'",
        )
    files: dict[str, list[Path]] = {}
    problems: list[ImageProblem] = []
    seen: set[Path] = set()
    for task, rel in zip(manifest["task_id"], manifest["path"], strict=True):
        p = Path(rel) if Path(rel).is_absolute() else folder / rel
        where = f"{mpath} (row {task},{rel})"
        if not is_within(p, folder):
            problems.append(ImageProblem(where, "path points outside the image folder", task))
            continue
        if task not in task_set:
            problems.append(ImageProblem(where, f"task_id {task!r} is not in the protocol", task))
            continue
        if p.resolve() in seen:
            problems.append(ImageProblem(where, "file listed more than once", task))
            continue
        if not p.is_file():
            problems.append(ImageProblem(where, "file listed in the manifest does not exist", task))
            continue
        seen.add(p.resolve())
        files.setdefault(task, []).append(p)
    return files, problems


def _from_compound_folders(
    subdirs: list[Path], protocol: pd.DataFrame
) -> tuple[dict[str, list[Path]], list[ImageProblem]]:
    by_norm: dict[str, str] = {}
    for compound in protocol["compound"].astype(str).unique():
        by_norm[_norm(compound)] = compound
    files: dict[str, list[Path]] = {}
    problems: list[ImageProblem] = []
    for d in subdirs:
        compound = by_norm.get(_norm(d.name))
        if compound is None:
            import difflib

            close = difflib.get_close_matches(
                d.name, [compound_folder_name(c) for c in by_norm.values()], n=2
            )
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            problems.append(
                ImageProblem(str(d), f"folder name is not a compound of the protocol{hint}")
            )
            continue
        tasks = protocol.loc[protocol["compound"] == compound, "task_id"].astype(str).tolist()
        named, rest = _from_task_names(
            sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")),
            set(tasks),
        )
        for t, ps in named.items():
            files.setdefault(t, []).extend(ps)
        dealt = [
            ImageProblem(pr.path, pr.problem)
            for pr in rest
            if pr.problem != "file name is not a task_id of the protocol"
        ]
        problems.extend(dealt)
        leftovers = [
            Path(pr.path)
            for pr in rest
            if pr.problem == "file name is not a task_id of the protocol"
        ]
        for i, p in enumerate(leftovers):
            files.setdefault(tasks[i % len(tasks)], []).append(p)
    return files, problems


def load_images(
    image_set: ImageSet,
    *,
    strict: bool = False,
    n_per_task: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LoadedImages:
    """Read and check every matched file.

    Args:
        image_set: from :func:`discover_images`.
        strict: raise :class:`ImageError` if anything at all is wrong (missing tasks included).
        n_per_task: if given, a task with a different number of images is a problem.
        on_progress: called as ``on_progress(done, total)``.
    """
    problems = list(image_set.problems)
    task_ids: list[str] = []
    paths: list[Path] = []
    arrays: list[np.ndarray] = []
    total = image_set.n_files
    done = 0
    for task, task_paths in image_set.files.items():
        if n_per_task is not None and len(task_paths) != n_per_task:
            problems.append(
                ImageProblem(
                    str(task_paths[0].parent),
                    f"task {task} has {len(task_paths)} images, expected {n_per_task}",
                    task,
                )
            )
        for p in task_paths:
            try:
                img = read_image(p, allow_constant=True)
            except ImageError as exc:
                problems.append(ImageProblem(str(p), exc.message, task))
            else:
                # a constant image is reported, and still scored: a generator that outputs blank
                # images must get the low score it earns, not an empty evaluation
                if img.min() == img.max():
                    problems.append(
                        ImageProblem(
                            str(p), f"image is one constant value ({int(img.flat[0])})", task
                        )
                    )
                arrays.append(img)
                task_ids.append(task)
                paths.append(p)
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    if strict and (problems or image_set.missing):
        first = problems[0] if problems else f"task {image_set.missing[0]} has no image"
        raise ImageError(
            f"{len(problems)} problem(s), {len(image_set.missing)} task(s) without an image; first: {first}",
            path=image_set.folder,
            fix="fix the files or drop --strict to score the good images",
        )
    images = np.stack(arrays) if arrays else np.empty((0, *CROP_SHAPE), dtype=np.uint8)
    return LoadedImages(task_ids, paths, images, problems, list(image_set.missing))


def one_image_per_task(folder: str | Path, protocol: pd.DataFrame) -> np.ndarray:
    """A folder's image of every protocol task, stacked in protocol order.

    For analyses that need a complete answer (the bench scripts): a task without a readable image
    raises :class:`ImageError` naming the folder. A task with several images gives its first.
    """
    loaded = load_images(discover_images(folder, protocol), strict=False)
    order: dict[str, int] = {}
    for i, task in enumerate(loaded.task_ids):
        order.setdefault(task, i)
    missing = [t for t in protocol["task_id"] if t not in order]
    if missing:
        raise ImageError(
            f"{len(missing)} task(s) have no usable image (first: {missing[0]})",
            path=folder,
            fix="`cellbench images check` lists them; answer every task of the protocol",
        )
    return loaded.images[[order[t] for t in protocol["task_id"]]]
