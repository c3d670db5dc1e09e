#!/usr/bin/env bash
# The longer CPU CellFlux of docs/generators.md ("Training CellFlux longer on the CPU"): the
# cpu-small recipe with 2x2 pixel folding and EDM scalings, trained in three stages that each start
# from the previous stage's checkpoint (`cellbench train --init-from`), then the test protocol
# answered and scored exactly as bench/pipelines/train_reference_generators.sh does.
#
#   bash bench/pipelines/train_cellflux_long.sh                      # defaults below
#   STEPS=24000 THREADS=1 bash bench/pipelines/train_cellflux_long.sh
#
# Stages (configs in bench/configs/):
#   1. steps 0 - 4,750: noise added to the source with probability 0.5 (CellFlux's recipe), EMA 0.995
#   2. steps 4,750 - 6,000: the source always noised (noise_prob 1.0), as at sampling
#   3. steps 6,000 - STEPS: the same with EMA 0.999
# Variables: DATA (default ./data), RUNS (default ./runs), OUT (default ./out/generators), STEPS
# (last step of stage 3, default 20000: checkpoints/cellflux-long), THREADS (torch threads,
# default 2). Sampling uses 20 Heun steps. Every stage resumes where its run
# folder already holds checkpoints, so an interrupted run restarts with the same command. Fixed
# seeds; a different thread count changes float rounding, not the recipe.
set -euo pipefail

BIN=${BIN:-.venv/bin}
DATA=${DATA:-data}
RUNS=${RUNS:-runs}
OUT=${OUT:-out/generators}
STEPS=${STEPS:-20000}
THREADS=${THREADS:-2}
CONF=bench/configs
export OMP_NUM_THREADS="$THREADS"
DS=(--dataset bbbc021-sim --data-dir "$DATA")
RUN=$RUNS/cellflux-long

test -f "$DATA/bbbc021-sim/metadata/bbbc021_df_all.csv" ||
    "$BIN/cellbench" data sim --out "$DATA/bbbc021-sim" --scale small --seed 0
mkdir -p "$OUT" "$RUN"
"$BIN/cellbench" protocol "${DS[@]}" --name cellflux-iid --seed 0 --out "$OUT/protocol.csv"

stage() {  # stage N LAST_STEP [--init-from CHECKPOINT]
    local n=$1 last=$2
    shift 2
    local start
    start=$(date +%s)
    "$BIN/cellbench" train cellflux "${DS[@]}" --config "$CONF/cellflux-long-stage$n.json" \
        --seed 0 --threads "$THREADS" --steps "$last" --out "$RUN/stage$n" "$@" --json \
        > "$RUN/stage$n.train.json"
    echo "cellflux-long stage $n: trained to step $last in $(( $(date +%s) - start )) s" >&2
}
stage 1 4750
stage 2 6000 --init-from "$RUN/stage1/checkpoints/step-00004750"
stage 3 "$STEPS" --init-from "$RUN/stage2/checkpoints/step-00006000"

"$BIN/cellbench" generate cellflux --checkpoint "$RUN/stage3" "${DS[@]}" \
    --protocol "$OUT/protocol.csv" --seed 0 --threads "$THREADS" --sample-steps 20 \
    --out "$OUT/cellflux-long"
"$BIN/cellbench" eval "$OUT/cellflux-long" "${DS[@]}" --protocol "$OUT/protocol.csv" \
    --out "$OUT/cellflux-long.results.json"
