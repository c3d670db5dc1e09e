"""Reading a BBBC021 dataset in the IMPA layout (real or simulated).

The loader is strict about its input and explains every problem in one line: a missing index
column, an unknown STATE value, a SAMPLE_KEY that would leave the dataset folder, a corrupt crop.

Splits (cellbench's names; controls of the same SPLIT value are part of every split):

============  ==================================================================================
``train``     rows with SPLIT == train (all compounds)
``test``      rows with SPLIT == test (all compounds)
``train-iid`` ``train`` without the eight CellFlux unseen compounds (what CellFlux trains on)
``test-iid``  ``test`` without the eight CellFlux unseen compounds
``test-ood``  ``test`` rows of the eight CellFlux unseen compounds (plus the test controls)
============  ==================================================================================
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellbench.data import layout
from cellbench.data.catalog import SPLIT_NAMES, DatasetCard, get_card
from cellbench.errors import DataError
from cellbench.io import is_within, read_json, sha256_file
from cellbench.registry import suggest

_CONTROL_STATES = {"0", "control", "ctrl", "false"}
_TREATED_STATES = {"1", "trt", "treated", "true"}

_SIM_CONFIG_FIX = "make the dataset again with `cellbench data sim`"


@dataclass(frozen=True)
class CompoundInfo:
    """A compound of the dataset: its MoA and the doses present in the index."""

    name: str
    moa: str
    doses: tuple[float, ...]


class BBBC021Dataset:
    """A dataset root in the IMPA layout.

    Args:
        root: the folder holding ``metadata/bbbc021_df_all.csv``.
        card: the dataset card (channel order, name, version).
    """

    def __init__(self, root: str | Path, card: DatasetCard):
        self.root = Path(root)
        self.card = card
        self.index_path = self.root / layout.INDEX_RELPATH
        if not self.index_path.is_file():
            raise DataError(
                f"no index CSV at {layout.INDEX_RELPATH} in the {card.name} dataset folder",
                path=self.root,
                fix=_missing_fix(card),
            )
        self.index = _read_index(self.index_path)

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.card.name

    @functools.cached_property
    def index_sha256(self) -> str:
        """sha256 of the index CSV bytes: identifies the dataset version in results."""
        return sha256_file(self.index_path)

    @functools.cached_property
    def sim_config(self) -> dict | None:
        """The simulator's settings when this folder was made by ``cellbench data sim``."""
        path = self.root / "sim_config.json"
        if not path.is_file():
            return None
        doc = read_json(path, "sim_config.json", _SIM_CONFIG_FIX, error=DataError)
        if not isinstance(doc, dict):
            raise DataError("sim_config.json is not a JSON object", path=path, fix=_SIM_CONFIG_FIX)
        return doc

    # ------------------------------------------------------------------ compounds
    @functools.cached_property
    def compounds(self) -> dict[str, CompoundInfo]:
        """Treated compounds in the index, with MoA and doses (DMSO excluded)."""
        treated = self.index[~self.index["is_control"]]
        out: dict[str, CompoundInfo] = {}
        for name, group in treated.groupby("CPD_NAME", sort=True):
            moas = sorted(group["ANNOT"].unique())
            if len(moas) != 1:
                raise DataError(
                    f"compound {name!r} has several MoAs {moas} in the index",
                    path=self.index_path,
                    fix="each compound must have exactly one ANNOT value",
                )
            out[str(name)] = CompoundInfo(
                str(name), moas[0], tuple(sorted(float(d) for d in group["DOSE"].unique()))
            )
        return out

    def compound(self, name: str) -> CompoundInfo:
        """Information on compound ``name``; an unknown name raises with suggestions."""
        try:
            return self.compounds[name]
        except KeyError:
            err = suggest(name, list(self.compounds), "compound")
            err.path = str(self.index_path)
            err.fix = "use a CPD_NAME from the dataset index (`cellbench data inspect` lists them)"
            raise err from None

    @functools.cached_property
    def moas(self) -> tuple[str, ...]:
        """MoA names of treated rows, sorted."""
        return tuple(sorted({c.moa for c in self.compounds.values()}))

    # ------------------------------------------------------------------ splits
    def split(self, name: str) -> pd.DataFrame:
        """Rows of split ``name`` (see the module docstring), controls included."""
        if name not in SPLIT_NAMES:
            raise suggest(name, SPLIT_NAMES, "split")
        base = "train" if name.startswith("train") else "test"
        rows = self.index[self.index["SPLIT"] == base]
        ood = rows["CPD_NAME"].isin(layout.CELLFLUX_OOD_COMPOUNDS)
        if name.endswith("-iid"):
            rows = rows[~ood]
        elif name.endswith("-ood"):
            rows = rows[ood | rows["is_control"]]
        return rows

    # ------------------------------------------------------------------ crops
    def crop_path(self, sample_key: str) -> Path:
        """Path of a crop; keys that would leave the dataset folder are refused."""
        path = self.root / layout.sample_key_to_relpath(sample_key)
        if not is_within(path, self.root):
            raise DataError(
                f"SAMPLE_KEY {sample_key!r} resolves outside the dataset folder",
                path=self.index_path,
                fix="remove the key or the symbolic link it passes through",
            )
        return path

    def load_crop(self, sample_key: str) -> np.ndarray:
        """One crop as uint8 HxWx3, checked."""
        return load_crop_file(self.crop_path(sample_key))

    def load_crops(self, sample_keys: list[str] | np.ndarray) -> np.ndarray:
        """Crops stacked as an (N, 96, 96, 3) uint8 array."""
        out = np.empty((len(sample_keys), *layout.CROP_SHAPE), dtype=np.uint8)
        for i, key in enumerate(sample_keys):
            out[i] = self.load_crop(str(key))
        return out

    # ------------------------------------------------------------------ fingerprints
    @property
    def has_fingerprints(self) -> bool:
        """Whether the dataset folder holds the fingerprint CSV (``emb_fp.csv``; optional)."""
        return (self.root / layout.FINGERPRINT_RELPATH).is_file()

    @functools.cached_property
    def fingerprints(self) -> pd.DataFrame:
        """Compound x 1024 fingerprint table (float32), indexed by compound name.

        Only the generators that condition on a compound (CellFlux, IMPA, CellFluxRL) read it;
        scoring never does, so a dataset installed without ``emb_fp.csv`` scores normally.
        """
        path = self.root / layout.FINGERPRINT_RELPATH
        if not path.is_file():
            raise DataError(
                "no compound fingerprints (emb_fp.csv); a generator conditioning on compounds "
                "needs them, scoring does not",
                path=path,
                fix=_missing_fingerprints_fix(self.card, self.root),
            )
        return read_fingerprint_csv(path)

    def fingerprint(self, compound: str) -> np.ndarray:
        """The fingerprint vector of ``compound`` (float32)."""
        table = self.fingerprints
        if compound not in table.index:
            err = suggest(compound, list(table.index), "compound (in the fingerprint table)")
            err.path = str(self.root / layout.FINGERPRINT_RELPATH)
            raise err
        return table.loc[compound].to_numpy(dtype=np.float32)

    # ------------------------------------------------------------------ pairing
    def pair_controls(self, treated: pd.DataFrame, controls: pd.DataFrame, seed: int) -> list[str]:
        """For each treated row, a control SAMPLE_KEY from the same BATCH, chosen by ``seed``.

        The choice for one row depends only on (seed, its SAMPLE_KEY, the sorted control keys of
        its batch), so it does not change when other rows are added or reordered.
        """
        by_batch = {
            str(b): sorted(g["SAMPLE_KEY"].tolist())
            for b, g in controls.groupby("BATCH", sort=False)
        }
        fallback = {
            str(b): sorted(g["SAMPLE_KEY"].tolist())
            for b, g in self.index[self.index["is_control"]].groupby("BATCH", sort=False)
        }
        chosen = []
        for key, batch in zip(treated["SAMPLE_KEY"], treated["BATCH"], strict=True):
            candidates = by_batch.get(str(batch)) or fallback.get(str(batch))
            if not candidates:
                raise DataError(
                    f"batch {batch!r} has no control (DMSO) crops to pair treated crop {key!r} with",
                    path=self.index_path,
                    fix="every BATCH needs DMSO rows with STATE = control",
                )
            chosen.append(candidates[seeded_choice(seed, str(key), len(candidates))])
        return chosen


def seeded_choice(seed: int, key: str, n: int) -> int:
    """A reproducible index in ``range(n)`` from ``seed`` and a text key (sha256-based)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def load_crop_file(path: str | Path) -> np.ndarray:
    """Load one ``.npy`` crop and check it is a finite uint8 96x96x3 array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            "crop file is missing", path=path, fix="re-download or regenerate the dataset"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"corrupt or truncated .npy crop ({type(exc).__name__})",
            path=path,
            fix="re-download or regenerate the dataset",
        ) from None
    if arr.shape != layout.CROP_SHAPE or arr.dtype != np.uint8:
        raise DataError(
            f"crop has shape {arr.shape} and dtype {arr.dtype}, expected (96, 96, 3) uint8",
            path=path,
            fix="crops must be uint8 HWC 96x96x3 as in the IMPA preprocessing",
        )
    return arr


def _read_index(path: Path) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"unreadable index CSV ({exc})", path=path) from None
    raw = raw.drop(columns=[c for c in raw.columns if c == "" or c.startswith("Unnamed:")])
    missing = [c for c in layout.INDEX_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(
            f"index CSV lacks column(s) {', '.join(missing)}",
            path=path,
            fix=f"the IMPA index needs {', '.join(layout.INDEX_COLUMNS)}",
        )
    if raw.empty:
        raise DataError("index CSV has no rows", path=path)
    state = raw["STATE"].str.strip().str.lower()
    bad_state = ~state.isin(_CONTROL_STATES | _TREATED_STATES)
    if bad_state.any():
        raise DataError(
            f"unknown STATE value {raw['STATE'][bad_state].iloc[0]!r}",
            path=path,
            fix="STATE must be 0/1 or control/trt",
        )
    split = raw["SPLIT"].str.strip().str.lower()
    bad_split = ~split.isin({"train", "test"})
    if bad_split.any():
        raise DataError(
            f"unknown SPLIT value {raw['SPLIT'][bad_split].iloc[0]!r}",
            path=path,
            fix="SPLIT must be train or test",
        )
    dose = pd.to_numeric(raw["DOSE"].replace("", "0"), errors="coerce")
    if dose.isna().any() or not np.isfinite(dose.to_numpy()).all():
        raise DataError(
            f"non-numeric DOSE {raw['DOSE'][dose.isna()].iloc[0]!r}",
            path=path,
            fix="DOSE must be a number (micromolar)",
        )
    dup = raw["SAMPLE_KEY"].duplicated()
    if dup.any():
        raise DataError(
            f"SAMPLE_KEY {raw['SAMPLE_KEY'][dup].iloc[0]!r} appears more than once",
            path=path,
            fix="each crop must have one index row",
        )
    for key in raw["SAMPLE_KEY"]:
        try:
            layout.sample_key_to_relpath(key)
        except DataError as exc:
            exc.path = str(path)
            raise
    out = pd.DataFrame(
        {
            "SAMPLE_KEY": raw["SAMPLE_KEY"],
            "CPD_NAME": raw["CPD_NAME"],
            "DOSE": dose.astype(float),
            "ANNOT": raw["ANNOT"],
            "is_control": state.isin(_CONTROL_STATES),
            "BATCH": raw["BATCH"],
            "SPLIT": split,
        }
    )
    return out.reset_index(drop=True)


def read_fingerprint_csv(path: str | Path) -> pd.DataFrame:
    """Read a fingerprint CSV (first column the compound name) as a float32 table, checked.

    Raises:
        DataError: the file is unreadable or holds non-numeric or non-finite values.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, index_col=0)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"unreadable fingerprint CSV ({exc})", path=path) from None
    if table.empty:
        raise DataError("fingerprint CSV has no rows", path=path)
    table.index = table.index.astype(str)
    values = table.to_numpy()
    if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
        raise DataError(
            "fingerprint CSV has non-numeric or non-finite values",
            path=path,
            fix="regenerate or re-download the dataset",
        )
    return table.astype(np.float32)


def _missing_fingerprints_fix(card: DatasetCard, root: Path) -> str:
    if card.simulated:
        return "regenerate the dataset with `cellbench data sim --out DIR`"
    return (
        f"get emb_fp.csv from the IMPA repository and run `cellbench data download {card.name} "
        f"--data-dir {root} --fingerprints emb_fp.csv`, or copy it to "
        f"{root / layout.FINGERPRINT_RELPATH}"
    )


def _missing_fix(card: DatasetCard) -> str:
    if card.simulated:
        return "make it with `cellbench data sim --out DIR` and pass --data-dir DIR"
    return f"fetch it with `cellbench data download {card.name}` or pass --data-dir"


def open_dataset(
    name: str, data_dir: str | Path | None = None, *, create_sim: bool = False
) -> BBBC021Dataset:
    """Open dataset ``name`` under the data folder.

    With ``create_sim`` and ``name == "bbbc021-sim"``, a missing simulated dataset is generated
    first (scale ``small``, seed 0), announced on stderr before (where) and after (path and size).
    """
    card = get_card(name)
    root = card.root(data_dir)
    if card.simulated and create_sim and not (root / layout.INDEX_RELPATH).is_file():
        from cellbench.data.sim import write_sim_dataset

        if root.exists() and any(root.iterdir()):
            raise DataError(
                "folder exists but holds no dataset index",
                path=root,
                fix="delete it or pass --data-dir pointing at a dataset",
            )
        from cellbench.io import tree_size
        from cellbench.ui import format_size, info

        info(
            f"{name} is not in {root}: simulating it there now (scale small, seed 0, about 20 s; "
            "`cellbench data sim --out DIR` makes it explicitly)"
        )
        write_sim_dataset(root, seed=0, scale="small")
        files, size = tree_size(root)
        info(f"wrote {name}: {root} ({files} files, {format_size(size)})")
    return BBBC021Dataset(root, card)
