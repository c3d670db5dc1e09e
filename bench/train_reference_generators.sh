#!/usr/bin/env bash
# Reproduce the cpu-small reference generators on bbbc021-sim with fixed seeds, answer the test
# protocol with them (and with the two anchors) and score everything with `cellbench eval`.
#
#   bash bench/train_reference_generators.sh                  # defaults below
#   DATA=/tmp/d RUNS=/tmp/runs OUT=/tmp/out STEPS=750 bash bench/train_reference_generators.sh
#
# Variables: DATA (dataset folder, default ./data), SCALE (sim scale if the dataset must be made,
# default small), RUNS (run folders, default ./runs), OUT (images and results, default
# ./out/generators), STEPS (total training steps, default: the preset's), MODELS (default
# "cellflux phendiff impa"), THREADS (torch threads, default 1: fastest on a busy 2-core machine).
# Training resumes where a run folder already holds checkpoints, so an interrupted run can be
# restarted with the same command. Same seeds and steps on the same machine give the same weights.
set -euo pipefail

BIN=${BIN:-.venv/bin}
DATA=${DATA:-data}
SCALE=${SCALE:-small}
RUNS=${RUNS:-runs}
OUT=${OUT:-out/generators}
MODELS=${MODELS:-cellflux phendiff impa}
THREADS=${THREADS:-1}
STEPS_OPT=()
if [[ -n "${STEPS:-}" ]]; then STEPS_OPT=(--steps "$STEPS"); fi
export OMP_NUM_THREADS="$THREADS"
DS=(--dataset bbbc021-sim --data-dir "$DATA")

test -f "$DATA/bbbc021-sim/metadata/bbbc021_df_all.csv" ||
    "$BIN/cellbench" data sim --out "$DATA/bbbc021-sim" --scale "$SCALE" --seed 0
mkdir -p "$OUT"
"$BIN/cellbench" protocol "${DS[@]}" --split test --seed 0 --out "$OUT/protocol.csv"

for model in $MODELS; do
    start=$(date +%s)
    "$BIN/cellbench" train "$model" "${DS[@]}" --config cpu-small --seed 0 "${STEPS_OPT[@]}" \
        --threads "$THREADS" --out "$RUNS/$model-cpu-small" --json > "$RUNS/$model-cpu-small.train.json"
    echo "$model: trained in $(( $(date +%s) - start )) s" >&2
done

for model in identity real-shuffle $MODELS; do
    ckpt=()
    case "$model" in identity|real-shuffle) ;; *) ckpt=(--checkpoint "$RUNS/$model-cpu-small") ;; esac
    start=$(date +%s)
    "$BIN/cellbench" generate "$model" "${ckpt[@]}" "${DS[@]}" --protocol "$OUT/protocol.csv" \
        --seed 0 --out "$OUT/$model"
    echo "$model: generated in $(( $(date +%s) - start )) s" >&2
    "$BIN/cellbench" eval "$OUT/$model" "${DS[@]}" --protocol "$OUT/protocol.csv" \
        --out "$OUT/$model.results.json"
done
