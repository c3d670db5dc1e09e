"""Entry point of the ``cellbench`` command: registers every command module on the app.

Heavy libraries (torch, pandas, scikit-image) are imported inside the commands, so
``cellbench --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import sys

from cellbench.cli import artifacts as _artifacts  # noqa: F401
from cellbench.cli import community as _community  # noqa: F401
from cellbench.cli import compare as _compare  # noqa: F401

# each command module registers its commands on `app` when imported, in workflow order
from cellbench.cli import data as _data  # noqa: F401
from cellbench.cli import housekeeping as _housekeeping  # noqa: F401
from cellbench.cli import models as _models  # noqa: F401
from cellbench.cli import rl as _rl  # noqa: F401
from cellbench.cli import scoring as _scoring  # noqa: F401
from cellbench.cli import train as _train  # noqa: F401
from cellbench.cli import validation as _validation  # noqa: F401
from cellbench.cli.app import _state, app
from cellbench.errors import CellbenchError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: one-line errors, no traceback unless --debug."""
    args = sys.argv[1:]
    for i, a in enumerate(args):  # `cellbench eval merge ...` is the hidden `eval-merge` command
        if not a.startswith("-"):
            if a == "eval" and args[i + 1 : i + 2] == ["merge"]:
                sys.argv[1:] = [*args[:i], "eval-merge", *args[i + 2 :]]
            break
    try:
        app()
    except CellbenchError as exc:
        if _state["debug"]:
            raise
        from rich.markup import escape

        from cellbench.ui import err_console

        err_console.print(
            f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
