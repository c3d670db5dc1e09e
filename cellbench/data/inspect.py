"""``cellbench data inspect``: what is in a dataset folder, and is its channel order right?

The DNA check: nuclei are compact bright objects, so in the DNA channel the pixels above a per-crop
Otsu threshold cover a smaller fraction of the crop than in the cytoplasm stains. The channel with
the smallest median foreground fraction is taken as the observed DNA channel and compared with the
dataset card.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from skimage.filters import threshold_otsu

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError


def foreground_fractions(crops: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C): fraction of each crop's pixels above its channel's Otsu threshold."""
    n, _, _, c = crops.shape
    out = np.zeros((n, c))
    for i in range(n):
        for k in range(c):
            ch = crops[i, :, :, k]
            if ch.min() == ch.max():
                out[i, k] = 1.0
                continue
            out[i, k] = float((ch > threshold_otsu(ch)).mean())
    return out


def guess_dna_channel(crops: np.ndarray) -> tuple[int, np.ndarray]:
    """The channel whose bright objects are most compact, and each channel's median fraction."""
    med = np.median(foreground_fractions(crops), axis=0)
    return int(np.argmin(med)), med


def inspect_dataset(
    ds: BBBC021Dataset,
    *,
    sample: int = 400,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Counts per split / MoA / compound / batch, channel statistics and the DNA-channel check."""
    if sample < 1:
        raise CellbenchError(f"--sample must be at least 1 (got {sample})")
    idx = ds.index
    counts = {
        "n_crops": len(idx),
        "n_controls": int(idx["is_control"].sum()),
        "per_split": {
            s: {"treated": int((~g["is_control"]).sum()), "control": int(g["is_control"].sum())}
            for s, g in idx.groupby("SPLIT", sort=True)
        },
        "per_moa": {str(k): int(v) for k, v in idx["ANNOT"].value_counts().sort_index().items()},
        "per_compound": {
            str(k): int(v) for k, v in idx["CPD_NAME"].value_counts().sort_index().items()
        },
        "per_batch": {str(k): int(v) for k, v in idx["BATCH"].value_counts().sort_index().items()},
        "n_compound_doses": int(
            idx.loc[~idx["is_control"], ["CPD_NAME", "DOSE"]].drop_duplicates().shape[0]
        ),
    }
    rng = np.random.default_rng(seed)
    keys = idx["SAMPLE_KEY"].to_numpy()
    chosen = np.sort(rng.choice(len(keys), size=min(sample, len(keys)), replace=False))
    crops = np.empty((len(chosen), 96, 96, 3), dtype=np.uint8)
    for j, i in enumerate(chosen):
        crops[j] = ds.load_crop(str(keys[i]))
        if on_progress is not None:
            on_progress(j + 1, len(chosen))
    flat = crops.reshape(-1, 3).astype(np.float64)
    names = ds.card.channels
    channel_stats = {
        names[k]: {
            "mean": round(float(flat[:, k].mean()), 3),
            "std": round(float(flat[:, k].std()), 3),
            "p1": float(np.percentile(flat[:, k], 1)),
            "p99": float(np.percentile(flat[:, k], 99)),
            "saturated_fraction": round(float((flat[:, k] >= 255).mean()), 5),
        }
        for k in range(3)
    }
    observed, fractions = guess_dna_channel(crops)
    return {
        "dataset": ds.name,
        "root": str(ds.root),
        "simulated": ds.sim_config is not None,
        "index_sha256": ds.index_sha256,
        "counts": counts,
        "sampled_crops": len(chosen),
        "channels": channel_stats,
        "dna_check": {
            "declared_channel": ds.card.dna_channel,
            "observed_channel": observed,
            "foreground_fraction": {names[k]: round(float(fractions[k]), 4) for k in range(3)},
            "ok": observed == ds.card.dna_channel,
        },
    }
