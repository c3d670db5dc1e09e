"""The metric registry: every metric of the suite, and everything any part of cellbench needs to
know about it, in one entry (``cellbench ls metrics``).

An entry (:class:`MetricSpec`) carries the metric's name, version, family, direction
(higher is better or not), display label and digits, what it needs (masks, classifier
probabilities, Inception features) and how it is computed:

* ``kind="suite"``: a per-image value computed together with the other rewards by
  :func:`cellbench.metrics.rewards.compute_rewards` (the seven rewards, ``overall``,
  ``moa_accuracy``);
* ``kind="per_image"``: a per-image value computed by the entry's own function
  ``fn(inputs: PerImageInputs) -> np.ndarray`` (one value per image, NaN where undefined);
* ``kind="set"``: a set-level distance of the generated against the real images (FID/KID,
  :func:`cellbench.metrics.fid.fid_kid_summary`), no per-image values and no interval;
* ``kind="set_fn"``: a set-level value computed by the entry's own function
  ``fn(inputs: SetInputs) -> SetValue`` from the features of the whole generated set and of the
  real images (:class:`SetInputs`); one function may return several metrics at once (a mapping
  metric name -> :class:`SetValue`), each registered as its own entry with that function, and it
  is called once per evaluation. An entry names the inputs it needs (``inputs``); when one is
  absent (``--no-fid``: no Inception features) the metric is not computed and is written as
  absent, with the reason, never as a number.

Per-image values ("suite" and "per_image") are averaged with a bootstrap interval overall, per
MoA and per compound, and written to the per-image table; set-level values are written with the
numbers of generated and real images (and a ``set_fn`` metric's detail in ``set_detail``).

Every entry belongs to a **group** (:data:`GROUPS`): ``"rewards"``, the seven CellFluxRL rewards
and ``overall``, which a generator may be trained on, or ``"held-out"``, the metrics no generator
of the suite optimises (MoA accuracy, FID/KID and the set-level metrics of
:mod:`cellbench.metrics.heldout`); every table shows the two groups apart
(:data:`GROUP_NOTE` says why). The aggregation (:mod:`cellbench.results.builder`), the
``cellbench eval`` table, the submission validator, the leaderboard columns, the metric validation
report and ``cellbench regress`` all read this registry, so adding a metric is one entry plus one
function (``CONTRIBUTING.md``, "Adding a metric").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from cellbench.metrics.rewards import SUITE_VERSION
from cellbench.registry import Registry

MetricKind = Literal["suite", "per_image", "set", "set_fn"]
MetricGroup = Literal["rewards", "held-out"]
#: the kinds of :class:`MetricSpec`, in the order of the module docstring
KINDS: tuple[str, ...] = ("suite", "per_image", "set", "set_fn")
#: the metric groups, in the order every table shows them
GROUPS: tuple[str, ...] = ("rewards", "held-out")
#: each group's heading in tables and on the leaderboard page
GROUP_LABELS: dict[str, str] = {"rewards": "rewards", "held-out": "held-out metrics"}
#: why the held-out group exists (one sentence; tables and docs show it)
GROUP_NOTE = (
    "A generator may be trained on the rewards (CellFluxRL optimises them), so a high reward can "
    "be a gamed one; the held-out metrics are computed from features no generator of the suite "
    "is trained on, and are the independent check."
)

#: target of the entries computed together by the suite's reward function
SUITE_FUNCTION = "cellbench.metrics.rewards:compute_rewards"
#: target of the set-level distances
DISTANCE_FUNCTION = "cellbench.metrics.fid:fid_kid_summary"
#: the set-level distances :func:`cellbench.metrics.fid.fid_kid_summary` computes (its fields)
DISTANCE_NAMES: tuple[str, ...] = ("fid_o", "fid_c", "kid_o", "kid_c")
#: the metric the leaderboard ranks by (its first column)
RANK_METRIC = "overall"

METRICS: Registry = Registry("metric")


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the suite.

    Attributes:
        name: key in the result document and column of the per-image table.
        label: short display name (leaderboard column header).
        family: ``"reward"``, ``"accuracy"``, ``"distance"``, ``"fidelity"``, ``"diversity"``,
            ``"retrieval"``, ``"profile"`` or ``"memorisation"``.
        higher_is_better: the metric's direction.
        digits: decimals shown in the ``cellbench eval`` table and on the leaderboard.
        needs: what the metric is computed from (shown by ``cellbench ls metrics``).
        summary: one line saying what the metric is.
        kind: ``"suite"``, ``"per_image"`` or ``"set"`` (see the module docstring).
        function: ``"module:attr"`` of the function computing it.
        version: the metric suite version the metric belongs to.
        tolerance: the ``cellbench regress`` tolerance class (a key of ``regress.TOLERANCES``).
        group: ``"rewards"`` or ``"held-out"`` (:data:`GROUPS`).
        inputs: for ``kind="set_fn"``, the :class:`SetInputs` fields the function needs (the
            metric is absent when one of them is None).
        worst: the worst value the metric can take, for a bounded metric (0 for a fraction that
            should be high, 1 for one that should be low), else None. ``cellbench
            validate-metrics`` counts a severity step that stays at this bound as worse (a recall
            that has reached 0 cannot fall further).
    """

    name: str
    label: str
    family: str
    higher_is_better: bool
    digits: int
    needs: str
    summary: str
    kind: MetricKind = "per_image"
    function: str = SUITE_FUNCTION
    version: str = SUITE_VERSION
    tolerance: str = "rewards"
    group: MetricGroup = "held-out"
    inputs: tuple[str, ...] = ()
    worst: float | None = None

    @property
    def per_image(self) -> bool:
        """True when the metric has one value per image (bootstrapped; a per-image column)."""
        return self.kind not in ("set", "set_fn")

    @property
    def arrow(self) -> str:
        """``↑`` when higher is better, else ``↓``."""
        return "↑" if self.higher_is_better else "↓"


@dataclass(frozen=True)
class PerImageInputs:
    """What a ``kind="per_image"`` metric function is given, for n images in protocol order.

    Attributes:
        features: segmentation features by name (``cellbench.features.segment``), shape (n,) each.
        probs: MoA classifier probabilities (n, n_moas), or None when Inception was skipped.
        moas: the true MoA of each image's task, shape (n,).
        suite: the per-image values of the ``kind="suite"`` metrics, by name.
    """

    features: dict[str, np.ndarray]
    probs: np.ndarray | None
    moas: np.ndarray
    suite: dict[str, np.ndarray]


#: what each :class:`SetInputs` feature field is, in words (a missing input's "absent" reason)
SET_INPUT_NAMES: dict[str, str] = {
    "gen_inception": "Inception features",
    "real_inception": "Inception features",
    "gen_profile": "morphology profile",
    "real_profile": "morphology profile",
    "control_inception": "Inception features of the DMSO controls",
    "control_profile": "morphology profile of the DMSO controls",
    "train_inception": "Inception features of the training split",
    "train_digests": "pixel digests of the training split",
    "gen_digests": "pixel digests of the generated images",
    "control_digests": "pixel digests of the DMSO controls",
    "gen_control": "control row of each generated image",
    "real_control": "control row of each real image",
}


@dataclass(frozen=True)
class SetInputs:
    """What a ``kind="set_fn"`` metric function is given.

    The generated side holds the n scored images in protocol order; the real side is the
    protocol's real target crops that FID/KID compare against (the protocol's ``fid_real`` rule);
    the controls are the real DMSO control crops of the evaluated tasks (one row per distinct
    crop). Feature arrays are None when they were not computed (``--no-fid`` skips Inception).

    Attributes:
        compounds: compound of each generated image's task, shape (n,).
        moas: MoA of each generated image's task, shape (n,).
        real_compounds: compound of each real image, shape (m,).
        real_moas: MoA of each real image, shape (m,).
        seed: the evaluation's seed (any randomness of a metric derives from it).
        gen_inception: (n, 2048) Inception pool features of the generated images, or None.
        gen_profile: (n, p) morphology profiles of the generated images, or None.
        real_inception: (m, 2048) Inception pool features of the real images, or None.
        real_profile: (m, p) morphology profiles of the real images, or None.
        control_inception: (c, 2048) Inception features of the DMSO controls, or None.
        control_profile: (c, p) morphology profiles of the DMSO controls, or None.
        control_digests: (c,) pixel digests of the DMSO controls, or None.
        gen_digests: (n,) pixel digests of the generated images, or None.
        gen_control: (n,) row of ``control_*`` holding each generated image's own control (its
            task's input), -1 where it is not among them; or None.
        real_control: (m,) the same for each real image, or None.
        train_inception: (t, 2048) Inception features of (a seeded sample of) the training split
            (:mod:`cellbench.scoring.training_set`), or None.
        train_digests: pixel digests of every training crop, or None.
    """

    compounds: np.ndarray
    moas: np.ndarray
    real_compounds: np.ndarray
    real_moas: np.ndarray
    seed: int
    gen_inception: np.ndarray | None = None
    gen_profile: np.ndarray | None = None
    real_inception: np.ndarray | None = None
    real_profile: np.ndarray | None = None
    control_inception: np.ndarray | None = None
    control_profile: np.ndarray | None = None
    control_digests: np.ndarray | None = None
    gen_digests: np.ndarray | None = None
    gen_control: np.ndarray | None = None
    real_control: np.ndarray | None = None
    train_inception: np.ndarray | None = None
    train_digests: frozenset[str] | None = None

    @property
    def n_gen(self) -> int:
        """Number of generated images."""
        return len(self.compounds)

    @property
    def n_real(self) -> int:
        """Number of real images."""
        return len(self.real_compounds)

    def absent(self, needed: tuple[str, ...]) -> str | None:
        """Why a metric needing the fields ``needed`` cannot be computed (None: it can)."""
        missing = [f for f in needed if getattr(self, f) is None]
        if not missing:
            return None
        what = sorted({SET_INPUT_NAMES.get(f, f) for f in missing})
        return "not computed: no " + " and no ".join(what)

    def split_half(self) -> SetInputs:
        """The real reference: each compound's real images, one half as the "generated" side
        against the other half (a shuffle seeded by :attr:`seed`; compounds with fewer than two
        real images are left out). The controls are kept."""
        rng = np.random.default_rng(self.seed)
        first, second = [], []
        for c in np.unique(self.real_compounds):
            idx = np.flatnonzero(self.real_compounds == c)
            if len(idx) < 2:
                continue
            idx = idx[rng.permutation(len(idx))]
            first.append(idx[: len(idx) // 2])
            second.append(idx[len(idx) // 2 :])
        a = np.sort(np.concatenate(first)) if first else np.zeros(0, int)
        b = np.sort(np.concatenate(second)) if second else np.zeros(0, int)

        def take(x: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
            return None if x is None else x[rows]

        return replace(
            self,
            compounds=self.real_compounds[a],
            moas=self.real_moas[a],
            gen_inception=take(self.real_inception, a),
            gen_profile=take(self.real_profile, a),
            gen_digests=None,
            gen_control=take(self.real_control, a),
            real_control=take(self.real_control, b),
            real_compounds=self.real_compounds[b],
            real_moas=self.real_moas[b],
            real_inception=take(self.real_inception, b),
            real_profile=take(self.real_profile, b),
        )


@dataclass(frozen=True)
class SetValue:
    """What a ``kind="set_fn"`` function returns for one metric.

    Attributes:
        value: the headline number (NaN where undefined; written as null).
        detail: anything a reader needs to interpret it (per-MoA values, a null distribution's
            summary, k, n, ...): JSON-able values (numpy scalars and arrays are converted), written
            to the result document's ``set_detail`` under the metric's name.
    """

    value: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetResult:
    """One ``kind="set_fn"`` metric of an evaluation: its value, or why it is absent."""

    value: float | None
    detail: dict[str, Any]
    absent: str | None = None


def register_metric(spec: MetricSpec) -> None:
    """Add ``spec`` to :data:`METRICS` (its name must be new).

    A ``kind="set"`` entry must be one of the distances the builder computes
    (:data:`DISTANCE_NAMES`, through :data:`DISTANCE_FUNCTION`): another set-level metric is a
    ``kind="set_fn"`` entry with its own function. Unknown kinds, groups and inputs are refused
    here, at registration, rather than in the middle of an evaluation.
    """
    if spec.kind not in KINDS:
        raise ValueError(f"metric {spec.name!r}: unknown kind {spec.kind!r}")
    if spec.group not in GROUPS:
        raise ValueError(f"metric {spec.name!r}: unknown group {spec.group!r} (one of {GROUPS})")
    known = {f.name for f in fields(SetInputs)} - {"compounds", "moas", "seed"}
    unknown = [i for i in spec.inputs if i not in known]
    if unknown or (spec.inputs and spec.kind != "set_fn"):
        raise ValueError(
            f"metric {spec.name!r}: inputs {spec.inputs!r} must be SetInputs feature fields "
            f"({', '.join(sorted(known))}) of a kind='set_fn' metric"
        )
    if spec.kind == "set" and (
        spec.function != DISTANCE_FUNCTION or spec.name not in DISTANCE_NAMES
    ):
        raise ValueError(
            f"set-level metric {spec.name!r}: only the {DISTANCE_FUNCTION} distances "
            f"{', '.join(DISTANCE_NAMES)} are computed by cellbench.results.builder; "
            "register a set-level metric with its own function as kind='set_fn'"
        )
    meta = asdict(spec)
    name, summary, function = meta.pop("name"), meta.pop("summary"), meta.pop("function")
    METRICS.register(name, function, summary=summary, **meta)


def unregister_metric(name: str) -> None:
    """Remove a metric registered with :func:`register_metric` (tests and plug-in reloads)."""
    METRICS.unregister(name)


@contextmanager
def registered(spec: MetricSpec) -> Iterator[MetricSpec]:
    """Register ``spec`` for the duration of a ``with`` block."""
    register_metric(spec)
    try:
        yield spec
    finally:
        unregister_metric(spec.name)


def spec(name: str) -> MetricSpec:
    """The :class:`MetricSpec` registered as ``name`` (unknown names raise with suggestions)."""
    e = METRICS.entry(name)
    function = e.target if isinstance(e.target, str) else f"{e.target!r}"
    meta = {**e.meta, "inputs": tuple(e.meta.get("inputs", ()))}
    return MetricSpec(name=e.name, summary=e.summary, function=function, **meta)


def specs() -> list[MetricSpec]:
    """Every registered metric, in registration order (the order of the result document)."""
    return [spec(n) for n in METRICS.names()]


def per_image_metrics() -> list[MetricSpec]:
    """The metrics with one value per image (``kind`` ``"suite"`` or ``"per_image"``)."""
    return [s for s in specs() if s.per_image]


def set_metrics() -> list[MetricSpec]:
    """The set-level metrics (``kind`` ``"set"`` or ``"set_fn"``)."""
    return [s for s in specs() if not s.per_image]


def distance_metrics() -> list[MetricSpec]:
    """The FID/KID distances (``kind="set"``, computed by :data:`DISTANCE_FUNCTION`)."""
    return [s for s in specs() if s.kind == "set"]


def set_fn_metrics() -> list[MetricSpec]:
    """The set-level metrics computed by their own function (``kind="set_fn"``)."""
    return [s for s in specs() if s.kind == "set_fn"]


def grouped(items: list[MetricSpec] | None = None) -> list[tuple[str, list[MetricSpec]]]:
    """``items`` (default: every metric) by group, in :data:`GROUPS` order (empty groups left out);
    registry order within a group."""
    items = specs() if items is None else items
    out = [(g, [s for s in items if s.group == g]) for g in GROUPS]
    return [(g, members) for g, members in out if members]


def per_image_names() -> tuple[str, ...]:
    """Names of :func:`per_image_metrics`, in order."""
    return tuple(s.name for s in per_image_metrics())


def set_names() -> tuple[str, ...]:
    """Names of :func:`set_metrics`, in order."""
    return tuple(s.name for s in set_metrics())


def distance_names() -> tuple[str, ...]:
    """Names of :func:`distance_metrics` (FID/KID), in order."""
    return tuple(s.name for s in distance_metrics())


def set_fn_names() -> tuple[str, ...]:
    """Names of :func:`set_fn_metrics`, in order."""
    return tuple(s.name for s in set_fn_metrics())


def lower_is_better() -> frozenset[str]:
    """Names of the metrics whose smaller values are better."""
    return frozenset(s.name for s in specs() if not s.higher_is_better)


def compute_per_image(
    names: tuple[str, ...] | list[str], inputs: PerImageInputs
) -> dict[str, np.ndarray]:
    """Per-image values of ``names``: the suite's from ``inputs.suite``, the others computed."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        s = spec(name)
        if s.kind == "suite":
            out[name] = inputs.suite[name]
        else:
            values = np.asarray(METRICS.get(name)(inputs), np.float64)
            if values.shape != inputs.moas.shape:
                raise ValueError(
                    f"metric {name!r} returned shape {values.shape}, expected {inputs.moas.shape}"
                )
            out[name] = values
    return out


def compute_set(names: tuple[str, ...] | list[str], inputs: SetInputs) -> dict[str, SetResult]:
    """The ``kind="set_fn"`` metrics ``names`` on ``inputs``: each function called once.

    A metric whose needed inputs are None, or of an empty generated or real side, is absent (with
    the reason); a function registered under several names returns a mapping name ->
    :class:`SetValue` that must hold all of them.
    """
    out: dict[str, SetResult] = {}
    by_function: dict[str, list[MetricSpec]] = {}
    for name in names:
        s = spec(name)
        if s.kind != "set_fn":
            raise ValueError(f"metric {name!r} is kind {s.kind!r}, not 'set_fn'")
        by_function.setdefault(s.function, []).append(s)
    empty = (
        "not computed: no generated images"
        if not inputs.n_gen
        else ("not computed: no real images" if not inputs.n_real else None)
    )
    for function, group in by_function.items():
        reasons = {s.name: empty or inputs.absent(s.inputs) for s in group}
        for s in group:
            if reasons[s.name] is not None:
                out[s.name] = SetResult(None, {}, reasons[s.name])
        todo = [s for s in group if reasons[s.name] is None]
        if not todo:
            continue
        got = METRICS.get(todo[0].name)(inputs)
        shared = sum(1 for s in set_fn_metrics() if s.function == function) > 1
        for s in todo:
            if isinstance(got, SetValue) and not shared:
                value = got
            elif isinstance(got, Mapping) and isinstance(got.get(s.name), SetValue):
                value = got[s.name]
            else:
                raise ValueError(
                    f"metric {s.name!r}: {function} returned {type(got).__name__}, expected a "
                    + ("mapping with a SetValue for each of its metrics" if shared else "SetValue")
                )
            v = float(value.value)
            out[s.name] = (
                SetResult(v, jsonable(value.detail))
                if np.isfinite(v)
                else SetResult(None, jsonable(value.detail), TOO_FEW)
            )
    return out


#: the reason recorded for a metric whose value came out NaN (too few images for it)
TOO_FEW = "not computed: too few images"


def jsonable(obj: Any, digits: int | None = 6) -> Any:
    """``obj`` with numpy scalars/arrays as Python numbers/lists, floats rounded to ``digits``
    decimals (None: kept as they are) and NaN/inf as None (a result document allows no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), digits)
    if isinstance(obj, list | tuple):
        return [jsonable(v, digits) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        if not np.isfinite(f):
            return None
        return f if digits is None else round(f, digits)
    return obj


_REWARDS: tuple[tuple[str, str, str, str, str], ...] = (
    # name, label, needs, summary, regress tolerance class
    (
        "moa",
        "moa",
        "classifier probabilities",
        "p_cls(true MoA | image), biological function",
        "moa",
    ),
    (
        "nuc_in_cyto",
        "nuc_in_cyto",
        "masks",
        "fraction of nucleus pixels inside the cytoplasm foreground",
        "rewards",
    ),
    (
        "roundness",
        "roundness",
        "masks + reference stats",
        "-z^2 of mean nucleus roundness",
        "rewards",
    ),
    (
        "nuc_size",
        "nuc_size",
        "masks + reference stats",
        "-z^2 of the largest nucleus area",
        "rewards",
    ),
    (
        "cyto_size",
        "cyto_size",
        "masks + reference stats",
        "-z^2 of the largest cell area",
        "rewards",
    ),
    (
        "nuc_count",
        "nuc_count",
        "masks + reference stats",
        "-z^2 of the nucleus count",
        "rewards",
    ),
    (
        "cyto_count",
        "cyto_count",
        "masks + reference stats",
        "-z^2 of the cell count",
        "rewards",
    ),
)
for _name, _label, _needs, _summary, _tol in _REWARDS:
    register_metric(
        MetricSpec(
            _name,
            _label,
            "reward",
            True,
            3,
            _needs,
            _summary,
            "suite",
            tolerance=_tol,
            group="rewards",
        )
    )
register_metric(
    MetricSpec(
        "overall",
        "overall",
        "reward",
        True,
        2,
        "all seven rewards",
        "5 moa + 2 nuc_in_cyto + the five morphology rewards",
        "suite",
        tolerance="overall",
        group="rewards",
    )
)
register_metric(
    MetricSpec(
        "moa_accuracy",
        "MoA acc.",
        "accuracy",
        True,
        3,
        "classifier probabilities",
        "argmax of the classifier equals the true MoA",
        "suite",
        tolerance="moa_accuracy",
        group="held-out",
    )
)
for _name, _label, _digits, _summary in (
    (
        "fid_o",
        "FID_o",
        2,
        "FID of all generated vs all real test targets of the evaluated compounds",
    ),
    ("fid_c", "FID_c", 2, "mean over compounds of the per-compound FID"),
    ("kid_o", "KID_o", 4, "KID (polynomial kernel MMD^2, subsets of min(100, n)) overall"),
    ("kid_c", "KID_c", 4, "mean over compounds of the per-compound KID"),
):
    register_metric(
        MetricSpec(
            _name,
            _label,
            "distance",
            False,
            _digits,
            "Inception features",
            _summary,
            "set",
            DISTANCE_FUNCTION,
            tolerance=_name[:3],
            group="held-out",
        )
    )

# ------------------------------------------------------------------ held-out set-level metrics
_INCEPTION_INPUTS = ("gen_inception", "real_inception")
_PROFILE_INPUTS = ("gen_profile", "real_profile")
for _name, _label, _summary in (
    ("precision", "precision", "fraction of generated images inside a real image's 5-NN ball"),
    ("recall", "recall", "fraction of real images inside a generated image's 5-NN ball"),
    ("density", "density", "real 5-NN balls holding a generated image, per image, / 5"),
    ("coverage", "coverage", "fraction of real 5-NN balls holding a generated image"),
):
    register_metric(
        MetricSpec(
            _name,
            _label,
            "fidelity" if _name in ("precision", "density") else "diversity",
            True,
            3,
            "Inception features",
            _summary + " (Naeem et al. 2020, k = 5, Inception space)",
            "set_fn",
            "cellbench.metrics.prdc:prdc",
            tolerance="prdc",
            group="held-out",
            inputs=_INCEPTION_INPUTS,
            worst=0.0,
        )
    )
for _space, _needs, _function, _inputs in (
    ("", "Inception features", "retrieval_inception", _INCEPTION_INPUTS),
    ("_profile", "morphology profile", "retrieval_profile", _PROFILE_INPUTS),
):
    _where = " (profile)" if _space else ""
    for _name, _label, _summary in (
        (
            "top1",
            "top-1",
            "fraction of compounds whose own real set is the nearest (mean features)",
        ),
        ("top5", "top-5", "fraction of compounds whose own real set is among the 5 nearest"),
        ("map", "mAP", "mean average precision of real images ranked per generated image"),
    ):
        register_metric(
            MetricSpec(
                f"retrieval_{_name}{_space}",
                f"{_label}{_where}",
                "retrieval",
                True,
                3,
                _needs,
                f"{_summary}, {_needs}",
                "set_fn",
                f"cellbench.metrics.retrieval:{_function}",
                tolerance="retrieval",
                group="held-out",
                inputs=_inputs,
                worst=0.0,
            )
        )
for _name, _label, _higher, _summary in (
    (
        "profile_shift_corr",
        "profile r",
        True,
        "mean over compounds of the correlation of the generated and the real morphology-profile "
        "shift from DMSO (with a compound-label permutation null)",
    ),
    (
        "profile_energy",
        "profile E",
        False,
        "mean over compounds of the energy distance of generated and real morphology profiles in "
        "DMSO units (with a membership permutation null)",
    ),
):
    register_metric(
        MetricSpec(
            _name,
            _label,
            "profile",
            _higher,
            3,
            "masks + pixels (morphology profile), DMSO controls",
            _summary,
            "set_fn",
            "cellbench.metrics.profile:profile_set_metrics",
            tolerance="profile",
            group="held-out",
            inputs=("gen_profile", "real_profile", "control_profile"),
        )
    )
for _name, _label, _summary, _inputs in (
    (
        "memorisation",
        "train copies",
        "fraction of generated images nearer a training crop (Inception space) than 99% of the "
        "real test crops are; pixel copies and the flag in the detail",
        ("gen_inception", "real_inception", "train_inception"),
    ),
    (
        "input_copies",
        "input copies",
        "fraction of generated images nearer their own control crop than 99% of the real targets "
        "are to theirs; pixel copies and the flag in the detail",
        ("gen_inception", "real_inception", "control_inception", "gen_control", "real_control"),
    ),
):
    register_metric(
        MetricSpec(
            _name,
            _label,
            "memorisation",
            False,
            3,
            "Inception features, pixel digests, training split",
            _summary,
            "set_fn",
            "cellbench.metrics.memorisation:memorisation_metrics",
            tolerance="memorisation",
            group="held-out",
            inputs=_inputs,
            worst=1.0,
        )
    )
