"""Scoring commands: eval, eval merge, segment, reference build, classifier train|eval, ls metrics."""

from __future__ import annotations

import json
import statistics
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cellbench.cli.app import app, ls_app
from cellbench.cli.options import BackendOpt, DataDirOpt, DatasetOpt, DeviceOpt, JsonOpt
from cellbench.ui import phase_progress

if TYPE_CHECKING:
    from cellbench.metrics.registry import MetricSpec

reference_app = typer.Typer(
    help="Reference statistics for the z-scored rewards.", no_args_is_help=True
)
classifier_app = typer.Typer(help="The MoA classifier behind the moa reward.", no_args_is_help=True)
app.add_typer(reference_app, name="reference")
app.add_typer(classifier_app, name="classifier")


def _fmt(est: dict | None, digits: int = 3) -> str:
    if not est or est.get("value") is None:
        return "-"
    v = f"{est['value']:.{digits}f}"
    ci = est.get("ci")
    if ci and ci[0] is not None:
        v += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return v


RESULT_HEADERS: tuple[str, ...] = ("metric", "", "model", "real reference")


def _row(doc: dict, s: MetricSpec) -> list[str] | None:
    ref = doc["reference"]["metrics"]
    if s.kind == "set" and not doc.get("fid_computed"):
        return None
    got = doc["metrics"].get(s.name)
    if s.kind == "set_fn" and got is None:
        return None  # a result of a cellbench without the metric
    if got is not None and got.get("absent"):
        return [s.name, s.arrow, f"absent ({got['absent']})", "-"]
    real = _fmt(ref.get(s.name), s.digits) + ("" if s.per_image else " (split half)")
    model = _fmt(got, s.digits)
    if s.name in set(doc.get("metrics_not_computed") or ()):
        model = "not computed (--no-fid)"
    name = s.name
    if s.name == "overall" and doc.get("overall_comparable") is False:
        name = "overall (without moa: NOT comparable)"
    return [name, s.arrow, model, real]


def results_groups(doc: dict) -> list[tuple[str, list[list[str]]]]:
    """The rows of the results table by metric group (``rewards``, then ``held-out metrics``).

    Per-image metrics always, FID/KID when they were computed, the ``set_fn`` metrics the
    document holds (an absent one with its reason); direction and digits come from the metric
    registry (:mod:`cellbench.metrics.registry`).
    """
    from cellbench.metrics.registry import GROUP_LABELS, grouped

    out = []
    for group, members in grouped():
        rows = [r for r in (_row(doc, s) for s in members) if r is not None]
        if rows:
            out.append((GROUP_LABELS[group], rows))
    return out


def results_rows(doc: dict) -> list[list[str]]:
    """The rows of the results table (:func:`results_groups` without the group headings)."""
    return [r for _, rows in results_groups(doc) for r in rows]


def compound_counts_note(doc: dict) -> str | None:
    """Images per compound (generated, and real where FID/KID were computed): min, median, max."""
    gen = [(e.get("overall") or {}).get("n") for e in (doc.get("per_compound") or {}).values()]
    gen = [k for k in gen if isinstance(k, int)]
    if not gen:
        return None

    def spread(xs: list[int]) -> str:
        return f"{min(xs)} / {statistics.median_low(xs)} / {max(xs)}"

    note = f"images per compound (min / median / max over {len(gen)}): generated {spread(gen)}"
    fid_per = ((doc.get("fid_detail") or {}).get("model") or {}).get("per_compound") or {}
    real = [v["n_real"] for v in fid_per.values() if isinstance(v.get("n_real"), int)]
    if real:
        note += f", real {spread(real)}"
    return note


def no_fid_note(doc: dict) -> str | None:
    """The note of a result scored without Inception: what it lacks, and that ``overall`` differs."""
    if doc.get("overall_comparable", True):
        return None
    absent = ", ".join(doc.get("metrics_not_computed") or ()) or "moa"
    parts = " + ".join(doc.get("overall_components") or ())
    return (
        f"scored with --no-fid (no Inception): not computed: {absent}; overall = {parts} "
        "(moa left out), NOT comparable with an overall scored with Inception (never ranked "
        "with one)"
    )


def _results_notes(doc: dict) -> list[str]:
    im = doc["images"]
    notes = [
        f"{im['n_images']} images, {im['n_tasks_covered']}/{im['n_tasks_expected']} tasks, "
        f"{im['missing_tasks']} missing, {im['n_problems']} problem(s); "
        f"{'complete' if doc['complete'] else 'NOT complete'}"
    ]
    copies = (doc.get("set_detail") or {}).get("memorisation") or {}
    if copies.get("flags"):
        exact = [
            f"{copies[k]:.0%} pixel-identical to {what}"
            for k, what in (
                ("exact_train_copies", "a training crop"),
                ("exact_input_copies", "their input"),
            )
            if isinstance(copies.get(k), float | int)
        ]
        notes.append(
            "memorisation flag: "
            + "; ".join(copies["flags"])
            + (f" ({', '.join(exact)})" if exact else "")
        )
    counts = compound_counts_note(doc)
    if counts is not None:
        notes.append(counts)
    no_fid = no_fid_note(doc)
    if no_fid is not None:
        notes.append(no_fid)
    small = ((doc.get("metrics") or {}).get("fid_c") or {}).get("small_n") or {}
    if small.get("warning"):
        notes.append(f"warning: {small['warning']}")
    if doc.get("best_of_n", 1) > 1:
        sel = (doc.get("generation") or {}).get("selection_reward", "overall")
        notes.append(
            f"best-of-{doc['best_of_n']} (selected by {sel}): the reward metrics "
            "are inflated by the selection; FID/KID are the independent check"
        )
    return notes


def _results_title(doc: dict) -> tuple[str, str]:
    ds = doc["dataset"]
    title = f"cellbench eval: {ds['name']}" + (" (simulated)" if ds["simulated"] else "")
    proto = doc["protocol"]
    caption = (
        f"protocol {proto.get('name', 'custom')} v{proto['version']} ({proto['n_tasks']} tasks), "
        f"metric suite v{doc['metric_suite_version']}, segmenter "
        f"{doc['segmenter']['name']} v{doc['segmenter']['version']}, 95% bootstrap CI"
    )
    return title, caption


def results_markdown(doc: dict) -> str:
    """The results table as Markdown (``cellbench eval --format markdown``), via ``tabulate``."""
    from tabulate import tabulate

    title, caption = _results_title(doc)
    rows = []
    for label, members in results_groups(doc):
        rows.append([f"**{label}**", "", "", ""])
        rows.extend(members)
    table = tabulate(
        rows,
        headers=list(RESULT_HEADERS),
        tablefmt="pipe",
        colalign=("left", "center", "right", "right"),
        disable_numparse=True,
    )
    from cellbench.metrics.registry import GROUP_NOTE

    notes = "\n".join(f"- {n}" for n in _results_notes(doc))
    return f"## {title}\n\n{table}\n\n{caption}. {GROUP_NOTE}\n\n{notes}\n"


def print_results_table(doc: dict, fmt: str = "table") -> None:
    """The model's numbers beside the real reference row (``fmt``: ``table`` or ``markdown``)."""
    from cellbench.ui import out_console

    if fmt == "markdown":
        typer.echo(results_markdown(doc), nl=False)
        return
    from rich.table import Table

    title, caption = _results_title(doc)
    t = Table(title=title, caption=caption)
    t.add_column("metric")
    t.add_column("", justify="center")
    t.add_column("model", justify="right")
    t.add_column("real reference", justify="right")
    for i, (label, rows) in enumerate(results_groups(doc)):
        if i:
            t.add_section()
        t.add_row(f"[bold]{label}[/bold]", "", "", "")
        for row in rows:
            t.add_row(*row)
    out_console.print(t)
    first, *rest = _results_notes(doc)
    out_console.print(first)
    for note in rest:
        out_console.print(f"[yellow]{note}[/yellow]")


class TableFormat(str, Enum):
    """How the results table is printed."""

    table = "table"
    markdown = "markdown"


FormatOpt = Annotated[
    TableFormat,
    typer.Option("--format", help="Results table as a terminal table or as Markdown."),
]


@app.command("eval")
def eval_cmd(
    images: Annotated[
        Path, typer.Argument(help="Folder of generated images (see README: formats).")
    ],
    dataset: DatasetOpt = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    protocol: Annotated[
        Path | None,
        typer.Option(
            help="Protocol CSV (its name is found from its content; default: the named "
            "protocol built with --seed)."
        ),
    ] = None,
    protocol_name: Annotated[
        str | None,
        typer.Option(
            "--protocol-name",
            help="Named protocol to build (see `cellbench ls protocols`; default cellflux-iid).",
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(hidden=True)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the protocol, bootstrap and KID subsets.")] = 0,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Result JSON (per-image CSV written beside it); a file outside the image folder.",
        ),
    ] = Path("results.json"),
    as_json: JsonOpt = False,
    backend: BackendOpt = "classical",
    strict: Annotated[bool, typer.Option(help="Fail on any bad or missing image.")] = False,
    no_fid: Annotated[
        bool,
        typer.Option(
            "--no-fid",
            help="Skip Inception: no FID/KID, no moa reward, no MoA accuracy and no "
            "Inception-based metric; overall is then summed without moa and is NOT comparable "
            "with (or ranked beside) an overall scored with Inception.",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(help="Score only shard K/N of the tasks (merge with `cellbench eval merge`)."),
    ] = None,
    device: DeviceOpt = "cpu",
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Score a generator's images: seven rewards, overall, MoA accuracy, FID/KID, real reference row.

    `cellbench eval merge SHARD.json...` combines the results of `--shard K/N` runs.
    """
    from cellbench.ui import step

    if split is not None:
        from cellbench.errors import CellbenchError

        raise CellbenchError(
            "eval --split was replaced by named protocols",
            fix="pass --protocol-name cellflux-iid, cellflux-5120 or unseen "
            "(`cellbench ls protocols`), or a file made by `cellbench protocol --split`",
        )
    update, stop = phase_progress()
    try:
        with step("loading the scoring code (torch, scikit-image)"):
            from cellbench.evaluation import evaluate
        doc = evaluate(
            images,
            dataset,
            data_dir=data_dir,
            protocol=protocol,
            protocol_name=protocol_name,
            seed=seed,
            backend=backend,
            fid=not no_fid,
            strict=strict,
            shard=shard,
            device=device,
            out=out,
            progress=update,
        )
    finally:
        stop()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    elif doc.get("partial"):
        from cellbench.ui import info

        info(
            f"shard {doc['partial']['shard']}: {doc['images']['n_images']} images scored; "
            f"merge all shards with `cellbench eval merge`"
        )
    else:
        print_results_table(doc, fmt.value)
    from cellbench.ui import info

    info(f"[green]wrote[/green] {out}")


@app.command("eval-merge", hidden=True)
def eval_merge_cmd(
    shards: Annotated[
        list[Path], typer.Argument(help="Result JSON files written with --shard K/N.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Merged result JSON.")] = Path("results.json"),
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
    fmt: FormatOpt = TableFormat.table,
) -> None:
    """Merge `cellbench eval --shard K/N` results into the unsharded result (`cellbench eval merge`)."""
    from cellbench.evaluation import merge_shards

    update, stop = phase_progress()
    try:
        doc = merge_shards(shards, data_dir=data_dir, device=device, out=out, progress=update)
    finally:
        stop()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_results_table(doc, fmt.value)


@app.command("segment")
def segment_cmd(
    input: Annotated[
        Path,
        typer.Argument(help="A folder of images (PNG/TIFF/NPY, 1 or 3 channels) or one image."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for label images and features.csv.")],
    backend: BackendOpt = "classical",
    dna_channel: Annotated[
        int, typer.Option(help="Index of the DNA stain in 3-channel images.")
    ] = 2,
) -> None:
    """Segment nuclei and cells; write 16-bit label TIFFs and features.csv (one row per image)."""
    from cellbench.features.segment.io import segment_folder
    from cellbench.ui import info, progress

    with progress("segmenting", None) as update:
        n = segment_folder(input, out, backend=backend, dna_channel=dna_channel, on_progress=update)
    info(f"[green]wrote[/green] labels and features.csv for {n} image(s) to {out}")


@reference_app.command("build")
def reference_build(
    dataset: DatasetOpt = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    backend: BackendOpt = "classical",
    split: Annotated[str, typer.Option(help="Real split the statistics come from.")] = "train",
    out: Annotated[
        Path | None,
        typer.Option(help="Artifact folder (default: <dataset root>/cellbench_artifacts)."),
    ] = None,
) -> None:
    """Per-MoA mean and std of each feature over the real training split (`artifacts build --only reference`)."""
    from cellbench.cli.artifacts import run_build

    run_build(
        dataset, data_dir, parts=("reference",), out=out, backend=backend, reference_split=split
    )


@classifier_app.command("train")
def classifier_train(
    dataset: DatasetOpt = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    epochs: Annotated[
        int,
        typer.Option(help="Training epochs (10 in the CellFlux group's recipe, docs/scoring.md)."),
    ] = 10,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Artifact folder (default: <dataset root>/cellbench_artifacts)."),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Train the MoA head on train-iid treated crops with random flips (`artifacts build --only classifier`)."""
    from cellbench.cli.artifacts import run_build
    from cellbench.features.classifier import load_classifier
    from cellbench.ui import info

    folder, _ = run_build(
        dataset, data_dir, parts=("classifier",), out=out, epochs=epochs, seed=seed, device=device
    )
    m = load_classifier(folder / "classifier")[1]["test_metrics"]
    info(f"test-iid accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} (n={m['n']})")


@classifier_app.command("eval")
def classifier_eval(
    dataset: DatasetOpt = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="Real split to evaluate on.")] = "test",
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, macro-F1 and confusion matrix of the dataset's classifier on real crops."""
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.features.classifier_train import evaluate_classifier

    ds = open_dataset(dataset, data_dir, create_sim=True)
    update, stop = phase_progress()
    try:
        report = evaluate_classifier(ds, split=split, device=device, progress=update)
    finally:
        stop()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.table import Table

    from cellbench.ui import out_console

    out_console.print(
        f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}, n={report['n']}"
    )
    t = Table(title="per MoA")
    for col in ("MoA", "n", "recall", "precision", "F1"):
        t.add_column(col)
    for k, v in report["per_class"].items():
        t.add_row(k, str(v["n"]), str(v["recall"]), str(v["precision"]), str(v["f1"]))
    out_console.print(t)


@ls_app.command("metrics")
def ls_metrics(as_json: JsonOpt = False) -> None:
    """List the metrics of the suite by group (rewards, held-out): version, family, direction,
    kind and what each needs."""
    from dataclasses import asdict

    from cellbench.metrics.registry import specs

    rows = [asdict(s) for s in specs()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from cellbench.metrics.registry import GROUP_LABELS, GROUP_NOTE, grouped
    from cellbench.ui import out_console

    for group, members in grouped():
        out_console.print(f"[bold underline]{GROUP_LABELS[group]}[/bold underline]")
        for s in members:
            out_console.print(
                f"[bold]{s.name:<13}[/bold] {s.arrow} v{s.version} {s.family}, {s.kind}, "
                f"needs {s.needs}: {s.summary}"
            )
    out_console.print(GROUP_NOTE)


@ls_app.command("segmenters")
def ls_segmenters() -> None:
    """List segmentation backends."""
    from cellbench.features.segment.backends import SEGMENTERS
    from cellbench.ui import out_console

    for e in SEGMENTERS.entries():
        out_console.print(f"[bold]{e.name:<10}[/bold] {e.summary}")
