"""Where the nucleus pass spends its time: CPU ms per crop by stage, one process.

Each helper of a ``classical.py`` is wrapped by a timer that records its *own* CPU time
(``time.process_time``, minus the time of wrapped helpers it calls), under a stage name, and under
the phase it runs in: the radius estimate (inside ``_radii_and_contrast``), the first pass at the
estimated radii, or the re-segment check (after the first ``_median_radius``). Time in a wrapped
caller's own lines goes to ``other``. Stages: smoothing + background (``_gauss``, ``_contrast``,
``_background``, ``_local_max`` ...), thresholds (Otsu, hole filling, component sizes),
distance, markers (regional maxima and their labelling), watershed, border refinement (the second
watershed of each ``_nuclei_at``), noise / numbering; helpers a version lacks are skipped.

Runs on the simulated crops (the sim's ``demo`` protocol crops: the first ``--n`` of the index),
``BATCH_CHUNK`` crops per call, the best of ``--repeats`` totals. ``--module FILE`` profiles
another ``classical.py`` (e.g. the frozen reference ``bench/perf/_classical_v3_ref.py``).

Usage: python bench/perf/nucleus_profile.py [--data-dir data] [--n 512] [--repeats 3]
       [--module bench/perf/_classical_v3_ref.py]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
import time
from collections import defaultdict
from pathlib import Path

#: helper name -> stage (whichever exist in the profiled module)
STAGES = {
    "_gauss": "smoothing + background",
    "_contrast": "smoothing + background",
    "_background": "smoothing + background",
    "_blocks": "smoothing + background",
    "_upsample": "smoothing + background",
    "_downsample": "smoothing + background",
    "_local_max": "thresholds",
    "_otsu_stack": "thresholds",
    "_fill_holes": "thresholds",
    "_foreground": "thresholds",
    "_measure_radii": "radius measurement",
    "_edt": "distance",
    "_markers": "markers",
    "local_maxima": "markers",
    "label": "labelling",
    "edt_stack": "distance",
    "label_max": "noise + numbering",
    "watershed": "watershed",
    "watershed_heap": "watershed",
    "percentiles": "markers",
    "_opening": "smoothing + background",
    "_refine": "border refinement",
    "_noise_sigma": "noise + numbering",
    "_per_label_max": "noise + numbering",
    "_image_of": "noise + numbering",
    "_number_per_image": "noise + numbering",
    "_median_radius": "re-segment check",
    # the compiled kernels the current module calls inline (K.*)
    "foreground": "thresholds",
    "keep_large": "thresholds",
    "plateau_maxima": "markers",
    "masked_percentiles": "markers",
    "components": "labelling",
    "blob_medians": "radius measurement",
    "label_means": "border refinement",
    "keep_bright": "border refinement",
    "_nuclei_at": "other",
    "_radii_and_contrast": "other",
    "segment_nuclei_stack": "other",
}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Profiler:
    """Own CPU time per (phase, stage) of wrapped functions."""

    def __init__(self) -> None:
        self.own: dict[tuple[str, str], float] = defaultdict(float)
        self.stack: list[float] = []  # time of wrapped callees, per open frame
        self.phase = "first pass"
        self.ws_calls = 0

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            stage = STAGES[name]
            if name == "_radii_and_contrast":
                self.phase = "radius estimate"
            if name == "_median_radius":
                self.phase = "re-segment check"
            if name == "_nuclei_at":
                self.ws_calls = 0
            if name in ("watershed", "watershed_heap"):
                self.ws_calls += 1
                if self.ws_calls == 2:
                    stage = "border refinement"
            phase = self.phase
            self.stack.append(0.0)
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.process_time() - t0
                inner = self.stack.pop()
                self.own[(phase, stage)] += dt - inner
                if self.stack:
                    self.stack[-1] += dt
                if name == "_radii_and_contrast":
                    self.phase = "first pass"
                if name == "segment_nuclei_stack":
                    self.phase = "first pass"

        return timed


class _Shim:
    """A module whose listed functions are replaced (the profiled module's ``ndi`` or ``K``)."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


def instrument(module) -> Profiler:
    prof = Profiler()
    for alias in ("ndi", "K"):
        if hasattr(module, alias):
            shim = _Shim(getattr(module, alias))
            for name in STAGES:
                if hasattr(shim._inner, name) and callable(getattr(shim._inner, name)):
                    setattr(shim, name, prof.wrap(name, getattr(shim._inner, name)))
            setattr(module, alias, shim)
    for name in STAGES:
        if hasattr(module, name) and callable(getattr(module, name)):
            setattr(module, name, prof.wrap(name, getattr(module, name)))
    return prof


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--module", type=Path, help="another classical.py to profile")
    args = ap.parse_args()

    from cellbench.data.bbbc021 import open_dataset

    if args.module is not None:
        module = _load(args.module, "classical_profiled")
        label = str(args.module)
    else:
        from cellbench.features.segment import classical as module

        label = "cellbench/features/segment/classical.py"
    ds = open_dataset("bbbc021-sim", args.data_dir)
    dna = ds.load_crops(ds.index["SAMPLE_KEY"].iloc[: args.n].tolist())[..., 2]
    chunk = module.BATCH_CHUNK
    module.segment_nuclei_stack(dna[:16])  # warm up (compiled kernels loaded)
    best = None
    for _ in range(args.repeats):
        prof = instrument(module)
        c0 = time.process_time()
        for s in range(0, len(dna), chunk):
            module.segment_nuclei_stack(dna[s : s + chunk])
        total = time.process_time() - c0
        if best is None or total < best[0]:
            best = (total, dict(prof.own))
        # undo the wrapping for the next repeat
        if args.module is not None:
            module = _load(args.module, "classical_profiled")
        else:
            import importlib

            module = importlib.reload(module)
    total, own = best
    n = len(dna)
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {label}; {n} crops "
        f"{dna.shape[1:]}, {chunk} per call; CPU ms per crop (own time of each stage, timers on), "
        f"best of {args.repeats}"
    )
    phases = ["radius estimate", "first pass", "re-segment check"]
    stages = sorted(
        {s for _, s in own},
        key=lambda s: list(dict.fromkeys(STAGES.values())).index(s) if s in STAGES.values() else 99,
    )
    print("| stage | " + " | ".join(phases) + " | all |")
    print("|---|" + "---|" * (len(phases) + 1))
    for st in stages:
        vals = [1e3 * own.get((ph, st), 0.0) / n for ph in phases]
        print(f"| {st} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {sum(vals):.3f} |")
    cols = [1e3 * sum(v for (ph, _), v in own.items() if ph == p) / n for p in phases]
    print("| total | " + " | ".join(f"{v:.3f}" for v in cols) + f" | {sum(cols):.3f} |")
    print(f"untimed total: {1e3 * total / n:.3f} ms per crop (timers included)")


if __name__ == "__main__":
    main()
