#!/usr/bin/env bash
# Sets up ./.venv and runs the embedding job on the shipped sample corpus with
# the default model (all-MiniLM-L6-v2), on the local runner, with no network and
# no cloud account. Extra arguments go to the pipeline, e.g.
#   ./run_local.sh --sequence_output --bigquery_format parquet
# It prints the run's progress and summary (and warnings and errors); add
# --verbose for Beam's and TensorFlow's logs. pip runs only when ./.venv does
# not yet hold what setup.py declares (FORCE_INSTALL=true makes it run).
set -euo pipefail
# Paths (INPUT, OUTPUT, --model, --neighbours_of, ...) are read from the
# caller's directory, as any command reads them (as run_nightly.sh does); the
# default corpus and run directory lie in this checkout. The job's code is
# this checkout's (-P: not a `pipeline` package that the caller's directory
# may hold).
REPO="$(cd "$(dirname "$0")" && pwd)"
(cd "$REPO" && source scripts/venv.sh && ensure_venv . &&
  ensure_default_model_weights)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Shown relative to the checkout when run from it, absolute otherwise.
HERE=""
[ "$(pwd -P)" = "$(cd "$REPO" && pwd -P)" ] || HERE="$REPO/"

# The run id is the one the default run directory is named by (the
# pipeline's own default, its start time, came a few seconds later): a
# --run_id among the extra arguments, else the time now. An --input or
# --output among them replaces INPUT or OUTPUT (the pipeline refuses two
# different --input values, and the last line names the run directory).
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
previous=""
for argument in "$@"; do
  case "$argument" in
    --run_id=*) RUN_ID="${argument#--run_id=}" ;;
    --input=*) INPUT="${argument#--input=}" ;;
    --output=*) OUTPUT="${argument#--output=}" ;;
  esac
  case "$previous" in
    --run_id) RUN_ID="$argument" ;;
    --input) INPUT="$argument" ;;
    --output) OUTPUT="$argument" ;;
  esac
  previous="$argument"
done
INPUT="${INPUT:-${HERE}sample_data/sample_corpus.txt}"
OUTPUT="${OUTPUT:-${HERE}runs/sample-$RUN_ID}"
"$REPO/.venv/bin/python" -P -m pipeline.main \
  --runner=DirectRunner \
  --input="$INPUT" \
  --output="$OUTPUT" \
  --run_id="$RUN_ID" \
  "$@"

echo "Look at the results with: ${HERE}.venv/bin/python -m pipeline.read_outputs $OUTPUT --head 5"
