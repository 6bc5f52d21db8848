"""How far the embedding has got: what a person watching a run is told.

The stages count, in each process, into PROGRESS (plain counters: Beam's
metrics are only readable once a run has ended):

  read      documents the read stage produced (the --neighbours_of
            queries among them, counted apart too: they are embedded alike)
  skipped   documents that will not reach the model: rejected by validation
            (empty text, a repeated id) or carried over (--previous_run)
  queued    documents the batching stage has sorted by length, and their
            estimated wordpieces (transforms/batching.py)
  embedded  documents back from the model, a batch at a time, and their
            estimated wordpieces
  rejected  documents back from the model but dead-lettered there (no
            wordpieces, a model error): in `embedded` for the rates, out of
            the counts a person is told, which then agree with the summary

On the local runner (in_memory or multi_threading) every stage runs in the
driver's process, and a display attached there (pipeline/console.py) tells
the whole run's progress. Once the first batch is back, reading is done:
documents reach the model only after the validate stage's GroupById, which
in a batch pipeline waits for every read. So from then on the documents to
embed are read - skipped (it only shrinks as duplicates and carried-over
documents are found), and with the rate that gives an ETA.

The ETA counts work, not documents: each buffer of documents goes to the
model shortest first, so the documents per second of a buffer's first
batches promise far more than its last ones keep. The wordpieces still to
embed are those queued and not yet embedded, plus, for the documents not
queued yet, the mean of those queued (a buffer is a sample of the corpus in
reading order); divided by the wordpieces per second since the first batch.

Anywhere else (Dataflow workers, the local runner's worker processes) a
process sees only its own share: it logs its count and rate at the first
batch and then every LOG_INTERVAL_SECS.

The rate is measured from the end of the first batch, which carries the
model's warm-up (graph tracing, the first kernels), to the end of the
latest (so it neither sags between batches nor after the last one, while
the tables are written), and told only once WARM_UP_BATCHES more batches
are back and WARM_UP_SECS have passed between them: no "1000000000.0
docs/s" after one document. The ETA counts down from the latest batch.
"""

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Callable, Optional

_LOG = logging.getLogger(__name__)

LOG_INTERVAL_SECS = 30.0
WARM_UP_BATCHES = 2
WARM_UP_SECS = 1.0


@dataclasses.dataclass(frozen=True)
class ProgressSnapshot:
  """The counts at one moment (clock seconds: `now`, `first_batch_at`).

  whole_run: the counts are the whole run's (a display is attached in the
  process that runs every stage), not one worker's share.
  """
  read: int = 0
  skipped: int = 0
  embedded: int = 0
  batches: int = 0
  first_batch_at: Optional[float] = None
  embedded_in_first_batch: int = 0
  now: float = 0.0
  whole_run: bool = False
  # Estimated wordpieces (0: not counted, the ETA then counts documents).
  queued: int = 0
  queued_tokens: int = 0
  embedded_tokens: int = 0
  embedded_tokens_in_first_batch: int = 0
  # When the latest batch came back (None: take `now`).
  last_batch_at: Optional[float] = None
  rejected: int = 0
  # Of `read`, the --neighbours_of queries (embedded like the documents).
  queries_read: int = 0

  @property
  def measured_secs(self) -> float:
    """From the first batch to the latest: what the rates are measured over.
    Not to `now`: between batches, and after the last one while the run
    writes its tables, no time passes for the model."""
    latest = self.now if self.last_batch_at is None else self.last_batch_at
    return latest - self.first_batch_at

  @property
  def to_embed(self) -> Optional[int]:
    """Documents the model will see in all, once reading is done."""
    if not self.whole_run or not self.batches:
      return None
    return max(self.read - self.skipped, self.embedded)


def docs_per_sec(progress: ProgressSnapshot) -> Optional[float]:
  """Documents per second since the first batch, once warmed up; else None."""
  if (progress.first_batch_at is None or
      progress.batches < 1 + WARM_UP_BATCHES):
    return None
  elapsed = progress.measured_secs
  if elapsed < WARM_UP_SECS:
    return None
  return (progress.embedded - progress.embedded_in_first_batch) / elapsed


def eta_secs(progress: ProgressSnapshot) -> Optional[float]:
  """Seconds left, when both the total and the rate are known; else None.
  By estimated wordpieces when they are counted, else by documents."""
  total, rate = progress.to_embed, docs_per_sec(progress)
  if total is None or not rate:
    return None
  token_rate = (progress.embedded_tokens -
                progress.embedded_tokens_in_first_batch) / (
                    progress.measured_secs)
  if not progress.queued or token_rate <= 0:
    left = max(total - progress.embedded, 0) / rate
  else:
    tokens_left = (
        max(progress.queued_tokens - progress.embedded_tokens, 0) +
        max(total - progress.queued, 0) *
        progress.queued_tokens / progress.queued)
    left = tokens_left / token_rate
  # Counted from the latest batch: the time since has gone on the next.
  since = (0.0 if progress.last_batch_at is None else
           progress.now - progress.last_batch_at)
  return max(left - since, 0.0)


def format_rate(docs_per_second: float) -> str:
  """1,234 docs/s; 2.5 docs/s (a slow or short run is not "0 docs/s")."""
  if docs_per_second >= 10:
    return f"{docs_per_second:,.0f} docs/s"
  return f"{docs_per_second:.1f} docs/s"


def format_duration(secs: float) -> str:
  """45s, 3m 07s, 2h 05m."""
  secs = int(round(secs))
  if secs < 60:
    return f"{secs}s"
  if secs < 3600:
    return f"{secs // 60}m {secs % 60:02d}s"
  return f"{secs // 3600}h {secs % 3600 // 60:02d}m"


def describe(progress: ProgressSnapshot) -> str:
  """One line: the count, the total and share once known, the rate once
  warmed up, the ETA once both are known."""
  total, rate = progress.to_embed, docs_per_sec(progress)
  embedded = progress.embedded - progress.rejected
  # Found by a user trial: the queries were counted as documents.
  noun = "documents and queries" if progress.queries_read else "documents"
  if total is not None:
    total -= progress.rejected
    share = embedded / total if total else 1.0
    text = f"Embedded {embedded:,} of {total:,} {noun} ({share:.0%})"
  else:
    text = f"Embedded {embedded:,} {noun}"
    if not progress.whole_run:
      text += " in this worker process"
    elif not progress.batches:
      text += " (reading the corpus, loading the model)"
  if rate is not None:
    text += f", {format_rate(rate)}"
  eta = eta_secs(progress)
  if eta is not None:
    text += f", ETA {format_duration(eta)}"
  return text


class LogCadence:
  """When a periodic progress line is due: at the first call (or `start`
  seconds after the clock's start value), then every `interval` seconds."""

  def __init__(self, interval: float = LOG_INTERVAL_SECS,
               start: Optional[float] = None):
    self._interval = interval
    self._last = start

  def due(self, now: float) -> bool:
    if self._last is not None and now - self._last < self._interval:
      return False
    self._last = now
    return True


class ProgressCounter:
  """The counts of one process, updated by the stages from any thread."""

  def __init__(self, clock: Callable[[], float] = time.monotonic):
    self._clock = clock
    self._lock = threading.Lock()
    self._displays = 0
    self._reset()

  def _reset(self):
    self._read = self._skipped = self._embedded = self._batches = 0
    self._rejected = self._queries_read = 0
    self._queued = self._queued_tokens = self._embedded_tokens = 0
    self._first_batch_at = self._last_batch_at = None
    self._embedded_in_first_batch = self._embedded_tokens_in_first_batch = 0
    self._cadence = LogCadence()

  def add_read(self, n: int = 1, queries: bool = False):
    """n records read (of the --neighbours_of queries, if `queries`)."""
    with self._lock:
      self._read += n
      if queries:
        self._queries_read += n

  def add_skipped(self, n: int = 1):
    with self._lock:
      self._skipped += n

  def add_rejected(self, n: int = 1):
    """n documents back from the model were dead-lettered there."""
    with self._lock:
      self._rejected += n

  def add_queued(self, n: int, tokens: int):
    """n documents of `tokens` estimated wordpieces are sorted by length,
    their batches next to go to the model."""
    with self._lock:
      self._queued += n
      self._queued_tokens += tokens

  def add_batch(self, n: int, tokens: int = 0):
    """A batch of n documents (`tokens` estimated wordpieces, as queued) is
    back from the model."""
    with self._lock:
      now = self._clock()
      self._embedded += n
      self._embedded_tokens += tokens
      self._batches += 1
      self._last_batch_at = now
      if self._first_batch_at is None:
        self._first_batch_at = now
        self._embedded_in_first_batch = n
        self._embedded_tokens_in_first_batch = tokens
      line = None
      if not self._displays and self._cadence.due(now):
        line = describe(self._snapshot(now))
    if line:
      _LOG.info("%s", line)

  def snapshot(self) -> ProgressSnapshot:
    with self._lock:
      return self._snapshot(self._clock())

  def _snapshot(self, now: float) -> ProgressSnapshot:
    return ProgressSnapshot(
        read=self._read, skipped=self._skipped, embedded=self._embedded,
        batches=self._batches, first_batch_at=self._first_batch_at,
        embedded_in_first_batch=self._embedded_in_first_batch, now=now,
        whole_run=self._displays > 0, queued=self._queued,
        queued_tokens=self._queued_tokens,
        embedded_tokens=self._embedded_tokens,
        embedded_tokens_in_first_batch=self._embedded_tokens_in_first_batch,
        last_batch_at=self._last_batch_at, rejected=self._rejected,
        queries_read=self._queries_read)

  @contextlib.contextmanager
  def displayed(self):
    """While a display shows this process's counts as the whole run's: they
    start from zero, and the periodic log lines stop."""
    with self._lock:
      self._reset()
      self._displays += 1
    try:
      yield self
    finally:
      with self._lock:
        self._displays -= 1


# The counts of this process.
PROGRESS = ProgressCounter()
