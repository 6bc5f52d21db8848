"""TensorFlow's native start-up notices, kept off the terminal unless asked for.

TensorFlow (and tfx-bsl, which carries its own copy of TensorFlow's runtime)
logs through absl from C++. Some of it is written before absl is initialised,
straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says:

  WARNING: All log messages before absl::InitializeLog() is called are ...
  I0000 ... port.cc:153] oneDNN custom operations are on. ...
  I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine ...

and a few ERROR lines that are not errors of the run: the CUDA probe of a
machine without a GPU (cuda_platform.cc: failed call to cuInit) and oneDNN's
note that it falls back to Eigen for int64 (util.cc). No setting stops them
without also hiding real errors (TF_CPP_MIN_LOG_LEVEL=3 hides every ERROR).

So the few moments that print them (importing TensorFlow, probing devices,
loading and first calling a model) run inside `captured()`: file descriptor 2
goes to a temporary file, and afterwards every line that is not one of the
known notices above is written back to stderr. Nothing else is ever dropped:
when the block raises, or `show_all` is set (--verbose), everything captured is
written back. TF_ENABLE_ONEDNN_OPTS is never touched: it changes speed and
numerics, not just what is printed.

This module imports nothing heavy: it runs before TensorFlow is imported.
"""

import contextlib
import glob
import importlib
import os
import re
import sys
import tempfile
import threading

# Set (to "1") in a process whose model loads should keep TensorFlow's
# notices off the terminal; the local runner's worker processes inherit it.
QUIET_ENV = "BERT_EMBEDDINGS_QUIET_NATIVE_LOGS"

# absl's line prefix: severity, MMDD, time, thread id, file:line]
_ABSL_LINE = re.compile(
    r"^(?P<severity>[IWEF])\d{4} [\d:.]+\s+\d+ (?P<file>[\w.]+):\d+\] "
    r"(?P<message>.*)$")

# (severity, source file, start of message) of the known notices.
_NOTICES = (
    ("I", "port.cc", "oneDNN custom operations are on"),
    ("I", "cudart_stub.cc", "Could not find cuda drivers on your machine"),
    ("I", "cpu_feature_guard.cc", "This TensorFlow binary is optimized"),
    ("E", "util.cc", "oneDNN supports DT_"),
)
# The CUDA probe's failure is a notice only on a machine with no NVIDIA GPU;
# where there is one, it says why TensorFlow will not use it.
_NO_GPU_NOTICES = (
    ("E", "cuda_platform.cc", "failed call to cuInit"),
)
# Lines without absl's prefix.
_PLAIN_NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR",
    # The second line of cpu_feature_guard.cc's notice.
    "To enable the following instructions:",
)

# Imported with TensorFlow by start_tensorflow: each prints notices of its own
# when first imported (tfx-bsl's copy of the runtime repeats TensorFlow's).
# Not tensorflow_hub: it imports Keras (and with it scikit-learn and
# matplotlib), 2 s of every start, and only a TF Hub handle needs it; it is
# imported then, inside the capture around the model's resolution.
_COMPANIONS = ("tensorflow_text", "tfx_bsl.coders.example_coder")

_lock = threading.Lock()
_active = False


def has_nvidia_gpu() -> bool:
  """Whether the machine has an NVIDIA device (its driver's device files)."""
  return bool(glob.glob("/dev/nvidia[0-9]*"))


def is_notice(line: str, gpu: bool = False) -> bool:
  """Whether a captured line is one of the known start-up notices."""
  line = line.rstrip("\r\n")
  if any(line.startswith(text) for text in _PLAIN_NOTICES):
    return True
  match = _ABSL_LINE.match(line)
  if not match:
    return False
  known = _NOTICES if gpu else _NOTICES + _NO_GPU_NOTICES
  return any(match["severity"] == severity and match["file"] == source and
             match["message"].startswith(start)
             for severity, source, start in known)


def without_notices(text: str, gpu: bool = False) -> str:
  """The captured text less its known notices, line for line."""
  return "".join(line for line in text.splitlines(keepends=True)
                 if not is_notice(line, gpu))


def quiet_requested() -> bool:
  """Whether this process was asked to keep the notices off (QUIET_ENV)."""
  return os.environ.get(QUIET_ENV) == "1"


@contextlib.contextmanager
def quiet_model_loads(enabled: bool = True):
  """Sets QUIET_ENV while the block runs (when enabled): the model loads of
  this process, and of the worker processes it starts meanwhile, capture
  their notices."""
  if not enabled:
    yield
    return
  before = os.environ.get(QUIET_ENV)
  os.environ[QUIET_ENV] = "1"
  try:
    yield
  finally:
    if before is None:
      os.environ.pop(QUIET_ENV, None)
    else:
      os.environ[QUIET_ENV] = before


def captured_if_requested():
  """`captured()` in a process asked to be quiet (QUIET_ENV), else nothing."""
  return captured() if quiet_requested() else contextlib.nullcontext()


def capturing() -> bool:
  """Whether file descriptor 2 is captured right now (by any thread)."""
  return _active


@contextlib.contextmanager
def captured(show_all: bool = False):
  """Runs the block with file descriptor 2 in a temporary file, then writes
  what it caught to sys.stderr: all of it if `show_all` or the block raised
  (SystemExit aside: an exit on purpose), else all but the known notices.

  Process-wide, as file descriptors are: what other threads write to fd 2
  meanwhile is caught too, and written back with the rest. A block inside
  another (in any thread) captures nothing more itself.
  """
  global _active
  with _lock:
    nested, _active = _active, True
  if nested:
    yield
    return
  try:
    _flush(sys.stderr)
    saved = os.dup(2)
  except (OSError, ValueError):  # no usable fd 2: nothing to capture
    _active = False
    yield
    return
  buffer = tempfile.TemporaryFile()
  failed = True
  try:
    os.dup2(buffer.fileno(), 2)
    yield
    failed = False
  except SystemExit:
    # A deliberate exit, not a crash: argparse's error on a wrong flag
    # (found by a user trial: export_model's flag errors came after
    # TensorFlow's start-up notices, unfiltered).
    failed = False
    raise
  finally:
    _flush(sys.stderr)
    os.dup2(saved, 2)
    os.close(saved)
    _active = False
    buffer.seek(0)
    text = buffer.read().decode("utf-8", errors="replace")
    buffer.close()
    if not (show_all or failed):
      text = without_notices(text, gpu=has_nvidia_gpu())
    if text:
      sys.stderr.write(text)
      _flush(sys.stderr)


@contextlib.contextmanager
def notices_filtered():
  """While the block runs, file descriptor 2 goes through a pipe: a thread
  writes every line that is not a known notice on to the real stderr as it
  comes, and drops the notices.

  For the local runner's worker processes, which inherit file descriptor 2
  and print TensorFlow's notices as they import it, before any code of the
  pipeline runs there. Unlike `captured()`, nothing waits for the block's
  end: a worker's error is shown when it is written. Lines are passed on
  whole; a partial line waits for its end (or the block's).
  """
  _flush(sys.stderr)
  try:
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
  except (OSError, ValueError):  # no usable fd 2: nothing to filter
    yield
    return
  gpu = has_nvidia_gpu()
  copier = threading.Thread(
      target=_copy_lines_but_notices, args=(read_end, real_stderr, gpu),
      name="NoticesFiltered", daemon=True)
  copier.start()
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    yield
  finally:
    _flush(sys.stderr)
    os.dup2(real_stderr, 2)  # the pipe's last writer here: its reader ends
    # Worker processes still alive would hold the pipe open: not waited for.
    copier.join(timeout=_COPIER_JOIN_SECS)
    if not copier.is_alive():
      os.close(real_stderr)


# How long the end of `notices_filtered` waits for the lines still in the
# pipe.
_COPIER_JOIN_SECS = 5.0


def _copy_lines_but_notices(read_end: int, out: int, gpu: bool):
  pending = b""
  with open(read_end, "rb", buffering=0) as pipe:
    while True:
      chunk = pipe.read(65536)
      if not chunk:
        break
      *lines, pending = (pending + chunk).split(b"\n")
      for line in lines:
        if not is_notice(line.decode("utf-8", errors="replace"), gpu):
          _write_all(out, line + b"\n")
  if pending:
    _write_all(out, pending)


def _write_all(fd: int, data: bytes):
  while data:
    data = data[os.write(fd, data):]


def _flush(stream):
  try:
    stream.flush()
  except (OSError, ValueError, AttributeError):
    pass


def start_tensorflow(show_all: bool = False):
  """Imports TensorFlow, tensorflow_text and tfx-bsl and probes the devices
  (CUDA's cuInit), with their notices captured."""
  with captured(show_all):
    # Imported here, inside the capture: importing them is what prints the
    # notices, and this module must stay importable before them. The model
    # library first: it imports TensorFlow without Keras
    # (bert_model/lean_imports.py).
    importlib.import_module("bert_model")
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    for companion in _COMPANIONS:
      importlib.import_module(companion)
    tf.config.list_physical_devices()
