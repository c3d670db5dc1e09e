"""The metric registry (``cellbench ls metrics``): name, version, direction and what each needs."""

from __future__ import annotations

from cellbench.metrics.rewards import SUITE_VERSION
from cellbench.registry import Registry

METRICS: Registry[str] = Registry("metric")

_REWARD_DOCS = {
    "moa": ("classifier probabilities", "p_cls(true MoA | image), biological function"),
    "nuc_in_cyto": ("masks", "fraction of nucleus pixels inside the cytoplasm foreground"),
    "roundness": ("masks + reference stats", "-z^2 of mean nucleus roundness"),
    "nuc_size": ("masks + reference stats", "-z^2 of the largest nucleus area"),
    "cyto_size": ("masks + reference stats", "-z^2 of the largest cell area"),
    "nuc_count": ("masks + reference stats", "-z^2 of the nucleus count"),
    "cyto_count": ("masks + reference stats", "-z^2 of the cell count"),
    "overall": ("all seven rewards", "5 moa + 2 nuc_in_cyto + the five morphology rewards"),
    "moa_accuracy": ("classifier probabilities", "argmax of the classifier equals the true MoA"),
}
for _name, (_needs, _summary) in _REWARD_DOCS.items():
    METRICS.register(
        _name,
        "cellbench.metrics.rewards:compute_rewards",
        summary=_summary,
        version=SUITE_VERSION,
        higher_is_better=True,
        needs=_needs,
    )
for _name, _summary in {
    "fid_o": "FID of all generated vs all real test targets of the evaluated compounds",
    "fid_c": "mean over compounds of the per-compound FID",
    "kid_o": "KID (polynomial kernel MMD^2, subsets of min(100, n)) overall",
    "kid_c": "mean over compounds of the per-compound KID",
}.items():
    METRICS.register(
        _name,
        "cellbench.metrics.fid:fid_kid_summary",
        summary=_summary,
        version=SUITE_VERSION,
        higher_is_better=False,
        needs="Inception features",
    )
