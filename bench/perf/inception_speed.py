"""Inception feature speed: the straightforward torchmetrics path vs cellbench's fast path.

Straightforward path: ``torchmetrics.image.fid.FrechetInceptionDistance(feature=ReferenceInception)``
updated batch by batch, where :class:`~cellbench.features.inception.ReferenceInception` casts the
uint8 NCHW batch to float, resizes with ``F.interpolate`` (bilinear, align_corners=False), maps to
``(x - 128) / 128`` and calls the unmodified TorchScript network (``default_1.pt``).

Fast path: :class:`~cellbench.features.inception.InceptionFeatures` with the same weights and the
same resize rule (``resize="pytorch"``) for the like-for-like comparison, and with the metric's
own rule (``resize="tf1"``) to show its speed and how far the two resize rules are apart.

Run: ``.venv/bin/python bench/perf/inception_speed.py [--n 256]`` (about a minute on 2 CPU cores). The
paths run interleaved, batch by batch, so that load from other jobs affects them alike.
Crops are simulated BBBC021-like 96x96x3 uint8 cells (:func:`cellbench.data.sim.render_crop`).

``--roofline`` also prints the hardware side (docs/benchmarks.md, "Inception features"): the
network's arithmetic per 299x299 image (counted by ``torch.utils.flop_counter.FlopCounterMode``
on the unmodified network, 2 FLOP per multiply-add), the machine's nominal fp32 peak (cores x
clock x FLOP per cycle from the vector units the CPU reports) and the fp32 matrix-multiply rate
torch reaches on it, and what fraction of each the fast path's images/s are.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cellbench.features.inception import InceptionFeatures, ReferenceInception
from cellbench.metrics.fid import GaussianStats, fid_from_stats
from cellbench.workers import usable_cpus


def make_crops(n: int, seed: int = 0) -> np.ndarray:
    """``n`` simulated 96x96x3 uint8 crops over a few MoAs (synthetic blobs if the simulator is absent)."""
    rng = np.random.default_rng(seed)
    try:
        from cellbench.data.sim import plate_style, render_crop
    except ImportError:  # keep the benchmark runnable on its own
        yy, xx = np.mgrid[:96, :96]
        out = rng.integers(0, 30, size=(n, 96, 96, 3), dtype=np.uint8)
        for img in out:
            cy, cx = rng.integers(25, 71, size=2)
            img[..., 2][(yy - cy) ** 2 + (xx - cx) ** 2 < 120] = 200
            img[..., 1][(yy - cy) ** 2 + (xx - cx) ** 2 < 700] += 90
        return out
    moas = ["DMSO", "Actin disruptors", "Eg5 inhibitors", "DNA damage", "Microtubule stabilizers"]
    style = plate_style(rng)
    return np.stack([render_crop(rng, moas[i % len(moas)], 1.0, style) for i in range(n)])


def main() -> None:
    """Print images/s of every path, the speedups and the feature differences."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="number of crops")
    parser.add_argument("--batch", type=int, default=8, help="batch size of every path")
    parser.add_argument(
        "--roofline", action="store_true", help="also the FLOP count, the peak and the matmul rate"
    )
    args = parser.parse_args()
    crops = make_crops(args.n)
    b, half = args.batch, args.n // 2
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}; "
        f"{args.n} crops 96x96x3, batch {b}"
    )

    # Straightforward path: torchmetrics FID with an F.interpolate + TorchScript module, fed
    # (a) contiguous NCHW uint8 batches, as CellFlux's loader makes them (torch.stack of CHW
    # images), and (b) NHWC arrays viewed as NCHW (channels-last strides, which F.interpolate
    # keeps and which happen to speed up the unmodified network).
    nchw = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    nchw_cl = torch.from_numpy(crops).permute(0, 3, 1, 2)
    modules = {key: ReferenceInception(resize="pytorch") for key in ("tm", "tm_cl")}
    metrics = {key: FrechetInceptionDistance(feature=m) for key, m in modules.items()}
    captured: list[torch.Tensor] = []
    modules["tm"].register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    fast = InceptionFeatures(resize="pytorch", batch_size=b)
    tf1 = InceptionFeatures(resize="tf1", batch_size=b)
    feats: dict[str, list[np.ndarray]] = {"fast": [], "tf1": []}

    def step(key: str, start: int) -> None:
        sl = slice(start, start + b)
        if key == "tm":
            metrics[key].update(nchw[sl], real=start < half)
        elif key == "tm_cl":
            metrics[key].update(nchw_cl[sl], real=start < half)
        else:
            feats[key].append((fast if key == "fast" else tf1)(crops[sl]))

    paths = ("tm", "tm_cl", "fast", "tf1")
    for _ in range(3):  # warm-up (TorchScript's profiling runs), not timed
        for key in paths:
            step(key, 0)
    captured.clear()
    for m in metrics.values():
        m.reset()
    feats = {"fast": [], "tf1": []}

    # Interleave the paths batch by batch so that load from other jobs hits them alike.
    seconds = dict.fromkeys(paths, 0.0)
    for start in range(0, args.n, b):
        for key in paths:
            t0 = time.perf_counter()
            step(key, start)
            seconds[key] += time.perf_counter() - t0
    ips = {k: args.n / v for k, v in seconds.items()}
    ref = torch.cat(captured).double().numpy()
    f_fast, f_tf1 = np.concatenate(feats["fast"]), np.concatenate(feats["tf1"])

    print(f"torchmetrics path, NCHW batches:          {ips['tm']:7.2f} images/s")
    print(f"torchmetrics path, channels-last batches: {ips['tm_cl']:7.2f} images/s")
    print(
        f"fast path, same resize:                   {ips['fast']:7.2f} images/s  "
        f"speedup {ips['fast'] / ips['tm']:.2f}x / {ips['fast'] / ips['tm_cl']:.2f}x  "
        f"max|feature diff| {np.abs(f_fast - ref).max():.2e}"
    )
    print(
        f"fast path, tf1 resize (metric definition):{ips['tf1']:7.2f} images/s  "
        f"speedup {ips['tf1'] / ips['tm']:.2f}x / {ips['tf1'] / ips['tm_cl']:.2f}x  "
        f"(tf1 vs F.interpolate resize: max|feature diff| {np.abs(f_tf1 - f_fast).max():.3f})"
    )
    tm_fid = float(metrics["tm"].compute())
    ours = fid_from_stats(
        GaussianStats.from_features(f_fast[:half]), GaussianStats.from_features(f_fast[half:])
    )
    print(f"FID first vs second half: torchmetrics {tm_fid:.4f}, cellbench {ours:.4f}")
    if args.roofline:
        roofline(ips["tf1"])


def network_gflop() -> float:
    """GFLOP of one 299x299 image through the unmodified network (2 FLOP per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cellbench.features.inception import INPUT_SIZE, load_inception

    net = load_inception(None, "cpu")
    x = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 1e9


def nominal_peak() -> tuple[float, str]:
    """fp32 GFLOP/s = usable CPUs x clock x FLOP per cycle, and how it was reckoned.

    FLOP per cycle per core: two FMA pipes of the widest vector unit the CPU reports (AVX-512: 16
    lanes, AVX2 + FMA: 8), 2 FLOP per FMA; without FMA, SSE's 4 lanes in an add and a multiply
    pipe. The clock is the one
    /proc/cpuinfo reports (a virtual machine's host may boost above it).
    """
    flags, mhz = set(), 0.0
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return float("nan"), "no /proc/cpuinfo"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and not mhz:
            mhz = float(value)
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    cpus = usable_cpus()
    how = f"{cpus} cpus x {mhz:.0f} MHz x {per_cycle} FLOP/cycle"
    return cpus * mhz * 1e6 * per_cycle / 1e9, how


def matmul_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    """fp32 GFLOP/s of torch's ``size`` x ``size`` matrix product, best of repeated calls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def roofline(images_per_s: float) -> None:
    """Print the network's arithmetic against the machine's peak and matmul rate."""
    gflop = network_gflop()
    peak, how = nominal_peak()
    mm = matmul_gflops()
    achieved = images_per_s * gflop
    print(f"network: {gflop:.2f} GFLOP per 299x299 image")
    print(f"nominal fp32 peak: {peak:.1f} GFLOP/s ({how}) -> at most {peak / gflop:.1f} images/s")
    print(f"torch fp32 matmul 2048^3: {mm:.1f} GFLOP/s -> {mm / gflop:.1f} images/s at that rate")
    print(
        f"fast path (tf1 resize) {images_per_s:.2f} images/s = {achieved:.1f} GFLOP/s: "
        f"{achieved / peak:.0%} of the nominal peak, {achieved / mm:.0%} of the matmul rate"
    )


if __name__ == "__main__":
    main()
