"""The control | generated | real target grid of a leaderboard entry page.

For a few tasks of each MoA (``per_moa`` answered tasks, of different compounds, else doses, where
the MoA has them; the first in protocol order otherwise), one PNG per MoA: one row per task, three 96x96 crops side by side, the task's control crop (the generator's
input), the entry's generated image and the task's real target crop, shown as 8-bit RGB with the
stains as R, G, B (as the metrics see them). The page draws the column headings and the captions;
the PNG holds pixels only, so it needs no font. Same inputs, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cellbench.errors import CellbenchError

if TYPE_CHECKING:
    import pandas as pd

    from cellbench.data.bbbc021 import BBBC021Dataset

#: the three columns of a row, in order
COLUMNS = ("control", "generated", "real target")


@dataclass(frozen=True)
class GridTask:
    """One row of a MoA's panel."""

    task_id: str
    compound: str
    dose: str


@dataclass(frozen=True)
class MoaPanel:
    """The PNG of one MoA and the tasks of its rows (top to bottom)."""

    moa: str
    file: str
    tasks: tuple[GridTask, ...]

    @property
    def alt(self) -> str:
        """The image's alt text: what each row and column is."""
        rows = "; ".join(f"{t.compound} at dose {t.dose}" for t in self.tasks)
        return (
            f"{self.moa}: {len(self.tasks)} task(s), one per row ({rows}); columns: the control "
            "crop given to the generator, the generated image, the real target crop"
        )


def _slug(text: str) -> str:
    """A file-name-safe form of a MoA name (letters, digits, ``-``)."""
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    return "-".join(p for p in out.split("-") if p) or "moa"


def _dose(value: object) -> str:
    try:
        return f"{float(str(value)):g}"
    except ValueError:
        return str(value)


def _pick(rows: list[tuple[int, dict, Path]], n: int) -> list[tuple[dict, Path]]:
    """``n`` of a MoA's answered tasks: a task of another compound first, then of another dose,
    then the next in protocol order; returned in protocol order."""
    chosen: list[tuple[int, dict, Path]] = []
    for distinct in (("compound",), ("compound", "dose"), None):
        for item in rows:
            if len(chosen) == n:
                break
            if item in chosen:
                continue
            if distinct is not None:
                seen = {tuple(str(c[1][k]) for k in distinct) for c in chosen}
                if tuple(str(item[1][k]) for k in distinct) in seen:
                    continue
            chosen.append(item)
    return [(row, path) for _, row, path in sorted(chosen, key=lambda c: c[0])]


def entry_grid(
    images: str | Path,
    protocol: pd.DataFrame,
    dataset: BBBC021Dataset,
    out_dir: str | Path,
    *,
    per_moa: int = 2,
) -> list[MoaPanel]:
    """Write one ``grid-<moa>.png`` per MoA into ``out_dir``; return the panels, MoAs sorted.

    Args:
        images: the entry's generated images (any layout ``cellbench eval`` reads).
        protocol: the task table the images answer (:func:`cellbench.protocol.read_protocol`).
        dataset: the dataset the protocol was built on (control and target crops are read there).
        out_dir: folder for the PNGs (created).
        per_moa: tasks shown per MoA (different compounds, else doses, first; protocol order).

    Raises :class:`CellbenchError` when no image matches a task, or an image is not a 96x96x3
    crop; an empty list is never returned.
    """
    from cellbench.images import discover_images, read_folder_image
    from cellbench.submission.grid import tile_crops, write_image

    if per_moa < 1:
        raise CellbenchError("per_moa must be at least 1")
    found = discover_images(images, protocol)
    answered: dict[str, list[tuple[int, dict, Path]]] = {}
    for i, row in enumerate(protocol.to_dict("records")):
        paths = found.files.get(row["task_id"])
        if paths:
            answered.setdefault(str(row["moa"]), []).append((i, row, sorted(paths)[0]))
    picked = {moa: _pick(rows, per_moa) for moa, rows in answered.items()}
    if not picked:
        raise CellbenchError(
            "no image matched a task of the protocol",
            path=images,
            fix="run `cellbench images check` on the entry's images",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels, used = [], set()
    for moa in sorted(picked):
        rows = picked[moa]
        cells = {}
        for i, (row, path) in enumerate(rows):
            crops = (
                dataset.load_crop(str(row["control_key"])),
                read_folder_image(path, found.folder, allow_constant=True),
                dataset.load_crop(str(row["target_key"])),
            )
            for j, crop in enumerate(crops):
                cells[i, j] = (crop, path)
        name = f"grid-{_slug(moa)}"
        while name in used:  # two MoA names with the same slug
            name += "-"
        used.add(name)
        file = f"{name}.png"
        write_image(tile_crops(cells, len(rows), len(COLUMNS)), out_dir / file)
        tasks = tuple(
            GridTask(str(r["task_id"]), str(r["compound"]), _dose(r["dose"])) for r, _ in rows
        )
        panels.append(MoaPanel(moa, file, tasks))
    return panels
