"""User-facing errors.

Every mistake a user can make (a missing file, a corrupt image, an unknown compound) raises a
:class:`CellbenchError`. The CLI prints it as one line (what is wrong, which file, the fix)
and exits non-zero without a traceback (``--debug`` shows the traceback).
"""

from __future__ import annotations

from pathlib import Path


class CellbenchError(Exception):
    """An error caused by user input, printed as one line by the CLI.

    Args:
        message: what is wrong, without a trailing period.
        path: the file or folder concerned, if any.
        fix: what the user should do about it, if known.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = message.rstrip(".")
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class DataError(CellbenchError):
    """A dataset folder, index or crop that cannot be used."""


class ImageError(CellbenchError):
    """A generated image that cannot be read or has the wrong form."""


class ProtocolError(CellbenchError):
    """A protocol file that is missing, malformed, or does not match the dataset."""


class DownloadError(CellbenchError):
    """A download that failed or produced data that does not verify."""


class UnknownNameError(CellbenchError):
    """A name (dataset, compound, backend ...) not found in a registry."""
