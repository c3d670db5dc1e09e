"""Community commands: submission validate|grid, leaderboard build, regress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app
from cellbench.cli.options import JsonOpt

submission_app = typer.Typer(
    help="Leaderboard submissions: validate a folder, make its sample grid.", no_args_is_help=True
)
leaderboard_app = typer.Typer(help="Build the static leaderboard site.", no_args_is_help=True)
app.add_typer(submission_app, name="submission")
app.add_typer(leaderboard_app, name="leaderboard")


@submission_app.command("validate")
def submission_validate(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Submission folders, or a folder of them (e.g. submissions/)."),
    ],
    base: Annotated[
        str | None,
        typer.Option(
            help="Git ref of the merged state (e.g. origin/main): merged numbers must not change."
        ),
    ] = None,
    merged: Annotated[
        Path | None,
        typer.Option(help="Without git: a folder of merged submissions to compare with."),
    ] = None,
    allow_stale: Annotated[
        bool, typer.Option(help="Accept results of an older metric suite version.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check submissions: schema, naming, versions, hashes, sizes, paths, numbers (exit 1 if any problem)."""
    from cellbench.submission.validate import validate_paths

    found = validate_paths(paths, base=base, merged_dir=merged, allow_stale=allow_stale)
    problems = [p for ps in found.values() for p in ps]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "valid": not problems,
                    "submissions": {
                        k: [{"path": p.path, "code": p.code, "message": p.message} for p in v]
                        for k, v in found.items()
                    },
                },
                indent=2,
            )
        )
    else:
        for p in problems:
            typer.echo(str(p))
        for folder, ps in found.items():
            if not ps:
                typer.echo(f"{folder}: ok", err=True)
    if problems:
        raise typer.Exit(1)


@submission_app.command("grid")
def submission_grid(
    images: Annotated[Path, typer.Argument(help="Folder of generated images.")],
    protocol: Annotated[Path, typer.Option(help="Protocol CSV the images answer.")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write (e.g. samples.png).")],
    per_moa: Annotated[int, typer.Option(help="Crops per MoA column.")] = 3,
) -> None:
    """Write a sample grid PNG: the first answered tasks of each MoA, one column per MoA."""
    from cellbench.submission.grid import sample_grid
    from cellbench.ui import info

    sample_grid(images, protocol, out, per_moa=per_moa)
    info(f"[green]wrote[/green] {out}")


@leaderboard_app.command("build")
def leaderboard_build(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the site (replaced if a previous build).")
    ],
    submissions: Annotated[Path, typer.Option(help="Folder of submissions.")] = Path("submissions"),
    stamp: Annotated[
        str | None,
        typer.Option(help="Build stamp text (default: UTC time, or $SOURCE_DATE_EPOCH)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Data folder holding the entries' datasets: each entry page then shows a "
            "control | generated | real target grid of its submitted images (without it, the "
            "page says there is none)."
        ),
    ] = None,
) -> None:
    """Build the static leaderboard (opens from disk: inline CSS/JS/SVG, no network), with
    CSV/JSON downloads of each table in OUT/downloads/."""
    from cellbench.leaderboard.build import build_leaderboard
    from cellbench.ui import info

    summary = build_leaderboard(submissions, out, stamp=stamp, data_dir=data_dir)
    info(
        f"[green]wrote[/green] {out / 'index.html'}: {summary.n_entries} entries, "
        f"{summary.n_tables} current table(s), {summary.n_stale} stale table(s)"
    )


@app.command("regress")
def regress_cmd(
    update: Annotated[
        bool,
        typer.Option(help="Re-score the committed images and rewrite the expected scores."),
    ] = False,
    folder: Annotated[
        Path | None, typer.Option(help="Regression set folder (default: tests/regress).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-score the committed reference images; fail if any metric moved beyond its tolerance."""
    from cellbench.regress import default_folder, run_regress

    report = run_regress(folder or default_folder(), update=update)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)
