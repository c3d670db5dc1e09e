"""Instance-segmentation accuracy: one-to-one matching of predicted and ground-truth instances.

Two label images (0 = background, k > 0 = instance k) are compared through the table of pairwise
overlaps. A predicted instance and a ground-truth instance match when their intersection over
union (IoU) is at least ``iou``. For ``iou > 0.5`` each instance can overlap at most one partner by
more than half its union, so the greedy match on IoU is the unique optimal one-to-one matching
(the same as Hungarian matching). For ``iou <= 0.5`` pairs are taken greedily in decreasing IoU,
which is one-to-one but not guaranteed optimal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "dsb_f1",
    "dsb_ids",
    "f1_at_iou",
    "iou_matrix",
    "match_instances",
    "read_dsb",
    "sim_cell_f1",
    "sim_f1",
]


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the labels present in ``labels`` to 0..n (0 stays background)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {lab.shape}")
    ids, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(lab.shape)
    if ids[0] != 0:  # no background pixel: shift so that 0 stays reserved
        inv = inv + 1
        return inv, len(ids)
    return inv, len(ids) - 1


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU between every predicted (rows) and ground-truth (columns) instance.

    Args:
        pred: 2-D integer label image, 0 = background.
        gt: 2-D integer label image of the same shape, 0 = background.

    Returns:
        float64 array of shape (n_pred, n_gt).
    """
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"shape mismatch: pred {np.shape(pred)} vs gt {np.shape(gt)}")
    p, n_p = _relabel(pred)
    g, n_g = _relabel(gt)
    inter = np.bincount(
        p.ravel().astype(np.int64) * (n_g + 1) + g.ravel(), minlength=(n_p + 1) * (n_g + 1)
    ).reshape(n_p + 1, n_g + 1)
    area_p = inter.sum(axis=1)[1:]
    area_g = inter.sum(axis=0)[1:]
    inter = inter[1:, 1:].astype(np.float64)
    union = area_p[:, None] + area_g[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


def match_instances(pred: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """Count true positives, false positives and false negatives at an IoU threshold.

    Args:
        pred: predicted 2-D label image (0 = background).
        gt: ground-truth 2-D label image of the same shape.
        iou: a pair matches when its IoU is >= this value (must be in (0, 1]).

    Returns:
        ``(tp, fp, fn)``: matched pairs, unmatched predictions, unmatched ground-truth instances.
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    m = iou_matrix(pred, gt)
    n_p, n_g = m.shape
    if n_p == 0 or n_g == 0:
        return 0, n_p, n_g
    rows, cols = np.nonzero(m >= iou)
    if iou > 0.5:
        tp = len(rows)  # each row/column has at most one entry above 0.5: unique matching
    else:
        order = np.argsort(-m[rows, cols], kind="stable")
        used_r: set[int] = set()
        used_c: set[int] = set()
        tp = 0
        for k in order:
            r, c = int(rows[k]), int(cols[k])
            if r in used_r or c in used_c:
                continue
            used_r.add(r)
            used_c.add(c)
            tp += 1
    return tp, n_p - tp, n_g - tp


def f1_at_iou(pred: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) of the one-to-one matching at ``iou``.

    Two empty label images agree perfectly and give 1.0.
    """
    tp, fp, fn = match_instances(pred, gt, iou)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def dsb_ids(root: str | Path) -> list[str]:
    """The image ids of a DSB2018-style folder (``images/<id>.png``), sorted."""
    return sorted(p.stem for p in (Path(root) / "images").glob("*.png"))


def read_dsb(root: str | Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` of one DSB2018-style pair: ``images/<id>.png`` as a 2-D greyscale image
    (its first channel where the file is RGB(A), as the subset's greyscale images are stored) and
    the instance labels ``labels_derived/<id>.png``."""
    from PIL import Image

    root = Path(root)
    img = np.asarray(Image.open(root / "images" / f"{image_id}.png"))
    gt = np.asarray(Image.open(root / "labels_derived" / f"{image_id}.png"))
    return (img[..., 0] if img.ndim == 3 else img), gt


def dsb_f1(root, segment=None):
    """Per-image nucleus F1 at IoU 0.5 and 0.75 on the DSB2018 subset in ``root``.

    ``root`` holds ``images/<id>.png`` (greyscale as RGBA) and ``labels_derived/<id>.png``
    (instance labels). ``segment`` maps a 2-D image to labels (default: the classical backend).
    """
    import pandas as pd

    if segment is None:
        from cellbench.features.segment.classical import segment_nuclei as segment
    rows = []
    for image_id in dsb_ids(root):
        img, gt = read_dsb(root, image_id)
        pred = segment(img)
        rows.append(
            {
                "image": image_id,
                "height": img.shape[0],
                "width": img.shape[1],
                "n_true": int(len(np.unique(gt)) - 1),
                "n_pred": int(len(np.unique(pred)) - 1),
                "f1_50": f1_at_iou(pred, gt, 0.5),
                "f1_75": f1_at_iou(pred, gt, 0.75),
            }
        )
    return pd.DataFrame(rows)


def sim_f1(n_per_moa: int = 25, seed: int = 0, segment=None, min_area: int = 15):
    """Per-crop nucleus F1 at IoU 0.5 and 0.75 on simulated crops with known nuclei.

    For DMSO and each of the 12 MoAs (full effect strength), ``n_per_moa`` crops are rendered by
    :func:`cellbench.data.sim.render_crop` with their ground-truth nucleus labels, each on its own
    seeded plate style; true nuclei with fewer than ``min_area`` visible pixels (cut by the crop
    border) are dropped. ``segment`` maps a 96x96x3 uint8 crop to nucleus labels (default: the
    classical backend, DNA in channel 2). The crops are the 96x96 kind cellbench scores.
    """
    import pandas as pd

    from cellbench.data import sim
    from cellbench.data.layout import MOAS

    if segment is None:
        from cellbench.features.segment.classical import segment_crop

        def segment(img):
            return segment_crop(img, dna_channel=2).nuclei

    rows = []
    for m, moa in enumerate(("DMSO", *MOAS)):
        for k in range(n_per_moa):
            rng = np.random.default_rng([seed, m, k])
            style = sim.plate_style(rng)
            img, gt = sim.render_crop(
                rng, moa, 0.0 if moa == "DMSO" else 1.0, style, with_nuclei=True
            )
            sizes = np.bincount(gt.ravel())
            gt = np.where(sizes[gt] >= min_area, gt, 0)
            pred = segment(img)
            rows.append(
                {
                    "moa": moa,
                    "crop": k,
                    "n_true": int(len(np.unique(gt)) - 1),
                    "n_pred": int(len(np.unique(pred)) - 1),
                    "f1_50": f1_at_iou(pred, gt, 0.5),
                    "f1_75": f1_at_iou(pred, gt, 0.75),
                }
            )
    return pd.DataFrame(rows)


def sim_cell_f1(n_per_moa: int = 25, seed: int = 0, segment=None, min_area: int = 30):
    """Per-crop cell F1 at IoU 0.5 and 0.75 on simulated crops with known cells.

    The crops of :func:`sim_f1` (same seeds), with the simulator's ground-truth cell labels
    (``render_crop(..., with_cells=True)``); true cells with fewer than ``min_area`` visible pixels
    are dropped. ``segment`` maps a 96x96x3 uint8 crop to (nucleus labels, cell labels) (default:
    the classical backend, DNA in channel 2). Columns also give the true and predicted nucleus and
    cell counts, so how often the cell count differs from the nucleus count can be read off.
    """
    import pandas as pd

    from cellbench.data import sim
    from cellbench.data.layout import MOAS

    if segment is None:
        from cellbench.features.segment.classical import segment_crop

        def segment(img):
            seg = segment_crop(img, dna_channel=2)
            return seg.nuclei, seg.cells

    rows = []
    for m, moa in enumerate(("DMSO", *MOAS)):
        for k in range(n_per_moa):
            rng = np.random.default_rng([seed, m, k])
            style = sim.plate_style(rng)
            img, nuc, gt = sim.render_crop(
                rng, moa, 0.0 if moa == "DMSO" else 1.0, style, with_cells=True
            )
            sizes = np.bincount(gt.ravel())
            gt = np.where(sizes[gt] >= min_area, gt, 0)
            nuc_sizes = np.bincount(nuc.ravel())
            pred_nuc, pred = segment(img)
            rows.append(
                {
                    "moa": moa,
                    "crop": k,
                    "n_true_nuclei": int((nuc_sizes[1:] >= min_area).sum()),
                    "n_true": int(len(np.unique(gt)) - 1),
                    "n_pred_nuclei": int(len(np.unique(pred_nuc)) - 1),
                    "n_pred": int(len(np.unique(pred)) - 1),
                    "f1_50": f1_at_iou(pred, gt, 0.5),
                    "f1_75": f1_at_iou(pred, gt, 0.75),
                }
            )
    return pd.DataFrame(rows)
