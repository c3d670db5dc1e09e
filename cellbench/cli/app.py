"""The ``cellbench`` Typer application and its command groups (commands register on them).

Heavy libraries (torch, pandas, scikit-image) are imported inside the commands, so
``cellbench --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperGroup

from cellbench._version import __version__

#: the order of ``cellbench --help``: a user's workflow, then the maintainers' commands
WORKFLOW_ORDER: tuple[str, ...] = (
    "ls",
    "data",
    "protocol",
    "generate",
    "images",
    "eval",
    "compare",
    "submission",
    "leaderboard",
    "train",
    "rl",
    "segment",
    "artifacts",
    "reference",
    "classifier",
    "validate-metrics",
    "regress",
    "cache",
    "weights",
)


class _WorkflowGroup(TyperGroup):
    """Lists commands in :data:`WORKFLOW_ORDER` (any command not named there comes last)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


app = typer.Typer(
    name="cellbench",
    cls=_WorkflowGroup,
    help="Benchmark virtual cell image generators on BBBC021: data, protocol, scoring, leaderboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ls_app = typer.Typer(
    help="List what is registered: datasets, protocols, models (generators), metrics and "
    "segmenters.",
    no_args_is_help=True,
)
data_app = typer.Typer(help="Get, simulate and inspect datasets.", no_args_is_help=True)
images_app = typer.Typer(
    help="Check a generator's image folder against a protocol.", no_args_is_help=True
)
app.add_typer(ls_app, name="ls")
app.add_typer(data_app, name="data")
app.add_typer(images_app, name="images")

_state = {"debug": os.environ.get("CELLBENCH_DEBUG", "") not in ("", "0")}


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"cellbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_cb, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Benchmark virtual cell image generators on BBBC021."""
    if debug:
        _state["debug"] = True
