"""Reading a generator's images and matching them to protocol tasks (docs/scoring.md).

Three folder layouts are accepted, tried in this order:

1. ``manifest.csv`` with columns ``task_id, path`` (paths relative to the folder);
2. files named by task: ``<task_id>.png`` or ``<task_id>_<k>.png`` for several images per task
   (PNG 8-bit RGB, TIFF, or ``.npy`` uint8 HWC), or by the task's target ``SAMPLE_KEY``;
3. one sub-folder per compound (``taxol/``, ``cytochalasin_B/``, nested where the name holds a
   ``/``: ``mevinolin/lovastatin/``), as CellFlux writes them: files named by task id, by target
   ``SAMPLE_KEY`` (CellFlux), or ``<control key>_to_<compound>`` (PhenDiff).

A file goes to the task its name names and to no other: a name that fits no task of its folder, or
several tasks, is a problem with its file (files are never dealt out by order). A task's images are
all named without an index or all with one: a second file that mixes the two (``t.npy`` beside
``t_0.npy``) is a problem, not a second image of the task. A symbolic link
that leaves the image folder (task-named files, compound folders, manifest rows and the manifest
itself), a link loop and a dangling link are each a problem; links inside the folder are read.

Every file is decoded by :func:`decode_image`, which reads the header first and refuses, before any
pixel is decoded, an image that would decode to more than :data:`MAX_DECODED_BYTES` (a
decompression bomb), a PNG with 16 bits per colour channel (Pillow would keep only the high byte)
and, for a generated image, anything that cannot be a 96x96x3 crop.

Every image is checked: readable, 96x96x3, uint8 or convertible to uint8 without loss, finite, not
one constant value. Each problem is reported with its file; good images stay usable unless the
caller asks for strict mode. A constant image is reported but still scored (a blank output earns
its low score), so a result with one is never marked complete.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

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


#: the most bytes one image may decode to (256 MiB); checked from the file's header, before any
#: pixel is decoded, so a small file whose header claims 100000x100000 pixels is refused at once
MAX_DECODED_BYTES = 256 * 2**20
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> (samples per pixel, name)
_PNG_COLOUR = {
    0: (1, "grey"),
    2: (3, "RGB"),
    3: (1, "palette"),
    4: (2, "grey+alpha"),
    6: (4, "RGBA"),
}


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says it decodes to, read without decoding a pixel."""

    format: str  # "PNG", "TIFF" or "NPY"
    shape: tuple[int, ...]
    dtype: np.dtype
    #: PNG only: bits per sample and colour type (IHDR)
    bit_depth: int | None = None
    colour_type: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded array."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def dims(self) -> str:
        """The shape as ``HxWxC``."""
        return "x".join(str(n) for n in self.shape)

    @property
    def png_kind(self) -> str:
        """A PNG's depth and colour type in words, e.g. ``16-bit RGB``."""
        return f"{self.bit_depth}-bit {_PNG_COLOUR.get(self.colour_type or 0, (0, '?'))[1]}"


def _png_header(fh: BinaryIO) -> ImageHeader:
    head = fh.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError("not a PNG file (no PNG signature and IHDR chunk)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in _PNG_COLOUR or depth not in (1, 2, 4, 8, 16) or not width or not height:
        raise ValueError(f"invalid PNG header ({width}x{height}, depth {depth}, colour {colour})")
    samples = 3 if colour == 3 else _PNG_COLOUR[colour][0]  # a palette decodes to its colours
    shape = (height, width) if samples == 1 else (height, width, samples)
    dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
    return ImageHeader("PNG", shape, dtype, depth, colour)


def _tiff_header(tif: Any) -> ImageHeader:
    if not tif.series:
        raise ValueError("TIFF holds no image")
    series = tif.series[0]
    return ImageHeader("TIFF", tuple(int(n) for n in series.shape), np.dtype(series.dtype))


def _npy_header(fh: BinaryIO) -> ImageHeader:
    from numpy.lib import format as npy

    version = npy.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = npy.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not read")
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in .npy header {shape}")
    return ImageHeader("NPY", tuple(shape), dtype)


def check_header(header: ImageHeader, path: str | Path, *, expect_crop: bool = False) -> None:
    """Refuse, from the header alone, an image that would decode to more than
    :data:`MAX_DECODED_BYTES`, a PNG with 16 bits per colour channel (Pillow keeps only their high
    byte), and with ``expect_crop`` anything that cannot be a 96x96x3 crop."""
    if header.nbytes > MAX_DECODED_BYTES:
        raise ImageError(
            f"{header.format} header says {header.dims} {header.dtype} "
            f"({header.nbytes / 2**20:,.0f} MiB decoded), over the limit of "
            f"{MAX_DECODED_BYTES // 2**20} MiB per image; refused before decoding",
            path=path,
            fix="write 96x96x3 images" if expect_crop else "cut the image into smaller tiles",
        )
    if header.format == "PNG" and header.bit_depth == 16 and header.colour_type != 0:
        raise ImageError(
            f"PNG is {header.png_kind} (16 bits per channel), which cellbench cannot read "
            "exactly (Pillow would keep only the high byte of each value)",
            path=path,
            fix="save an 8-bit RGB PNG, or write the exact values as TIFF or .npy",
        )
    if not expect_crop:
        return
    if header.format == "PNG" and (header.colour_type, header.bit_depth) != (2, 8):
        mode = {0: "L", 3: "P", 4: "LA", 6: "RGBA"}.get(header.colour_type or 0, "RGB")
        if header.colour_type == 0 and header.bit_depth in (1, 16):
            mode = "1" if header.bit_depth == 1 else "I;16"
        raise ImageError(
            f"PNG mode is {mode} ({header.png_kind}), expected 8-bit RGB",
            path=path,
            fix="save the three stains as an 8-bit RGB PNG",
        )
    if header.shape != CROP_SHAPE:
        raise ImageError(
            _shape_message(header.shape) + " (from the file's header)",
            path=path,
            fix="write 96x96 images with the three stains as channels, HWC",
        )


def decode_image(path: str | Path, *, expect_crop: bool = False) -> np.ndarray:
    """The pixels of one PNG, TIFF or ``.npy`` file, as the file holds them.

    The one way cellbench decodes an image file: the header is read and checked
    (:func:`check_header`) before any pixel is decoded, from the same open file. 16-bit grey PNG,
    TIFF and ``.npy`` of any type are returned exactly; a 16-bit colour PNG is refused; a palette
    or alpha PNG comes back as 8-bit RGB, a 1-bit one as 8-bit grey.
    Raises :class:`ImageError` for anything unusable.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(
            f"unsupported file type {suffix!r}",
            path=path,
            fix=f"use one of {', '.join(IMAGE_SUFFIXES)}",
        )
    try:
        with open(path, "rb") as fh:
            if suffix == ".png":
                check_header(_png_header(fh), path, expect_crop=expect_crop)
                fh.seek(0)
                from PIL import Image

                with Image.open(fh, formats=["PNG"]) as im:
                    im.load()
                    if im.mode in ("P", "PA", "LA", "RGBA"):  # colours, not palette indices
                        return np.asarray(im.convert("RGB"))
                    return np.asarray(im.convert("L") if im.mode == "1" else im)
            if suffix == ".npy":
                from numpy.lib import format as npy

                check_header(_npy_header(fh), path, expect_crop=expect_crop)
                fh.seek(0)
                return npy.read_array(fh, allow_pickle=False)
            import tifffile

            with tifffile.TiffFile(fh) as tif:
                check_header(_tiff_header(tif), path, expect_crop=expect_crop)
                return tif.asarray()
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many types for corrupt files
        raise ImageError(
            f"unreadable or truncated image ({type(exc).__name__}: {exc})",
            path=path,
            fix="re-export the file",
        ) from None


def read_image(path: str | Path, *, allow_constant: bool = False) -> np.ndarray:
    """Read one generated image as uint8 (96, 96, 3); raise :class:`ImageError` if unusable.

    Goes through :func:`decode_image` (header checked before decoding: size, 16-bit colour PNG,
    96x96x3). ``allow_constant`` accepts an image of one value (it is still reported by
    :func:`load_images`).
    """
    arr = decode_image(path, expect_crop=True)
    return check_image_array(arr, path, allow_constant=allow_constant)


def read_folder_image(path: Path, folder: Path, *, allow_constant: bool = False) -> np.ndarray:
    """:func:`read_image` of a file matched in ``folder``, refused if it resolves outside it.

    Every reader of a matched image folder goes through here (:func:`load_images`, the sample
    grid), so a file swapped for a link after :func:`discover_images` is still refused.
    """
    problem = _link_problem(path, folder)
    if problem is not None:
        raise ImageError(problem, path=path, fix="copy the file into the image folder")
    return read_image(path, allow_constant=allow_constant)


def _shape_message(shape: tuple[int, ...]) -> str:
    hint = " (channels first? cellbench wants channels last)" if shape == (3, 96, 96) else ""
    return f"shape {shape}, expected (96, 96, 3){hint}"


def _link_problem(path: Path, folder: Path) -> str | None:
    """Why ``path`` may not be read as part of ``folder`` (a link out of it, a loop), or None."""
    try:
        target = path.resolve(strict=False)
    except (RuntimeError, OSError):
        return "symbolic link loop"
    if not is_within(target, folder):
        return f"symbolic link points outside the image folder (to {target})"
    return None


def check_image_array(
    arr: np.ndarray, path: str | Path = "<array>", *, allow_constant: bool = False
) -> np.ndarray:
    """Check shape, dtype and values of one image; return it as uint8 (96, 96, 3)."""
    if not isinstance(arr, np.ndarray) or arr.dtype == object:
        raise ImageError("not a numeric array", path=path)
    if arr.shape != CROP_SHAPE:
        raise ImageError(
            _shape_message(arr.shape),
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
    """Match the files of ``folder`` to the tasks of ``protocol`` by name (no pixels are read).

    A file is matched only by what its name says (a task id, a target key, a PhenDiff source
    name); a name that fits no task, or several, is a problem with its file, never a guess.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(
            "image folder not found", path=folder, fix="pass the folder your generator wrote"
        )
    tasks = protocol["task_id"].astype(str).tolist()
    if (folder / MANIFEST_NAME).is_file():
        files, problems = _from_manifest(folder, set(tasks))
        layout = "manifest"
    else:
        names = _Names.of(protocol)
        matched = _Matched(folder, names)
        top, subdirs = matched.list_folder(folder)
        top = [p for p in top if p.name != GENERATION_FILE]
        matched.add(top, None)
        if subdirs and not matched.files:
            matched.walk_compound_folders(subdirs)
            layout = "compound-folders"
        else:
            layout = "task_id"
        files, problems = matched.files, matched.problems
    ordered = {t: sorted(files[t]) for t in tasks if t in files}
    missing = [t for t in tasks if t not in files]
    return ImageSet(folder, layout, ordered, problems, missing)


def _key(name: str) -> str:
    """A SAMPLE_KEY without the ``.npy`` suffix some indexes carry (docs/scoring.md)."""
    return name[:-4] if name.endswith(".npy") else name


@dataclass(frozen=True)
class _Names:
    """What a file name can refer to in a protocol: its task ids, target keys and controls."""

    compound_of: dict[str, str]  # task_id -> compound
    by_target: dict[str, list[str]]  # target key (no ``.npy`` suffix) -> task_ids
    by_control: dict[tuple[str, str], list[str]]  # (normalised compound, control key) -> task_ids
    compound_by_norm: dict[str, str]  # normalised compound name -> compound

    @classmethod
    def of(cls, protocol: pd.DataFrame) -> _Names:
        n = len(protocol)

        def column(name: str) -> list[str]:
            return protocol[name].astype(str).tolist() if name in protocol else [""] * n

        tasks, compounds = column("task_id"), column("compound")
        by_target: dict[str, list[str]] = {}
        by_control: dict[tuple[str, str], list[str]] = {}
        for task, compound, target, control in zip(
            tasks, compounds, column("target_key"), column("control_key"), strict=True
        ):
            if target:
                by_target.setdefault(_key(target), []).append(task)
            if control:
                by_control.setdefault((_norm(compound), _key(control)), []).append(task)
        return cls(
            dict(zip(tasks, compounds, strict=True)),
            by_target,
            by_control,
            {_norm(c): c for c in compounds},
        )

    def lookup(self, base: str) -> tuple[str, str, tuple[str, ...]] | None:
        """What a name (stem without an image index) says: (kind, name, the tasks it fits)."""
        if base in self.compound_of:
            return ("task_id", base, (base,))
        if _key(base) in self.by_target:
            return ("target key", _key(base), tuple(self.by_target[_key(base)]))
        m = _PHENDIFF.match(base)
        if m:
            pair = (_norm(m["cls"]), _key(m["source"]))
            if pair in self.by_control:
                return ("PhenDiff source (control key)", pair[1], tuple(self.by_control[pair]))
        return None

    def resolve(self, path: Path, compound: str | None) -> tuple[str, int | None] | str:
        """The (task, image index) a file's name gives, or the problem with the name.

        ``compound``: the compound of the folder the file is in (None at the top of the folder).
        """
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return f"unsupported file type {path.suffix!r}"
        m = _MULTI.match(path.stem)
        readings = [(path.stem, None)] + ([(m["task"], int(m["k"]))] if m else [])
        hits = [(hit, k) for base, k in readings if (hit := self.lookup(base)) is not None]
        if not hits:
            where = f"of a {compound} task" if compound is not None else "of the protocol"
            return (
                f"file name is neither a task_id nor a target key {where}"
                " (files are matched by name, never by order)"
            )
        if len(hits) == 2 and hits[0][0][2] != hits[1][0][2]:
            (a, _), (b, k) = hits
            return (
                f"ambiguous name: {a[0]} {a[1]!r}, or image {k} of {b[0]} {b[1]!r};"
                " name the file by task_id"
            )
        (kind, name, fits), k = hits[0]
        if compound is not None:
            here = tuple(t for t in fits if self.compound_of[t] == compound)
            if not here:
                other = " / ".join(sorted({self.compound_of[t] for t in fits}))
                return f"{kind} {name!r} is of a {other} task, not of {compound}"
            fits = here
        if len(fits) > 1:
            return (
                f"{kind} {name!r} fits {len(fits)} tasks ({', '.join(fits)});"
                " name the files by task_id so each lands on its own task"
            )
        return fits[0], k


# PhenDiff names a translated image ``<source image name>_to_<target class>.png`` (docs/scoring.md)
_PHENDIFF = re.compile(r"^(?P<source>.+?)_to_(?P<cls>.+)$")
# CellFlux writes ``fid_samples/epoch-<N>/<compound>/<target SAMPLE_KEY>.png`` (docs/scoring.md)
_CELLFLUX_EPOCH = re.compile(r"^epoch-\d+$")


@dataclass
class _Matched:
    """Files matched to tasks so far under ``root``, and the problems met."""

    root: Path
    names: _Names
    files: dict[str, list[Path]] = field(default_factory=dict)
    problems: list[ImageProblem] = field(default_factory=list)
    slots: dict[tuple[str, int | None], Path] = field(default_factory=dict)
    visited: set[Path] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.visited.add(self.root.resolve())

    def list_folder(self, d: Path) -> tuple[list[Path], list[Path]]:
        """The visible files and sub-folders of ``d``; a link that leaves ``root`` is a problem."""
        files: list[Path] = []
        subdirs: list[Path] = []
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            problem = _link_problem(p, self.root) if p.is_symlink() else None
            if problem is None and p.is_symlink() and not p.exists():
                problem = f"symbolic link to {p.readlink()}, which does not exist"
            if problem is not None:
                self.problems.append(ImageProblem(str(p), problem))
            elif p.is_dir():
                subdirs.append(p)
            elif p.is_file():
                files.append(p)
        return files, subdirs

    def add(self, paths: list[Path], compound: str | None) -> None:
        """Match files by name; a name that fits no single task is a problem."""
        for p in paths:
            got = self.names.resolve(p, compound)
            if isinstance(got, str):
                self.problems.append(ImageProblem(str(p), got))
                continue
            task, k = got
            if (task, k) in self.slots:
                first = self.slots[task, k].relative_to(self.root)
                self.problems.append(
                    ImageProblem(str(p), f"duplicate of {first} (same task and index)", task)
                )
                continue
            if task in self.files and ((task, None) in self.slots) != (k is None):
                first = self.files[task][0]
                self.problems.append(
                    ImageProblem(
                        str(p),
                        f"task {task} already has {first.relative_to(self.root)}: one image is"
                        " named without an index and one with _<k>; name a task's images all"
                        " <task_id> (one image) or all <task_id>_<k> (several)",
                        task,
                    )
                )
                continue
            self.slots[task, k] = p
            self.files.setdefault(task, []).append(p)

    def walk_compound_folders(self, subdirs: list[Path]) -> None:
        """Read compound folders (nested where a name holds ``/``: ``mevinolin/lovastatin/``)."""
        for d in subdirs:
            real = d.resolve()
            if real in self.visited:
                self.problems.append(ImageProblem(str(d), "folder reached twice through a link"))
                continue
            self.visited.add(real)
            rel = d.relative_to(self.root).as_posix()
            if _CELLFLUX_EPOCH.match(rel):
                self.problems.append(
                    ImageProblem(
                        str(d),
                        "a CellFlux epoch folder: pass this folder itself, it holds the"
                        " compound folders",
                    )
                )
                continue
            files, inner = self.list_folder(d)
            compound = self.names.compound_by_norm.get(_norm(rel))
            if compound is not None:
                self.add(files, compound)
            elif files or not inner:  # a folder on the way to a nested compound says nothing
                self.problems.append(ImageProblem(str(d), self._not_a_compound(rel)))
            self.walk_compound_folders(inner)

    def _not_a_compound(self, rel: str) -> str:
        import difflib

        close = difflib.get_close_matches(
            rel, [compound_folder_name(c) for c in self.names.compound_by_norm.values()], n=2
        )
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"folder name is not a compound of the protocol{hint}"


def _from_manifest(
    folder: Path, task_set: set[str]
) -> tuple[dict[str, list[Path]], list[ImageProblem]]:
    mpath = folder / MANIFEST_NAME
    problem = _link_problem(mpath, folder)
    if problem is not None:
        raise ImageError(
            f"manifest: {problem}", path=mpath, fix="copy the manifest into the folder"
        )
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
        escape = _link_problem(p, folder)
        if escape is not None:
            escape = escape.replace("symbolic link points", "path points")
            problems.append(ImageProblem(where, escape, task))
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


def check_n_per_task(n_per_task: int | None) -> None:
    """Refuse an expected number of images per task below 1 (None: any number)."""
    if n_per_task is not None and n_per_task < 1:
        raise ImageError(f"--n-per-task must be at least 1 (got {n_per_task})")


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
    check_n_per_task(n_per_task)
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
                img = read_folder_image(p, image_set.folder, allow_constant=True)
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
