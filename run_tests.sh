#!/usr/bin/env bash
# Sets up ./.venv with the test extras (PyTorch reference included) and runs
# the test suite. Extra arguments go to pytest, e.g. `bash run_tests.sh -k export`.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch is pinned exactly in the extras (an unpinned torch pulls GBs of CUDA);
# setuptools stays below 81, which tensorflow-hub still needs (pkg_resources).
.venv/bin/python -m pip install --quiet --upgrade "pip>=23" "setuptools<81" wheel
.venv/bin/python -m pip install --quiet -e ".[test]"

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Tests must never reach a metadata server or a model hub.
export NO_GCE_CHECK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
