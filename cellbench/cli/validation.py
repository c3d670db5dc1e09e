"""``cellbench validate-metrics``: prove each reward responds to the defect it is meant to catch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app
from cellbench.cli.options import DataDirOpt, DeviceOpt, JsonOpt


@app.command("validate-metrics")
def validate_metrics(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for report.md, validation.json, CSVs, figures.")
    ],
    dataset: Annotated[
        str,
        typer.Option(help="Dataset whose test targets are damaged (see `cellbench ls datasets`)."),
    ] = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    severities: Annotated[
        str, typer.Option(help="Comma-separated increasing severities in (0, 1].")
    ] = "0.25,0.5,0.75,1",
    n_images: Annotated[
        int, typer.Option("--n-images", help="Test targets damaged per defect and severity.")
    ] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the subset, defects and bootstrap.")] = 0,
    defects: Annotated[
        str | None,
        typer.Option(help="Comma-separated defects to run (default: all; see the report)."),
    ] = None,
    real_crops: Annotated[
        Path | None,
        typer.Option(
            "--real-crops",
            help="Folder of real BBBC021 crops with crop_labels.csv (e.g. "
            "../shared/data/bbbc021_real/singh_crops_68x68); also draws segmentation overlays.",
        ),
    ] = None,
    real_n_images: Annotated[
        int, typer.Option("--real-n-images", help="Real target crops damaged (at most 290).")
    ] = 256,
    seg_truth: Annotated[
        Path | None,
        typer.Option(
            "--seg-truth",
            help="Nuclei ground truth with images/ and labels_derived/ (e.g. "
            "../shared/data/real_seg/dsb2018_stage1_train_subset): nucleus F1 per image.",
        ),
    ] = None,
    no_fid: Annotated[
        bool, typer.Option("--no-fid", help="Skip Inception: no FID/KID and no moa reward.")
    ] = False,
    backend: Annotated[str, typer.Option(help="Segmentation backend.")] = "classical",
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Damage real crops with controlled defects at several severities, score them like `eval`,
    and write a report: sensitivity matrix, monotonicity per defect, segmentation accuracy."""
    from cellbench.io import check_out_folder
    from cellbench.ui import info, phase_progress
    from cellbench.validation.report import parse_severities, run_validation

    check_out_folder(out)
    sev = parse_severities(severities)
    names = None if defects is None else [d.strip() for d in defects.split(",") if d.strip()]
    update, stop = phase_progress()
    try:
        doc = run_validation(
            out,
            dataset=dataset,
            data_dir=data_dir,
            severities=sev,
            n_images=n_images,
            seed=seed,
            fid=not no_fid,
            defects=names,
            real_crops=real_crops,
            real_n_images=real_n_images,
            seg_truth=seg_truth,
            backend=backend,
            device=device,
            command=" ".join(["cellbench", *sys.argv[1:]]),
            progress=update,
        )
    finally:
        stop()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for source in ("sim", "real"):
        if source not in doc:
            continue
        rows = [
            (d, t, r["passed"])
            for d, res in doc[source]["defects"].items()
            for t, r in res["targets"].items()
        ]
        failed = [f"{d}->{t}" for d, t, ok in rows if not ok]
        info(
            f"{source}: {sum(ok for *_, ok in rows)}/{len(rows)} defect/target pairs pass"
            + (f" (not: {', '.join(failed)})" if failed else "")
        )
    info(f"[green]wrote[/green] {Path(out) / 'report.md'}")
