"""Terminal output: progress bars and messages on stderr, results on stdout.

Progress bars show only when stderr is a terminal (or ``CELLBENCH_PROGRESS=1``); set
``CELLBENCH_PROGRESS=0`` to silence them everywhere. Long commands keep the screen moving: a bar
per phase with an ETA, a spinner per start-up step (:func:`step`), and one summary line in place
of the bars before the results are printed (:class:`PhaseDisplay`). Messages (:func:`info`) always
go to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False, soft_wrap=True)


def progress_enabled() -> bool:
    """Whether progress bars should be drawn."""
    env = os.environ.get("CELLBENCH_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields ``update(done, total)``."""
    if not progress_enabled():
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total_: int) -> None:
            bar.update(task, completed=done, total=total_)

        yield update


def info(message: str) -> None:
    """A status line on stderr."""
    err_console.print(message, soft_wrap=True)


class PhaseDisplay:
    """One live display on stderr for a long command: a bar per phase, a spinner per start-up step.

    Bars show done/total, elapsed time and an ETA; steps (:func:`step`: loading a network,
    reading a cache, starting workers) show a spinner and their elapsed time, so the screen
    changes at least every second. :meth:`stop` clears the bars and prints one line instead:
    each phase and each step of a second or more, with its duration.

    Args:
        console: where to draw (default: stderr).
        clock: seconds, monotonic (a fake one in tests).
    """

    def __init__(self, console: Console | None = None, clock: Callable[[], float] | None = None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._clock = clock or time.monotonic
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console or err_console,
            transient=True,
            refresh_per_second=4,
        )
        self.tasks: dict[str, int] = {}
        self.spans: dict[str, list[float]] = {}  # phase or step -> [start, end]
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.bar.start()

    def update(self, phase: str, done: int, total: int) -> None:
        """Progress of ``phase``: ``done`` of ``total`` items."""
        now = self._clock()
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total)
            self.spans[phase] = [now, now]
        self.bar.update(self.tasks[phase], completed=done, total=total)
        self.spans[phase][1] = now
        self.totals[phase] = total
        self.done[phase] = done

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A start-up step without a count: a spinner and its elapsed time while it runs."""
        start = self._clock()
        task = self.bar.add_task(name, total=None)
        try:
            yield
        finally:
            self.bar.remove_task(task)
            self.spans[name] = [start, self._clock()]

    def summary(self) -> str:
        """The line that replaces the bars: what ran and how long (steps under a second left out)."""
        parts = []
        for name, (start, end) in self.spans.items():
            seconds = end - start
            if name in self.totals:
                parts.append(f"{name} {self.done[name]}/{self.totals[name]} {seconds:.1f} s")
            elif seconds >= 1.0:
                parts.append(f"{name} {seconds:.1f} s")
        return "done: " + "; ".join(parts) if parts else ""

    def stop(self) -> None:
        """Clear the bars and print :meth:`summary` (once)."""
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        if not self.bar.live.is_started:
            return
        self.bar.stop()
        line = self.summary()
        if line:
            self.bar.console.print(line, soft_wrap=True, highlight=False)


_ACTIVE: PhaseDisplay | None = None


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Announce a start-up step (loading a network, reading a cache, starting workers).

    Inside :func:`phase_progress`'s display it is a spinner line with its elapsed time; otherwise,
    when progress is shown, one line ``name ...`` on stderr; silent when progress is off.
    """
    if _ACTIVE is not None:
        with _ACTIVE.step(name):
            yield
        return
    if progress_enabled():
        err_console.print(f"{name} ...", soft_wrap=True, highlight=False)
    yield


def phase_progress(
    console: Console | None = None, clock: Callable[[], float] | None = None
) -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A phase-aware progress display on stderr (:class:`PhaseDisplay`); ``(update, stop)``.

    No-ops when progress is off (stderr not a terminal and no ``CELLBENCH_PROGRESS=1``).
    """
    global _ACTIVE
    if not progress_enabled():
        return lambda phase, done, total: None, lambda: None
    display = PhaseDisplay(console, clock)
    _ACTIVE = display
    return display.update, display.stop


def format_size(n_bytes: int) -> str:
    """``n_bytes`` for people: ``0 B``, ``812 kB``, ``19.4 MB``, ``1.2 GB`` (powers of 1000)."""
    if n_bytes < 1000:
        return f"{n_bytes} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n_bytes < scale * 1000 or unit == "GB":
            value = n_bytes / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{n_bytes} B"
