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
  :func:`cellbench.metrics.fid.fid_kid_summary`), no per-image values and no interval.

Per-image values ("suite" and "per_image") are averaged with a bootstrap interval overall, per
MoA and per compound, and written to the per-image table; set-level values are written with the
numbers of generated and real images. The aggregation (:mod:`cellbench.results.builder`), the
``cellbench eval`` table, the submission validator, the leaderboard columns, the metric validation
report and ``cellbench regress`` all read this registry, so adding a metric is one entry plus one
function (``CONTRIBUTING.md``, "Adding a metric").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from cellbench.metrics.rewards import SUITE_VERSION
from cellbench.registry import Registry

MetricKind = Literal["suite", "per_image", "set"]

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
        family: ``"reward"``, ``"accuracy"`` or ``"distance"``.
        higher_is_better: the metric's direction.
        digits: decimals shown in the ``cellbench eval`` table and on the leaderboard.
        needs: what the metric is computed from (shown by ``cellbench ls metrics``).
        summary: one line saying what the metric is.
        kind: ``"suite"``, ``"per_image"`` or ``"set"`` (see the module docstring).
        function: ``"module:attr"`` of the function computing it.
        version: the metric suite version the metric belongs to.
        tolerance: the ``cellbench regress`` tolerance class (a key of ``regress.TOLERANCES``).
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

    @property
    def per_image(self) -> bool:
        """True when the metric has one value per image (bootstrapped; a per-image column)."""
        return self.kind != "set"

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


def register_metric(spec: MetricSpec) -> None:
    """Add ``spec`` to :data:`METRICS` (its name must be new).

    A ``kind="set"`` entry must be one of the distances the builder computes
    (:data:`DISTANCE_NAMES`, through :data:`DISTANCE_FUNCTION`): another set-level metric needs its
    own code in :mod:`cellbench.results.builder`, so it is refused here, at registration, rather
    than in the middle of an evaluation.
    """
    if spec.kind not in ("suite", "per_image", "set"):
        raise ValueError(f"metric {spec.name!r}: unknown kind {spec.kind!r}")
    if spec.kind == "set" and (
        spec.function != DISTANCE_FUNCTION or spec.name not in DISTANCE_NAMES
    ):
        raise ValueError(
            f"set-level metric {spec.name!r}: only the {DISTANCE_FUNCTION} distances "
            f"{', '.join(DISTANCE_NAMES)} are computed by cellbench.results.builder"
        )
    fields = asdict(spec)
    name, summary, function = fields.pop("name"), fields.pop("summary"), fields.pop("function")
    METRICS.register(name, function, summary=summary, **fields)


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
    return MetricSpec(name=e.name, summary=e.summary, function=function, **e.meta)


def specs() -> list[MetricSpec]:
    """Every registered metric, in registration order (the order of the result document)."""
    return [spec(n) for n in METRICS.names()]


def per_image_metrics() -> list[MetricSpec]:
    """The metrics with one value per image (``kind`` ``"suite"`` or ``"per_image"``)."""
    return [s for s in specs() if s.per_image]


def set_metrics() -> list[MetricSpec]:
    """The set-level distances (``kind="set"``)."""
    return [s for s in specs() if not s.per_image]


def per_image_names() -> tuple[str, ...]:
    """Names of :func:`per_image_metrics`, in order."""
    return tuple(s.name for s in per_image_metrics())


def set_names() -> tuple[str, ...]:
    """Names of :func:`set_metrics`, in order."""
    return tuple(s.name for s in set_metrics())


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
        MetricSpec(_name, _label, "reward", True, 3, _needs, _summary, "suite", tolerance=_tol)
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
        )
    )
