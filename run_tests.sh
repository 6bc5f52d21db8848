#!/usr/bin/env bash
# Sets up ./.venv with the test extras (PyTorch reference included) and runs
# the test suite. Extra arguments go to pytest, e.g. `bash run_tests.sh -k export`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv ".[test]"

# tests/test_report.py draws the run report in headless Chromium (Debian's
# chromium package). Installed here when missing; if it cannot be, CI fails
# now rather than that test later (no silent skip).
if ! command -v chromium >/dev/null 2>&1; then
  as_root=()
  if [ "$(id -u)" != 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
command -v chromium >/dev/null 2>&1 || {
  echo "chromium is not on PATH: tests/test_report.py needs it" >&2
  exit 1
}

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Tests must never reach a metadata server or a model hub.
export NO_GCE_CHECK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Two workers, each taking whole test files (their module fixtures load a
# model once): about 2x faster on the 2-core CI machines.
exec .venv/bin/python -m pytest -q -p no:cacheprovider \
    -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=15 tests "$@"
