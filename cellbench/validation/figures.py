"""Figures of the validation report: image grids (PIL) and plots (matplotlib, else plain SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellbench.io import atomic_path, atomic_write_text
from cellbench.validation.defects import DEFECTS

NUC_COLOUR = (255, 0, 255)
CELL_COLOUR = (255, 255, 0)
CYTO_COLOUR = (0, 255, 255)


def _save_png(img, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def overlay(crop: np.ndarray, seg) -> np.ndarray:
    """``crop`` with the cytoplasm foreground (cyan), cell (yellow) and nucleus (magenta) borders."""
    from skimage.segmentation import find_boundaries

    out = np.array(crop, copy=True)
    cyto = find_boundaries(seg.cyto_mask.astype(np.int32), mode="inner")
    cells = find_boundaries(seg.cells, mode="inner")
    nuclei = find_boundaries(seg.nuclei, mode="inner")
    out[cyto] = CYTO_COLOUR
    out[cells] = CELL_COLOUR
    out[nuclei] = NUC_COLOUR
    return out


def _label(img, text: str, xy: tuple[int, int]) -> None:
    from PIL import ImageDraw

    ImageDraw.Draw(img).text(xy, text, fill=(255, 255, 255))


def example_grid_png(examples: dict[str, Any], path: Path, scale: int = 1) -> None:
    """Rows = defects; per row, each example crop at every severity (0 first)."""
    from PIL import Image

    sev = examples["severities"]
    rows = examples["rows"]
    label_w, head_h, pad = 130, 16, 6
    n_ex = len(next(iter(rows.values()))[0])
    h, w = next(iter(rows.values()))[0].shape[1:3]
    cell_w = w * scale
    width = label_w + n_ex * (len(sev) * cell_w + pad)
    height = head_h + len(rows) * (h * scale + 2)
    canvas = Image.new("RGB", (width, height), (20, 20, 20))
    for e in range(n_ex):
        for j, s in enumerate(sev):
            _label(
                canvas, f"s={s:g}", (label_w + e * (len(sev) * cell_w + pad) + j * cell_w + 4, 2)
            )
    for r, (name, cols) in enumerate(rows.items()):
        y = head_h + r * (h * scale + 2)
        _label(canvas, name, (4, y + h * scale // 2 - 6))
        for e in range(n_ex):
            for j, batch in enumerate(cols):
                tile = Image.fromarray(batch[e]).resize((cell_w, h * scale), Image.NEAREST)
                canvas.paste(tile, (label_w + e * (len(sev) * cell_w + pad) + j * cell_w, y))
    _save_png(canvas, path)


def overlay_panel_png(
    crops: np.ndarray, segs: Sequence, titles: Sequence[str], path: Path, per_row: int = 8
) -> None:
    """Pairs (crop, crop with mask borders), ``per_row`` pairs a row, with a title above each."""
    from PIL import Image

    scale, head = 2, 14
    h, w = crops.shape[1:3]
    n_rows = int(np.ceil(len(crops) / per_row))
    tile_w = 2 * w * scale + 6
    canvas = Image.new("RGB", (per_row * tile_w, n_rows * (h * scale + head + 4)), (20, 20, 20))
    for i, (crop, seg, title) in enumerate(zip(crops, segs, titles, strict=True)):
        x = (i % per_row) * tile_w
        y = (i // per_row) * (h * scale + head + 4)
        _label(canvas, title, (x + 2, y))
        for k, img in enumerate((crop, overlay(crop, seg))):
            tile = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (x + k * w * scale, y + head))
    _save_png(canvas, path)


# ------------------------------------------------------------------------------------- plots
def _curves(doc: dict, source: str) -> list[tuple[str, str, list[float], list, list]]:
    """(defect, target, severities, values, (lo, hi) of the delta) for each defect's first target."""
    res = doc[source]
    out = []
    sev = [0.0, *doc["severities"]]
    for d, r in res["defects"].items():
        for t, info in r["targets"].items():
            cis = [[0.0, 0.0]]
            for s in doc["severities"]:
                ci = r["severities"][str(s)][t].get("ci")
                cis.append(ci if ci and ci[0] is not None else [None, None])
            base = res["baseline"][t]
            deltas = [None if v is None else v - base for v in info["curve"]]
            out.append((d, t, sev, deltas, cis))
            break
    return out


def curves_png(doc: dict, path: Path) -> None:
    """Small multiples: per defect, the change of its target metric vs severity (sim and real)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = [s for s in ("sim", "real") if s in doc]
    series = {s: {x[0]: x[1:] for x in _curves(doc, s)} for s in sources}
    names = list(series["sim"])
    ncol = 6
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.3 * nrow), squeeze=False)
    colours = {"sim": "tab:blue", "real": "tab:red"}
    for ax, d in zip(axes.ravel(), names, strict=False):
        for s in sources:
            if d not in series[s]:
                continue
            _, sev, deltas, cis = series[s][d]
            y = np.array([np.nan if v is None else v for v in deltas], float)
            lo = np.array([np.nan if c[0] is None else c[0] for c in cis], float)
            hi = np.array([np.nan if c[1] is None else c[1] for c in cis], float)
            ax.plot(sev, y, "o-", color=colours[s], ms=3, lw=1.2, label=s)
            if np.isfinite(lo).any():
                ax.fill_between(sev, lo, hi, color=colours[s], alpha=0.2, lw=0)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"{d}\n(Δ {series['sim'][d][0]})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("severity", fontsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def matrix_png(doc: dict, source: str, path: Path) -> None:
    """Heat map of the change at the highest severity, defect x metric (colour: per column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc[source]
    top = str(doc["severities"][-1])
    defects = list(res["defects"])
    metrics = [
        m
        for m in next(iter(res["defects"].values()))["severities"][top]
        if res["baseline"].get(m) is not None
    ]
    vals = np.full((len(defects), len(metrics)), np.nan)
    for i, d in enumerate(defects):
        for j, m in enumerate(metrics):
            v = res["defects"][d]["severities"][top][m].get("delta")
            vals[i, j] = np.nan if v is None else v
    scale = np.nanmax(np.abs(vals), axis=0)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    signed = vals / scale
    from cellbench.metrics.registry import lower_is_better

    lower = lower_is_better()
    for j, m in enumerate(metrics):  # colour by "worse" (red) / "better" (blue)
        if m in lower:
            signed[:, j] = -signed[:, j]
    fig, ax = plt.subplots(figsize=(1.0 * len(metrics) + 2.5, 0.42 * len(defects) + 1.5))
    ax.imshow(signed, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for i, d in enumerate(defects):
        for j, m in enumerate(metrics):
            if np.isfinite(vals[i, j]):
                target = m in DEFECTS[d].targets
                ax.text(
                    j,
                    i,
                    f"{vals[i, j]:.3g}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    fontweight="bold" if target else "normal",
                )
                if target:
                    ax.add_patch(
                        plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.4)
                    )
    ax.set_xticks(range(len(metrics)), metrics, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(defects)), defects, fontsize=8)
    ax.set_title(f"{source}: change at severity {top} (red = worse; boxed = target)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def curves_svg(doc: dict, path: Path) -> None:
    """The same small multiples as :func:`curves_png` as a plain SVG (no matplotlib needed)."""
    sources = [s for s in ("sim", "real") if s in doc]
    panels = {s: {x[0]: x[1:] for x in _curves(doc, s)} for s in sources}
    names = list(panels["sim"])
    pw, ph, ncol = 200, 150, 6
    nrow = int(np.ceil(len(names) / ncol))
    colours = {"sim": "#1f77b4", "real": "#d62728"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{ncol * pw}" height="{nrow * ph}" '
        'font-family="sans-serif" font-size="10">'
    ]
    for k, d in enumerate(names):
        x0, y0 = (k % ncol) * pw, (k // ncol) * ph
        ys = [
            v
            for s in sources
            if d in panels[s]
            for v in panels[s][d][2]
            if v is not None and np.isfinite(v)
        ]
        lo, hi = min([0.0, *ys]), max([0.0, *ys])
        span = hi - lo or 1.0

        def px(
            sv: float, v: float, x0: float = x0, y0: float = y0, lo: float = lo, span: float = span
        ) -> str:
            return (
                f"{x0 + 30 + sv * (pw - 45):.1f},{y0 + ph - 25 - (v - lo) / span * (ph - 55):.1f}"
            )

        target = panels["sim"][d][0]
        parts.append(f'<text x="{x0 + 5}" y="{y0 + 14}">{d} (Δ {target})</text>')
        parts.append(
            f'<polyline points="{px(0, 0)} {px(1, 0)}" stroke="#999" fill="none" stroke-width="0.6"/>'
        )
        parts.append(f'<text x="{x0 + 2}" y="{y0 + 30}">{hi:.3g}</text>')
        parts.append(f'<text x="{x0 + 2}" y="{y0 + ph - 22}">{lo:.3g}</text>')
        for s in sources:
            if d not in panels[s]:
                continue
            _, sev, deltas, _ = panels[s][d]
            pts = " ".join(
                px(a, b)
                for a, b in zip(sev, deltas, strict=True)
                if b is not None and np.isfinite(b)
            )
            parts.append(
                f'<polyline points="{pts}" stroke="{colours[s]}" fill="none" stroke-width="1.5"/>'
            )
        parts.append(f'<text x="{x0 + pw // 2 - 20}" y="{y0 + ph - 8}">severity 0-1</text>')
    parts.append("</svg>")
    atomic_write_text(path, "\n".join(parts) + "\n")


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_figures(out: Path, doc: dict, examples: dict, real_suite) -> dict[str, str]:
    """Write every figure into ``out``; return {figure: file name}."""
    files: dict[str, str] = {}
    example_grid_png(examples["sim"], out / "defects_sim.png")
    files["defects_sim"] = "defects_sim.png"
    if "real" in examples:
        example_grid_png(examples["real"], out / "defects_real.png")
        files["defects_real"] = "defects_real.png"
    if real_suite is not None:
        pick = _overlay_pick(real_suite.moas, 16)
        overlay_panel_png(
            real_suite.crops[pick],
            [real_suite.segs[i] for i in pick],
            [str(real_suite.moas[i])[:18] for i in pick],
            out / "segmentation_overlays_real.png",
        )
        files["segmentation_overlays"] = "segmentation_overlays_real.png"
    if have_matplotlib():
        curves_png(doc, out / "severity_curves.png")
        files["severity_curves"] = "severity_curves.png"
        for source in ("sim", "real"):
            if source in doc:
                matrix_png(doc, source, out / f"sensitivity_{source}.png")
                files[f"sensitivity_{source}"] = f"sensitivity_{source}.png"
    else:
        from cellbench.ui import info

        info(
            "matplotlib is not installed: severity curves as a plain SVG, no sensitivity-matrix "
            "PNGs (pip install 'cellbench[plots]')"
        )
        curves_svg(doc, out / "severity_curves.svg")
        files["severity_curves"] = "severity_curves.svg"
    return files


def _overlay_pick(moas: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` crops, the same number from each MoA, spread over each MoA's crops."""
    groups = sorted(set(moas))
    per = max(n // len(groups), 1)
    pick: list[int] = []
    for g in groups:
        idx = np.flatnonzero(moas == g)
        pick.extend(int(i) for i in idx[np.linspace(0, len(idx) - 1, per).astype(int)])
    return pick[:n]
