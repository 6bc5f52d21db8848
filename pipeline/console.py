"""What a run prints on the terminal: its progress and its summary, and
otherwise only warnings and errors unless --verbose or --log_level ask for
more.

- `ConsoleSettings.from_argv`: --verbose and --log_level (declared in
  pipeline/flags.py) as they must be known before TensorFlow is imported,
  which happens before the flags can be parsed (parsing them imports the
  stages, and so TensorFlow).
- `prepare_process`: Python logging at the chosen level for every logger,
  and, unless native logs are asked for, TensorFlow's environment and the
  warnings filter that keep its notices off, and a filter for the start-up
  warnings of the local runner's worker processes. TensorFlow's start-up notices
  that no setting stops are captured by transforms/native_logs.py.
- `LiveProgress`: while a local run lasts, the embed stage's progress
  (transforms/progress.py): one line that tqdm redraws when stderr is a
  terminal, else a line every 30 s.
- `format_summary`: the lines printed once a run is published.

This module imports nothing heavy: pipeline/main.py uses it before TensorFlow
is imported.
"""

import dataclasses
import logging
import os
import sys
import threading
import time
import warnings
from typing import Optional

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from transforms import native_logs
from pipeline.errors import ConfigError
from transforms.progress import describe
from transforms.progress import docs_per_sec
from transforms.progress import format_rate
from transforms.progress import LogCadence
from transforms.progress import PROGRESS
from transforms.progress import ProgressCounter

VERBOSE_FLAG = "--verbose"
LOG_LEVEL_FLAG = "--log_level"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# tensorflow_hub imports pkg_resources, which warns on every start.
_PKG_RESOURCES_WARNING = "pkg_resources is deprecated as an API"
# Python's re, on the pattern Beam makes of a glob with a "[[]" (an escaped
# "[": a file name holding one): the match is right, the warning is noise.
_NESTED_SET_WARNING = "Possible nested set"
_QUIETED_WARNINGS = (
    (_PKG_RESOURCES_WARNING, UserWarning, ""),
    (_NESTED_SET_WARNING, FutureWarning, "apache_beam.io.filesystem"),
)

# The local runner's worker processes (--direct_running_mode
# multi_processing) send their logs to this logger of the driver, which logs
# them again ("Worker: ...").
WORKER_LOGS_LOGGER = "apache_beam.runners.portability.local_job_service"
# What every worker process warns of as it starts, though nothing is wrong:
# the local runner gives its workers no staging directory, and the
# pipeline's own flags are unknown to Beam's option parser there.
_WORKER_START_NOTICES = (
    "No semi_persistent_directory found",
    "Discarding unparseable args",
)


class _WorkerStartNotices(logging.Filter):
  """Drops the local runner's worker processes' start-up warnings."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in _WORKER_START_NOTICES)


@dataclasses.dataclass(frozen=True)
class ConsoleSettings:
  """--verbose and --log_level (None: WARNING, or INFO with --verbose)."""
  verbose: bool = False
  log_level: Optional[str] = None

  @classmethod
  def from_argv(cls, argv) -> "ConsoleSettings":
    """The two flags, read from the command line as Beam's parser reads
    them (--log_level=X or --log_level X, any case; the last one wins).

    Raises:
      ConfigError: --log_level is not one of LOG_LEVELS.
    """
    verbose, level = False, None
    for i, arg in enumerate(argv):
      if arg == VERBOSE_FLAG:
        verbose = True
      elif arg == LOG_LEVEL_FLAG and i + 1 < len(argv):
        level = argv[i + 1]
      elif arg.startswith(LOG_LEVEL_FLAG + "="):
        level = arg.split("=", 1)[1]
    if level is not None and level.upper() not in LOG_LEVELS:
      raise ConfigError(f"{LOG_LEVEL_FLAG}={level}: use one of "
                        f"{', '.join(LOG_LEVELS)} (e.g. {LOG_LEVEL_FLAG}=INFO)"
                        ", or --verbose.")
    return cls(verbose=verbose, log_level=level.upper() if level else None)

  @property
  def level(self) -> int:
    """The Python logging level of every logger."""
    return logging.getLevelName(
        self.log_level or ("INFO" if self.verbose else "WARNING"))

  @property
  def native_logs(self) -> bool:
    """Whether TensorFlow's native notices are shown too."""
    return self.verbose or self.level <= logging.INFO


def prepare_process(settings: ConsoleSettings):
  """Sets up logging, warnings and TensorFlow's log environment; call it
  before TensorFlow is imported. Worker processes of the local runner
  inherit the environment."""
  logging.basicConfig(format=LOG_FORMAT)
  logging.getLogger().setLevel(settings.level)
  if settings.native_logs:
    return
  worker_logs = logging.getLogger(WORKER_LOGS_LOGGER)
  if not any(isinstance(f, _WorkerStartNotices) for f in worker_logs.filters):
    worker_logs.addFilter(_WorkerStartNotices())
  # Drops TensorFlow's INFO and WARNING lines once absl is set up (it reads
  # the variable once, when TensorFlow is imported). Not 3: that would drop
  # its errors too. A value set by the user stands.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  for message, category, module in _QUIETED_WARNINGS:
    warnings.filterwarnings("ignore", message=message, category=category,
                            module=module)
    # The local runner's worker processes, too.
    inherited = f"ignore:{message}:{category.__name__}:{module}"
    current = os.environ.get("PYTHONWARNINGS", "")
    if inherited not in current:
      os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current,
                                                            inherited]))


def show_info_logs():
  """Lowers the logging level to INFO (when it is above)."""
  root = logging.getLogger()
  if root.getEffectiveLevel() > logging.INFO:
    root.setLevel(logging.INFO)


class LiveProgress:
  """The whole run's progress on `stream` while the block runs.

  On a terminal, one line redrawn every `refresh_secs` (tqdm); log records
  are written above it. Otherwise (a file, a pipe, cron) a line when the
  first batch is back (the model is loaded and embedding), one when the
  rate is first known, and then one every `log_interval_secs`: a log
  that is read later shows when embedding began and how fast it went,
  however short the run. Nothing is drawn while TensorFlow's notices are being
  captured (transforms/native_logs.py), so the line never ends up among them.
  """

  def __init__(self, counter: ProgressCounter = PROGRESS, stream=None,
               refresh_secs: float = 0.5, log_interval_secs: float = 30.0,
               clock=time.monotonic):
    self._counter = counter
    self._stream = stream or sys.stderr
    self._refresh_secs = refresh_secs
    self._log_interval_secs = log_interval_secs
    self._clock = clock
    self._stop = threading.Event()
    self._thread = None
    self._bar = None
    self._displayed = None
    self._redirect = None

  def __enter__(self):
    self._displayed = self._counter.displayed()
    self._displayed.__enter__()
    if _is_terminal(self._stream):
      self._bar = tqdm(file=self._stream, bar_format="{desc}", leave=True,
                       dynamic_ncols=True, mininterval=0)
      self._redirect = logging_redirect_tqdm()
      self._redirect.__enter__()
      target = self._redraw_until_stopped
    else:
      target = self._log_until_stopped
    self._thread = threading.Thread(target=target, name="LiveProgress",
                                    daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc_info):
    self._stop.set()
    self._thread.join()
    try:
      if self._bar is not None:
        self._draw()
        self._bar.close()
        self._redirect.__exit__(*exc_info)
    finally:
      self._displayed.__exit__(*exc_info)
    return False

  def _redraw_until_stopped(self):
    while not self._stop.wait(self._refresh_secs):
      if not native_logs.capturing():
        self._draw()

  def _draw(self):
    snapshot = self._counter.snapshot()
    line = describe(snapshot).replace("{", "{{").replace("}", "}}")
    total = snapshot.to_embed
    if total:
      self._bar.total, self._bar.n = total, min(snapshot.embedded, total)
      self._bar.bar_format = "{bar:20}| " + line
    else:
      self._bar.bar_format = line
    self._bar.refresh()

  def _log_until_stopped(self):
    cadence = LogCadence(self._log_interval_secs, start=self._clock())
    told = set()  # the milestones a line has been written for
    while not self._stop.wait(min(1.0, self._log_interval_secs)):
      if native_logs.capturing():
        continue
      snapshot = self._counter.snapshot()
      milestones = {name for name, reached in (
          ("first batch", snapshot.batches > 0),
          ("rate", docs_per_sec(snapshot) is not None)) if reached}
      if cadence.due(self._clock()) or milestones - told:
        told |= milestones
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._stream.write(f"{stamp} {describe(snapshot)}\n")
        self._stream.flush()


def _is_terminal(stream) -> bool:
  """A terminal that tqdm can draw on: one with a size (a pseudo-terminal
  of 0 rows or columns would show nothing)."""
  try:
    if not stream.isatty():
      return False
  except (AttributeError, ValueError):
    return False
  try:
    size = os.get_terminal_size(stream.fileno())
  except (AttributeError, ValueError, OSError):
    return True  # a terminal of unknown size (a test's stand-in)
  return size.columns > 0 and size.lines > 0


def format_summary(manifest: dict, run_dir: str) -> str:
  """What a published run says at the end: counts, time, where, and the
  rejected records by reason."""
  counts, metrics = manifest["counts"], manifest.get("metrics", {})
  embedded = f"{counts['embedded']:,} embedded"
  if counts.get("reused"):
    embedded += (f" ({counts['inferred']:,} by the model, "
                 f"{counts['reused']:,} carried over)")
  if manifest.get("previous_run"):
    # What a nightly log reader watches: the documents gone since.
    embedded += f", {counts.get('removed', 0):,} removed since the previous run"
  rate = metrics.get("docs_per_sec")
  timing = f" in {metrics['wall_time_secs']:.1f} s" if metrics.get(
      "wall_time_secs") is not None else ""
  if rate is not None:
    timing += f" ({format_rate(rate)})"
  lines = [
      f"Published run {manifest['run_id']}{timing}: "
      f"{counts['read']:,} records read, {embedded}, "
      f"{counts['dead_lettered']:,} rejected.",
  ]
  # The --neighbours_of queries: their rejections are in the errors table
  # (and by_reason) too, and a rejected question must not go unseen.
  queries = counts.get("queries")
  if queries:
    lines.append(
        f"Queries (--neighbours_of): {queries['read']:,} read, "
        f"{queries['embedded']:,} embedded, "
        f"{queries['dead_lettered']:,} rejected.")
  by_reason = manifest.get("dead_letters", {}).get("by_reason", {})
  if counts["dead_lettered"] or (queries or {}).get("dead_lettered"):
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in
                        sorted(by_reason.items(), key=lambda kv: -kv[1]))
    lines.append(
        f"Rejected records{f' ({reasons})' if reasons else ''}: "
        f"python -m pipeline.read_outputs {run_dir} --table errors")
  lines.append(f"Run directory: {run_dir} (manifest.json lists every file)")
  return "\n".join(lines)
