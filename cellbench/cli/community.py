"""Community commands: submission validate|verify|pack|grid, leaderboard build|rescore, regress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app
from cellbench.cli.options import JsonOpt

submission_app = typer.Typer(
    help="Leaderboard submissions: validate a folder, verify it by re-scoring its images, pack its "
    "images, make its sample grid.",
    no_args_is_help=True,
)
leaderboard_app = typer.Typer(
    help="Build the static leaderboard site; re-score its entries.", no_args_is_help=True
)
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


@submission_app.command("verify")
def submission_verify(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Submission folders, or a folder of them (e.g. submissions/)."),
    ],
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder holding the entries' dataset.")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Verify only shard K/N of the entries (sorted by name); pass every shard's "
            "--report to `leaderboard build --verified`."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Write the outcome per entry (JSON) for `leaderboard build --verified`."),
    ] = None,
    no_download: Annotated[
        bool, typer.Option("--no-download", help="Use only cached copies of URL image archives.")
    ] = False,
) -> None:
    """Re-score each entry's images with this toolkit and compare every number of its results.

    One line per entry (status and seconds), one line per differing field (JSON pointer,
    submitted and computed value); exit 1 unless every entry is verified (an older suite's entry
    without images is reported stale and does not fail).
    """
    from cellbench.evaluation import parse_shard
    from cellbench.io import atomic_write_text
    from cellbench.submission.verify import ACCEPTED, iter_lines, report_document, verify_paths

    shard_t = parse_shard(shard)

    def show(rep) -> None:
        for line in iter_lines(rep):
            typer.echo(line)

    reports = verify_paths(
        paths, data_dir=data_dir, shard=shard_t, download=not no_download, on_entry=show
    )
    if report is not None:
        atomic_write_text(report, json.dumps(report_document(reports, shard_t), indent=2) + "\n")
    bad = [r for r in reports if r.status not in ACCEPTED]
    n_ok = sum(r.status == "verified" for r in reports)
    typer.echo(
        f"{n_ok} of {len(reports)} entries verified, {len(bad)} failed or refused"
        + (f" (shard {shard})" if shard else ""),
        err=True,
    )
    if bad:
        raise typer.Exit(1)


@submission_app.command("pack")
def submission_pack(
    images: Annotated[Path, typer.Argument(help="The image folder that `cellbench eval` scored.")],
    out: Annotated[
        Path, typer.Option("--out", help="Archive to write (images.tar.xz in the submission).")
    ] = Path("images.tar.xz"),
) -> None:
    """Write the image folder as a deterministic images.tar.xz; print the metadata.json block."""
    from cellbench.submission.archive import ARCHIVE_NAME, pack_images

    digest = pack_images(images, out)
    block = {"archive": ARCHIVE_NAME, "sha256": digest, "bytes": out.stat().st_size}
    typer.echo(json.dumps({"images": block}, indent=2))


@submission_app.command("grid")
def submission_grid(
    images: Annotated[Path, typer.Argument(help="Folder of generated images.")],
    protocol: Annotated[Path, typer.Option(help="Protocol CSV the images answer.")],
    out: Annotated[
        Path, typer.Option("--out", help="PNG (or JPEG: .jpg) to write (e.g. samples.png).")
    ],
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
    verified: Annotated[
        list[Path] | None,
        typer.Option(
            help="Report(s) of `cellbench submission verify --report` (one per shard): only "
            "entries they verify, with these exact results, are ranked; the others are shown "
            "apart as self-reported."
        ),
    ] = None,
) -> None:
    """Build the static leaderboard (opens from disk: inline CSS/JS/SVG, no network), with
    CSV/JSON downloads of each table in OUT/downloads/."""
    from cellbench.leaderboard.build import build_leaderboard
    from cellbench.ui import info

    summary = build_leaderboard(
        submissions, out, stamp=stamp, data_dir=data_dir, verified=verified or []
    )
    info(
        f"[green]wrote[/green] {out / 'index.html'}: {summary.n_entries} entries, "
        f"{summary.n_tables} ranked table(s), {summary.n_self_reported} self-reported, "
        f"{summary.n_stale} stale table(s)"
    )


@leaderboard_app.command("rescore")
def leaderboard_rescore(
    submissions: Annotated[Path, typer.Option(help="Folder of submissions.")] = Path("submissions"),
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder holding the entries' dataset.")
    ] = None,
) -> None:
    """Re-make every entry's results under the current metric suite from its images.

    results.json and the per-image table are replaced together and metadata.json records the
    re-score; entries without images are left alone (shown as stale). Exit 1 if any entry failed.
    """
    from cellbench.leaderboard.rescore import rescore_all

    def show(rep) -> None:
        typer.echo(
            f"{rep.entry}: {rep.status} ({rep.seconds:.1f} s)"
            + (f": {rep.reason}" if rep.reason else "")
        )

    reps = rescore_all(submissions, data_dir=data_dir, on_entry=show)
    if not reps:  # like `leaderboard build` of an empty folder: exit 0, and say so
        typer.echo(f"0 entries in {submissions}: nothing to re-score")
    if any(r.status == "failed" for r in reps):
        raise typer.Exit(1)


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
