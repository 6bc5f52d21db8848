#!/usr/bin/env bash
# Sets up ./.venv with the test extras (PyTorch reference included) and runs
# the test suite. Extra arguments go to pytest, e.g. `bash run_tests.sh -k export`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv ".[test]"

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Tests must never reach a metadata server or a model hub.
export NO_GCE_CHECK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Two workers, each taking whole test files (their module fixtures load a
# model once): about 2x faster on the 2-core CI machines.
exec .venv/bin/python -m pytest -q -p no:cacheprovider \
    -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=15 tests "$@"
