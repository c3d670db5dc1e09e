"""Per-compound retrieval: is each compound's generated set closest to its own real set?

Two measures (``docs/scoring.md``, "Held-out metrics"), in a feature space where each side
(generated, real) is first centred on its own mean, so a shift shared by every generated image
(which FID already sees) does not decide which compound is nearest:

* **top-1 / top-5 compound retrieval**: the distance between compounds c (generated) and c' (real)
  is the Euclidean distance between the mean feature of c's generated images and the mean feature
  of c''s real images. A compound is retrieved at k when its own real compound is among the k
  nearest real compounds; the value is the fraction of generated compounds retrieved. Ties count
  against the generator (a real compound at the same distance as the own one ranks before it).
  Chance level: k / (number of real compounds).
* **mAP** (the copairs-style mean average precision): for each generated image, every real image
  ranked by distance, the positives being the real images of the same compound; the image's
  average precision is the mean, over the positives, of the precision at each positive's rank
  (ties again count against the generator: negatives at the same distance rank first); the value
  is the mean over generated images. Chance level: about the fraction of real images that are
  positives (``chance`` in the detail).

In the Inception space the features are the pool features as they are; in the morphology-profile
space each column is divided by its standard deviation over the real images (columns constant on
the real side are dropped), since its measurements have different units.

The ``copairs`` package computes the same average precision within one profile table; it is not a
dependency (it brings duckdb and statsmodels for a loop this module does in numpy): the tests check
this module against a direct computation on fixed features.
"""

from __future__ import annotations

import numpy as np

from cellbench.metrics import neighbours
from cellbench.metrics.neighbours import as_float64, sq_dists, sq_norms
from cellbench.metrics.registry import SetInputs, SetValue

#: the ranks at which compound retrieval is reported
TOP_K: tuple[int, ...] = (1, 5)


def centred(gen: np.ndarray, real: np.ndarray, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each side centred on its own mean; with ``scale``, every column divided by its standard
    deviation over the real images (columns constant there dropped)."""
    g, r = as_float64(gen), as_float64(real)
    g, r = g - g.mean(axis=0), r - r.mean(axis=0)
    if scale:
        sd = r.std(axis=0)
        keep = sd > 0
        g, r = g[:, keep] / sd[keep], r[:, keep] / sd[keep]
    return g, r


def compound_ranks(
    gen: np.ndarray, compounds: np.ndarray, real: np.ndarray, real_compounds: np.ndarray
) -> dict[str, int]:
    """For each generated compound with real images, the rank (1 = nearest) of its own real
    compound among all real compounds, by the distance between mean features; ties rank first."""
    real_names = np.unique(real_compounds)
    real_means = np.stack([real[real_compounds == c].mean(axis=0) for c in real_names])
    ranks: dict[str, int] = {}
    for c in np.unique(compounds):
        if c not in set(real_names):
            continue
        mean = gen[compounds == c].mean(axis=0, keepdims=True)
        d = sq_dists(mean, real_means)[0]
        own = d[real_names == c][0]
        ranks[str(c)] = int((d <= own).sum())  # the own compound and every one as near
    return ranks


def average_precisions(
    gen: np.ndarray, compounds: np.ndarray, real: np.ndarray, real_compounds: np.ndarray
) -> np.ndarray:
    """Average precision of each generated image (NaN where its compound has no real image):
    real images ranked by distance, positives = same compound, ties: negatives first."""
    ap = np.full(len(gen), np.nan)
    real_sq = sq_norms(real)
    for c in np.unique(compounds):
        pos = real_compounds == c
        n_pos = int(pos.sum())
        if not n_pos:
            continue
        # negatives before positives: a stable sort then puts a tied negative first
        cols = np.concatenate([np.flatnonzero(~pos), np.flatnonzero(pos)])
        rows = np.flatnonzero(compounds == c)
        for start in range(0, len(rows), neighbours.BLOCK_ROWS):
            block = rows[start : start + neighbours.BLOCK_ROWS]
            d = sq_dists(gen[block], real[cols], sq_norms(gen[block]), real_sq[cols])
            order = np.argsort(d, axis=1, kind="stable")
            hit = order >= len(cols) - n_pos  # a positive at this rank
            ranks = np.arange(1, len(cols) + 1)
            precision = np.cumsum(hit, axis=1) / ranks
            ap[block] = (precision * hit).sum(axis=1) / n_pos
    return ap


def _retrieval(inputs: SetInputs, gen: np.ndarray, real: np.ndarray, space: str, suffix: str):
    compounds, real_compounds = inputs.compounds, inputs.real_compounds
    ranks = compound_ranks(gen, compounds, real, real_compounds)
    n_candidates = len(np.unique(real_compounds))
    ap = average_precisions(gen, compounds, real, real_compounds)
    scored = ~np.isnan(ap)
    positives = np.array([(real_compounds == c).sum() for c in compounds]) / len(real_compounds)
    base = {"space": space, "n_compounds": len(ranks), "n_real_compounds": n_candidates}
    out = {}
    for k in TOP_K:
        hits = [r <= k for r in ranks.values()]
        out[f"retrieval_top{k}{suffix}"] = SetValue(
            float(np.mean(hits)) if hits else float("nan"),
            {**base, "k": k, "chance": min(k, n_candidates) / n_candidates, "rank": ranks},
        )
    per_moa = {
        str(m): float(ap[scored & (inputs.moas == m)].mean())
        for m in np.unique(inputs.moas[scored])
    }
    per_compound = {str(c): float(ap[compounds == c].mean()) for c in ranks}
    out[f"retrieval_map{suffix}"] = SetValue(
        float(ap[scored].mean()) if scored.any() else float("nan"),
        {
            **base,
            "n_images": int(scored.sum()),
            "chance": float(positives[scored].mean()) if scored.any() else None,
            "per_moa": per_moa,
            "per_compound": per_compound,
        },
    )
    return out


def retrieval_inception(inputs: SetInputs) -> dict[str, SetValue]:
    """Top-1, top-5 compound retrieval and mAP in the Inception space."""
    assert inputs.gen_inception is not None and inputs.real_inception is not None
    gen, real = centred(inputs.gen_inception, inputs.real_inception, scale=False)
    return _retrieval(inputs, gen, real, "Inception pool (2048), each side centred", "")


def retrieval_profile(inputs: SetInputs) -> dict[str, SetValue]:
    """Top-1, top-5 compound retrieval and mAP in the morphology-profile space."""
    assert inputs.gen_profile is not None and inputs.real_profile is not None
    gen, real = centred(inputs.gen_profile, inputs.real_profile, scale=True)
    space = "morphology profile, each side centred, columns scaled by the real SD"
    return _retrieval(inputs, gen, real, space, "_profile")
