"""TensorFlow's native notices captured and dropped, everything else kept
(transforms/native_logs.py)."""

import os
import subprocess
import sys

import pytest

from transforms import native_logs

# As TensorFlow 2.21 and tfx-bsl print them on a machine without a GPU.
NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR\n",
    "I0000 00:00:1796173867.675780   27109 port.cc:153] oneDNN custom "
    "operations are on. You may see slightly different numerical results due "
    "to floating-point round-off errors from different computation orders. To "
    "turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n",
    "I0000 00:00:1796173867.677560   27109 cudart_stub.cc:31] Could not find "
    "cuda drivers on your machine, GPU will not be used.\n",
    "I0000 00:00:1796174813.209990   11735 cpu_feature_guard.cc:227] This "
    "TensorFlow binary is optimized to use available CPU instructions in "
    "performance-critical operations.\n",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI "
    "AVX512_BF16 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.\n",
    "E0000 00:00:1796173901.782425   27109 util.cc:131] oneDNN supports "
    "DT_INT64 only on platforms with AVX-512. Falling back to the default "
    "Eigen-based implementation if present.\n",
]
CUINIT = ("E0000 00:00:1796173898.402254   27109 cuda_platform.cc:52] failed "
          "call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
          "UNKNOWN ERROR (303)\n")
REAL_ERRORS = [
    "E0000 00:00:1796173901.782425   27109 op_kernel.cc:1840] OP_REQUIRES "
    "failed at strided_slice_op.cc:117 : INVALID_ARGUMENT: slice index 3\n",
    "W0000 00:00:1796173901.782425   27109 port.cc:153] oneDNN custom "
    "operations are on, but the warning is another one\n",
    "Traceback (most recent call last):\n",
    "2026-12-02 01:11:42,505 ERROR The run is published, but rename failed\n",
]


def test_known_notices_and_nothing_else():
  for line in NOTICES:
    assert native_logs.is_notice(line), line
  for line in REAL_ERRORS:
    assert not native_logs.is_notice(line), line
  # cuInit failing is a notice where there is no GPU, and the reason where
  # there is one.
  assert native_logs.is_notice(CUINIT, gpu=False)
  assert not native_logs.is_notice(CUINIT, gpu=True)
  text = "".join(NOTICES + REAL_ERRORS + [CUINIT])
  assert native_logs.without_notices(text, gpu=True) == "".join(
      REAL_ERRORS + [CUINIT])


def _write_fd2(*lines):
  os.write(2, "".join(lines).encode())


def test_captured_drops_notices_and_writes_the_rest_back(capfd, monkeypatch):
  monkeypatch.setattr(native_logs, "has_nvidia_gpu", lambda: False)
  with native_logs.captured():
    assert native_logs.capturing()
    _write_fd2(*NOTICES, REAL_ERRORS[0], CUINIT)
    # Nothing reaches the terminal while the block runs.
    assert capfd.readouterr().err == ""
  assert not native_logs.capturing()
  assert capfd.readouterr().err == REAL_ERRORS[0]


def test_captured_writes_everything_back_when_asked_or_on_failure(capfd):
  with native_logs.captured(show_all=True):
    _write_fd2(*NOTICES)
  assert capfd.readouterr().err == "".join(NOTICES)

  with pytest.raises(ImportError, match="no libcudart"):
    with native_logs.captured():
      _write_fd2(NOTICES[1], REAL_ERRORS[0])
      raise ImportError("no libcudart")
  assert capfd.readouterr().err == NOTICES[1] + REAL_ERRORS[0]


def test_captured_filters_notices_on_an_exit_on_purpose(capfd, monkeypatch):
  # Found by a user trial: export_model's wrong-flag errors (argparse's
  # SystemExit) came after TensorFlow's start-up notices.
  monkeypatch.setattr(native_logs, "has_nvidia_gpu", lambda: False)
  with pytest.raises(SystemExit):
    with native_logs.captured():
      _write_fd2(*NOTICES, "usage: ...\n")
      sys.exit(2)
  assert capfd.readouterr().err == "usage: ...\n"


def test_a_capture_inside_another_adds_nothing(capfd):
  with native_logs.captured():
    with native_logs.captured(show_all=True):  # no-op: the outer one holds
      _write_fd2(NOTICES[0], "kept\n")
    assert native_logs.capturing()
  assert capfd.readouterr().err == "kept\n"


def test_notices_filtered_passes_a_child_processs_lines_but_notices(
    capfd, monkeypatch):
  # As a worker process of the local runner writes to the stderr it
  # inherits: its notices dropped, the rest passed on, a last partial line
  # too.
  monkeypatch.setattr(native_logs, "has_nvidia_gpu", lambda: False)
  written = "".join(NOTICES[:3] + [REAL_ERRORS[0]] + NOTICES[3:] +
                    [CUINIT, REAL_ERRORS[2], "no newline at the end"])
  with native_logs.notices_filtered():
    _write_fd2(NOTICES[1], "from this process\n")
    subprocess.run([sys.executable, "-c",
                    "import sys; sys.stderr.write(sys.argv[1])", written],
                   check=True)
  assert capfd.readouterr().err == (
      "from this process\n" + REAL_ERRORS[0] + REAL_ERRORS[2] +
      "no newline at the end")
  # File descriptor 2 is itself again.
  _write_fd2(NOTICES[1])
  assert capfd.readouterr().err == NOTICES[1]


def test_quiet_model_loads_sets_and_restores_the_environment(monkeypatch):
  monkeypatch.delenv(native_logs.QUIET_ENV, raising=False)
  with native_logs.quiet_model_loads():
    assert native_logs.quiet_requested()
  assert not native_logs.quiet_requested()
  with native_logs.quiet_model_loads(enabled=False):
    assert not native_logs.quiet_requested()
