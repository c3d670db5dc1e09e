"""Train the ``unet`` backend's nucleus network on the 66 DSB2018 images (CC0), with fixed seeds.

* ``--cv``: 5-fold cross-validation with the folds of ``bench/studies/segment_cv.py`` (image i of
  the images sorted by id is in fold i mod 5): for each fold a network is trained on the other
  four folds only and scored (per-image nucleus F1 at IoU 0.5 and 0.75, the whole inference path
  of :mod:`cellbench.features.segment.unet`) on the fold it never saw, and on the held-out image
  of the ``stardist`` wheel when ``--stardist`` names its folder. Prints the per-fold table;
  ``--save-dir`` keeps each fold's network, which ``--rescore [--flips]`` scores again (e.g.
  with the flip-averaged probabilities) without training.
* ``--final``: one network on all 66 images, written as safetensors to ``--weights`` (default: the
  shipped file), with its sha256 printed (to be copied into ``unet.WEIGHTS_SHA256``).

Training: each image is normalised on its own and resized by the factor of its classical radius
estimate (as at inference; no ground truth), then ``--steps`` steps of AdamW (one-cycle cosine
learning rate) on batches of ``--batch`` random ``--patch``-px patches: image drawn uniformly,
scale jitter 0.7-1.45 (log-uniform; robustness to errors of the radius estimate), flips and
quarter turns, gain, gamma, offset and Gaussian noise. Loss: cross-entropy over background,
interior, border (border = nucleus pixels beside another label or the background; weight 2).
Seeds: numpy and torch seeded with ``--seed`` + fold (the final network: ``--seed`` + 100);
one torch thread, so runs repeat exactly on one machine.

Usage:
  python bench/pipelines/train_nucleus_net.py --cv [--folds-only 0,1] [--json FILE] [--save-dir DIR]
  python bench/pipelines/train_nucleus_net.py --rescore --save-dir DIR [--flips]
  python bench/pipelines/train_nucleus_net.py --final [--weights FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cellbench.features.segment import unet

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[3] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)
FOLDS = 5
#: cross-entropy weights of background, interior, border
CLASS_WEIGHTS = (1.0, 1.0, 2.0)
JITTER = (0.7, 1.45)


def load_dsb(root: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Image ids (sorted), greyscale images and instance labels of the DSB2018 subset."""
    from cellbench.features.segment.evaluate import dsb_ids, read_dsb

    names = dsb_ids(root)
    pairs = [read_dsb(root, n) for n in names]
    return names, [img for img, _ in pairs], [gt for _, gt in pairs]


def radii_of(imgs: list[np.ndarray], cache: Path | None) -> np.ndarray:
    """Classical radius estimate of every image (cached in ``cache`` when given)."""
    from cellbench.features.segment.classical import estimate_radius

    if cache is not None and cache.is_file():
        r = json.loads(cache.read_text())
        if len(r) == len(imgs):
            return np.array(r)
    r = np.array([estimate_radius(im) for im in imgs])
    if cache is not None:
        cache.write_text(json.dumps(r.tolist()))
    return r


def canonical(img: np.ndarray, gt: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The normalised image and its labels resized by ``factor`` (bilinear / nearest)."""
    x = torch.from_numpy(unet.normalise(img[None].astype(np.float32)))[:, None]
    h, w = img.shape
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    x = unet._resize(x, size)[0, 0].numpy()
    lab = F.interpolate(torch.from_numpy(gt.astype(np.float32))[None, None], size=size)
    return x, lab[0, 0].numpy().astype(np.int32)


def targets(lab: np.ndarray) -> np.ndarray:
    """(B, H, W) labels -> (B, H, W) classes: 0 background, 1 interior, 2 border."""
    p = np.pad(lab, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = lab.shape[1:]
    border = np.zeros(lab.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                border |= p[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != lab
    cls = (lab > 0).astype(np.int64)
    cls[(lab > 0) & border] = 2
    return cls


def sample_batch(
    rng: np.random.Generator, data: list[tuple[np.ndarray, np.ndarray]], batch: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of augmented patches (B, 1, P, P) and their classes (B, P, P)."""
    xs, labs = [], []
    for _ in range(batch):
        img, lab = data[rng.integers(len(data))]
        j = float(np.exp(rng.uniform(np.log(JITTER[0]), np.log(JITTER[1]))))
        c = max(8, round(patch / j))
        h, w = img.shape
        if h < c or w < c:
            ph, pw = max(0, c - h), max(0, c - w)
            img = np.pad(
                img, ((0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "edge"
            )
            lab = np.pad(lab, ((0, ph), (0, pw)))
            h, w = img.shape
        y0, x0 = rng.integers(h - c + 1), rng.integers(w - c + 1)
        xi = torch.from_numpy(np.ascontiguousarray(img[y0 : y0 + c, x0 : x0 + c]))[None, None]
        li = torch.from_numpy(lab[y0 : y0 + c, x0 : x0 + c].astype(np.float32))[None, None]
        xi = unet._resize(xi, (patch, patch))[0, 0].numpy()
        li = F.interpolate(li, size=(patch, patch))[0, 0].numpy().astype(np.int32)
        k = int(rng.integers(4))
        xi, li = np.rot90(xi, k), np.rot90(li, k)
        if rng.random() < 0.5:
            xi, li = xi[:, ::-1], li[:, ::-1]
        gain = float(np.exp(rng.uniform(np.log(0.6), np.log(1.5))))
        gamma = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        xi = np.clip(xi, 0, 1) ** gamma * gain + rng.uniform(-0.05, 0.05)
        xi = xi + rng.normal(0, rng.uniform(0, 0.04), xi.shape)
        xs.append(xi.astype(np.float32))
        labs.append(li)
    x = torch.from_numpy(np.stack(xs))[:, None]
    y = torch.from_numpy(targets(np.stack(labs)))
    return x, y


def train(
    data: list[tuple[np.ndarray, np.ndarray]],
    *,
    steps: int,
    batch: int,
    patch: int,
    seed: int,
    log: str,
) -> unet.TinyUNet:
    """Train a fresh network on ``data`` (canonical images and labels) with fixed seeds."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = unet.TinyUNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    weight = torch.tensor(CLASS_WEIGHTS)
    net.train()
    t0, run = time.perf_counter(), 0.0
    for step in range(steps):
        x, y = sample_batch(rng, data, batch, patch)
        loss = F.cross_entropy(net(x), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 200 == 0 or step + 1 == steps:
            print(
                f"[{log}] step {step + 1}/{steps} loss {run:.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return net.eval()


def score(
    net: unet.TinyUNet, imgs: list[np.ndarray], gts: list[np.ndarray], radii, flips: bool = False
) -> np.ndarray:
    """(n, 2) F1 at IoU 0.5 and 0.75 of every image (the whole inference path)."""
    from cellbench.features.segment.evaluate import f1_at_iou

    out = []
    for img, gt, r in zip(imgs, gts, radii, strict=True):
        pred = unet.segment_nuclei(net, img, None if r is None else float(r), flips=flips)
        out.append([f1_at_iou(pred, gt, 0.5), f1_at_iou(pred, gt, 0.75)])
    return np.array(out)


def save_net(net: unet.TinyUNet, path: Path) -> None:
    """The network's weights as safetensors (atomic write)."""
    from safetensors.torch import save

    from cellbench.io import atomic_write_bytes

    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(state, metadata={"model": "cellbench nucleus unet"}))


def load_stardist(folder: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The held-out image and mask of the ``stardist`` wheel (``stardist/data/images``)."""
    if folder is None:
        return None
    import tifffile

    return tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cv", action="store_true")
    mode.add_argument("--final", action="store_true")
    mode.add_argument(
        "--rescore",
        action="store_true",
        help="score the fold networks of --save-dir again (with --flips: flip-averaged)",
    )
    ap.add_argument("--flips", action="store_true", help="average over the 4 flips when scoring")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--stardist", type=Path, help="folder with img2d.tif and mask2d.tif")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds-only", default="", help="comma-separated folds to run (default all)")
    ap.add_argument("--json", type=Path, help="write per-image scores here")
    ap.add_argument("--weights", type=Path, default=unet.WEIGHTS_PATH)
    ap.add_argument("--save-dir", type=Path, help="--cv: also write each fold's network here")
    ap.add_argument("--radius-cache", type=Path, help="cache of the classical radius estimates")
    args = ap.parse_args()
    torch.set_num_threads(1)

    names, imgs, gts = load_dsb(args.root)
    radii = radii_of(imgs, args.radius_cache)
    factors = unet.scale_factors(radii)
    data = [canonical(im, gt, float(f)) for im, gt, f in zip(imgs, gts, factors, strict=True)]
    sd = load_stardist(args.stardist)
    common = dict(steps=args.steps, batch=args.batch, patch=args.patch)

    if args.final:
        net = train(data, seed=args.seed + 100, log="final", **common)
        from cellbench.io import sha256_file

        save_net(net, args.weights)
        print(f"wrote {args.weights}: sha256 {sha256_file(args.weights)}")
        ins = score(net, imgs, gts, radii, args.flips)
        print(
            f"final, in-sample on the 66 images: F1 @ 0.5 {ins[:, 0].mean():.4f}, @ 0.75 {ins[:, 1].mean():.4f}"
        )
        if sd is not None:
            s = score(net, [sd[0]], [sd[1]], [None], args.flips)[0]
            print(f"final, stardist image: F1 @ 0.5 {s[0]:.4f}, @ 0.75 {s[1]:.4f}")
        return

    fold = np.arange(len(names)) % FOLDS
    todo = [int(k) for k in args.folds_only.split(",")] if args.folds_only else range(FOLDS)
    if args.rescore:
        allf = np.zeros((len(names), 2))
        missing = [k for k in todo if not (args.save_dir / f"fold{k}.safetensors").is_file()]
        if missing:
            raise SystemExit(
                f"{args.save_dir}: no fold{missing[0]}.safetensors (fix: train it with --cv "
                f"--folds-only {missing[0]} --save-dir {args.save_dir}, or rescore --folds-only "
                "the folds there)"
            )
        for k in todo:
            test = np.flatnonzero(fold == k)
            net = unet.load_net(args.save_dir / f"fold{k}.safetensors", sha256=None)
            s = score(net, [imgs[i] for i in test], [gts[i] for i in test], radii[test], args.flips)
            allf[test] = s
            msg = f"| {k} | {len(test)} | {s[:, 0].mean():.4f} / {s[:, 1].mean():.4f} |"
            if sd is not None:
                t = score(net, [sd[0]], [sd[1]], [None], args.flips)[0]
                msg += f" {t[0]:.4f} / {t[1]:.4f} |"
            print(msg, flush=True)
        scored = np.isin(fold, list(todo))
        print(
            f"| {'all' if scored.all() else 'folds ' + ','.join(map(str, todo))} | "
            f"{int(scored.sum())} | **{allf[scored, 0].mean():.4f}** / "
            f"{allf[scored, 1].mean():.4f} |"
        )
        if args.json:
            args.json.write_text(json.dumps({"images": names, "f1": allf.tolist()}))
        return
    result = {"images": names, "fold": fold.tolist(), "folds": {}}
    for k in todo:
        test = np.flatnonzero(fold == k)
        train_data = [data[i] for i in np.flatnonzero(fold != k)]
        t0 = time.perf_counter()
        net = train(train_data, seed=args.seed + k, log=f"fold {k}", **common)
        t_train = time.perf_counter() - t0
        if args.save_dir is not None:
            save_net(net, args.save_dir / f"fold{k}.safetensors")
        s = score(net, [imgs[i] for i in test], [gts[i] for i in test], radii[test])
        row = {"f1": s.tolist(), "train_s": t_train}
        msg = f"| {k} | {len(test)} | {s[:, 0].mean():.4f} / {s[:, 1].mean():.4f} |"
        if sd is not None:
            row["stardist"] = score(net, [sd[0]], [sd[1]], [None])[0].tolist()
            msg += f" {row['stardist'][0]:.4f} / {row['stardist'][1]:.4f} |"
        print(msg + f" ({t_train:.0f} s training)", flush=True)
        result["folds"][str(k)] = row
        if args.json:
            args.json.write_text(json.dumps(result))
    if len(result["folds"]) == FOLDS:
        allf = np.zeros((len(names), 2))
        for k, row in result["folds"].items():
            allf[fold == int(k)] = row["f1"]
        print(
            f"| all (cross-validated) | {len(names)} | **{allf[:, 0].mean():.4f}** / {allf[:, 1].mean():.4f} |"
        )


if __name__ == "__main__":
    main()
