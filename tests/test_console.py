"""What a run prints (pipeline/console.py): --verbose and --log_level read
before TensorFlow is imported, the live progress line, and the summary."""

import io
import logging
import re
import time

import pytest

from pipeline import console
from pipeline.console import ConsoleSettings
from pipeline.errors import ConfigError
from pipeline.flags import flag_actions
from transforms.progress import ProgressCounter


@pytest.mark.parametrize("argv, verbose, level, native", [
    ([], False, logging.WARNING, False),
    (["--verbose"], True, logging.INFO, True),
    (["--log_level=error"], False, logging.ERROR, False),
    (["--log_level", "DEBUG", "--input=x"], False, logging.DEBUG, True),
    (["--log_level=INFO"], False, logging.INFO, True),
    (["--verbose", "--log_level=WARNING"], True, logging.WARNING, True),
])
def test_console_settings_from_argv(argv, verbose, level, native):
  settings = ConsoleSettings.from_argv(argv)
  assert settings.verbose is verbose
  assert settings.level == level
  assert settings.native_logs is native


def test_a_wrong_log_level_names_the_fix():
  with pytest.raises(ConfigError, match="--log_level=loud: use one of DEBUG, "
                     "INFO, WARNING, ERROR"):
    ConsoleSettings.from_argv(["--log_level=loud"])


def _worker_log(message: str) -> logging.LogRecord:
  # As Beam's local job service logs what a worker process sent it.
  return logging.LogRecord(
      console.WORKER_LOGS_LOGGER, logging.WARNING, __file__, 1,
      "Worker: %s", (f'severity: WARN message: "{message}"',), None)


@pytest.mark.parametrize("argv, dropped", [([], True), (["--verbose"], False)])
def test_worker_processes_start_quietly(argv, dropped, monkeypatch):
  # --direct_running_mode multi_processing: each worker process's start-up
  # warnings (nothing is wrong) are dropped, unless --verbose; what else a
  # worker warns of is shown.
  worker_logs = logging.getLogger(console.WORKER_LOGS_LOGGER)
  monkeypatch.setattr(worker_logs, "filters", [])
  monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
  for name in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS"):
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)
  console.prepare_process(ConsoleSettings.from_argv(argv))
  console.prepare_process(ConsoleSettings.from_argv(argv))  # once is enough
  assert len(worker_logs.filters) == (1 if dropped else 0)
  for notice in ("No semi_persistent_directory found:  User registered "
                 "objects ... may not be effective",
                 "Discarding unparseable args: ['--output=/tmp/run']"):
    assert bool(worker_logs.filter(_worker_log(notice))) is not dropped
  assert worker_logs.filter(_worker_log("Error processing instruction 7"))


def test_the_flags_read_early_are_the_declared_ones():
  (verbose, log_level) = flag_actions()["logging"]
  assert verbose.option_strings == [console.VERBOSE_FLAG]
  assert log_level.option_strings == [console.LOG_LEVEL_FLAG]
  assert tuple(log_level.choices) == console.LOG_LEVELS
  assert log_level.type("info") == "INFO"


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def _run_display(stream, **kwargs):
  counter = ProgressCounter()
  with console.LiveProgress(counter=counter, stream=stream, **kwargs):
    counter.add_read(100)
    counter.add_skipped(20)
    for _ in range(4):
      counter.add_batch(20)
      time.sleep(0.05)
    time.sleep(0.2)
  return stream.getvalue()


def test_live_progress_on_a_terminal_redraws_one_line():
  out = _run_display(_Terminal(), refresh_secs=0.02)
  assert "\n" not in out.rstrip("\n")  # one line, redrawn with \r
  final = out.rstrip("\n").split("\r")[-1]
  # The bar (ASCII on a stream that is not UTF-8), once the total is known.
  assert re.fullmatch(r"[#█]{20}\| Embedded 80 of 80 documents \(100%\).*",
                      final), final


def test_live_progress_elsewhere_writes_a_line_per_interval():
  out = _run_display(io.StringIO(), log_interval_secs=0.1)
  lines = out.splitlines()
  assert lines and all(" Embedded " in line for line in lines)
  assert "\r" not in out


def test_live_progress_elsewhere_tells_the_start_and_the_rate_at_once():
  # A log read later (cron, a file) shows when embedding began and its
  # rate without waiting for the first interval: a short run is over by
  # then.
  clock = [0.0]
  counter = ProgressCounter(clock=lambda: clock[0])
  stream = io.StringIO()
  with console.LiveProgress(counter=counter, stream=stream,
                            log_interval_secs=3600):
    counter.add_read(100)
    counter.add_batch(10)
    time.sleep(1.3)
    first = stream.getvalue().splitlines()
    for _ in range(3):
      clock[0] += 1.0
      counter.add_batch(10)
    time.sleep(1.3)
    lines = stream.getvalue().splitlines()
    time.sleep(1.3)
    assert stream.getvalue().splitlines() == lines  # nothing new to tell
  assert len(first) == 1 and "Embedded 10 of 100 documents (10%)" in first[0]
  assert "docs/s" not in first[0]
  assert len(lines) == 2, lines
  assert "Embedded 40 of 100 documents (40%), 10 docs/s, ETA" in lines[1]


_MANIFEST = {
    "run_id": "night-1",
    "counts": {"read": 1203, "embedded": 1200, "inferred": 200, "reused": 1000,
               "dead_lettered": 3, "truncated": 0},
    "metrics": {"wall_time_secs": 12.34, "docs_per_sec": 97.2},
    "dead_letters": {"by_reason": {"empty_text": 1, "duplicate_id": 2}},
}


def test_summary_counts_rejections_and_where():
  text = console.format_summary(_MANIFEST, "runs/night-1")
  assert text.splitlines() == [
      "Published run night-1 in 12.3 s (97 docs/s): 1,203 records read, "
      "1,200 embedded (200 by the model, 1,000 carried over), 3 rejected.",
      "Rejected records (duplicate_id 2, empty_text 1): python -m "
      "pipeline.read_outputs runs/night-1 --table errors",
      "Run directory: runs/night-1 (manifest.json lists every file)",
  ]
  clean = dict(_MANIFEST, counts=dict(_MANIFEST["counts"], reused=0,
                                      dead_lettered=0, read=1200))
  assert "Rejected" not in console.format_summary(clean, "r")
  assert "carried over" not in console.format_summary(clean, "r")
  assert "removed" not in console.format_summary(clean, "r")
  nightly = dict(_MANIFEST, counts=dict(_MANIFEST["counts"], removed=7),
                 previous_run={"path": "runs/night-0"})
  assert console.format_summary(nightly, "r").splitlines()[0].endswith(
      "1,000 carried over), 7 removed since the previous run, 3 rejected.")


def test_summary_tells_the_rejected_queries_of_neighbours_of():
  # Found in a user trial: a --neighbours_of question rejected (empty_text)
  # in a clean corpus left no trace in the summary ("0 rejected", no
  # reasons line); with corpus rejections, the reasons (which count both)
  # added up to more than "N rejected".
  queries = {"read": 6, "embedded": 5, "inferred": 5, "reused": 0,
             "dead_lettered": 1, "removed": 0, "repeated": 0,
             "truncated": 0}
  clean = dict(_MANIFEST, counts=dict(_MANIFEST["counts"], reused=0,
                                      dead_lettered=0, read=1200,
                                      queries=queries),
               dead_letters={"by_reason": {"empty_text": 1}})
  assert console.format_summary(clean, "r").splitlines()[1:] == [
      "Queries (--neighbours_of): 6 read, 5 embedded, 1 rejected.",
      "Rejected records (empty_text 1): python -m pipeline.read_outputs r "
      "--table errors",
      "Run directory: r (manifest.json lists every file)",
  ]
