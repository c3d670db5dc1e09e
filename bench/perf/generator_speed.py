"""Training and sampling throughput of the trainable reference generators.

Measures, for each model and preset, with freshly initialised weights (speed does not depend on
the weight values) and synthetic batches of the right shape (no dataset needed):

* training throughput: target images per second through ``training_step`` (forward, backward,
  optimiser step), after ``--warmup`` untimed steps;
* sampling throughput: images per second of the full sampler. CellFlux is timed at the paper's
  setting (50 Heun steps on the EDM grid with guidance w = 0.2: 200 UNet evaluations per image)
  and at the preset's own ``sample_steps``; PhenDiff at its preset's DDIM steps (inversion +
  regeneration); IMPA as one generator + mapping pass.

Examples::

    python bench/perf/generator_speed.py --preset cpu-small --threads 1
    python bench/perf/generator_speed.py --preset paper --device cuda --train-batch 128 --sample-batch 256
    python bench/perf/generator_speed.py --preset paper --train-batch 2 --train-steps 1 --no-sampling

The machine is reported with the numbers (CPU model, threads, torch version, device); figures on a
shared machine vary with its load, so the script also prints the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cellbench_baselines.cellflux import CellFlux, CellFluxTrainable
from cellbench_baselines.config import resolve_config
from cellbench_baselines.impa import IMPA, IMPATrainable
from cellbench_baselines.phendiff import PhenDiff, PhenDiffTrainable

FP_DIM = 1024
N_CLASSES = 36  # DMSO + 35 compounds, the size of a BBBC021 class table


def _batch(n: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "control": (torch.rand(n, 3, 96, 96, generator=g) * 2 - 1).to(device),
        "target": (torch.rand(n, 3, 96, 96, generator=g) * 2 - 1).to(device),
        "fingerprint": torch.randint(0, 4, (n, FP_DIM), generator=g).float().to(device),
        "compound_idx": torch.randint(0, N_CLASSES - 1, (n,), generator=g).to(device),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _build(model: str, preset: str):
    if model == "cellflux":
        cfg = resolve_config(CellFlux.presets, preset)
        return cfg, CellFluxTrainable(cfg, cond_dim=FP_DIM)
    if model == "impa":
        cfg = resolve_config(IMPA.presets, preset)
        domains = ["DMSO", *[f"c{i}" for i in range(N_CLASSES - 1)]]
        return cfg, IMPATrainable(cfg, domains, np.zeros(FP_DIM, np.float32))
    cfg = resolve_config(PhenDiff.presets, preset)
    cfg["classes"] = ["DMSO", *[f"c{i}" for i in range(N_CLASSES - 1)]]
    cfg["unet"]["num_classes"] = N_CLASSES
    cfg["unet_diffusers"]["num_class_embeds"] = N_CLASSES
    return cfg, PhenDiffTrainable(cfg)


def bench_train(model: str, preset: str, batch: int, steps: int, warmup: int, device) -> dict:
    torch.manual_seed(0)
    cfg, trainable = _build(model, preset)
    trainable.to(device)
    if device.type == "cuda" and cfg["mixed_precision"] == "bf16":
        trainable._autocast_dtype = torch.bfloat16
    for module in trainable.modules().values():
        module.train()
    b = _batch(batch, device)
    for s in range(warmup):
        trainable.training_step(b, s)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    for s in range(steps):
        trainable.training_step(b, warmup + s)
    _sync(device)
    dt = time.perf_counter() - t0
    out = {
        "params_M": round(sum(trainable.n_parameters().values()) / 1e6, 3),
        "train_batch": batch,
        "train_step_s": round(dt / steps, 4),
        "train_images_per_s": round(batch * steps / dt, 3),
    }
    if device.type == "cuda":
        out["train_peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


@torch.no_grad()
def bench_sample(model: str, preset: str, batch: int, device, steps: int | None) -> dict:
    torch.manual_seed(0)
    cfg, trainable = _build(model, preset)
    with torch.no_grad():  # non-zero outputs, so the solver does real work
        for module in trainable.modules().values():
            for p in module.parameters():
                p.add_(0.01 * torch.randn_like(p))
    b = _batch(batch, device)
    if model == "impa":
        nets = trainable.nets
        gen = IMPA(None, cfg, nets["generator"], nets["mapping"], device)  # type: ignore[arg-type]

        def run() -> torch.Tensor:
            return gen.translate(b["control"], b["fingerprint"], seed=0)

        nfe, label = 1, "one generator + mapping pass"
    elif model == "cellflux":
        unet = trainable.unet
        if steps is not None:
            cfg["sample_steps"] = steps
        gen = CellFlux(None, cfg, unet, device)  # type: ignore[arg-type]

        def run() -> torch.Tensor:
            return gen.sample(b["control"], b["fingerprint"], seed=0)

        nfe = (2 if cfg["sampler"] == "heun" else 1) * int(cfg["sample_steps"])
        nfe *= 2 if float(cfg["guidance"]) else 1
        label = f"heun {cfg['sample_steps']} steps, w={cfg['guidance']}"
    else:
        unet = trainable.unet
        if steps is not None:
            cfg["ddim_steps"] = steps
        gen = PhenDiff(None, cfg, unet, device)  # type: ignore[arg-type]
        labels = (b["compound_idx"] + 1).to(device)

        def run() -> torch.Tensor:
            return gen.translate(b["control"], labels)

        nfe = 2 * int(cfg["ddim_steps"])
        label = f"ddim {cfg['ddim_steps']} inversion + {cfg['ddim_steps']} generation steps"
    if device.type == "cuda":
        run()
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    run()
    _sync(device)
    dt = time.perf_counter() - t0
    out = {
        "sampler": label,
        "unet_evals_per_image": nfe,
        "sample_batch": batch,
        "sample_images_per_s": round(batch / dt, 4),
    }
    if device.type == "cuda":
        out["sample_peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="cellflux,phendiff,impa")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sample-batch", type=int, default=32)
    ap.add_argument("--no-sampling", action="store_true", help="time training only")
    ap.add_argument("--json", dest="json_out", type=Path, default=None, help="write results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for model in args.models.split(","):
        row = {"model": model, "preset": args.preset}
        row.update(
            bench_train(model, args.preset, args.train_batch, args.train_steps, args.warmup, device)
        )
        if args.no_sampling:
            pass
        elif model == "cellflux":
            paper = bench_sample(model, args.preset, args.sample_batch, device, steps=50)
            row["sample_paper_50_heun_cfg"] = paper
            cfg = resolve_config(CellFlux.presets, args.preset)
            if int(cfg["sample_steps"]) != 50:
                row["sample_preset"] = bench_sample(
                    model, args.preset, args.sample_batch, device, None
                )
        else:
            row["sample_preset"] = bench_sample(model, args.preset, args.sample_batch, device, None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {
        "torch": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps({"environment": env}))
    if args.json_out:
        args.json_out.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
