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


def rebuild_protocol(ds: BBBC021Dataset, info: dict, base: Path | None = None) -> pd.DataFrame:
    """The protocol table a result's ``protocol`` block describes, rebuilt (or read) and checked.

    A protocol file stored as a relative path (as given at eval time, relative to the folder
    eval ran in) is read from the current folder or, where it is not there, relative to ``base``
    (the folder of the shard results) or the nearest folder above it that has it; its sha256
    is checked either way.
    """
    source: Path | None = None  # the protocol file read, if any
    if info.get("built") and not isinstance(info.get("seed"), int):
        raise ProtocolError(
            "the protocol block of a built protocol has no seed", fix="re-run the shards"
        )
    if info.get("built") and info.get("name") in PROTOCOLS:
        if get_protocol(info["name"]).version != info.get("version"):
            raise ProtocolError(
                f"protocol {info['name']} is at version {get_protocol(info['name']).version}, "
                f"the shards used version {info.get('version')}",
                fix="re-run the shards with this cellbench",
            )
        table = build_named_protocol(ds, info["name"], int(info["seed"]))
    elif info.get("built"):  # a result of a cellbench without named protocols
        if not isinstance(info.get("split"), str):
            raise ProtocolError("the protocol block names no split", fix="re-run the shards")
        table = build_protocol(ds, split=info["split"], seed=info["seed"])
    else:
        if not isinstance(info.get("file"), str):
            raise ProtocolError(
                "the protocol block names no protocol file", fix="re-run the shards"
            )
        file = source = Path(info["file"])
        if not file.exists() and base is not None:
            found = [d / file for d in (base, *base.resolve().parents) if (d / file).is_file()]
            if not found:
                raise ProtocolError(
                    "protocol file not found (relative paths are tried in the current folder, "
                    "the shard results' folder and the folders above it)",
                    path=file,
                    fix="run the merge from the folder the shards ran in, "
                    "or put the protocol file beside the shard results",
                )
            file = source = found[0]
        table = read_protocol(file)
    if protocol_sha256(table) != info["sha256"]:
        raise ProtocolError(
            "protocol changed since the shards ran (sha256 differs)",
            path=source,
            fix="re-run the shards",
        )
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
        if out is not None:  # the rest of --out was checked above
            check_out_path(out, dataset=ds.root)
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


def _shard_problem(found: list[tuple[str, str]], path: Path) -> CellbenchError:
    """The one-line error of a shard document's schema violations ``found``."""
    from cellbench.submission.schema import first_problem

    return CellbenchError(
        f"not a valid shard result ({first_problem(found)})",
        path=path,
        fix="re-run that shard with `cellbench eval --shard K/N`",
    )


def _read_shard(path: str | Path) -> tuple[dict, ImageArrays, list[tuple[str, str]]]:
    """A ``--shard K/N`` result document, its arrays and its other schema violations.

    The document's ``partial`` block must match the result schema and record the sha256 of
    the arrays file, which must match; the arrays are checked by :meth:`ImageArrays.load`. The
    rest of the document's violations of the result schema are returned, for the caller to
    refuse (:func:`_shard_problem`) once the set of shards is known to be complete.
    """
    from cellbench.results.schema import result_problems

    jp, _, npz = result_paths(path)
    fix = "re-run that shard with `cellbench eval --shard K/N`"
    doc = read_json(jp, "shard result", fix)
    if not isinstance(doc, dict):
        raise CellbenchError("unreadable shard result (not a JSON object)", path=jp, fix=fix)
    found = result_problems(doc)
    if any(ptr.startswith("/partial") for ptr, _ in found):
        raise _shard_problem([f for f in found if f[0].startswith("/partial")], jp)
    if not doc.get("partial"):
        raise CellbenchError(
            "not a --shard result", path=jp, fix="pass the files written with --shard K/N"
        )
    want = doc["partial"].get("arrays_sha256")
    if want is None:
        raise CellbenchError(
            "shard result records no arrays_sha256, so its arrays cannot be checked",
            path=jp,
            fix=fix,
        )
    if not Path(npz).is_file():
        raise CellbenchError("shard arrays file not found", path=npz, fix=fix)
    if sha256_file(npz) != want:
        raise CellbenchError(
            "shard arrays are not the ones the shard result records (arrays_sha256 "
            "differs): written by another run, or an interrupted write",
            path=npz,
            fix="re-run this shard",
        )
    return doc, ImageArrays.load(npz), found


def _shard_of(doc: dict, path: Path) -> tuple[int, int]:
    """(K, N) of a shard document's ``partial.shard``, refused with the file named."""
    try:
        shard = parse_shard(doc["partial"]["shard"])
    except CellbenchError as exc:
        raise CellbenchError(
            f"shard result has an invalid partial.shard ({exc.message})",
            path=path,
            fix="re-run that shard with `cellbench eval --shard K/N`",
        ) from None
    assert shard is not None
    return shard


def _check_part(
    arrays: ImageArrays, path: Path, scorer: Scorer, tasks: pd.DataFrame, doc: dict
) -> None:
    """Refuse shard arrays that do not fit the scorer or hold tasks of another shard."""
    arrays.check_widths(path, seg=len(scorer.feature_names), profile=len(scorer.profile_names))
    if (arrays.inception is not None) != bool(doc["fid_computed"]):
        raise CellbenchError(
            "shard arrays do not match the shard result (Inception features "
            f"{'present' if arrays.inception is not None else 'absent'}, fid_computed "
            f"{doc['fid_computed']})",
            path=path,
            fix="re-run that shard",
        )
    mine = set(tasks["task_id"])
    strangers = [t for t in arrays.task_ids if t not in mine]
    if strangers:
        raise CellbenchError(
            f"shard arrays hold {len(strangers)} task id(s) that are not tasks of this shard of "
            f"the protocol (first: {strangers[0]!r})",
            path=path,
            fix="re-run that shard",
        )


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
    docs, parts, problems = [], [], []
    for p in shard_results:
        doc, arrays, found = _read_shard(p)
        docs.append(doc)
        parts.append(arrays)
        problems.append(found)
    first = docs[0]
    shards_in_order = [
        _shard_of(d, result_paths(p)[0]) for d, p in zip(docs, shard_results, strict=True)
    ]
    shards = sorted(shards_in_order)
    n = shards[0][1]
    if shards != [(k, n) for k in range(1, n + 1)]:
        raise CellbenchError(
            f"shards {['/'.join(map(str, s)) for s in shards]} do not cover 1/{n}..{n}/{n} exactly once",
            fix="pass every shard of the run once",
        )
    for found, p in zip(problems, shard_results, strict=True):
        if found:
            raise _shard_problem(found, result_paths(p)[0])
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
    ds = open_dataset(first["dataset"]["name"], data_dir)
    if out is not None:
        check_out_path(out, dataset=ds.root)
    if ds.index_sha256 != first["dataset"]["index_sha256"]:
        raise CellbenchError("dataset index changed since the shards ran", path=ds.index_path)
    proto_info = first["protocol"]
    first_json = result_paths(shard_results[0])[0]
    try:
        table = rebuild_protocol(ds, proto_info, base=first_json.parent)
    except ProtocolError as exc:
        if exc.path is not None:
            raise
        raise ProtocolError(exc.message, path=first_json, fix=exc.fix) from None
    seg_name = first["segmenter"]["name"]
    scorer = Scorer(
        Artifacts.for_dataset(ds),
        backend=seg_name,
        device=device,
        use_inception=first["fid_computed"],
    )
    for (k, n_), a, p in zip(shards_in_order, parts, shard_results, strict=True):
        _check_part(a, result_paths(p)[2], scorer, shard_tasks(table, (k, n_)), first)
    order = {t: i for i, t in enumerate(table["task_id"])}
    arrays = concat_arrays(parts, order)
    img_info = {k: first["images"][k] for k in ("layout", "folder") if k in first["images"]}
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
