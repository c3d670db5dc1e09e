"""How well a CellFlux network cleans the last part of the path (docs/generators.md).

Near t = 1, x_t is the treated image plus (1 - t) x (control + noise); a sample is only as clean
as the network's output there. For a checkpoint with ``prediction: "edm"`` this prints, at time
T on N pairs of a split, the network's own loss (unit scale) for sources with and without the
Gaussian noise, beside the loss of a zero output, and the image error of the implied x1.

Usage:
  python bench/studies/cellflux_denoise_probe.py CHECKPOINT [--data-dir data] [--split test] [--t 0.92]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", help="a cellflux run folder or checkpoint folder")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--t", type=float, default=0.92)
    ap.add_argument("--n", type=int, default=32, help="pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from torch.utils.data import default_collate

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.data.torch_dataset import PairedCropDataset
    from cellbench_baselines.cellflux import CellFlux, EDMVelocity

    ds = open_dataset("bbbc021-sim", args.data_dir)
    net = CellFlux.load(ds, args.checkpoint).unet
    if not isinstance(net, EDMVelocity):
        raise SystemExit(f"{args.checkpoint}: the probe needs a checkpoint with prediction 'edm'")
    pairs = PairedCropDataset(ds, args.split, seed=args.seed)
    batch = default_collate([pairs[i] for i in range(args.n)])
    x1, control, fp = batch["target"], batch["control"], batch["fingerprint"]
    noise = torch.randn(control.shape, generator=torch.Generator().manual_seed(args.seed))
    t = args.t
    sd, s = net.sigma_data, net.source_std
    d2 = (t * sd) ** 2 + ((1 - t) * s) ** 2
    c_skip, c_out = t * sd * sd / d2, (1 - t) * sd * s / d2**0.5
    print(f"{args.checkpoint}: t = {t}, {args.n} {args.split} pairs")
    for label, x0 in (("with noise", control + s * noise), ("without noise", control)):
        xt = (1 - t) * x0 + t * x1
        target = (x1 - c_skip * xt) / c_out
        with torch.no_grad():
            out = net.net(xt, torch.full((args.n,), t), fp)
        loss = float(((out - target) ** 2).mean())
        zero = float((target**2).mean())
        img = float(((c_skip * xt + c_out * out - x1) ** 2).mean())
        print(f"  {label:<14} loss {loss:.3f} (zero output {zero:.3f}), x1 image MSE {img:.5f}")


if __name__ == "__main__":
    main()
