"""The result document (``results.json``, schema ``cellbench.results/1``): its one definition.

What ``cellbench eval`` and ``cellbench eval merge`` write, typed field by field. The published
JSON Schema (``cellbench/resources/schemas/results.schema.json``) is generated from these types by
:mod:`cellbench.results.schema`, and the documents themselves are built by
:mod:`cellbench.results.builder`; ``docs/scoring.md`` ("The result file") describes the fields.

The types are ``TypedDict`` s: a result document is a plain JSON object, and these say which keys
it has and what each holds. An object type is closed (no other key allowed) unless it is listed
in :data:`OPEN_OBJECTS`: the identity records owned by other parts of cellbench (a segmenter's
identity, the feature network's, the runtime environment, the generation record) only need the
keys named here. Keys that a ``--shard K/N`` part or an older cellbench does not write are
``NotRequired``.

The metric maps (``metrics``, ``per_moa``, ``reference.metrics``) hold one entry per metric of the
registry (:mod:`cellbench.metrics.registry`); their schema is generated from the registry, which
:class:`MetricMap` marks.
"""

# no ``from __future__ import annotations`` here: TypedDict reads NotRequired from evaluated
# annotations only
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover - typer depends on typing_extensions
    from typing_extensions import NotRequired

#: the ``schema`` field of every result document
RESULT_SCHEMA = "cellbench.results/1"
#: the score fields, absent from a ``--shard K/N`` part (present in every other document)
SCORE_FIELDS: tuple[str, ...] = ("metrics", "per_moa", "per_compound", "reference")


@dataclass(frozen=True)
class Rule:
    """JSON Schema keywords that constrain a type (``Annotated[str, Rule(pattern=...)]``)."""

    items: tuple[tuple[str, Any], ...] = ()

    def __init__(self, **keywords: Any):
        object.__setattr__(self, "items", tuple(keywords.items()))

    @property
    def keywords(self) -> dict[str, Any]:
        """The keywords as a dict."""
        return dict(self.items)


@dataclass(frozen=True)
class Named:
    """Publish the annotated type once, under ``$defs/NAME``, and refer to it from every use."""

    name: str


@dataclass(frozen=True)
class MetricMap:
    """A map metric name -> entry, one property per registered metric.

    Args:
        per_image: the schema (a ``$defs`` name) of a per-image metric's entry.
        set_level: the schema of a set-level metric's entry (None: set metrics are not listed).
        require: whether the per-image metrics are required keys.
    """

    per_image: str
    set_level: str | None
    require: bool


Sha256 = Annotated[str, Named("sha256"), Rule(pattern="^[0-9a-f]{64}$")]
Count = Annotated[int, Rule(minimum=0)]


class Estimate(TypedDict):
    """A mean over images with its 95% percentile bootstrap interval (null: not computed)."""

    value: float | None
    ci: Annotated[list[float | None], Rule(minItems=2, maxItems=2)]
    n: Count


class SmallSample(TypedDict):
    """FID_c's small-sample record: compounds with fewer images a side than ``threshold``."""

    threshold: Count
    compounds: Count
    below: Count
    min_images: Count
    warning: str | None


class Distance(TypedDict):
    """A set-level metric (FID/KID, a ``set_fn`` metric) with the numbers of generated and real
    images behind it; ``absent`` says why it was not computed (value null).

    FID_o and KID_o carry a 95% interval over resampled generated images (``ci``; the real
    images are held fixed: ``resampled``), FID_c its small-sample record (``small_n``).
    """

    value: float | None
    n_gen: Count
    n_real: Count
    absent: NotRequired[str]
    ci: NotRequired[Annotated[list[float | None], Rule(minItems=2, maxItems=2)]]
    n_boot: NotRequired[Annotated[int, Rule(minimum=1)]]
    method: NotRequired[Literal["linearised", "exact"]]
    resampled: NotRequired[Literal["generated"]]
    small_n: NotRequired[SmallSample]


class ReferenceDistance(TypedDict):
    """A set-level metric of the real reference row: its split-half value."""

    value: float | None
    absent: NotRequired[str]


Estimates = Annotated[dict[str, Estimate], MetricMap("estimate", None, require=False)]


class Partial(TypedDict):
    """Which part of a sharded run a ``--shard K/N`` document is."""

    shard: Annotated[str, Rule(pattern="^[0-9]+/[0-9]+$")]
    #: sha256 of the shard's ``<stem>.arrays.npz`` (checked by ``cellbench eval merge``)
    arrays_sha256: NotRequired[Sha256]


class Dataset(TypedDict):
    """The dataset scored against: its index, and the bytes of the crops the protocol reads."""

    name: Annotated[str, Rule(minLength=1)]
    version: str
    simulated: bool
    index_sha256: Sha256
    crops_sha256: NotRequired[Sha256]
    n_crops: NotRequired[Count]


class Protocol(TypedDict):
    """The protocol (task list): a named protocol built, or a file read (named by its content).

    ``name`` is a registered protocol (``cellbench ls protocols``) or ``custom``; a result of an
    older cellbench has none (read as ``custom``). ``version`` is the named protocol's version.
    """

    name: NotRequired[Annotated[str, Rule(minLength=1)]]
    version: str
    sha256: Sha256
    n_tasks: Annotated[int, Rule(minimum=1)]
    fid_real: NotRequired[Literal["compounds", "tasks"]]
    built: NotRequired[bool]
    split: NotRequired[str]
    seed: NotRequired[int]
    file: NotRequired[str]


class Problem(TypedDict):
    """One image that could not be scored, and why."""

    path: str
    task_id: str | None
    problem: str


class Images(TypedDict):
    """The scored image folder: what matched the protocol and what did not."""

    layout: NotRequired[str]
    folder: NotRequired[str]
    sha256: Sha256
    n_images: Count
    n_tasks_covered: Count
    n_tasks_expected: Count
    missing_tasks: Count
    n_problems: Count
    problems: NotRequired[list[Problem]]


class Segmenter(TypedDict):
    """The segmentation backend's identity (backends may add keys)."""

    name: str
    version: str


class Weights(TypedDict):
    """sha256 of the networks behind the metrics (null: not used)."""

    classifier: Sha256 | None
    inception: Sha256 | None
    segmenter: NotRequired[dict[str, Any] | None]


class ArtifactSet(TypedDict):
    """The artifact files the scorer read (``cellbench.artifacts.manifest``): each relative path's
    sha256, and ``sha256``, the digest of the set (sha256 of the sorted ``sha256sum`` lines)."""

    files: dict[str, Sha256]
    sha256: Sha256


class FeatureNetwork(TypedDict):
    """The Inception feature network's identity (``cellbench.features.inception``)."""

    network: str
    sha256: Sha256


class Reference(TypedDict):
    """The protocol's real target crops scored by the same pipeline (the real reference row)."""

    description: NotRequired[str]
    metrics: Annotated[
        dict[str, Estimate | ReferenceDistance],
        MetricMap("estimate", "reference_distance", require=False),
    ]
    per_moa: NotRequired[dict[str, Estimates]]
    fid_note: NotRequired[str]
    set_note: NotRequired[str]


class Environment(TypedDict):
    """Where the scoring ran (python, platform, device, package versions)."""


class GenerationRecord(TypedDict):
    """The image folder's ``generation.json`` (``cellbench.best_of_n``): what made the images."""

    best_of_n: Annotated[int, Rule(minimum=1)]


class ResultDocument(TypedDict):
    """What ``cellbench eval --out results.json`` and ``cellbench eval merge`` write."""

    schema: Literal["cellbench.results/1"]
    complete: bool
    partial: Partial | None
    cellbench_version: Annotated[str, Rule(pattern="^[0-9]+\\.[0-9]+\\.[0-9]+")]
    git_commit: Annotated[str | None, Rule(pattern="^[0-9a-f]{7,64}$")]
    command: str | None
    seed: int
    dataset: Dataset
    protocol: Protocol
    images: Images
    metric_suite_version: Annotated[str, Rule(minLength=1)]
    segmenter: Segmenter
    weights: Weights
    feature_network: NotRequired[FeatureNetwork | None]
    reference_stats_sha256: Sha256
    artifacts: NotRequired[ArtifactSet]
    fid_computed: bool
    metrics: NotRequired[
        Annotated[dict[str, Estimate | Distance], MetricMap("estimate", "distance", require=True)]
    ]
    per_moa: NotRequired[dict[str, Estimates]]
    per_compound: NotRequired[dict[str, Estimates]]
    reference: NotRequired[Reference]
    fid_detail: NotRequired[dict[str, Any] | None]
    set_detail: NotRequired[dict[str, Any] | None]
    metric_groups: NotRequired[dict[str, list[str]]]
    metric_groups_note: NotRequired[str]
    overall_weights: NotRequired[dict[str, float]]
    #: the rewards summed into ``overall`` (``moa`` is missing without Inception)
    overall_components: NotRequired[list[str]]
    #: False when ``overall`` lacks ``moa`` (``--no-fid``): never ranked with a full ``overall``
    overall_comparable: NotRequired[bool]
    #: registered metrics without a value in this document (``--no-fid``: the Inception ones)
    metrics_not_computed: NotRequired[list[str]]
    #: sha256 of the ``<stem>.per_image.csv`` written with this document (None: no table); binds
    #: the two files (``cellbench submission validate`` and ``cellbench compare`` check it)
    per_image_sha256: NotRequired[Sha256 | None]
    environment: Environment
    wall_time_s: Annotated[float, Rule(minimum=0)]
    best_of_n: NotRequired[Annotated[int, Rule(minimum=1)]]
    generation: NotRequired[GenerationRecord | None]
    merged_from: NotRequired[list[str]]


#: object types that allow keys beyond the ones named (records owned by other modules)
OPEN_OBJECTS: frozenset[type] = frozenset(
    {Segmenter, FeatureNetwork, Environment, GenerationRecord}
)
#: object types published once under ``$defs`` (name) and referred to from every use
NAMED_OBJECTS: dict[type, str] = {
    Estimate: "estimate",
    Distance: "distance",
    ReferenceDistance: "reference_distance",
}
