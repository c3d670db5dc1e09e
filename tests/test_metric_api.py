"""The in-memory metric API: ``CellbenchMetric`` and ``cellbench.evaluate(images, task_ids=...)``
give the document of ``cellbench eval`` on the same images; states merge exactly, over batches,
metrics and ``torch.distributed`` processes (gloo, 2 CPU processes)."""

from __future__ import annotations

import copy
import datetime
import json
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cellbench
from cellbench.errors import CellbenchError
from cellbench.io import sha256_file
from cellbench.protocol import write_protocol
from cellbench.scoring.metric import CellbenchMetric
from tests.conftest import make_tiny_sim, run_cli

#: two compounds of the tiny sim with 4 test tasks each: 8 images, the fewest that give every
#: FID/KID number (each compound's split half needs 2 crops a side)
COMPOUNDS = ("demecolcine", "mitomycin C")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny sim, an 8-task protocol, its images (real targets, controls, one black image) as a
    folder scored by the real ``cellbench eval`` and as a tensor scored by ``cellbench.evaluate``."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("metric")
    data = root / "data"
    ds, full = make_tiny_sim(root, mp)
    table = full[full["compound"].isin(COMPOUNDS)].reset_index(drop=True)
    assert len(table) == 8
    protocol = root / "protocol.csv"
    write_protocol(table, protocol)
    keys = [r.target_key if i % 2 == 0 else r.control_key for i, r in enumerate(table.itertuples())]
    images = np.stack([ds.load_crop(k) for k in keys])
    images[-1] = 0  # a constant image: reported as a problem, and still scored
    task_ids = table["task_id"].tolist()
    folder = root / "images"
    folder.mkdir()
    for t, im in zip(task_ids, images, strict=True):
        np.save(folder / f"{t}.npy", im)
    np.savez(root / "batch.npz", images=images, task_ids=np.array(task_ids))
    opts = ("--dataset", "bbbc021-sim", "--data-dir", str(data), "--protocol", str(protocol))
    res = run_cli("eval", str(folder), *opts, "--out", str(root / "folder.json"))
    assert res.returncode == 0, res.stderr
    chw = torch.from_numpy(images).permute(0, 3, 1, 2)  # channels first, as models emit them
    memory_doc = cellbench.evaluate(
        chw,
        "bbbc021-sim",
        task_ids=task_ids,
        data_dir=data,
        protocol=protocol,
        out=root / "memory.json",
    )
    yield {
        "root": root,
        "data": data,
        "protocol": protocol,
        "images": images,
        "task_ids": task_ids,
        "folder_doc": json.loads((root / "folder.json").read_text()),
        "memory_doc": memory_doc,
    }
    mp.undo()


@pytest.fixture(scope="module")
def metric(world) -> CellbenchMetric:
    """One metric for the tests below (each resets it first): the networks load once."""
    return CellbenchMetric("bbbc021-sim", data_dir=world["data"], protocol=world["protocol"])


def _without(doc: dict, *fields: str) -> dict:
    """A JSON round trip of ``doc`` without ``fields`` (dotted for nested keys, ``[].`` for a key
    of every item of a list)."""
    out = json.loads(json.dumps(doc))
    for f in fields:
        if "[]." in f:
            head, key = f.split("[].")
            for item in out[head.split(".")[0]][head.split(".")[1]]:
                item.pop(key)
            continue
        *parents, last = f.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(last)
    return out


#: timing; the invoking command line and the environment (another process ran the CLI); where the
#: images came from: the folder and its layout, and each problem's file path (a folder names the
#: file, memory names "<memory>"). Every other field, every number included, must be equal.
NOT_COMPARED_WITH_FOLDER = (
    "wall_time_s",
    "command",
    "environment",
    "images.layout",
    "images.folder",
    "images.problems[].path",
    "per_image_sha256",  # the tables differ in their path column (compared below without it)
)


def test_in_memory_document_equals_cellbench_eval(world) -> None:
    folder_doc, memory_doc = world["folder_doc"], world["memory_doc"]
    assert memory_doc["images"]["layout"] == "memory" and memory_doc["images"]["folder"] is None
    assert folder_doc["images"]["n_problems"] == 1 and memory_doc["complete"] is False
    assert memory_doc["fid_computed"] is True and memory_doc["metrics"]["fid_o"]["n_gen"] == 8
    assert _without(memory_doc, *NOT_COMPARED_WITH_FOLDER) == _without(
        folder_doc, *NOT_COMPARED_WITH_FOLDER
    )
    # the file `evaluate(..., out=)` wrote is the returned document; per-image tables agree
    # except for the path column
    written = json.loads((world["root"] / "memory.json").read_text())
    assert _without(written) == _without(memory_doc)
    from_folder = pd.read_csv(world["root"] / "folder.per_image.csv")
    from_memory = pd.read_csv(world["root"] / "memory.per_image.csv")
    assert (from_memory["path"] == "<memory>").all()
    for name, doc in (("memory", memory_doc), ("folder", folder_doc)):
        assert doc["per_image_sha256"] == sha256_file(world["root"] / f"{name}.per_image.csv")
    pd.testing.assert_frame_equal(
        from_memory.drop(columns="path"), from_folder.drop(columns="path")
    )


def test_batches_and_merged_states_equal_one_pass(world, metric) -> None:
    images, ids = world["images"], world["task_ids"]
    metric.reset()
    metric.update(images[4:], ids[4:])  # the later tasks first, as one numpy batch
    other = {name: list(state) for name, state in metric.metric_state.items()}
    metric.reset()
    metric.update(torch.from_numpy(images[:1]), ids[:1])  # batch sizes 1 and 3
    metric.update(torch.from_numpy(images[1:4]).permute(0, 3, 1, 2), ids[1:4])
    metric.merge_state(other)
    assert _without(metric.compute(), "wall_time_s") == _without(world["memory_doc"], "wall_time_s")


def test_update_refuses_bad_input(world, metric) -> None:
    images, ids = world["images"], world["task_ids"]
    metric.reset()
    bad = [
        (images[:2].astype(np.float32), ids[:2], "dtype float32"),
        (images[:2, :64], ids[:2], "shape (2, 64, 96, 3)"),
        (images[0], ids[:1], "shape (96, 96, 3)"),
        (images[:2].tolist(), ids[:2], "not an array"),
        (images[:2], ids[:1], "2 images but 1 task ids"),
        (images[:1], ids[0], "one string"),
        (images[:2], [ids[0], "t-nope"], "not in the protocol (first: 't-nope')"),
        (images[:2], [ids[0], ids[0]], f"task {ids[0]!r} has more than one image"),
    ]
    for imgs, task_ids, message in bad:
        with pytest.raises(CellbenchError) as exc:
            metric.update(imgs, task_ids)
        assert message in str(exc.value), (message, str(exc.value))
    assert metric.metric_state["task_index"] == []  # nothing was added by a refused batch
    with pytest.raises(CellbenchError, match="no image to score"):
        metric.compute()
    metric.update(images[:1], ids[:1])
    with pytest.raises(CellbenchError, match="more than one image"):
        metric.update(images[1:3], [ids[1], ids[0]])  # a task of an earlier batch
    metric.merge_state(metric.metric_state)  # the same image merged in twice
    with pytest.raises(CellbenchError, match=r"more than one image \(merged or gathered\)"):
        metric.compute()
    other_seed = copy.copy(metric)  # the same networks, another bootstrap seed
    other_seed.seed = 1
    with pytest.raises(CellbenchError, match="cannot merge metrics of different"):
        metric.merge_state(other_seed)


def test_evaluate_batch_arguments(world) -> None:
    images, ids = world["images"], world["task_ids"]
    opts = {"data_dir": world["data"], "protocol": world["protocol"]}
    with pytest.raises(CellbenchError, match="needs task_ids"):
        cellbench.evaluate(images, "bbbc021-sim", **opts)
    with pytest.raises(CellbenchError, match="takes no shard"):
        cellbench.evaluate(images, "bbbc021-sim", task_ids=ids, shard="1/2", **opts)
    with pytest.raises(CellbenchError, match="task_ids are for an in-memory batch"):
        cellbench.evaluate(world["root"] / "images", "bbbc021-sim", task_ids=ids, **opts)
    with pytest.raises(CellbenchError, match=r"0 problem\(s\), 7 task\(s\) without an image"):
        cellbench.evaluate(images[:1], task_ids=ids[:1], fid=False, strict=True, **opts)


def test_import_cellbench_leaves_torchmetrics_unloaded() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cellbench\n"
        "print('torchmetrics' in sys.modules, 'torch' in sys.modules)\n"
        "m = cellbench.CellbenchMetric\n"
        "print('torchmetrics' in sys.modules, m.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:2] == ["False False", "True cellbench.scoring.metric"], out


def _distributed_worker(rank: int, port: int, world_dir: str) -> None:
    """One of 2 gloo processes: an uneven split of the images, then every image on rank 1 only."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        root = Path(world_dir)
        z = np.load(root / "batch.npz", allow_pickle=False)
        images, ids = z["images"], [str(t) for t in z["task_ids"]]
        metric = CellbenchMetric(
            "bbbc021-sim", data_dir=root / "data", protocol=root / "protocol.csv"
        )
        mine = slice(0, 3) if rank == 0 else slice(3, None)  # 3 and 5 images: padded gathers
        metric.update(torch.from_numpy(images[mine]), ids[mine])
        split = metric.compute()
        metric.sync()  # every image's state, then back to this process's own
        everything = {name: [state.clone()] for name, state in metric.metric_state.items()}
        metric.unsync()
        metric.reset()
        if rank == 1:  # rank 0 holds no image at all
            metric.merge_state(everything)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "compute before update" on rank 0, by design
            one_rank = metric.compute()
        (root / f"rank{rank}.json").write_text(json.dumps({"split": split, "one_rank": one_rank}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_document(world) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.spawn(_distributed_worker, args=(port, str(world["root"])), nprocs=2, join=False)
    deadline = time.monotonic() + 400
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the gloo processes did not finish in 400 s")
    expected = _without(world["memory_doc"], "wall_time_s", "command")
    for rank in (0, 1):
        docs = json.loads((world["root"] / f"rank{rank}.json").read_text())
        for case in ("split", "one_rank"):
            assert _without(docs[case], "wall_time_s", "command") == expected, (rank, case)
