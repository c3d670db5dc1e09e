"""The bench scripts that make the documented tables run end to end and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_reference_generators_script_scores_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "BIN": str(Path(sys.executable).parent),
        "DATA": str(tmp_path / "data"),
        "SCALE": "tiny",
        "RUNS": str(tmp_path / "runs"),
        "OUT": str(out),
        "STEPS": "2",
        "MODELS": "cellflux",
        "SHIPPED": "",
        "THREADS": "1",
        "CELLBENCH_PROGRESS": "0",
    }

    def run() -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["bash", "bench/train_reference_generators.sh"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    run()
    tasks = pd.read_csv(out / "protocol.csv")["task_id"].tolist()
    assert len(tasks) > 64  # more than one generation batch
    for model in ("identity", "real-shuffle", "cellflux"):
        doc = json.loads((out / f"{model}.results.json").read_text())
        assert doc["complete"] and doc["protocol"]["n_tasks"] == len(tasks), model
    # an interrupted generation: the results file and one image of the first batch are gone
    (out / "cellflux.results.json").unlink()
    (out / "cellflux" / f"{tasks[0]}.npy").unlink()
    kept = out / "cellflux" / f"{tasks[-1]}.npy"
    before = kept.stat().st_mtime_ns, kept.read_bytes()
    again = run()
    assert "identity: already scored" in again.stderr
    assert "real-shuffle: already scored" in again.stderr
    assert (out / "cellflux" / f"{tasks[0]}.npy").is_file()
    assert (kept.stat().st_mtime_ns, kept.read_bytes()) == before  # last batch not regenerated
    assert json.loads((out / "cellflux.results.json").read_text())["complete"]
