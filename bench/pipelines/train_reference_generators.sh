#!/usr/bin/env bash
# Reproduce the cpu-small reference generators on bbbc021-sim with fixed seeds, answer the test
# protocol with them (and with the two anchors) and score everything with `cellbench eval`.
#
#   bash bench/pipelines/train_reference_generators.sh                  # defaults below
#   DATA=/tmp/d RUNS=/tmp/runs OUT=/tmp/out STEPS=750 bash bench/pipelines/train_reference_generators.sh
#
# Variables: DATA (dataset folder, default ./data), SCALE (sim scale if the dataset must be made,
# default small), RUNS (run folders, default ./runs), OUT (images and results, default
# ./out/generators), STEPS (total training steps, default: the preset's), MODELS (default
# "cellflux phendiff impa"; "" for none), SHIPPED (shipped checkpoints also scored, default "cellflux-long":
# checkpoints/cellflux-long with 20 Heun steps; "" for none), SAMPLE_STEPS (solver steps of the
# trained cellflux / phendiff generation, default: each checkpoint's own; impa has none; the tests
# use 2), THREADS (torch threads, default 1: fastest on a busy 2-core machine).
# Everything resumes: training from a run folder's last checkpoint, generation with
# `cellbench generate --resume`, and a model whose results file exists is not scored again, so an
# interrupted run (the `demo` scale takes hours on 2 cores) restarts with the same command. Same
# seeds and steps on the same machine give the same weights.
#
#   DATA=out/demo/data SCALE=demo RUNS=runs/demo OUT=out/demo THREADS=2 \
#       bash bench/pipelines/train_reference_generators.sh                 # the demo-scale table
set -euo pipefail

BIN=${BIN:-.venv/bin}
DATA=${DATA:-data}
SCALE=${SCALE:-small}
RUNS=${RUNS:-runs}
OUT=${OUT:-out/generators}
MODELS=${MODELS-cellflux phendiff impa}
SHIPPED=${SHIPPED-cellflux-long}
THREADS=${THREADS:-1}
STEPS_OPT=()
if [[ -n "${STEPS:-}" ]]; then STEPS_OPT=(--steps "$STEPS"); fi
SAMPLE_OPT=()
if [[ -n "${SAMPLE_STEPS:-}" ]]; then SAMPLE_OPT=(--sample-steps "$SAMPLE_STEPS"); fi
export OMP_NUM_THREADS="$THREADS"
DS=(--dataset bbbc021-sim --data-dir "$DATA")

test -f "$DATA/bbbc021-sim/metadata/bbbc021_df_all.csv" ||
    "$BIN/cellbench" data sim --out "$DATA/bbbc021-sim" --scale "$SCALE" --seed 0
mkdir -p "$OUT" "$RUNS"
"$BIN/cellbench" protocol "${DS[@]}" --name cellflux-iid --seed 0 --out "$OUT/protocol.csv"

for model in $MODELS; do
    start=$(date +%s)
    "$BIN/cellbench" train "$model" "${DS[@]}" --config cpu-small --seed 0 "${STEPS_OPT[@]}" \
        --threads "$THREADS" --out "$RUNS/$model-cpu-small" --json > "$RUNS/$model-cpu-small.train.json"
    echo "$model: trained in $(( $(date +%s) - start )) s" >&2
done

for model in identity real-shuffle $MODELS $SHIPPED; do
    opts=()
    case "$model" in
        identity|real-shuffle) name=$model ;;
        cellflux-long) name=cellflux; opts=(--checkpoint checkpoints/cellflux-long --sample-steps 20) ;;
        impa) name=$model; opts=(--checkpoint "$RUNS/$model-cpu-small") ;;  # one step, no solver
        *) name=$model; opts=(--checkpoint "$RUNS/$model-cpu-small" "${SAMPLE_OPT[@]}") ;;
    esac
    if [[ -f "$OUT/$model.results.json" ]]; then
        echo "$model: already scored ($OUT/$model.results.json)" >&2
        continue
    fi
    if [[ -f "$OUT/$model/generation.json" ]]; then opts+=(--resume); fi
    start=$(date +%s)
    "$BIN/cellbench" generate "$name" "${opts[@]}" "${DS[@]}" --protocol "$OUT/protocol.csv" \
        --seed 0 --threads "$THREADS" --out "$OUT/$model"
    echo "$model: generated in $(( $(date +%s) - start )) s" >&2
    start=$(date +%s)
    "$BIN/cellbench" eval "$OUT/$model" "${DS[@]}" --protocol "$OUT/protocol.csv" \
        --out "$OUT/$model.results.json"
    echo "$model: scored in $(( $(date +%s) - start )) s" >&2
done
