"""``cellbench eval``: score a generator's images on a dataset's protocol (``docs/scoring.md``).

Pipeline: protocol -> images (matched and checked) -> per-image features (one segmentation pass for
six rewards, one Inception pass for FID, KID and the MoA classifier) -> the registered metrics ->
means with bootstrap intervals per image set, MoA and compound -> FID/KID -> result file.

:func:`evaluate` and :func:`merge_shards` (of ``--shard K/N`` runs) are orchestration: both build
their document with :func:`cellbench.results.builder.build_document`, on the same arrays in the
same order, so a merged result equals the unsharded one exactly, every field included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cellbench.data.bbbc021 import BBBC021Dataset, open_dataset
from cellbench.errors import CellbenchError, ProtocolError
from cellbench.io import read_json, sha256_file
from cellbench.protocol import (
    build_protocol,
    check_against_dataset,
    protocol_sha256,
    read_protocol,
)
from cellbench.protocol_registry import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    build_named_protocol,
    get_protocol,
    identify_protocol,
    protocol_info,
)
from cellbench.results.builder import (
    build_document,
    check_out_path,
    result_paths,
    shard_tasks,
    write_results,
)
from cellbench.scoring.arrays import ImageArrays, concat_arrays
from cellbench.scoring.artifacts import Artifacts
from cellbench.scoring.images import score_images
from cellbench.scoring.scorer import Scorer
from cellbench.ui import step

__all__ = ["evaluate", "load_protocol_for", "merge_shards", "parse_shard", "rebuild_protocol"]

Progress = Callable[[str, int, int], None]


def _noop(phase: str, done: int, total: int) -> None:
    return None


# ----------------------------------------------------------------------------------- evaluation
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise CellbenchError(f"--shard {text!r} is not K/N", fix="e.g. --shard 1/4") from None
    if not 1 <= k <= n:
        raise CellbenchError(f"--shard {text!r}: K must be in 1..N", fix="e.g. --shard 1/4")
    return k, n


def load_protocol_for(
    ds: BBBC021Dataset, protocol_path: str | Path | None, name: str | None, seed: int
) -> tuple[pd.DataFrame, dict]:
    """The protocol table (the named protocol built, or a file read) and its ``protocol`` block.

    Without a file the named protocol ``name`` (default :data:`DEFAULT_PROTOCOL`) is built. A file
    is identified by rebuilding the registered protocols of ``ds`` at ``seed`` and comparing
    sha256 (no match: ``custom``); a file of another dataset is refused.
    """
    if protocol_path is None:
        spec = get_protocol(name or DEFAULT_PROTOCOL)
        table = build_named_protocol(ds, spec.name, seed)
        return table, protocol_info(table, spec, seed=seed, built=True)
    if name is not None:
        raise ProtocolError(
            "give a protocol file or a protocol name, not both",
            path=protocol_path,
            fix="drop --protocol-name (the file's name is found from its content)",
        )
    if not Path(protocol_path).exists() and str(protocol_path) in PROTOCOLS:
        raise ProtocolError(
            f"no protocol file {str(protocol_path)!r}; it is the name of a registered protocol",
            path=protocol_path,
            fix=f"pass --protocol-name {protocol_path}",
        )
    table = read_protocol(protocol_path)
    check_against_dataset(table, ds, protocol_path)
    spec = identify_protocol(ds, table, seed)
    return table, protocol_info(table, spec, seed=seed, built=False, file=str(protocol_path))


def rebuild_protocol(ds: BBBC021Dataset, info: dict) -> pd.DataFrame:
    """The protocol table a result's ``protocol`` block describes, rebuilt (or read) and checked."""
    if info.get("built") and info.get("name") in PROTOCOLS:
        if get_protocol(info["name"]).version != info.get("version"):
            raise ProtocolError(
                f"protocol {info['name']} is at version {get_protocol(info['name']).version}, "
                f"the shards used version {info.get('version')}",
                fix="re-run the shards with this cellbench",
            )
        table = build_named_protocol(ds, info["name"], int(info["seed"]))
    elif info.get("built"):  # a result of a cellbench without named protocols
        table = build_protocol(ds, split=info["split"], seed=info["seed"])
    else:
        table = read_protocol(info["file"])
    if protocol_sha256(table) != info["sha256"]:
        raise ProtocolError("protocol changed since the shards ran", fix="re-run the shards")
    return table


def evaluate(
    images: str | Path,
    dataset: str = "bbbc021-sim",
    *,
    data_dir: str | Path | None = None,
    protocol: str | Path | None = None,
    protocol_name: str | None = None,
    seed: int = 0,
    backend: str = "classical",
    fid: bool = True,
    strict: bool = False,
    shard: str | tuple[int, int] | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    progress: Progress = _noop,
) -> dict:
    """Score a folder of generated images; return the result document (and write it to ``out``).

    See ``cellbench eval --help`` for the meaning of each argument; ``protocol`` is a protocol
    file, ``protocol_name`` a registered protocol (default :data:`DEFAULT_PROTOCOL`).
    """
    started = time.perf_counter()
    if out is not None:  # before any scoring: a bad --out must not cost a run
        check_out_path(out, images=images, inputs=[protocol])
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    with step("reading the dataset index and the protocol"):
        ds = open_dataset(dataset, data_dir, create_sim=True)
        if out is not None:
            check_out_path(out, images=images, inputs=[protocol], dataset=ds.root)
        table, proto_info = load_protocol_for(ds, protocol, protocol_name, seed)
    with step("loading the segmenter, reference statistics and classifier"):
        scorer = Scorer(
            Artifacts.for_dataset(ds), backend=backend, device=device, use_inception=fid
        )
    part = shard_tasks(table, shard_t)
    arrays, img_info = score_images(
        scorer,
        images,
        part,
        strict=strict,
        use_inception=fid,
        full_protocol=table if shard_t is not None else None,
        progress=progress,
    )
    if not arrays.task_ids:
        raise CellbenchError(
            "no usable image matched a task of the protocol",
            path=images,
            fix="run `cellbench images check` to see why",
        )
    from cellbench.generation import read_generation_record

    doc, per_image = build_document(
        scorer,
        ds,
        table,
        proto_info,
        arrays,
        img_info,
        seed=seed,
        fid=fid,
        shard=shard_t,
        device=device,
        started=started,
        generation=read_generation_record(images),
        progress=progress,
    )
    if out is not None:
        write_results(doc, per_image, arrays if shard_t is not None else None, out)
    return doc


def merge_shards(
    shard_results: list[str | Path],
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    progress: Progress = _noop,
) -> dict:
    """Combine ``--shard K/N`` results into the result of the unsharded run."""
    started = time.perf_counter()
    if out is not None:
        check_out_path(out, inputs=[q for p in shard_results for q in result_paths(p)])
    docs, parts = [], []
    for p in shard_results:
        jp, _, npz = result_paths(p)
        doc = read_json(jp, "shard result", "re-run that shard")
        if not isinstance(doc, dict):
            raise CellbenchError("unreadable shard result (not a JSON object)", path=jp)
        if not doc.get("partial"):
            raise CellbenchError(
                "not a --shard result", path=jp, fix="pass the files written with --shard K/N"
            )
        want = doc["partial"].get("arrays_sha256")
        if want is not None and Path(npz).is_file() and sha256_file(npz) != want:
            raise CellbenchError(
                "shard arrays are not the ones the shard result records (arrays_sha256 "
                "differs): written by another run, or an interrupted write",
                path=npz,
                fix="re-run this shard",
            )
        docs.append(doc)
        parts.append(ImageArrays.load(npz))
    first = docs[0]
    same = (
        "dataset",
        "protocol",
        "metric_suite_version",
        "segmenter",
        "weights",
        "reference_stats_sha256",
        "artifacts",
        "seed",
        "fid_computed",
        "best_of_n",
        "generation",
    )
    for d, p in zip(docs[1:], shard_results[1:], strict=True):
        for key in same:
            if d.get(key) != first.get(key):
                raise CellbenchError(
                    f"shard differs from the first in {key!r}",
                    path=p,
                    fix="merge shards of one run",
                )
    shards = sorted(tuple(int(x) for x in d["partial"]["shard"].split("/")) for d in docs)
    n = shards[0][1]
    if shards != [(k, n) for k in range(1, n + 1)]:
        raise CellbenchError(
            f"shards {['/'.join(map(str, s)) for s in shards]} do not cover 1/{n}..{n}/{n} exactly once",
            fix="pass every shard of the run once",
        )
    ds = open_dataset(first["dataset"]["name"], data_dir)
    if out is not None:
        check_out_path(out, dataset=ds.root)
    if ds.index_sha256 != first["dataset"]["index_sha256"]:
        raise CellbenchError("dataset index changed since the shards ran", path=ds.index_path)
    proto_info = first["protocol"]
    table = rebuild_protocol(ds, proto_info)
    seg_name = first["segmenter"]["name"]
    scorer = Scorer(
        Artifacts.for_dataset(ds),
        backend=seg_name,
        device=device,
        use_inception=first["fid_computed"],
    )
    order = {t: i for i, t in enumerate(table["task_id"])}
    arrays = concat_arrays(parts, order)
    img_info = {"layout": docs[0]["images"]["layout"], "folder": docs[0]["images"]["folder"]}
    doc, per_image = build_document(
        scorer,
        ds,
        table,
        proto_info,
        arrays,
        img_info,
        seed=first["seed"],
        fid=first["fid_computed"],
        shard=None,
        device=device,
        started=started,
        generation=first.get("generation"),
        merged_from=[str(p) for p in shard_results],
        progress=progress,
    )
    if doc["dataset"]["crops_sha256"] != first["dataset"].get("crops_sha256"):
        raise CellbenchError(
            "the dataset's crop files changed since the shards ran (crops_sha256 differs)",
            path=ds.root,
            fix="re-run the shards on the current dataset",
        )
    if out is not None:
        write_results(doc, per_image, None, out)
    return doc
