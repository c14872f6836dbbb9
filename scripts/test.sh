#!/usr/bin/env bash
# One-step preference test (the paper's Table 3): fetches the test set when it is
# missing (data/test.json from a pinned URL, test_images.zip from the hub repo
# THUDM/ImageReward), scores it with every model, writes data/test_<model>.json
# and prints the accuracy table.
#
#   bash scripts/test.sh                                   # all four models
#   MODELS=ImageReward-v1.0,CLIP bash scripts/test.sh      # a subset
#   bash scripts/test.sh --checkpoint ImageReward.pt --device cuda   # extra options
set -euo pipefail
DATA_DIR="${DATA_DIR:-data}"
MODELS="${MODELS:-ImageReward-v1.0,CLIP,BLIP,Aesthetic}"
PYTHON="${PYTHON:-python}"
exec "$PYTHON" -m imagereward eval --download \
    --data "$DATA_DIR/test.json" \
    --images "$DATA_DIR/test_images" \
    --models "$MODELS" \
    --output-dir "$DATA_DIR" \
    "$@"
