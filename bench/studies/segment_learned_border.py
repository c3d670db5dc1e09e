"""Is the foreground the lever for nucleus F1 at IoU 0.75, and can a per-pixel model learn it?

Two measurements on the 66 DSB2018 images, both keeping the classical segmenter's nuclei as the
instances (its splits and merges) and changing only which pixels are nucleus:

1. *Oracle*: the ground truth's foreground (every annotated pixel) with our instances: each
   annotated pixel takes the label of our nearest nucleus within its annotated blob, our pixels
   outside the annotation are dropped, annotated blobs that hold none of our nuclei stay missed.
   It reads the ground truth: an upper bound on any rule that redraws the foreground, not a method.
2. *Learned border*: a small per-pixel network (two hidden layers of ``--hidden`` units) predicts
   "annotated as nucleus" from 18 local features of the image, all without units (the contrast
   over Otsu's level; its Gaussian blur, gradient magnitude and Laplacian at 0.7 and 1.5 px and at
   a quarter and half the nucleus radius; the contrast over the local maximum and over the
   nearest nucleus's mean contrast; the signed distance to our border in pixels and in radii; the
   log radius). Trained under 5-fold cross-validation (image i of the sorted ids in fold i mod 5,
   the network of each fold never sees its images; 4,000 pixels within 5 px of our borders and
   2,000 anywhere per training image; ``--steps`` Adam steps of 4,096 pixels), once per seed of
   ``--seeds``. Its foreground (probability above 0.5, holes filled) replaces ours as in 1;
   blobs of it with none of our nuclei become nuclei when larger than the segmenter's size floor.
   Also printed: each image at the best of the cut-offs ``CUTS`` for its F1 at IoU 0.75 (reads
   the ground truth: whether the network ranks the pixels right and only the cut-off varies).
3. With ``--unet``: the foreground of the shipped ``unet`` network (background probability below
   0.5, holes filled) in place of the learned border's, as in 2. That network was trained on all
   66 images, so this row is in-sample: optimistic.

Usage: python bench/studies/segment_learned_border.py [--root DIR] [--seeds 0,10,20]
       [--hidden 64] [--steps 2000] [--unet] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[3] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)
FOLDS = 5
#: probability cut-offs of the per-image oracle
CUTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: pixels sampled per training image: near our borders, anywhere
NEAR, ANYWHERE = 4000, 2000


def pixel_features(x: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(H, W, 18) float32 features of one image, its radius and the signed distance (px, > 0
    inside) to the border of ``nuclei`` (the classical segmenter's labels of ``x``)."""
    from scipy import ndimage as ndi

    from cellbench.features.segment import classical as C

    p = C.DEFAULT_PARAMS
    r = C.estimate_radius(x)
    found = float(C._median_radius(nuclei[None])[0])  # after the segmenter's re-segment check
    r = C._round_radius(max(min(r, found) if np.isfinite(found) else r, 1.5))
    t = C._contrast(x[None], r, p)[0]
    level = float(C._otsu_stack(t[None])[0])
    level = level if np.isfinite(level) and level > 0 else 1.0
    tn = t / level
    local = C._local_max(t[None], max(int(p.local_window * r), 3), 0.5 * r)[0]
    feats = [tn, t / np.maximum(local, 1e-6 * level)]
    for s in (0.7, 1.5, max(0.25 * r, 0.7), max(0.5 * r, 1.0)):
        feats += [
            ndi.gaussian_filter(tn, s),
            ndi.gaussian_gradient_magnitude(tn, s),
            -ndi.gaussian_laplace(tn, s) * s * s,
        ]
    fg = nuclei > 0
    inside = ndi.distance_transform_edt(fg)
    signed = np.where(fg, inside, -ndi.distance_transform_edt(~fg))
    feats += [np.clip(signed, -8, 8) / 4, np.clip(signed / r, -2, 2)]
    n = int(nuclei.max())
    if n:
        means = np.concatenate([[np.inf], ndi.mean(t, nuclei, index=np.arange(1, n + 1))])
        rows, cols = ndi.distance_transform_edt(~fg, return_distances=False, return_indices=True)
        rel = t / np.maximum(means[nuclei[rows, cols]], 1e-6)
    else:
        rel = np.zeros_like(t)
    feats += [np.clip(rel, -2, 4), np.full_like(t, np.log(r))]
    return np.stack(feats, -1).astype(np.float32), r, signed


def relabel_over(nuclei: np.ndarray, fg: np.ndarray, min_size: float | None) -> np.ndarray:
    """Our nuclei redrawn on the foreground ``fg``: each pixel of fg takes the label of the nearest
    of our pixels inside fg within its blob; our pixels outside fg are dropped; blobs with none of
    our pixels become new nuclei when larger than ``min_size`` px (stay 0 when None)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    seeds = np.where(fg, nuclei, 0)
    out = watershed(ndi.distance_transform_edt(seeds == 0), seeds, mask=fg).astype(np.int32)
    if min_size is not None:
        rest, k = ndi.label(fg & (out == 0))
        if k:
            sizes = np.bincount(rest.ravel())
            new = np.flatnonzero(sizes > min_size)
            new = new[new > 0]
            lut = np.zeros(k + 1, np.int32)
            lut[new] = out.max() + 1 + np.arange(len(new))
            out = np.where(out == 0, lut[rest], out)
    return out


def _prepare(args: tuple[Path, str, bool]) -> dict:
    import torch

    from cellbench.features.segment import classical as C
    from cellbench.features.segment.evaluate import f1_at_iou, read_dsb

    root, name, with_unet = args
    img, gt = read_dsb(root, name)
    x = np.asarray(img, np.float32)
    nuclei = C.segment_nuclei(x)
    feats, r, signed = pixel_features(x, nuclei)
    oracle = relabel_over(nuclei, gt > 0, None)
    floor = max(C.DEFAULT_PARAMS.min_area * np.pi * r**2, 10.0)
    out = {
        "name": name,
        "feats": feats,
        "r": r,
        "signed": signed,
        "nuclei": nuclei,
        "gt": gt,
        "ours": [f1_at_iou(nuclei, gt, 0.5), f1_at_iou(nuclei, gt, 0.75)],
        "oracle": [f1_at_iou(oracle, gt, 0.5), f1_at_iou(oracle, gt, 0.75)],
        "floor": floor,
    }
    if with_unet:
        from scipy import ndimage as ndi

        from cellbench.features.segment import unet

        torch.set_num_threads(1)
        f = float(unet.scale_factors(np.array([C.estimate_radius(x)]))[0])
        probs = unet.predict_probs(unet.load_net(), unet.normalise(x[None]), f)[0]
        pred = relabel_over(nuclei, ndi.binary_fill_holes(probs[0] < 0.5), floor)
        out["unet"] = [f1_at_iou(pred, gt, 0.5), f1_at_iou(pred, gt, 0.75)]
    return out


def _train(images: list[dict], seed: int, hidden: int, steps: int):
    import torch

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for d in images:
        f = d["feats"].reshape(-1, d["feats"].shape[-1])
        near = np.flatnonzero(np.abs(d["signed"]).ravel() <= 5)
        pick = [rng.choice(len(f), min(ANYWHERE, len(f)), replace=False)]
        if len(near):
            pick.append(rng.choice(near, min(NEAR, len(near)), replace=False))
        i = np.concatenate(pick)
        xs.append(f[i])
        ys.append((d["gt"] > 0).ravel()[i])
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy((x - mu) / sd), torch.from_numpy(y)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(steps):
        i = torch.randint(0, len(xt), (4096,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[i])[:, 0], yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = torch.from_numpy((feats.reshape(-1, feats.shape[-1]) - mu) / sd)
            return torch.sigmoid(net(z)[:, 0]).numpy().reshape(feats.shape[:2])

    return predict


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the DSB2018 subset folder")
    ap.add_argument("--seeds", default="0,10,20", help="one cross-validation per seed")
    ap.add_argument("--hidden", type=int, default=64, help="units per hidden layer")
    ap.add_argument("--steps", type=int, default=2000, help="Adam steps of 4,096 pixels")
    ap.add_argument(
        "--unet", action="store_true", help="also v3's nuclei on the shipped unet's foreground"
    )
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import torch
    from scipy import ndimage as ndi

    from cellbench.features.segment.evaluate import dsb_ids, f1_at_iou

    torch.set_num_threads(args.workers)
    t0 = time.perf_counter()
    ids = dsb_ids(args.root)
    with ProcessPoolExecutor(args.workers) as ex:
        data = list(ex.map(_prepare, [(args.root, n, args.unet) for n in ids]))
    print(f"{len(data)} images segmented and featurised in {time.perf_counter() - t0:.1f} s")
    ours = np.array([d["ours"] for d in data])
    oracle = np.array([d["oracle"] for d in data])
    print("| foreground (our instances throughout) | F1 @ 0.5 | F1 @ 0.75 |")
    print("|---|---|---|")
    print(f"| classical v3 (defaults) | {ours[:, 0].mean():.4f} | {ours[:, 1].mean():.4f} |")
    print(
        f"| the ground truth's (oracle) | {oracle[:, 0].mean():.4f} | {oracle[:, 1].mean():.4f} |"
    )
    if args.unet:
        u = np.array([d["unet"] for d in data])
        print(f"| the shipped unet's (in-sample) | {u[:, 0].mean():.4f} | {u[:, 1].mean():.4f} |")
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        scores = np.zeros((len(data), len(CUTS), 2))
        for k in range(FOLDS):
            train = [d for i, d in enumerate(data) if i % FOLDS != k]
            predict = _train(train, seed + k, args.hidden, args.steps)
            for i in range(k, len(data), FOLDS):
                d = data[i]
                prob = predict(d["feats"])
                for j, cut in enumerate(CUTS):
                    pred = relabel_over(d["nuclei"], ndi.binary_fill_holes(prob > cut), d["floor"])
                    scores[i, j] = f1_at_iou(pred, d["gt"], 0.5), f1_at_iou(pred, d["gt"], 0.75)
        half = scores[:, CUTS.index(0.5)]
        folds = " / ".join(f"{half[k::FOLDS, 1].mean():.3f}" for k in range(FOLDS))
        best = scores[np.arange(len(data)), scores[:, :, 1].argmax(1)]
        print(
            f"| learned border, seed {seed}, cross-validated | {half[:, 0].mean():.4f} | "
            f"{half[:, 1].mean():.4f} (folds {folds}; {time.perf_counter() - t0:.0f} s) |"
        )
        print(
            f"| the same, each image at its best cut-off (oracle) | {best[:, 0].mean():.4f} | "
            f"{best[:, 1].mean():.4f} |"
        )


if __name__ == "__main__":
    main()
