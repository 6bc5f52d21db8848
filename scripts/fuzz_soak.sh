#!/usr/bin/env bash
# A long fuzzing soak of every input reader: the properties of
# tests/test_fuzz_readers.py, with many more Hypothesis examples than CI runs.
#
#   scripts/fuzz_soak.sh [EXAMPLES]      # default 20000 per property
#
# A failure prints the smallest input Hypothesis found and how to replay it;
# add that input to tests/test_bad_input.py as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv ".[test]"
export HYPOTHESIS_PROFILE=soak FUZZ_EXAMPLES="${1:-20000}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_fuzz_readers.py --hypothesis-show-statistics
