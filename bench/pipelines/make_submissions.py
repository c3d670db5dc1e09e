"""Make the reference leaderboard entries on bbbc021-sim from real `cellbench` runs.

Each entry is answered with `cellbench generate`, scored with `cellbench eval`, given a sample
grid, its images packed into `images.tar.xz` (`cellbench submission pack`, so the leaderboard can
re-score them: `cellbench submission verify`) and a metadata file whose `commands` are the very commands this script ran (relative paths,
so anyone can repeat them), validated with `cellbench submission validate`, and only then moved
into `submissions/<DATE>_<entry>/`. Re-run it after every metric suite version bump.

    .venv/bin/python bench/pipelines/make_submissions.py                    # the two anchors
    .venv/bin/python bench/pipelines/make_submissions.py --runs runs --all  # + the trained models

Entries: the anchors `identity` and `real-shuffle` (no training), `cellflux-long` (the committed
`checkpoints/cellflux-long`), and, from the run folders under `--runs` that
`bench/pipelines/train_reference_generators.sh` and `cellbench rl` write (`cellflux`,
`cellfluxrl`, `impa`, `phendiff`), the models `cellflux`, `cellfluxrl`, `cellfluxrl-best-of-4`,
`impa` and `phendiff`. A folder with the same date and entry is replaced; older folders stay (they
show as stale entries of their suite on the page).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIM = "cellbench data sim --out data/bbbc021-sim --scale small --seed 0"
PROTOCOL = (
    "cellbench protocol --dataset bbbc021-sim --data-dir data --name cellflux-iid --seed 0 "
    "--out protocol.csv"
)
EVAL = (
    "cellbench eval images --dataset bbbc021-sim --data-dir data --protocol protocol.csv "
    "--out results.json"
)
GRID = "cellbench submission grid images --protocol protocol.csv --out samples.png"
PACK = "cellbench submission pack images --out images.tar.xz"
TRAIN = "cellbench train {model} --dataset bbbc021-sim --data-dir data --config cpu-small --seed 0"
CPU_SMALL_NOTES = "bbbc021-sim scale small, seed 0, training split only"


@dataclass
class Entry:
    """One reference entry: how its images are made and what its metadata says."""

    name: str
    generator: str
    kind: str
    description: str
    generate_opts: list[str] = field(default_factory=list)
    #: the run folder under --runs the generator loads (None: no checkpoint or a committed one)
    run: str | None = None
    #: commands that made the weights (repeatable, relative paths)
    training_commands: list[str] = field(default_factory=list)
    training: dict | None = None
    version: str = ""
    best_of: int = 1
    #: CPU hours the weights took, as measured when they were trained (None: not recorded)
    train_hours: float | None = None


def entries() -> dict[str, Entry]:
    rl_train = [
        TRAIN.format(model="cellflux") + " --steps 750 --out runs/cellflux",
        "cellbench rl cellflux --checkpoint runs/cellflux --dataset bbbc021-sim --data-dir data "
        "--config cpu-small --seed 0 --out runs/cellfluxrl",
    ]
    rl_training = {
        "dataset": "bbbc021-sim",
        "splits": ["train"],
        "notes": "base: cellflux cpu-small (750 steps, seed 0) on bbbc021-sim scale small; "
        "RL rollouts from training-split pairs only, scored with the metric suite's rewards",
    }
    sim_training = {"dataset": "bbbc021-sim", "splits": ["train"], "notes": CPU_SMALL_NOTES}
    out = [
        Entry(
            "identity",
            "identity",
            "anchor",
            "Anchor: every task answered with its control image, unchanged. "
            "The floor a generator must beat.",
        ),
        Entry(
            "real-shuffle",
            "real-shuffle",
            "anchor",
            "Anchor: every task answered with a real training crop of the same compound and "
            "dose. Upper-bound-like: its moa reward is the classifier's memorisation of its own "
            "training crops, not biology. Never a model.",
        ),
        Entry(
            "cellflux-long",
            "cellflux",
            "model",
            "CellFlux (Zhang et al. 2025), cellbench's implementation: the cpu-small network "
            "with 2x2 pixel folding and EDM output scalings (1.33M parameters), trained 20,000 "
            "steps in three stages on 2 CPU cores; sampled with 20 Heun steps, guidance 0.2. "
            "Weights in checkpoints/cellflux-long (docs/generators.md).",
            ["--checkpoint", "checkpoints/cellflux-long", "--sample-steps", "20"],
            training_commands=[
                "bash bench/pipelines/train_cellflux_long.sh  # or use the committed "
                "checkpoints/cellflux-long"
            ],
            training=sim_training,
            version="checkpoints/cellflux-long (20,000 steps)",
            train_hours=3.9,  # the three stages of train_cellflux_long.sh (docs/generators.md)
        ),
        Entry(
            "cellflux",
            "cellflux",
            "model",
            "CellFlux (Zhang et al. 2025), cellbench's implementation, preset cpu-small "
            "(1.35M parameters, 750 steps on 2 CPU cores, image-prediction parametrisation). "
            "A CPU smoke model.",
            run="cellflux",
            training_commands=[TRAIN.format(model="cellflux") + " --steps 750 --out runs/cellflux"],
            training=sim_training,
            version="cpu-small",
        ),
        Entry(
            "cellfluxrl",
            "cellfluxrl",
            "model",
            "CellFluxRL (Wu, Su, Zhang et al. 2026): cellbench's cpu-small CellFlux post-trained "
            "by DiffusionNFT on the overall reward, preset cpu-small (2 CPU cores), sampled "
            "without guidance (docs/cellfluxrl.md).",
            run="cellfluxrl",
            training_commands=rl_train,
            training=rl_training,
            version="cpu-small",
        ),
        Entry(
            "cellfluxrl-best-of-4",
            "cellfluxrl",
            "model",
            "CellFluxRL (cpu-small, as the cellfluxrl entry) with best-of-4 test-time scaling: "
            "4 samples per task, the one with the highest overall reward kept. Selecting with "
            "the metric inflates it; the held-out metrics (FID/KID) are the independent check.",
            ["--best-of", "4"],
            run="cellfluxrl",
            training_commands=rl_train,
            training=rl_training,
            version="cpu-small",
            best_of=4,
        ),
        Entry(
            "impa",
            "impa",
            "model",
            "IMPA (Palma et al. 2025), cellbench's implementation, preset cpu-small with "
            "residual output (2 CPU cores). A CPU smoke model.",
            run="impa",
            training_commands=[TRAIN.format(model="impa") + " --out runs/impa"],
            training=sim_training,
            version="cpu-small",
        ),
        Entry(
            "phendiff",
            "phendiff",
            "model",
            "PhenDiff (Bourou et al. 2024), cellbench's implementation, preset cpu-small "
            "(1.22M parameters, 2 CPU cores). A CPU smoke model.",
            run="phendiff",
            training_commands=[TRAIN.format(model="phendiff") + " --out runs/phendiff"],
            training=sim_training,
            version="cpu-small",
        ),
    ]
    return {e.name: e for e in out}


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def make_entry(e: Entry, args: argparse.Namespace, protocol: Path, env: dict[str, str]) -> None:
    import cellbench

    bindir = Path(args.bin).resolve()
    work = Path(args.work) / e.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "data").symlink_to(Path(args.data).resolve())
    shutil.copy(protocol, work / "protocol.csv")
    gen_opts = list(e.generate_opts)
    if e.run is not None:
        (work / "runs").mkdir()
        (work / "runs" / e.run).symlink_to((Path(args.runs) / e.run).resolve())
        gen_opts = ["--checkpoint", f"runs/{e.run}", *gen_opts]
    if "checkpoints/cellflux-long" in gen_opts:
        (work / "checkpoints").symlink_to(ROOT / "checkpoints")
    generate = [
        "cellbench", "generate", e.generator, *gen_opts, "--protocol", "protocol.csv",
        "--dataset", "bbbc021-sim", "--data-dir", "data", "--seed", "0", "--out", "images",
    ]  # fmt: skip
    started = dt.datetime.now()
    run([str(bindir / generate[0]), *generate[1:], "--threads", str(args.threads)], work, env)
    generate_hours = (dt.datetime.now() - started).total_seconds() / 3600
    for cmd in (EVAL, GRID, PACK):
        argv = cmd.split()
        run([str(bindir / argv[0]), *argv[1:]], work, env)
    stage = Path(args.work) / "stage" / f"{args.date}_{e.name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in ("results.json", "results.per_image.csv", "samples.png", "images.tar.xz"):
        shutil.copy(work / name, stage / name)
    archive_sha = hashlib.sha256((stage / "images.tar.xz").read_bytes()).hexdigest()
    version = f"cellbench {cellbench.__version__}" + (f", {e.version}" if e.version else "")
    meta = {
        "schema": "cellbench.submission/1",
        "model": {"name": e.name if e.kind == "model" else e.generator, "version": version},
        "kind": e.kind,
        "description": e.description,
        "authors": [{"name": "cellbench developers"}],
        "contact": "@cellbench",
        "paper": None,
        "code": "https://github.com/cellbench/cellbench",
        "licence": "MIT",
        "training": e.training
        or {"dataset": None, "splits": [], "notes": "Not trained; see the description."},
        "test_images_seen": False,
        "best_of_n": {"used": e.best_of > 1, "n": e.best_of}
        | ({"selection_metric": "overall"} if e.best_of > 1 else {}),
        "compute": {
            "hardware": "2-core CPU (shared)" if e.kind == "model" else "CPU",
            "train_hours": e.train_hours if e.kind == "model" else 0,
            "generate_hours": round(generate_hours, 3),
        },
        "sample_grid": "samples.png",
        "commands": [SIM, *e.training_commands, PROTOCOL, " ".join(generate), EVAL, GRID, PACK],
        "images": {
            "archive": "images.tar.xz",
            "sha256": archive_sha,
            "bytes": (stage / "images.tar.xz").stat().st_size,
        },
    }
    (stage / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    run([str(bindir / "cellbench"), "submission", "validate", str(stage)], ROOT, env)
    dest = ROOT / "submissions" / stage.name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(stage), dest)
    print(f"wrote submissions/{stage.name}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / ".venv" / "bin"), help="folder of `cellbench`")
    p.add_argument("--data", default="data", help="folder holding bbbc021-sim (made if absent)")
    p.add_argument("--runs", default="runs", help="run folders of the trained models")
    p.add_argument("--date", default=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"))
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for generate")
    p.add_argument("--only", default="identity,real-shuffle", help="comma-separated entries")
    p.add_argument("--all", action="store_true", help="every entry (needs the runs)")
    args = p.parse_args(argv)
    table = entries()
    names = list(table) if args.all else [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown entries {unknown}; known: {', '.join(table)}")
    missing = [
        f"{args.runs}/{table[n].run}"
        for n in names
        if table[n].run and not (Path(args.runs) / table[n].run).is_dir()
    ]
    if missing:
        p.error(f"missing run folders {missing}: train them first (see this script's docstring)")
    args.work = args.work or tempfile.mkdtemp(prefix="cellbench-submissions-")
    env = {**os.environ, "CELLBENCH_PROGRESS": os.environ.get("CELLBENCH_PROGRESS", "0")}
    bindir = Path(args.bin)
    data = Path(args.data)
    if not (data / "bbbc021-sim" / "metadata" / "bbbc021_df_all.csv").is_file():
        sim = SIM.split()
        sim[sim.index("data/bbbc021-sim")] = str(data / "bbbc021-sim")
        run([str(bindir / "cellbench"), *sim[1:]], ROOT, env)
    protocol = Path(args.work) / "protocol.csv"
    argv_p = PROTOCOL.split()
    argv_p[argv_p.index("data")] = str(data.resolve())
    argv_p[argv_p.index("protocol.csv")] = str(protocol)
    run([str(bindir / argv_p[0]), *argv_p[1:]], ROOT, env)
    for n in names:
        make_entry(table[n], args, protocol, env)


if __name__ == "__main__":
    main()
