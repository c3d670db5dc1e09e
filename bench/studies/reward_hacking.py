"""Do a generator's reward gains carry over to the held-out metrics? (docs/reward-hacking.md)

Scores each entry's images once (``NAME=IMAGE_FOLDER``, one protocol for all), then draws paired
bootstrap resamples of the protocol's tasks: the same task indices for every entry, the real side
fixed, so what the entries share (which tasks were drawn) cancels in their differences. On every
resample it recomputes the reward ``overall`` (mean over the drawn images) and each held-out
metric of the suite:

* FID_o against the protocol's real targets, exactly, from the singular values of the
  generated-by-real centred feature product (each replicate costs an n x m product rather than a
  d x d square root; checked against :func:`cellbench.metrics.fid.fid_from_features` on the full
  set before it is used), and ``kid_all_pairs``: KID's unbiased polynomial-kernel MMD^2 over all
  pairs rather than averaged over random subsets of 100 (the same expectation without the subset
  noise; from kernel matrices computed once);
* every ``kind="set_fn"`` metric of the registry on the resampled :class:`SetInputs`
  (precision/recall/density/coverage, retrieval in both spaces), with two exceptions that are
  functions of per-image quantities and are resampled as such: ``memorisation`` and
  ``input_copies`` (each image's nearest-training-crop and own-input distances against the real
  side's fixed thresholds), and the profile metrics, recomputed without their permutation nulls;
* ``moa_accuracy`` (per image).

It prints and writes (``--out``) a JSON and a markdown table of each entry's value with its 95%
interval and the paired difference against ``--base`` with its interval, and a forest
plot (``--plot``). Run it on the entries that ``bench/pipelines/make_submissions.py --work DIR``
generated (their folders ``DIR/<entry>/images``)::

    .venv/bin/python bench/studies/reward_hacking.py --data-dir data --protocol protocol.csv \\
        --entry cellflux=work/cellflux/images --entry cellfluxrl=work/cellfluxrl/images \\
        --base cellflux --out study.json --plot docs/reward-hacking.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

#: the per-image metrics resampled (means over the drawn images)
PER_IMAGE = ("overall", "moa_accuracy")


@dataclass
class Scored:
    """One entry's per-image quantities, aligned with the protocol's task order."""

    name: str
    task_ids: np.ndarray
    per_image: dict[str, np.ndarray]
    inputs: object  # SetInputs
    memo_copy: np.ndarray | None  # per image: nearer a training crop than the real threshold
    memo_input: np.ndarray | None  # per image: nearer its own input than the real threshold
    kernels: tuple[np.ndarray, np.ndarray, float]  # KID's k(G, G), mean k(G, R) per row, k(R, R)
    full: dict[str, float]  # the values of the full set as `cellbench eval` computes them


def fid_nuclear(gen: np.ndarray, real_centred: np.ndarray, real_mean: np.ndarray, tr_r: float):
    """FID of ``gen`` against a fixed real side: |dmu|^2 + tr C_g + tr C_r - 2 ||A^T B||_*,
    with C_g = A A^T and C_r = B B^T (A, B the centred features over sqrt(n - 1))."""
    n = len(gen)
    mu = gen.mean(0)
    a = (gen - mu) / np.sqrt(n - 1)
    nuclear = np.linalg.svd(a @ real_centred.T, compute_uv=False).sum()
    d = mu - real_mean
    return float(d @ d + (a * a).sum() + tr_r - 2.0 * nuclear)


def kid_kernels(gen: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """KID's kernel matrices of a set, computed once: k(G, G), the mean of k(G, R) per generated
    row, and the off-diagonal mean of k(R, R)."""
    from cellbench.metrics.fid import poly_kernel

    g, r = gen.astype(np.float64), real.astype(np.float64)
    krr = poly_kernel(r, r)
    m = len(r)
    return (
        poly_kernel(g, g),
        poly_kernel(g, r).mean(1),
        float((krr.sum() - np.trace(krr)) / (m * (m - 1))),
    )


def kid_all_pairs(kernels: tuple[np.ndarray, np.ndarray, float], idx: np.ndarray) -> float:
    """Unbiased MMD^2 of the drawn generated images against all real ones, over all pairs (KID
    averages it over random subsets of 100 instead; the same expectation, no subset noise).
    Pairs of a draw with itself (the same position) are left out, repeats of an image are not."""
    kgg, kgr_rows, krr = kernels
    n = len(idx)
    sub = kgg[np.ix_(idx, idx)]
    return float((sub.sum() - np.trace(sub)) / (n * (n - 1)) + krr - 2.0 * kgr_rows[idx].mean())


def score_entry(name: str, images: Path, ctx: dict) -> Scored:
    from cellbench.metrics.memorisation import QUANTILE, nearest_distances, paired_distances
    from cellbench.metrics.registry import compute_set, set_fn_names
    from cellbench.results.builder import held_out_inputs, per_image_values
    from cellbench.scoring.arrays import ImageArrays
    from cellbench.scoring.images import score_images

    scorer, ds, table = ctx["scorer"], ctx["ds"], ctx["table"]
    cached = None if ctx["cache"] is None else ctx["cache"] / f"{name}.arrays.npz"
    if cached is not None and cached.exists():
        arrays = ImageArrays.load(cached)
    else:
        arrays, _ = score_images(scorer, images, table, strict=True, use_inception=True)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            arrays.save(cached)
    if len(set(arrays.task_ids)) != len(arrays.task_ids):
        sys.exit(f"{images}: more than one image per task; pass one image per task")
    order = {t: i for i, t in enumerate(table["task_id"].astype(str))}
    if sorted(order[t] for t in arrays.task_ids) != list(range(len(table))):
        sys.exit(f"{images}: every task of the protocol needs exactly one image")
    by_task = table.set_index("task_id")
    moas = by_task.loc[arrays.task_ids, "moa"].to_numpy().astype(str)
    probs = scorer.moa_probs(arrays.inception)
    values = per_image_values(scorer, arrays.seg, probs, moas)
    inputs = held_out_inputs(scorer, ds, table, arrays, seed=0, use_inception=True)
    full_set = compute_set(set_fn_names(), inputs)
    full = {k: v.value for k, v in full_set.items() if v.value is not None}
    # per-image copy indicators against the real side's fixed thresholds (memorisation.py)
    d_real = nearest_distances(inputs.real_inception, inputs.train_inception)
    copy = nearest_distances(inputs.gen_inception, inputs.train_inception) <= np.quantile(
        d_real, QUANTILE
    )
    rows_g, rows_r = np.asarray(inputs.gen_control), np.asarray(inputs.real_control)
    ctrl = inputs.control_inception
    p_real = paired_distances(inputs.real_inception[rows_r >= 0], ctrl[rows_r[rows_r >= 0]])
    own = np.full(len(rows_g), np.nan)
    ok = rows_g >= 0
    own[ok] = paired_distances(inputs.gen_inception[ok], ctrl[rows_g[ok]])
    inp = np.where(ok, own <= np.quantile(p_real, QUANTILE), np.nan)
    for key, got in (("memorisation", copy), ("input_copies", inp)):
        if key in full and abs(np.nanmean(got) - full[key]) > 1e-9:
            sys.exit(f"{name}: per-image {key} {np.nanmean(got)} != the metric's {full[key]}")
    return Scored(
        name,
        np.asarray(arrays.task_ids),
        {m: np.asarray(values[m], float) for m in PER_IMAGE if m in values},
        inputs,
        copy.astype(float),
        inp,
        kid_kernels(inputs.gen_inception, inputs.real_inception),
        full,
    )


def replicate(s: Scored, idx: np.ndarray, real: dict, names: tuple[str, ...]) -> dict[str, float]:
    """Every resampled metric of one entry on the drawn images ``idx``."""
    from cellbench.metrics.profile import profile_energy_distance, shift_correlation
    from cellbench.metrics.registry import compute_set

    inp = s.inputs
    sub = replace(
        inp,
        compounds=inp.compounds[idx],
        moas=inp.moas[idx],
        gen_inception=inp.gen_inception[idx],
        gen_profile=inp.gen_profile[idx],
        gen_digests=None if inp.gen_digests is None else np.asarray(inp.gen_digests)[idx],
        gen_control=None if inp.gen_control is None else np.asarray(inp.gen_control)[idx],
    )
    out = {m: float(v[idx].mean()) for m, v in s.per_image.items()}
    out["fid_o"] = fid_nuclear(sub.gen_inception, real["centred"], real["mean"], real["tr"])
    out["kid_all_pairs"] = kid_all_pairs(s.kernels, idx)
    for k, v in compute_set(names, sub).items():
        out[k] = v.value
    args = (sub.gen_profile, sub.compounds, inp.real_profile, inp.real_compounds)
    out["profile_shift_corr"] = shift_correlation(
        *args, inp.control_profile, n_permutations=1
    ).value
    out["profile_energy"] = profile_energy_distance(
        *args, inp.control_profile, n_permutations=1
    ).value
    out["memorisation"] = float(s.memo_copy[idx].mean())
    out["input_copies"] = float(np.nanmean(s.memo_input[idx]))
    return out


def interval(x: np.ndarray) -> list[float]:
    """95% interval of ``x[0]`` (the full set's value) from its resamples ``x[1:]``: the value plus
    the quantiles of the resamples' deviations from their own mean (the suite's shifted percentile
    interval, :func:`cellbench.metrics.bootstrap.shifted_percentile_interval`). Set-level figures
    are biased under resampling with replacement (a repeated image shrinks the within-set distances
    of the energy distance, noisier compound means lower the shift correlation), so the plain
    percentile interval of the resamples can miss the value itself; the shift keeps the spread and
    drops the bias."""
    from cellbench.metrics.bootstrap import shifted_percentile_interval

    boot = x[1:][np.isfinite(x[1:])]
    if not len(boot) or not np.isfinite(x[0]):
        return [float("nan")] * 2
    lo, hi = shifted_percentile_interval(float(x[0]), boot - boot.mean(), 0.95)
    return [float(lo), float(hi)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default="data", help="folder holding bbbc021-sim")
    p.add_argument("--dataset", default="bbbc021-sim")
    p.add_argument("--protocol", help="the protocol CSV all entries answered (required)")
    p.add_argument("--entry", action="append", help="NAME=IMAGE_FOLDER (repeat; required)")
    p.add_argument("--base", help="the entry the differences are taken against (required)")
    p.add_argument("--n-boot", type=int, default=500, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--arrays-cache",
        type=Path,
        help="keep each entry's per-image arrays here (<name>.arrays.npz) and reuse them",
    )
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--markdown", type=Path, help="write the tables as markdown here")
    p.add_argument("--plot", type=Path, help="write the forest plot (PNG) here")
    p.add_argument(
        "--plot-entries", help="comma-separated entries the plot shows (default: all but --base)"
    )
    p.add_argument(
        "--replot",
        type=Path,
        help="redraw the plot and tables from a JSON this script wrote, without scoring",
    )
    args = p.parse_args(argv)
    plot_entries = args.plot_entries.split(",") if args.plot_entries else None
    if args.replot is not None:
        result = json.loads(args.replot.read_text())
        metrics = list(result["entries"][result["base"]])
        write_outputs(result, metrics, args, plot_entries)
        return 0
    if not (args.protocol and args.entry and args.base):
        p.error("--protocol, --entry and --base are required (unless --replot)")

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.evaluation import load_protocol_for
    from cellbench.metrics.fid import fid_from_features
    from cellbench.metrics.registry import set_fn_names, spec
    from cellbench.scoring.artifacts import Artifacts
    from cellbench.scoring.scorer import Scorer

    pairs = [e.split("=", 1) for e in args.entry]
    if any(len(e) != 2 for e in pairs):
        p.error("--entry takes NAME=IMAGE_FOLDER")
    names_e = [n for n, _ in pairs]
    if args.base not in names_e:
        p.error(f"--base {args.base!r} is not one of the entries {names_e}")
    t0 = time.perf_counter()
    ds = open_dataset(args.dataset, args.data_dir)
    table, _ = load_protocol_for(ds, args.protocol, None, 0)
    ctx = {
        "ds": ds,
        "table": table,
        "scorer": Scorer(Artifacts.for_dataset(ds)),
        "cache": args.arrays_cache,
    }
    scored = []
    for name, folder in pairs:
        print(f"scoring {name} ({folder})", file=sys.stderr, flush=True)
        scored.append(score_entry(name, Path(folder), ctx))
    t_score = time.perf_counter() - t0

    real_inc = scored[0].inputs.real_inception.astype(np.float64)
    real = {"mean": real_inc.mean(0)}
    real["centred"] = (real_inc - real["mean"]) / np.sqrt(len(real_inc) - 1)
    real["tr"] = float((real["centred"] ** 2).sum())
    for s in scored:  # the fast FID equals the suite's on the full set
        exact = fid_from_features(s.inputs.gen_inception, real_inc)
        fast = fid_nuclear(s.inputs.gen_inception.astype(np.float64), **_r(real))
        if abs(fast - exact) > 1e-6 * max(1.0, exact):
            sys.exit(f"{s.name}: resampling FID {fast} != fid_from_features {exact}")
    # set_fn metrics recomputed directly on each resample (profile and copies are done apart)
    direct = tuple(
        n
        for n in set_fn_names()
        if not n.startswith("profile_") and n not in ("memorisation", "input_copies")
    )
    n = len(table)
    rng = np.random.default_rng(args.seed)
    reps: dict[str, dict[str, list[float]]] = {s.name: {} for s in scored}
    t1 = time.perf_counter()
    draws = [np.arange(n)] + [rng.integers(0, n, n) for _ in range(args.n_boot)]
    for b, idx in enumerate(draws):
        for s in scored:
            for k, v in replicate(s, idx, real, direct).items():
                reps[s.name].setdefault(k, []).append(np.nan if v is None else v)
        if b % 50 == 0:
            print(f"resample {b}/{args.n_boot}", file=sys.stderr, flush=True)
    t_boot = time.perf_counter() - t1

    metrics = list(reps[args.base])
    base = {k: np.asarray(v) for k, v in reps[args.base].items()}
    result: dict = {
        "protocol": str(args.protocol),
        "n_tasks": n,
        "n_boot": args.n_boot,
        "seed": args.seed,
        "base": args.base,
        "seconds": {"scoring": round(t_score, 1), "resampling": round(t_boot, 1)},
        "entries": {},
    }
    for s in scored:
        row = {}
        for k in metrics:
            x = np.asarray(reps[s.name][k])
            d = x - base[k]
            row[k] = {
                "value": float(x[0]),
                "ci95": interval(x),
                "diff": float(d[0]),
                "diff_ci95": interval(d),
                "higher_is_better": _higher(spec, k),
            }
        result["entries"][s.name] = row
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_outputs(result, metrics, args, plot_entries)
    return 0


def write_outputs(
    result: dict, metrics: list[str], args: argparse.Namespace, plot_entries: list[str] | None
) -> None:
    text = markdown(result, metrics)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.plot:
        forest_plot(result, metrics, args.plot, plot_entries)


def _r(real: dict) -> dict:
    return {"real_centred": real["centred"], "real_mean": real["mean"], "tr_r": real["tr"]}


def _higher(spec, name: str) -> bool:
    return bool(spec({"kid_all_pairs": "kid_o"}.get(name, name)).higher_is_better)


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if abs(v) >= 1 else f"{v:.3f}"


def markdown(result: dict, metrics: list[str]) -> str:
    entries = list(result["entries"])
    lines = [
        "| metric | " + " | ".join(entries) + " |",
        "|---|" + "---|" * len(entries),
    ]
    for k in metrics:
        cells = []
        for e in entries:
            r = result["entries"][e][k]
            cell = f"{_fmt(r['value'])} [{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]"
            if e != result["base"]:
                lo, hi = r["diff_ci95"]
                better = (lo > 0) if r["higher_is_better"] else (hi < 0)
                worse = (hi < 0) if r["higher_is_better"] else (lo > 0)
                mark = " (better)" if better else (" (worse)" if worse else "")
                cell += f"<br>Δ {_fmt(r['diff'])} [{_fmt(lo)}, {_fmt(hi)}]{mark}"
            cells.append(cell)
        arrow = "↑" if result["entries"][entries[0]][k]["higher_is_better"] else "↓"
        lines.append(f"| {k} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _unit(result: dict, k: str) -> float | None:
    """A metric's plotting unit: the width of the base's 95% interval, or where that is 0 (a
    figure pinned at its bound, e.g. precision 0) the widest interval of any entry."""
    widths = [r[k]["ci95"][1] - r[k]["ci95"][0] for r in result["entries"].values()]
    base = result["entries"][result["base"]][k]["ci95"]
    for w in (base[1] - base[0], max((w for w in widths if np.isfinite(w)), default=np.nan)):
        if np.isfinite(w) and w > 0:
            return float(w)
    return None


def forest_plot(
    result: dict, metrics: list[str], path: Path, entries: list[str] | None = None
) -> None:
    """Each entry's paired difference from the base, in units of the base's own 95% interval
    width (:func:`_unit`), signed so that right is better; one row per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [e for e in (entries or result["entries"]) if e != result["base"]]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(metrics) + 1.4))
    colours = plt.cm.tab10.colors
    for j, e in enumerate(others):
        for i, k in enumerate(metrics):
            r = result["entries"][e][k]
            width = _unit(result, k)
            if width is None:
                continue
            sign = 1.0 if r["higher_is_better"] else -1.0
            lo, hi = (sign * x / width for x in r["diff_ci95"])
            y = i + (j - (len(others) - 1) / 2) * 0.18
            ax.plot(sorted((lo, hi)), [y, y], color=colours[j % 10], lw=1.6)
            ax.plot(
                sign * r["diff"] / width,
                y,
                "o",
                color=colours[j % 10],
                ms=4,
                label=e if i == 0 else None,
            )
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(metrics)))
    ax.set_yticklabels(metrics)
    ax.invert_yaxis()
    ax.set_xlabel(
        f"paired difference from {result['base']} (right = better), "
        f"in widths of {result['base']}'s 95% interval"
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(
        f"Do reward gains carry over? {result['n_tasks']} tasks, "
        f"{result['n_boot']} paired resamples",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
