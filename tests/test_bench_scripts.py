"""The bench scripts that make the documented tables run end to end and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

from cellbench.errors import CellbenchError
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
        "SAMPLE_STEPS": "2",
        "MODELS": "cellflux",
        "SHIPPED": "",
        "THREADS": "1",
        "CELLBENCH_PROGRESS": "0",
    }

    def run() -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["bash", "bench/pipelines/train_reference_generators.sh"],
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


def _load_bench(name: str, folder: str = "studies") -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_inception_roofline_counts_the_network_and_the_machine() -> None:
    """The FLOP count docs/benchmarks.md divides by, and the two ceilings it compares with."""
    bench = _load_bench("inception_speed", "perf")
    assert bench.network_gflop() == pytest.approx(11.42, abs=0.01)
    peak, how = bench.nominal_peak()
    assert peak > 0 and "FLOP/cycle" in how
    assert bench.matmul_gflops(size=128, seconds=0.05) > 0


def test_inception_precision_helpers() -> None:
    from cellbench.features.inception import tf32_allowed

    bench = _load_bench("inception_precision", "perf")
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for allow in (True, False):
        with tf32_allowed(allow):
            assert torch.backends.cudnn.allow_tf32 is allow
            assert torch.backends.cuda.matmul.allow_tf32 is allow
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    inputs = [torch.ones(3, 2), 2 * torch.ones(1, 2)]
    feats, rate = bench.timed_pass(lambda x: x.to(torch.bfloat16), inputs, torch.device("cpu"))
    assert feats.dtype == np.float64 and feats.tolist() == [[1, 1]] * 3 + [[2, 2]] and rate > 0


def test_radius_oracle_reads_the_median_annotated_radius() -> None:
    study = _load_bench("segment_radius_oracle")
    yy, xx = np.mgrid[:60, :60]
    gt = np.zeros((60, 60), np.int32)
    for k, (cy, cx, r) in enumerate([(12, 12, 5), (40, 15, 8), (30, 45, 11)], start=1):
        gt[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    area = np.sort(np.bincount(gt.ravel())[1:])[1]  # the median of three areas
    assert study.truth_radius(gt) == pytest.approx(np.sqrt(area / np.pi))
    assert 7.5 < study.truth_radius(gt) < 8.5
    assert np.isnan(study.truth_radius(np.zeros((5, 5), np.int32)))


def test_learned_border_redraws_our_nuclei_on_another_foreground() -> None:
    study = _load_bench("segment_learned_border")
    ours = np.zeros((20, 30), np.int32)
    ours[4:8, 3:7] = 1  # two nuclei inside one blob of the new foreground ...
    ours[4:8, 12:16] = 2
    ours[15:18, 25:28] = 3  # ... and one outside it, dropped
    fg = np.zeros((20, 30), bool)
    fg[3:9, 2:18] = True
    fg[12:18, 2:6] = True  # a blob of 24 px that holds none of our nuclei
    out = study.relabel_over(ours, fg, None)
    assert set(np.unique(out)) == {0, 1, 2}
    assert out[3, 2] == out[8, 9] == 1 and out[3, 11] == out[8, 17] == 2  # nearest nucleus
    assert (out[3:9, 2:18] > 0).all() and not out[~fg].any() and not out[12:18, 2:6].any()
    assert (study.relabel_over(ours, fg, 23.0)[12:18, 2:6] == 3).all()  # larger than the floor
    assert not study.relabel_over(ours, fg, 24.0)[12:18, 2:6].any()  # not larger

    yy, xx = np.mgrid[:64, :64]
    img = (
        10.0
        + 100.0 * ((yy - 30) ** 2 + (xx - 34) ** 2 <= 64)
        + np.random.default_rng(0).normal(0, 2, (64, 64))
    )
    nuclei = (((yy - 30) ** 2 + (xx - 34) ** 2) <= 64).astype(np.int32)
    feats, r, signed = study.pixel_features(img.astype(np.float32), nuclei)
    assert feats.shape == (64, 64, 18) and np.isfinite(feats).all() and r > 0
    assert (
        signed[30, 34] == pytest.approx(np.sqrt(65))
        and signed[30, 42] == 1
        and signed[30, 43] == -1
    )


def test_fid_sample_size_bias_and_extrapolation() -> None:
    fss = _load_bench("fid_sample_size")
    rng = np.random.default_rng(0)
    n, dim = 4000, 8
    real = rng.normal(size=(n, dim))
    same = rng.normal(size=(n, dim))
    shifted = rng.normal(size=(n, dim)) + np.r_[1.0, np.zeros(dim - 1)]  # FID_inf = 1
    draws = fss.subsets(n, [100, 400, 1600], reps=4, seed=0)
    assert [d for d, _ in draws].count(100) == 4 and draws[-1][0] == n
    assert all(len(set(idx)) == d for d, idx in draws)
    for feats, truth in ((same, 0.0), (shifted, 1.0)):
        by = fss.fid_by_size(feats, real, draws)
        assert list(by) == [100, 400, 1600, n]
        # the small-sample bias: FID falls with n towards its limit
        assert by[100]["fid"] > by[400]["fid"] > by[n]["fid"]
        fid_inf, k = fss.fid_infinity(by)
        assert k > 0
        assert abs(fid_inf - truth) < 0.05, (fid_inf, truth)
    with pytest.raises(CellbenchError, match="at least 2"):
        fss.subsets(n, [1], reps=1, seed=0)
    # subsets drawn from the tasks of a few controls: no full set, each from k distinct controls
    controls = np.repeat(np.arange(40), 100)  # 40 controls, 100 tasks each
    few = fss.subsets(n, [150], reps=3, seed=0, controls=controls, n_controls=2)
    assert [d for d, _ in few] == [150, 150, 150]
    assert all(len(set(controls[idx])) == 2 for _, idx in few)
    with pytest.raises(CellbenchError, match="only 100 tasks"):
        fss.subsets(n, [150], reps=1, seed=0, controls=controls, n_controls=1)
    with pytest.raises(CellbenchError, match="has 40 control"):
        fss.subsets(n, [150], reps=1, seed=0, controls=controls, n_controls=41)


@pytest.mark.slow
def test_fid_sample_size_script_on_a_tiny_sim(tmp_path: Path) -> None:
    data, proto, images = tmp_path / "data", tmp_path / "protocol.csv", tmp_path / "identity"
    cli = [str(Path(sys.executable).parent / "cellbench")]
    ds = ["--dataset", "bbbc021-sim", "--data-dir", str(data)]
    for args in (
        ["data", "sim", "--out", str(data / "bbbc021-sim"), "--scale", "tiny", "--seed", "0"],
        ["protocol", *ds, "--name", "cellflux-iid", "--seed", "0", "--out", str(proto)],
        ["generate", "identity", *ds, "--protocol", str(proto), "--out", str(images)],
    ):
        subprocess.run(cli + args, check=True, capture_output=True, timeout=600)
    n_tasks = len(pd.read_csv(proto))
    script = [
        sys.executable,
        str(REPO / "bench" / "studies" / "fid_sample_size.py"),
        str(images),
        *ds[2:],
    ]
    script += ["--protocol", str(proto), "--sizes", "8", "16", "--reps", "2", "--controls", "3"]
    script += ["--controls-size", "12"]
    res = subprocess.run(
        [*script, "--json", str(tmp_path / "fid.json")], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "fid.json").read_text())
    by = doc["analyses"]["all controls"]["folders"][str(images)]["by_size"]
    assert sorted(int(k) for k in by) == [8, 16, n_tasks]
    assert by["8"]["draws"] == 2 and by[str(n_tasks)]["draws"] == 1
    assert by["8"]["fid"] > by[str(n_tasks)]["fid"] > 0
    few = doc["analyses"]["3 controls"]
    assert few["distinct_controls"] == {"12": 3.0}
    assert list(few["folders"][str(images)]["by_size"]) == ["12"]
    # a folder that leaves a task unanswered is refused, naming the folder
    sorted(images.glob("*.npy"))[0].unlink()
    res = subprocess.run(script, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2
    assert str(images) in res.stderr and "1 task(s) have no usable image" in res.stderr


def test_image_diagnostics_finds_a_painted_artefact() -> None:
    diag = _load_bench("image_diagnostics")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 40, size=(20, 32, 32, 3), dtype=np.uint8)
    gen = real.copy()
    gen[:, 24:32, 0:8] = rng.integers(0, 255, size=(20, 8, 8, 3), dtype=np.uint8)
    same = diag.worst_block(diag.high_frequency_map(real), diag.high_frequency_map(real))
    assert same["ratio"] == pytest.approx(1.0)
    found = diag.worst_block(diag.high_frequency_map(gen), diag.high_frequency_map(real))
    assert (found["row"], found["col"]) == (24, 0) and found["ratio"] > 4.0
    assert found["median_ratio"] == pytest.approx(1.0)


@pytest.mark.slow
def test_image_diagnostics_script_on_a_tiny_sim(tmp_path: Path) -> None:
    data, proto, images = tmp_path / "data", tmp_path / "protocol.csv", tmp_path / "identity"
    run = tmp_path / "run"
    cli = [str(Path(sys.executable).parent / "cellbench")]
    ds = ["--dataset", "bbbc021-sim", "--data-dir", str(data)]
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"steps": 2, "ckpt_every": 2, "batch_size": 4}))
    for args in (
        ["data", "sim", "--out", str(data / "bbbc021-sim"), "--scale", "tiny", "--seed", "0"],
        ["protocol", *ds, "--name", "cellflux-iid", "--seed", "0", "--out", str(proto)],
        ["generate", "identity", *ds, "--protocol", str(proto), "--out", str(images)],
        ["train", "cellflux", *ds, "--config", str(tiny), "--out", str(run), "--threads", "1"],
    ):
        subprocess.run(cli + args, check=True, capture_output=True, timeout=600)
    script = [
        sys.executable,
        str(REPO / "bench" / "studies" / "image_diagnostics.py"),
        str(images),
        *ds[2:],
    ]
    script += ["--protocol", str(proto), "--n", "6", "--checkpoint", str(run)]
    res = subprocess.run(
        [*script, "--json", str(tmp_path / "d.json")], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["n"] == 6
    # identity returns the controls, so its image figures are the controls'
    assert doc["images"][str(images)] == doc["images"]["controls"]
    assert doc["images"]["real targets"]["artefact"]["ratio"] == pytest.approx(1.0)
    rows = doc["attention"][str(run)]
    assert {r["t"] for r in rows} == {0.1, 0.5, 0.9} and all(r["max_share"] >= 1.0 for r in rows)
    # a folder that is not a checkpoint is refused, naming it
    res = subprocess.run([*script[:-1], str(images)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 2
    assert str(images) in res.stderr and "no complete checkpoint" in res.stderr


def test_bench_configs_resolve() -> None:
    from cellbench_baselines.cellflux import CellFlux
    from cellbench_baselines.config import resolve_config

    configs = REPO / "bench" / "configs"
    paths = sorted(configs.glob("cellflux-*.json"))
    assert len(paths) == 5
    for path in paths:
        cfg = resolve_config(CellFlux.presets, path)
        assert cfg["prediction"] == "edm" and cfg["unet"]["patch_size"] == 2, path.name
    null = resolve_config(CellFlux.presets, configs / "cellflux-long-stage1-null-attention.json")
    base = resolve_config(CellFlux.presets, configs / "cellflux-long-stage1.json")
    assert null["unet"]["null_attention"] is True and base["unet"]["null_attention"] is False
    assert {**null, "unet": {**null["unet"], "null_attention": False}} == base
    # the demo fine-tune at a lower lr (--init-from) is stage 3 but for lr
    low = resolve_config(CellFlux.presets, configs / "cellflux-demo-ft-lr3e-5.json")
    stage3 = resolve_config(CellFlux.presets, configs / "cellflux-long-stage3.json")
    assert low["lr"] == 3e-5 < stage3["lr"] and {**low, "lr": stage3["lr"]} == stage3


BENCH_SCRIPTS = sorted(
    p.relative_to(REPO).as_posix()
    for p in (REPO / "bench").rglob("*")
    if p.suffix in (".py", ".sh")
)


@pytest.mark.parametrize("script", [s for s in BENCH_SCRIPTS if s.endswith(".py")])
def test_bench_python_scripts_answer_help(script: str) -> None:
    res = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout


def test_bench_is_sorted_and_every_named_path_exists() -> None:
    import re

    # every script sits in perf/, studies/ or pipelines/ and bench/README.md names it
    readme = (REPO / "bench" / "README.md").read_text()
    for script in BENCH_SCRIPTS:
        assert script.split("/")[1] in ("perf", "studies", "pipelines"), script
        assert f"`{script.removeprefix('bench/')}`" in readme, script
    # every bench/ path a current doc names exists (CHANGELOG history lines keep old names)
    docs = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
    docs += [
        REPO / "submissions" / "README.md",
        REPO / "checkpoints" / "cellflux-long" / "README.md",
    ]
    named = set()
    for doc in docs:
        for path in re.findall(r"\bbench/[\w./-]*\w", doc.read_text()):
            named.add(path)
            assert (REPO / path).exists(), f"{doc.relative_to(REPO)} names {path}"
    assert "bench/pipelines/train_cellflux_long.sh" in named  # the search finds the references
