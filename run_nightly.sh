#!/usr/bin/env bash
# One scheduled (nightly) run on the local runner: embeds $INPUT into
# $RUNS_ROOT/<run id>, carrying over everything unchanged since the run that
# $RUNS_ROOT/LATEST names, and points LATEST at the new run once it is
# published. Safe to re-run: a night that is already published is skipped
# (LATEST is moved to it if its publish was killed before moving it).
#
#   RUNS_ROOT=/data/runs INPUT='/data/corpus/*.jsonl' ./run_nightly.sh [flags]
#   (RUNS_ROOT may be gs://bucket/runs: the local runner writes to Cloud Storage)
#
# cron (02:15 every night):
#   15 2 * * * cd /path/to/repo && RUNS_ROOT=/data/runs INPUT='/data/corpus/*.jsonl' ./run_nightly.sh >> /data/runs/nightly.log 2>&1
set -euo pipefail
# Paths (RUNS_ROOT, INPUT, --model, ...) are read from the caller's directory,
# as any command reads them: no cd. The job's code is this checkout's (-P:
# not a `pipeline` package that the caller's directory may hold).
REPO="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=("$REPO/.venv/bin/python" -P)
: "${RUNS_ROOT:?set RUNS_ROOT to the directory that holds one run per night}"
# Without its trailing slashes: "runs/" would name runs//<run id> in every
# message. (The root "/" is kept.)
while [ "$RUNS_ROOT" != "${RUNS_ROOT%/}" ] && [ "$RUNS_ROOT" != / ]; do
  RUNS_ROOT="${RUNS_ROOT%/}"
done
: "${INPUT:?set INPUT to the corpus file or glob}"
RUN_ID="${RUN_ID:-$(date -u +%Y%m%d)}"

# A night already published is not run again. Unless its publish was killed
# after manifest.json, before LATEST moved (or it exited 4): then LATEST
# still names the run before it, and is moved now. In Python, not a test -f:
# RUNS_ROOT may be gs://.
status=0
"${PYTHON[@]}" -m pipeline.latest_pointer "$RUNS_ROOT/$RUN_ID" \
  --latest_pointer="$RUNS_ROOT/LATEST" --if_published || status=$?
if [ "$status" -ne 3 ]; then  # 3: not published yet
  exit "$status"
fi
exec "${PYTHON[@]}" -m pipeline.main \
  --runner=DirectRunner \
  --input="$INPUT" \
  --output="$RUNS_ROOT/{run_id}" \
  --run_id="$RUN_ID" \
  --previous_run=latest \
  --latest_pointer="$RUNS_ROOT/LATEST" \
  "$@"
