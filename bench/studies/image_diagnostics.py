"""Where generated images differ from real ones: segmentation features, local artefacts, sinks.

FID says that a generator's images are unlike the real ones, not how. This script compares image
folders that answer a protocol with the real target crops (and the control crops) of the same
tasks, on a random subset of ``--n`` tasks:

* the mean of each per-image feature of the classical segmenter (nucleus and cell counts, largest
  areas, roundness, nucleus-in-cytoplasm fraction) and the fraction of pixels the segmenter calls
  cytoplasm;
* local artefacts: the mean absolute difference between horizontally neighbouring pixels (the
  high-frequency energy), averaged over images and channels in each 8x8 block, divided by the
  same map of the real targets. The block with the largest ratio is reported; real images give
  ratios near 1 everywhere, a generator that paints noise in one place gives a large one there.

With ``--checkpoint`` (CellFlux or CellFluxRL runs) it also profiles each attention layer of the
network at three flow times, on points of the training path between the same tasks' noised
controls and their targets: the share of attention each key pixel receives, relative to a
uniform share, and where the largest one is (the shipped CPU CellFlux piles 10-17 times its
share on the corner pixel where it draws a noise patch). For a network with ``null_attention``
the share the null key takes is printed too.

    python bench/studies/image_diagnostics.py out/demo/identity out/demo/cellflux-long \\
        --data-dir out/demo/data --protocol out/demo/protocol.csv --n 300 \\
        --checkpoint checkpoints/cellflux-long
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cellbench.errors import CellbenchError

BLOCK = 8
FLOW_TIMES = (0.1, 0.5, 0.9)


def high_frequency_map(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (H, W - 1): mean |x[:, j + 1] - x[:, j]| over images and channels."""
    x = images.astype(np.float32)
    return np.abs(np.diff(x, axis=2)).mean(axis=(0, 3))


def worst_block(gen_map: np.ndarray, real_map: np.ndarray, block: int = BLOCK) -> dict:
    """The ``block`` x ``block`` tile where ``gen_map / real_map`` (tile means) is largest."""
    h, w = gen_map.shape
    rows, cols = h // block, w // block
    tile = (slice(0, rows * block), slice(0, cols * block))

    def tiles(m: np.ndarray) -> np.ndarray:
        return m[tile].reshape(rows, block, cols, block).mean(axis=(1, 3))

    ratio = tiles(gen_map) / np.maximum(tiles(real_map), 1e-6)
    r, c = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return {
        "ratio": float(ratio[r, c]),
        "median_ratio": float(np.median(ratio)),
        "row": int(r * block),
        "col": int(c * block),
    }


def image_summary(images: np.ndarray, dna_channel: int) -> dict[str, float]:
    """Means of the segmenter's per-image features and of its cytoplasm fraction."""
    from cellbench.features.segment.backends import get_backend
    from cellbench.features.segment.classical import features_from_masks

    backend = get_backend("classical")
    rows = []
    for img in images:
        seg = backend.segment(img, dna_channel=dna_channel)
        rows.append({**features_from_masks(seg), "cyto_fraction": float(np.mean(seg.cyto_mask))})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def attention_profile(
    checkpoint: Path,
    ds,
    table,
    controls: np.ndarray,
    targets: np.ndarray,
    seed: int,
    times: tuple[float, ...] = FLOW_TIMES,
) -> list[dict]:
    """Per attention layer and flow time: the largest relative key share and where it is.

    ``controls`` and ``targets`` are the uint8 crops of ``table``'s tasks.
    """
    import torch

    from cellbench.data.torch_dataset import to_model_range
    from cellbench.generators import get_generator_class
    from cellbench_baselines.checkpoint import checkpoint_model
    from cellbench_baselines.common import fingerprint_batch
    from cellbench_baselines.nn.layers import AttentionBlock

    gen = get_generator_class(checkpoint_model(checkpoint)).load(ds, checkpoint, device="cpu")
    unet = getattr(gen, "unet", None)
    blocks = [m for m in unet.modules() if isinstance(m, AttentionBlock)] if unet else []
    if not blocks:
        raise CellbenchError("the network has no attention layers", path=checkpoint)
    cond = fingerprint_batch(ds, list(table["compound"]))
    g = torch.Generator().manual_seed(seed)
    source = to_model_range(controls)
    source = source + torch.randn(source.shape, generator=g) * float(gen.config["noise_std"])
    target = to_model_range(targets)
    seen: list[tuple[int, torch.Tensor]] = []

    def hook(module: AttentionBlock, inputs: tuple, _out: torch.Tensor) -> None:
        weights = module.attention_weights(inputs[0]).mean(dim=(0, 1, 2))  # share per key
        seen.append((inputs[0].shape[-1], weights))

    handles = [b.register_forward_hook(hook) for b in blocks]
    out = []
    try:
        for t in times:
            seen.clear()
            # a point on the training path between the noised control and the real target
            x = (1.0 - t) * source + t * target
            with torch.no_grad():
                unet(x, torch.tensor(float(t)), cond)
            for layer, (side, share) in enumerate(seen):
                null = float(share[-1]) if blocks[layer].null_key else None
                pixels = share[: side * side] if null is not None else share
                rel = pixels * (side * side)
                r, c = divmod(int(torch.argmax(rel)), side)
                out.append(
                    {
                        "t": t,
                        "layer": layer,
                        "grid": side,
                        "max_share": float(rel.max()),
                        "row": r,
                        "col": c,
                        "null_share": null,
                    }
                )
    finally:
        for h in handles:
            h.remove()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, help="image folders answering the protocol")
    ap.add_argument("--dataset", default="bbbc021-sim")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument(
        "--protocol", type=Path, default=None, help="default: the default named protocol, built"
    )
    ap.add_argument("--n", type=int, default=300, help="random tasks to compare (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, nargs="*", default=[], help="attention profile")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.evaluation import load_protocol_for
    from cellbench.images import one_image_per_task

    try:
        if args.n < 1:
            raise CellbenchError(f"--n {args.n}: compare at least one task")
        ds = open_dataset(args.dataset, args.data_dir)
        table, _ = load_protocol_for(ds, args.protocol, None, 0)
        if args.n < len(table):
            table = table.sample(args.n, random_state=args.seed).reset_index(drop=True)
        dna = ds.card.dna_channel
        targets = ds.load_crops(table["target_key"].to_numpy())
        controls = ds.load_crops(table["control_key"].to_numpy())
        real_hf = high_frequency_map(targets)
        result: dict = {"n": len(table), "images": {}, "attention": {}}

        def sources():  # (label, images); a folder is read when its turn comes
            yield "real targets", targets
            yield "controls", controls
            for folder in args.folders:
                yield str(folder), one_image_per_task(folder, table)

        for label, images in sources():
            entry = image_summary(images, dna)
            entry["artefact"] = worst_block(high_frequency_map(images), real_hf)
            result["images"][label] = entry
            a = entry["artefact"]
            print(
                f"{label}: nuc_count {entry['nuc_count']:.2f}, cell_count "
                f"{entry['cell_count']:.2f}, roundness {entry['roundness']:.3f}, cyto_fraction "
                f"{entry['cyto_fraction']:.3f}; worst {BLOCK}x{BLOCK} block at (row {a['row']}, "
                f"col {a['col']}): high-frequency energy {a['ratio']:.1f}x the targets' "
                f"(median block {a['median_ratio']:.2f}x)",
                flush=True,
            )
        for ckpt in args.checkpoint:
            rows = attention_profile(ckpt, ds, table, controls, targets, args.seed)
            result["attention"][str(ckpt)] = rows
            for r in rows:
                null = "" if r["null_share"] is None else f", null key {r['null_share']:.2f}"
                print(
                    f"{ckpt} t={r['t']} attention layer {r['layer']} ({r['grid']}x{r['grid']}): "
                    f"largest key share {r['max_share']:.1f}x uniform at (row {r['row']}, col "
                    f"{r['col']}){null}",
                    flush=True,
                )
    except CellbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
