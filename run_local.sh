#!/usr/bin/env bash
# Sets up ./.venv and runs the embedding job on the shipped sample corpus with
# the default model (all-MiniLM-L6-v2), on the local runner, with no network and
# no cloud account. Extra arguments go to the pipeline, e.g.
#   ./run_local.sh --sequence_output --bigquery_format parquet
# It prints the run's progress and summary (and warnings and errors); add
# --verbose for Beam's and TensorFlow's logs. pip runs only when ./.venv does
# not yet hold what setup.py declares (FORCE_INSTALL=true makes it run).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv .
ensure_default_model_weights

INPUT="${INPUT:-sample_data/sample_corpus.txt}"
OUTPUT="${OUTPUT:-runs/sample-$(date -u +%Y%m%dT%H%M%SZ)}"
.venv/bin/python -m pipeline.main \
  --runner=DirectRunner \
  --input="$INPUT" \
  --output="$OUTPUT" \
  "$@"

echo "Look at the results with: .venv/bin/python -m pipeline.read_outputs $OUTPUT --head 5"
