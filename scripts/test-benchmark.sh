#!/usr/bin/env bash
# The paper's Table 1: mean reward of each text-to-image model's generations on the
# benchmark prompts, and Spearman's rho against the human ranking. Generations must
# already be unpacked as benchmark/generations/<model>/<prompt_id>_<k>.png.
#
#   bash scripts/test-benchmark.sh
#   METRICS=ImageReward-v1.0,CLIP,BLIP,Aesthetic MODELS=all bash scripts/test-benchmark.sh
set -euo pipefail
BENCH_DIR="${BENCH_DIR:-benchmark}"
MODELS="${MODELS:-default}"
METRICS="${METRICS:-ImageReward-v1.0,CLIP}"
PYTHON="${PYTHON:-python}"
exec "$PYTHON" -m imagereward benchmark \
    --prompts "$BENCH_DIR/benchmark-prompts.json" \
    --images "$BENCH_DIR/generations" \
    --models "$MODELS" \
    --metrics "$METRICS" \
    --output-dir "$BENCH_DIR/results" \
    "$@"
