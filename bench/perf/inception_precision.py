"""Inception feature pass in float32, TF32 and bfloat16: speed and distance from float32.

Issue 19 point 4 allows TF32 or bf16 for the FID / KID / MoA features only where they stay
within 1e-3 of float32, measured. cellbench's feature pass (``InceptionFeatures``) runs in full
float32 on every device (``inception.float32_only``); this script measures the other two on the
same crops, side by side:

* ``float32``: ``InceptionFeatures`` as the scorer runs it (the rewritten network, TF32 off);
* ``tf32``: the same network and inputs with TF32 allowed for cuDNN convolutions and matrix
  products (PyTorch's default for convolutions on a GPU; on the CPU the flag does nothing, so
  this row repeats float32 there);
* ``bf16``: the unmodified TorchScript network with its weights and inputs cast to bfloat16.

For each: images/s of the network pass alone (inputs already on the device, after one warm-up
batch; CUDA synchronised before the clock stops), the largest and the mean absolute difference
of the 2,048 features from float32 (features range 0 to about 5), and FID between the two
halves of the crops computed from that precision's features beside the float32 value.

Usage: python bench/perf/inception_precision.py [--device cuda] [--n 4096] [--batch 256]
       [--data-dir DEMO]   (crops of a bbbc021-sim folder; else simulated crops)
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

#: the issue's bound on a lower precision's distance from float32
BOUND = 1e-3


def timed_pass(
    net: Callable[[torch.Tensor], torch.Tensor], inputs: list[torch.Tensor], device: torch.device
) -> tuple[np.ndarray, float]:
    """Features of every input batch (float64) and images/s, after one warm-up batch."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        net(inputs[0])
        sync()
        t0 = time.perf_counter()
        outs = [net(x) for x in inputs]
        sync()
        dt = time.perf_counter() - t0
    feats = torch.cat([o.float() for o in outs]).cpu().double().numpy()
    return feats, sum(len(x) for x in inputs) / dt


def crops_for(n: int, data_dir: str | None) -> np.ndarray:
    """n crops of a bbbc021-sim folder (its first test tasks' controls), else simulated ones."""
    if data_dir is None:
        from inception_speed import make_crops  # beside this script

        return make_crops(n)
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.protocol import build_protocol

    ds = open_dataset("bbbc021-sim", data_dir)
    keys = build_protocol(ds, "test", 0)["control_key"].tolist()[:n]
    return ds.load_crops(keys)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=None, help="crops (default 4096 on cuda, 32 on cpu)")
    ap.add_argument("--batch", type=int, default=None, help="default 256 on cuda, 8 on cpu")
    ap.add_argument("--data-dir", help="folder holding bbbc021-sim (default: simulated crops)")
    args = ap.parse_args()

    from cellbench.features.inception import InceptionFeatures, load_inception, tf32_allowed
    from cellbench.metrics.fid import GaussianStats, fid_from_stats

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n = args.n or (4096 if cuda else 32)
    batch = args.batch or (256 if cuda else 8)
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {name}, torch {torch.__version__}"
    )
    crops = crops_for(n, args.data_dir)
    n = len(crops)
    ext = InceptionFeatures(device=device, batch_size=batch)
    with torch.inference_mode():
        inputs = [
            ext.preprocess(torch.from_numpy(crops[s : s + batch])).contiguous(
                memory_format=torch.channels_last
            )
            for s in range(0, n, batch)
        ]
    raw16 = load_inception(ext.weights_path, device).to(torch.bfloat16).eval()

    def fast(x: torch.Tensor) -> torch.Tensor:
        return ext._model(x)

    def bf16(x: torch.Tensor) -> torch.Tensor:
        return raw16(x.to(torch.bfloat16))

    rows = []
    with tf32_allowed(False):
        ref, speed = timed_pass(fast, inputs, device)
    rows.append(("float32 (the scorer's)", ref, speed))
    with tf32_allowed(True):
        rows.append(
            (
                "tf32" + ("" if cuda else " (no effect on the CPU)"),
                *timed_pass(fast, inputs, device),
            )
        )
    with tf32_allowed(False):
        rows.append(("bf16 (weights and inputs)", *timed_pass(bf16, inputs, device)))
    check = ext(crops[: min(n, 2 * batch)])  # the public path: the same float32 features
    same = float(np.abs(check - ref[: len(check)]).max())

    half = n // 2

    def fid(f: np.ndarray) -> float:
        return fid_from_stats(
            GaussianStats.from_features(f[:half]), GaussianStats.from_features(f[half:])
        )

    fid_ref = fid(ref) if half >= 2 else float("nan")
    print(f"{n} crops of 96x96, batches of {batch}, device {device}")
    print(
        "| precision | images/s (network pass) | max abs diff vs float32 | mean abs diff | within 1e-3 | FID of the two halves |"
    )
    print("|---|---|---|---|---|---|")
    for label, feats, speed in rows:
        d = np.abs(feats - ref)
        f = fid(feats) if half >= 2 else float("nan")
        rate = f"{speed:,.0f}" if speed >= 100 else f"{speed:.2f}"
        print(
            f"| {label} | {rate} | {d.max():.2e} | {d.mean():.2e} | "
            f"{'yes' if d.max() <= BOUND else 'no'} | {f:.4f} ({f - fid_ref:+.2e}) |"
        )
    print(f"InceptionFeatures() itself vs the float32 row: max abs diff {same:.2e}")


if __name__ == "__main__":
    main()
