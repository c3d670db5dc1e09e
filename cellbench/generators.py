"""One interface for every generator, and the registry the CLI finds them through.

The toolkit never imports a generator's package: a distribution registers each generator as an
entry point of the group ``cellbench.generators`` (``[project.entry-points."cellbench.generators"]``
in its ``pyproject.toml``, ``name = "package.module:Class"``), which :data:`GENERATORS` reads on
first use; :func:`get_generator_class` imports the class and checks it is a :class:`Generator`.
Training (``cellbench train``) and post-training (``cellbench rl``) are hooks on the class, so
the CLI dispatches through the registry too (CONTRIBUTING.md, "Adding a generator").

A generator receives a batch of control crops (uint8, N x 96 x 96 x 3, the dataset's channel
order) with the compound and dose of each task and a seed, and returns generated crops of the same
form. Same inputs and seed -> same images.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError, ImageError
from cellbench.io import atomic_path
from cellbench.registry import Registry

#: the entry-point group generators are registered in
ENTRY_POINT_GROUP = "cellbench.generators"
_INSTALL_FIX = "install cellbench with its baselines (pip install -e .), or reinstall it"


class Generator(abc.ABC):
    """Base class of every generator.

    A generator with weights sets :attr:`checkpoint_path` and :attr:`checkpoint_sha256` in
    :meth:`load` (the toolkit records the hash in ``generation.json``, docs/generators.md). A
    trainable one overrides :meth:`training_config` and :meth:`train`; one that post-trains
    another names itself in that one's :attr:`post_trainer` and overrides
    :meth:`post_training_config` and :meth:`post_train`.
    """

    name: str = "generator"
    version: str = "0"
    #: free text: what kind of generator it is (e.g. "anchor", "model")
    role: str = "model"
    #: one line shown by ``cellbench ls models``
    summary: ClassVar[str] = ""
    #: registry name of the generator that post-trains this one (``cellbench rl NAME``), if any
    post_trainer: ClassVar[str | None] = None
    #: named training configurations (empty: not trainable)
    presets: ClassVar[Mapping[str, dict]] = {}
    #: whether :meth:`load` reads weights from a checkpoint (False: ``--checkpoint`` is refused)
    takes_checkpoint: ClassVar[bool] = True

    #: the checkpoint folder :meth:`load` read the weights from (None: no weights)
    checkpoint_path: Path | None = None
    #: sha256 of the weights file :meth:`load` read (None: no weights)
    checkpoint_sha256: str | None = None

    @classmethod
    @abc.abstractmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | None = None,
    ) -> Generator:
        """Build the generator for ``dataset`` (from ``checkpoint`` where it has weights), its
        network on torch ``device`` (None: ``$CELLBENCH_DEVICE``, else the CPU; weight-free
        generators ignore it)."""

    @abc.abstractmethod
    def generate(
        self, controls: np.ndarray, compounds: list[str], doses: list[float], seed: int
    ) -> np.ndarray:
        """(N, 96, 96, 3) uint8 controls -> (N, 96, 96, 3) uint8 predictions."""

    def n_parameters(self) -> int:
        """Number of trainable parameters (0 for weight-free anchors)."""
        return 0

    def sampler_settings(self) -> dict[str, Any]:
        """The JSON-able sampling settings that decide the images besides the weights and the
        seed (solver, steps, guidance ...; empty for a generator without any)."""
        return {}

    # ------------------------------------------------------------------ training hooks
    @classmethod
    def training_config(
        cls, spec: str | Path | dict | None, *, overrides: dict | None = None
    ) -> dict:
        """The complete training config from a preset name or a JSON/YAML file, plus
        ``overrides`` (``steps``, ``seed``: None keeps the config's)."""
        raise CellbenchError(
            f"model {cls.name!r} is not trainable",
            fix="choose a model with a training recipe (`cellbench ls models`)",
        )

    @classmethod
    def train(
        cls,
        dataset: BBBC021Dataset,
        config: dict,
        out_dir: str | Path,
        *,
        device: str = "cpu",
        init_from: str | Path | None = None,
    ) -> dict[str, Any]:
        """Train (or resume) a run in ``out_dir``; returns the JSON-able summary (``checkpoint``,
        ``step``, ``train_images_per_s`` ...)."""
        raise CellbenchError(f"model {cls.name!r} is not trainable")

    @classmethod
    def post_training_config(
        cls,
        spec: str | Path | dict | None,
        base_checkpoint: str | Path,
        *,
        overrides: dict | None = None,
    ) -> dict:
        """The complete post-training config for the base model's ``base_checkpoint``."""
        raise CellbenchError(f"model {cls.name!r} post-trains nothing")

    @classmethod
    def post_train(
        cls,
        dataset: BBBC021Dataset,
        config: dict,
        out_dir: str | Path,
        *,
        device: str = "cpu",
        reward_workers: int = 0,
    ) -> dict[str, Any]:
        """Post-train (or resume) in ``out_dir``; returns the JSON-able summary."""
        raise CellbenchError(f"model {cls.name!r} post-trains nothing")


GENERATORS: Registry[type[Generator]] = Registry("model", entry_point_group=ENTRY_POINT_GROUP)


def get_generator_class(name: str) -> type[Generator]:
    """The generator class registered as ``name``.

    No registered generator at all (the distribution is missing or was installed before its entry
    points existed), a target whose package is not installed and a target that is not a
    :class:`Generator` subclass are each a one-line :class:`CellbenchError`.
    """
    if not GENERATORS.names():
        raise CellbenchError(
            f"no generator is installed (no distribution has {ENTRY_POINT_GROUP!r} entry points)",
            fix=_INSTALL_FIX,
        )
    entry = GENERATORS.entry(name)
    try:
        cls = GENERATORS.get(name)
    except (ModuleNotFoundError, AttributeError) as exc:
        what = exc.name if isinstance(exc, ModuleNotFoundError) else str(exc)
        raise CellbenchError(
            f"generator {name!r} ({entry.target}) cannot be imported ({what})", fix=_INSTALL_FIX
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise CellbenchError(
            f"generator {name!r} ({entry.target}, {ENTRY_POINT_GROUP} entry point of "
            f"{entry.meta.get('distribution')}) is not a cellbench.generators.Generator subclass",
            fix="report this to that distribution's authors",
        )
    return cls


def generator_summary(name: str) -> str:
    """The ``summary`` of generator ``name`` (a one-line error text when it cannot be loaded)."""
    try:
        return get_generator_class(name).summary
    except CellbenchError as exc:
        return f"(unusable: {exc.message})"


def write_generated(
    gen: Generator,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    out: str | Path,
    *,
    n_per_task: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    skip_existing: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    on_bad: Callable[[Path, str], None] | None = None,
) -> int:
    """Generate images for every task and write ``<task_id>.npy`` (``<task_id>_<k>.npy`` for N > 1).

    Each file is written atomically; the seed of batch b and candidate k is derived from
    (``seed``, k, b), so the output does not depend on anything but the inputs. With
    ``skip_existing`` a batch whose files all exist and read back as generated crops
    (:func:`existing_image_problem`) is not generated again; an existing file that does not (a
    half-written or damaged one) is generated again and passed to ``on_bad`` with its problem. An
    interrupted run resumed with the same inputs ends with the files an uninterrupted one writes.
    Returns the number of images present when it finishes (written now or kept).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, written = len(protocol), 0
    for k in range(n_per_task):
        for b, start in enumerate(range(0, n, batch_size)):
            rows = protocol.iloc[start : start + batch_size]
            names = [f"{t}.npy" if n_per_task == 1 else f"{t}_{k}.npy" for t in rows["task_id"]]
            problems = (
                [existing_image_problem(out / name) for name in names] if skip_existing else []
            )
            for name, problem in zip(names, problems, strict=False):
                if problem is not None and (out / name).exists() and on_bad is not None:
                    on_bad(out / name, problem)
            if skip_existing and not any(problems):
                written += len(rows)
                if on_progress is not None:
                    on_progress(written, n * n_per_task)
                continue
            controls = ds.load_crops(rows["control_key"].tolist())
            imgs = gen.generate(
                controls,
                rows["compound"].tolist(),
                [float(d) for d in rows["dose"]],
                seed=int(np.random.SeedSequence([seed, k, b]).generate_state(1)[0]),
            )
            if imgs.shape != controls.shape or imgs.dtype != np.uint8:
                raise CellbenchError(
                    f"generator {gen.name} returned {imgs.shape} {imgs.dtype}, expected "
                    f"{controls.shape} uint8",
                    fix="report this as a bug of that generator",
                )
            for name, img in zip(names, imgs, strict=True):
                with atomic_path(out / name, suffix=".npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, img)
                written += 1
            if on_progress is not None:
                on_progress(written, n * n_per_task)
    return written


def existing_image_problem(path: Path) -> str | None:
    """Why the file at ``path`` is not a usable generated crop (missing, half-written, of another
    shape or type), or None; read by :func:`cellbench.images.decode_image`, header first."""
    from cellbench.data.layout import CROP_SHAPE
    from cellbench.images import decode_image

    if not path.is_file():
        return "missing"
    try:
        arr = decode_image(path, expect_crop=True)
    except ImageError as exc:
        return exc.message
    if arr.dtype != np.uint8 or arr.shape != CROP_SHAPE:
        return f"holds {arr.shape} {arr.dtype}, expected {CROP_SHAPE} uint8"
    return None
