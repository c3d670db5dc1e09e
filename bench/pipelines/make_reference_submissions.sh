#!/usr/bin/env bash
# Regenerate the reference leaderboard entries on bbbc021-sim from real `cellbench eval` runs:
# the `identity` anchor (control image returned unchanged) and the `real-shuffle` anchor
# (training crops of the same compound and dose). Run it from anywhere; it works in the repo root.
#
#   bash bench/pipelines/make_reference_submissions.sh            # folders dated today (UTC)
#   DATE=2026-11-21 bash bench/pipelines/make_reference_submissions.sh
#
# Re-run it after any change that moves a metric (a metric suite version bump). A folder with the
# same date and model is replaced; folders of older dates stay and show as stale entries, so
# delete them by hand if they were never published. Each entry is validated before it is moved
# into submissions/. Environment: BIN (default .venv/bin), DATA (default data), DATE, WORK.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(cd "${BIN:-.venv/bin}" && pwd)
DATA=${DATA:-data}
DATE=${DATE:-$(date -u +%F)}
WORK=${WORK:-$(mktemp -d)}
ROOT=$(pwd)
export CELLBENCH_PROGRESS=${CELLBENCH_PROGRESS:-0}

test -f "$DATA/bbbc021-sim/metadata/bbbc021_df_all.csv" ||
    "$BIN/cellbench" data sim --out "$DATA/bbbc021-sim" --scale small --seed 0
DATA=$(cd "$DATA" && pwd)
"$BIN/cellbench" protocol --dataset bbbc021-sim --data-dir "$DATA" --name cellflux-iid --seed 0 \
    --out "$WORK/protocol.csv"

write_metadata() { # model kind description -> metadata.json on stdout
    local model=$1 kind=$2 description=$3
    cat <<EOF
{
  "schema": "cellbench.submission/1",
  "model": {"name": "$model", "version": "cellbench $("$BIN/python" -c 'import cellbench; print(cellbench.__version__)')"},
  "kind": "$kind",
  "description": "$description",
  "authors": [{"name": "cellbench developers"}],
  "contact": "@cellbench",
  "paper": null,
  "code": "https://github.com/cellbench/cellbench",
  "licence": "MIT",
  "training": {"dataset": null, "splits": [], "notes": "Not trained; see the description."},
  "test_images_seen": false,
  "best_of_n": {"used": false, "n": 1},
  "compute": {"hardware": "CPU", "train_hours": 0, "generate_hours": null},
  "sample_grid": "samples.png",
  "commands": [
    "cellbench data sim --out data/bbbc021-sim --scale small --seed 0",
    "cellbench protocol --dataset bbbc021-sim --data-dir data --name cellflux-iid --seed 0 --out protocol.csv",
    "cellbench generate $model --protocol protocol.csv --dataset bbbc021-sim --data-dir data --out images",
    "cellbench eval images --dataset bbbc021-sim --data-dir data --protocol protocol.csv --out results.json",
    "cellbench submission grid images --protocol protocol.csv --out samples.png"
  ]
}
EOF
}

for model in identity real-shuffle; do
    case $model in
    identity) description="Anchor: every task answered with its control image, unchanged. The floor a generator must beat." ;;
    real-shuffle) description="Anchor: every task answered with a real training crop of the same compound and dose. Upper-bound-like: its moa reward is the classifier's memorisation of its own training crops, not biology. Never a model." ;;
    esac
    # each model runs in its own folder with relative paths, so results.json records a command
    # anyone can repeat: cellbench eval images --data-dir data --protocol protocol.csv ...
    run="$WORK/$model"
    rm -rf "$run" && mkdir -p "$run"
    ln -s "$DATA" "$run/data"
    cp "$WORK/protocol.csv" "$run/protocol.csv"
    (
        cd "$run"
        "$BIN/cellbench" generate "$model" --protocol protocol.csv --dataset bbbc021-sim \
            --data-dir data --out images
        "$BIN/cellbench" eval images --dataset bbbc021-sim --data-dir data \
            --protocol protocol.csv --out results.json
        "$BIN/cellbench" submission grid images --protocol protocol.csv --out samples.png
    )
    stage="$WORK/stage/${DATE}_$model"
    rm -rf "$stage" && mkdir -p "$stage"
    cp "$run/results.json" "$run/results.per_image.csv" "$run/samples.png" "$stage/"
    write_metadata "$model" anchor "$description" >"$stage/metadata.json"
    "$BIN/cellbench" submission validate "$stage"
    rm -rf "$ROOT/submissions/${DATE}_$model"
    mv "$stage" "$ROOT/submissions/${DATE}_$model"
    echo "wrote submissions/${DATE}_$model"
done
