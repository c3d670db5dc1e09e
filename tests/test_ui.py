"""Progress on stderr: phases with ETA, start-up steps, a summary line in place of the bars."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from cellbench import ui


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120, color_system=None), buf


def test_display_shows_steps_bars_with_eta_and_ends_with_one_summary_line(monkeypatch) -> None:
    monkeypatch.setenv("CELLBENCH_PROGRESS", "1")
    console, buf = _terminal()
    clock = FakeClock()
    update, stop = ui.phase_progress(console, clock)
    display = ui._ACTIVE
    assert isinstance(display, ui.PhaseDisplay)
    columns = [type(c).__name__ for c in display.bar.columns]
    assert "TimeRemainingColumn" in columns and "SpinnerColumn" in columns
    with ui.step("loading the Inception network"):  # routed into the live display
        assert [t.description for t in display.bar.tasks] == ["loading the Inception network"]
        clock.now += 4.25
    with ui.step("reading cached reference features"):
        clock.now += 0.2  # under a second: not worth a mention afterwards
    update("segmenting", 0, 50)
    clock.now += 2.0
    update("segmenting", 50, 50)
    assert [t.description for t in display.bar.tasks] == ["segmenting"]  # steps removed
    stop()
    stop()  # idempotent
    assert ui._ACTIVE is None
    text = buf.getvalue()
    summary = "done: loading the Inception network 4.2 s; segmenting 50/50 2.0 s"
    assert text.count(summary) == 1
    assert text.rstrip().endswith(summary)  # the bars were cleared, the summary is last
    assert "reading cached" not in display.summary()


def test_step_without_display_prints_one_line_only_when_progress_is_on(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CELLBENCH_PROGRESS", "1")
    with ui.step("starting 2 segmentation workers"):
        pass
    assert "starting 2 segmentation workers ..." in capsys.readouterr().err
    monkeypatch.setenv("CELLBENCH_PROGRESS", "0")
    with ui.step("starting 2 segmentation workers"):
        pass
    update, stop = ui.phase_progress()
    update("x", 1, 2)
    stop()
    assert capsys.readouterr().err == ""
    assert ui._ACTIVE is None


def test_progress_is_off_when_stderr_is_not_a_terminal(monkeypatch) -> None:
    monkeypatch.delenv("CELLBENCH_PROGRESS", raising=False)
    monkeypatch.setattr(ui.sys, "stderr", io.StringIO())
    assert not ui.progress_enabled()


def test_inception_bar_moves_every_network_batch(monkeypatch) -> None:
    """The Inception phase reports before the first batch and after every 8 images."""
    from cellbench.scoring import scorer as scorer_mod

    calls: list[tuple[int, int]] = []
    fake = scorer_mod.Scorer.__new__(scorer_mod.Scorer)
    fake.inception = lambda batch: np.zeros((len(batch), 2048))
    fake.inception_features(np.zeros((20, 4, 4, 3), np.uint8), lambda d, t: calls.append((d, t)))
    assert calls == [(0, 20), (8, 20), (16, 20), (20, 20)]


def test_in_process_segmentation_reports_every_chunk(monkeypatch) -> None:
    from cellbench.features.segment import backends, classical

    monkeypatch.setenv("CELLBENCH_WORKERS", "1")
    monkeypatch.setattr(
        classical,
        "segment_batch",
        lambda imgs, dna_channel, profile=False: np.zeros((len(imgs), 6)),
    )
    calls: list[int] = []
    backend = backends.get_backend("classical")
    monkeypatch.setattr(backends, "PROGRESS_CHUNK", 32)
    backend.features(
        np.zeros((70, 4, 4, 3), np.uint8), dna_channel=2, on_progress=lambda d, t: calls.append(d)
    )
    assert calls == [32, 64, 70]
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setenv("CELLBENCH_WORKERS", "1")
    monkeypatch.setattr(
        classical,
        "segment_batch",
        lambda imgs, dna_channel, profile=False: np.zeros((len(imgs), 6)),
    )
    backend.features(
        np.zeros((600, 4, 4, 3), np.uint8), dna_channel=2, on_progress=lambda d, t: calls.append(d)
    )
    assert calls == [256, 512, 600]  # the default: segment_batch's own chunk


@pytest.mark.slow
def test_worker_start_is_a_step(monkeypatch) -> None:
    """A new segmentation pool starts its workers inside an announced step, and they answer."""
    from cellbench.features.segment import backends

    monkeypatch.setenv("CELLBENCH_WORKERS", "2")
    monkeypatch.setattr("cellbench.workers.usable_cpus", lambda: 2)
    monkeypatch.setattr(backends, "_POOL", [])
    seen: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            seen.append(name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(ui, "step", Recorder)
    pool = backends._pool()
    try:
        assert seen == ["starting 2 segmentation workers"]
        assert len({p for p in pool._processes}) == 2
    finally:
        pool.shutdown()
