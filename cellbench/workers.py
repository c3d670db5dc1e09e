"""Worker processes that start the same from the CLI, a plain script and a notebook.

cellbench parallelises two things over processes: segmentation of large batches
(:mod:`cellbench.features.segment.backends`) and the simulator's rendering
(:func:`cellbench.data.sim.write_sim_dataset`); CellFluxRL's reward workers use the same context.
Workers are started with the ``spawn`` method (a fresh interpreter: safe after torch or BLAS
threads exist, and the default on macOS and Windows), but, unlike a plain ``spawn`` pool, they
never import the user's ``__main__`` module. A plain ``spawn`` worker re-runs the script that
started it, so a script calling cellbench at top level without an ``if __name__ == "__main__":``
guard started its own pool again inside every worker, and the pool broke
(``BrokenProcessPool``). cellbench's workers only ever run functions of importable modules, so
they do not need the user's ``__main__`` at all. See docs/scoring.md, "Worker processes and
threads".
"""

from __future__ import annotations

import contextlib
import multiprocessing.context
import os
import sys
import threading
import types
from collections.abc import Iterator

#: environment variable capping the worker processes (1: everything in the calling process)
WORKERS_ENV = "CELLBENCH_WORKERS"

_MAIN_LOCK = threading.Lock()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask on Linux, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count() -> int:
    """Worker processes to use: the usable CPUs, capped by ``$CELLBENCH_WORKERS`` when set."""
    n = usable_cpus()
    env = os.environ.get(WORKERS_ENV, "").strip()
    return max(1, min(n, int(env))) if env.isdigit() else n


@contextlib.contextmanager
def _without_user_main() -> Iterator[None]:
    """Show a blank ``__main__`` (no ``__spec__``, no ``__file__``) while a worker is launched.

    ``multiprocessing.spawn.get_preparation_data`` reads ``sys.modules["__main__"]`` when a worker
    is launched and tells the worker to re-import that module by path or by name; with a blank
    module it tells it nothing, so the worker never runs the user's script.
    """
    with _MAIN_LOCK:
        user_main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if user_main is None:
                sys.modules.pop("__main__", None)
            else:
                sys.modules["__main__"] = user_main


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A ``spawn`` process whose interpreter does not import the parent's ``__main__``."""

    @staticmethod
    def _Popen(process_obj):  # the name multiprocessing calls
        with _without_user_main():
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


_CONTEXT = _WorkerContext()


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context of every cellbench worker pool (``mp_context=`` / ``context=``).

    Tasks and initialisers sent to these workers must be functions of importable modules (not
    of the user's ``__main__``, which the workers do not import).
    """
    return _CONTEXT


def _import_in_worker(module: str) -> int:
    """Import ``module`` in a worker; its process id (so each call can land on another worker)."""
    import importlib
    import time

    importlib.import_module(module)
    time.sleep(0.05)  # hold this worker so the next call starts (or reaches) another one
    return os.getpid()


def warm_up(pool, n: int, module: str) -> None:
    """Start the ``n`` workers of a fresh ``pool`` and import ``module`` in them, and wait.

    The start-up cost (a new interpreter and its imports per worker) is paid here, where the
    caller can announce it, instead of inside the first real job.
    """
    for job in [pool.submit(_import_in_worker, module) for _ in range(n)]:
        job.result()
