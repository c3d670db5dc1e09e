"""The markdown text of the validation report (``report.md``); tables are written by ``tabulate``.

Every cell is formatted here first (``_num``) and handed to ``tabulate`` as text, so the numbers
in the report are exactly these strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from cellbench.metrics.registry import METRICS
from cellbench.validation.defects import DEFECTS


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown (pipe) table of preformatted cells, as lines."""
    text = tabulate(
        [list(r) for r in rows], headers=list(header), tablefmt="pipe", disable_numparse=True
    )
    return text.splitlines()


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.{digits}f}"


def _cell(entry: dict | None, target: bool) -> str:
    if not entry or entry.get("delta") is None:
        return "–"
    text = _num(entry["delta"], 2)
    ci = entry.get("ci")
    if ci and ci[0] is not None:
        text += f" [{_num(ci[0], 2)}, {_num(ci[1], 2)}]"
    return f"**{text}**" if target else text


def _verdict_text(info: dict) -> str:
    if info["passed"]:
        return "PASS"
    if info["significant"]:
        return "drops, not monotonic"
    return "BLIND"


def summary_table(doc: dict) -> list[str]:
    """One row per defect and target: the drop at the top severity and the verdict, per source."""
    sources = [s for s in ("sim", "real") if s in doc]
    head = ["defect", "target"]
    for s in sources:
        head += [
            f"{s}: change at {doc['severities'][-1]:g} [95% CI]",
            f"{s}: monotonic",
            f"{s}: verdict",
        ]
    rows = []
    for d in doc["sim"]["defects"]:
        for t in DEFECTS[d].targets:
            cells = [d, f"`{t}`"]
            for s in sources:
                info = doc[s]["defects"].get(d, {}).get("targets", {}).get(t)
                if info is None:
                    cells += ["n/a", "", ""]
                    continue
                ci = info.get("ci_at_max")
                txt = _num(info["delta_at_max"], 3)
                if ci and ci[0] is not None:
                    txt += f" [{_num(ci[0], 3)}, {_num(ci[1], 3)}]"
                cells += [txt, "yes" if info["monotonic"] else "no", _verdict_text(info)]
            rows.append(cells)
    return md_table(head, rows)


def matrix_table(doc: dict, source: str) -> list[str]:
    """Defect x metric: change at the highest severity (bold: the defect's target)."""
    res = doc[source]
    top = str(doc["severities"][-1])
    cols = [  # the registered metrics the report computed, in registry order
        c
        for c in METRICS.names()
        if any(c in r["severities"][top] for r in res["defects"].values())
    ]
    cols = [c for c in cols if res["baseline"].get(c) is not None]
    rows = [["*undamaged value*", *(_num(res["baseline"][c], 3) for c in cols)]]
    for d, r in res["defects"].items():
        row = r["severities"][top]
        rows.append([d, *(_cell(row.get(c), c in DEFECTS[d].targets) for c in cols)])
    return md_table(["defect", *(f"`{c}`" for c in cols)], rows)


def curve_table(doc: dict, source: str) -> list[str]:
    """The target metric's mean at every severity (0 = undamaged)."""
    sev = [0.0, *doc["severities"]]
    rows = [
        [d, f"`{t}`", *(_num(v, 3) for v in info["curve"])]
        for d, r in doc[source]["defects"].items()
        for t, info in r["targets"].items()
    ]
    return md_table(["defect", "target", *(f"s={s:g}" for s in sev)], rows)


def feature_table(doc: dict, source: str) -> list[str]:
    """Mean segmentation features at the highest severity (what the segmenter saw)."""
    top = doc["severities"][-1]
    feats = doc[source]["feature_means"]
    names = list(feats["baseline"])
    rows = [["undamaged", *(_num(feats["baseline"][n], 3) for n in names)]]
    for d in doc[source]["defects"]:
        key = f"{d}@{top}"
        if key in feats:
            rows.append([key, *(_num(feats[key][n], 3) for n in names)])
    return md_table(["image set", *(f"`{n}`" for n in names)], rows)


def _passed(doc: dict, source: str) -> tuple[list[str], list[str]]:
    ok, bad = [], []
    for d, r in doc[source]["defects"].items():
        for t, info in r["targets"].items():
            (ok if info["passed"] else bad).append(f"{d} → `{t}`")
    return ok, bad


def render_report(doc: dict[str, Any]) -> str:
    """The full report.md."""
    sim = doc["sim"]
    figs = doc.get("figures", {})
    out: list[str] = ["# Metric validation report", ""]
    out += [
        f"Command: `{doc.get('command') or 'cellbench validate-metrics'}`  ",
        f"Metric suite version {doc['metric_suite_version']}; segmenter "
        f"`{sim['scorer']['segmenter']['name']}` v{sim['scorer']['segmenter']['version']}; "
        f"seed {doc['seed']}; severities {', '.join(f'{s:g}' for s in doc['severities'])}; "
        f"wall time {doc.get('wall_time_s', 0):.0f} s.",
        "",
        "Each defect damages the undamaged real target crops in one known way (see "
        "`cellbench/validation/defects.py`); every damaged set is scored by the same scorer and "
        "aggregation as `cellbench eval`. *Change* = mean over images of the paired per-image "
        "change of the metric (damaged − undamaged) with its 95% bootstrap interval; for FID/KID "
        "(set-level, lower is better) the change of the set value, without interval. A defect "
        "**passes** when its target metric is worse at the highest severity (interval excluding "
        "0) and worse at every step of the severity ladder.",
        "",
        f"Undamaged set = real reference row of `cellbench eval`: "
        f"{'yes' if sim['baseline_matches_reference_row'] else 'NO'}.",
        "",
        "## Summary",
        "",
        *summary_table(doc),
        "",
    ]
    for source in ("sim", "real"):
        if source not in doc:
            continue
        ok, bad = _passed(doc, source)
        out.append(
            f"- **{source}**: {len(ok)} of {len(ok) + len(bad)} defect/target pairs pass"
            + (f"; not passing: {', '.join(bad)}" if bad else "")
            + "."
        )
    out += ["", *blind_spot_lines(doc), ""]
    out += [
        f"## Sensitivity matrix: {sim['source']}, {sim['n_images']} images",
        "",
        f"Change of every metric at severity {doc['severities'][-1]:g} (bold: the defect's "
        "target). FID/KID are computed against the undamaged set itself (so they are 0 "
        "undamaged); their noise level, the split-half floor of these images, is "
        + (
            ", ".join(f"{k} {_num(v, 3)}" for k, v in sim.get("split_half_floor", {}).items())
            or "not computed (--no-fid)"
        )
        + ".",
        "",
        *matrix_table(doc, "sim"),
        "",
    ]
    if "sensitivity_sim" in figs:
        out += [f"![sensitivity matrix, sim]({figs['sensitivity_sim']})", ""]
    out += ["Target metric at each severity:", "", *curve_table(doc, "sim"), ""]
    if "severity_curves" in figs:
        out += [f"![target metric vs severity]({figs['severity_curves']})", ""]
    out += ["Mean segmentation features (sim):", "", *feature_table(doc, "sim"), ""]
    out += [f"![defect examples, sim]({figs['defects_sim']})", ""]
    if "real" in doc:
        real = doc["real"]
        out += [
            f"## Real BBBC021 crops: {real['n_images']} target crops "
            f"({', '.join(real['moas'])}), reference statistics from {real['n_reference']} others",
            "",
            "No MoA classifier or FID network reference exists for these crops here, so `moa`, "
            "`moa_swap` and FID/KID are not part of this section.",
            "",
            *matrix_table(doc, "real"),
            "",
        ]
        if "sensitivity_real" in figs:
            out += [f"![sensitivity matrix, real]({figs['sensitivity_real']})", ""]
        out += ["Target metric at each severity:", "", *curve_table(doc, "real"), ""]
        out += ["Mean segmentation features (real):", "", *feature_table(doc, "real"), ""]
        if "defects_real" in figs:
            out += [f"![defect examples, real]({figs['defects_real']})", ""]
    if "segmentation" in doc:
        seg = doc["segmentation"]
        ov = seg["overall"]
        out += [
            f"## Nucleus segmentation accuracy ({seg['source']}: {seg['n_images']} images, "
            f"{seg['n_true_nuclei']} nuclei)",
            "",
            f"Segmenter `{seg['segmenter']['name']}` v{seg['segmenter']['version']}.",
            "",
            *md_table(
                ["", "F1 @ IoU 0.5", "F1 @ IoU 0.75"],
                [
                    ["mean over images", f"{ov['mean_f1_50']:.3f}", f"{ov['mean_f1_75']:.3f}"],
                    [
                        "pooled over nuclei",
                        f"{ov['pooled_f1_50']:.3f}",
                        f"{ov['pooled_f1_75']:.3f}",
                    ],
                ],
            ),
            "",
            "Per image (`segmentation_f1.csv` has the counts):",
            "",
            *md_table(
                ["image", "size", "nuclei (true / found)", "F1 @ 0.5", "F1 @ 0.75"],
                [
                    [
                        f"{r['image'][:16]}…",
                        f"{r['height']}×{r['width']}",
                        f"{r['n_true']} / {r['n_pred']}",
                        f"{r['f1_50']:.3f}",
                        f"{r['f1_75']:.3f}",
                    ]
                    for r in seg["per_image"]
                ],
            ),
        ]
        out.append("")
    if "segmentation_overlays" in figs:
        out += [
            "## Segmentation overlays on real BBBC021 crops",
            "",
            "Each pair: the crop (actin red, tubulin green, DNA blue) and the masks the rewards "
            "are computed from: nuclei (magenta), cells (yellow), cytoplasm foreground (cyan).",
            "",
            f"![segmentation overlays]({figs['segmentation_overlays']})",
            "",
        ]
    return "\n".join(out) + "\n"


def blind_spot_lines(doc: dict) -> list[str]:
    """Measured facts about known blind spots (not verdicts)."""
    lines = ["## Blind spots (measured)", ""]
    for source in ("sim", "real"):
        if source not in doc:
            continue
        b = doc[source]["blind_spots"]
        frac = b["fraction_cell_count_equals_nuc_count"]
        lines.append(
            f"- {source}: on the undamaged crops `cell_count` equals `nuc_count` in "
            f"{100 * frac:.1f}% of images (correlation "
            f"{_num(b['correlation_cell_count_nuc_count'], 3)})"
            + (": the cell count mostly repeats the nucleus count." if frac >= 0.95 else ".")
        )
        res = doc[source]["defects"]
        top = str(doc["severities"][-1])
        means = doc[source].get("feature_means", {})
        dup = means.get(f"nucleus_duplicate@{top}")
        if "nucleus_duplicate" in res and dup is not None and "baseline" in means:
            dn = dup["nuc_count"] - means["baseline"]["nuc_count"]
            dc = dup["cell_count"] - means["baseline"]["cell_count"]
            share = f", {dc / dn:+.2f} cells per extra nucleus" if dn > 0 else ""
            lines.append(
                f"  Extra nuclei placed inside existing cells (`nucleus_duplicate` at {top}) "
                f"change the mean nucleus count per image by {dn:+.2f} and the mean cell count "
                f"by {dc:+.2f}{share} (a binucleate cell should count once)."
            )
        for d in ("noise", "pure_noise", "blur"):
            if d in res:
                row = res[d]["severities"][top]
                feats = doc[source]["feature_means"].get(f"{d}@{top}", {})
                lines.append(
                    f"  `{d}` at {top}: `nuc_in_cyto` change {_num(row['nuc_in_cyto']['delta'], 3)}"
                    f" (mean feature {_num(feats.get('nuc_in_cyto'), 3)}, nuclei found per image "
                    f"{_num(feats.get('nuc_count'), 3)})."
                )
    return lines
