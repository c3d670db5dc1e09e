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

#: OS errors about a path that the CLI prints as one line (exit 2) when no command checked it
PATH_ERRORS = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    PermissionError,
)


def os_error_line(exc: OSError) -> str:
    """``<filename>: <strerror> (fix: check the path)``: an OS error about a path, in one line."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or str(exc)
    return f"{where}: {what} (fix: check the path)" if where else f"{what} (fix: check the path)"


def _print_error(text: str) -> None:
    from rich.markup import escape

    from cellbench.ui import err_console

    err_console.print(
        f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=True
    )


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
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except PATH_ERRORS as exc:
        # a bad path no command checked up front: one line, not the OS's traceback
        if _state["debug"]:
            raise
        _print_error(os_error_line(exc))
        sys.exit(CellbenchError.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
