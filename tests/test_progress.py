"""Progress a person can trust (transforms/progress.py): no rate before a
warm-up, a total and an ETA only once reading is done, a log line every 30 s
where no live line is shown; all on a fake clock."""

import logging

import pytest

from transforms import progress as progress_lib
from transforms.progress import describe
from transforms.progress import docs_per_sec
from transforms.progress import eta_secs
from transforms.progress import format_duration
from transforms.progress import LogCadence
from transforms.progress import ProgressCounter
from transforms.progress import ProgressSnapshot


class FakeClock:

  def __init__(self, now=100.0):
    self.now = now

  def __call__(self):
    return self.now


def _snapshot(**fields):
  return ProgressSnapshot(**{"whole_run": True, **fields})


def test_no_rate_after_one_document_in_no_time():
  # The old line: "Embedded 1 documents in this worker (1000000000.0 docs/s)".
  one = _snapshot(read=1, embedded=1, batches=1, first_batch_at=5.0,
                  embedded_in_first_batch=1, now=5.0)
  assert docs_per_sec(one) is None
  assert eta_secs(one) is None
  assert describe(one) == "Embedded 1 of 1 documents (100%)"


@pytest.mark.parametrize("batches, elapsed", [
    (1, 10.0),  # one batch: its time is the model's warm-up
    (2, 10.0),  # one batch after it is not enough
    (3, 0.5),  # enough batches, too little time
])
def test_no_rate_before_the_warm_up(batches, elapsed):
  snapshot = _snapshot(read=1000, embedded=batches * 100, batches=batches,
                       first_batch_at=0.0, embedded_in_first_batch=100,
                       now=elapsed)
  assert docs_per_sec(snapshot) is None
  assert "docs/s" not in describe(snapshot)
  assert "ETA" not in describe(snapshot)


def test_rate_is_measured_after_the_first_batch():
  snapshot = _snapshot(read=1000, embedded=300, batches=3, first_batch_at=10.0,
                       embedded_in_first_batch=100, now=12.0)
  # 200 documents in the 2 s since the first batch came back.
  assert docs_per_sec(snapshot) == pytest.approx(100.0)
  assert eta_secs(snapshot) == pytest.approx(7.0)
  assert describe(snapshot) == (
      "Embedded 300 of 1,000 documents (30%), 100 docs/s, ETA 7s")


def test_total_and_eta_only_once_reading_is_done():
  # Before the first batch, documents may still be being read.
  reading = _snapshot(read=5000, embedded=0, batches=0, now=3.0)
  assert reading.to_embed is None and eta_secs(reading) is None
  assert describe(reading) == (
      "Embedded 0 documents (reading the corpus, loading the model)")
  # Rejected and carried-over documents are not to be embedded.
  done_reading = _snapshot(read=5000, skipped=1000, embedded=2000, batches=20,
                           first_batch_at=0.0, embedded_in_first_batch=100,
                           now=19.0)
  assert done_reading.to_embed == 4000
  assert eta_secs(done_reading) == pytest.approx(20.0)
  assert describe(done_reading).startswith(
      "Embedded 2,000 of 4,000 documents (50%), 100 docs/s, ETA 20s")


def test_documents_the_model_rejects_are_not_told_as_embedded():
  # A new user's trial: "Embedded 44 of 44 documents" above a summary of 43
  # embedded, one text of zero-width spaces rejected after the model.
  counter = ProgressCounter(clock=FakeClock())
  with counter.displayed():
    counter.add_read(44)
    counter.add_batch(44)
    counter.add_rejected()
    assert describe(counter.snapshot()) == "Embedded 43 of 43 documents (100%)"


def test_the_queries_of_neighbours_of_are_counted_as_such():
  # Found by a user trial: 3 questions made "Embedded 13 of 13 documents"
  # of a corpus of 10.
  counter = ProgressCounter(clock=FakeClock())
  with counter.displayed():
    counter.add_read(10)
    counter.add_read(3, queries=True)
    counter.add_batch(13)
    assert describe(counter.snapshot()) == (
        "Embedded 13 of 13 documents and queries (100%)")


@pytest.mark.parametrize("embedded, line", [
    (102, "Embedded 102 of 1,000 documents (10%), 0.2 docs/s"),
    (1100, "Embedded 1,100 of 1,100 documents (100%), 100 docs/s"),
])
def test_a_slow_rate_is_told_with_a_decimal(embedded, line):
  snapshot = _snapshot(read=1000, embedded=embedded, batches=3,
                       first_batch_at=0.0, embedded_in_first_batch=100,
                       now=10.0)
  assert describe(snapshot).startswith(line)


def test_a_worker_tells_only_its_own_share():
  worker = ProgressSnapshot(read=10, embedded=900, batches=9,
                            first_batch_at=0.0, embedded_in_first_batch=100,
                            now=8.0, whole_run=False)
  assert worker.to_embed is None and eta_secs(worker) is None
  assert describe(worker) == (
      "Embedded 900 documents in this worker process, 100 docs/s")


def test_format_duration():
  assert [format_duration(s) for s in (0, 44.6, 61, 3599, 3600, 7500)] == [
      "0s", "45s", "1m 01s", "59m 59s", "1h 00m", "2h 05m"]


def test_log_cadence_every_30_seconds_on_a_fake_clock():
  cadence = LogCadence(30.0)
  assert [cadence.due(t) for t in (0.0, 1.0, 29.9, 30.0, 45.0, 60.0, 90.5)] == [
      True, False, False, True, False, True, True]
  later = LogCadence(30.0, start=0.0)
  assert [later.due(t) for t in (0.0, 29.0, 30.0)] == [False, False, True]


def test_a_worker_logs_its_progress_every_30_seconds(caplog):
  clock = FakeClock()
  counter = ProgressCounter(clock=clock)
  caplog.set_level(logging.INFO, logger=progress_lib.__name__)
  for _ in range(30):  # a batch of 10 every 5 s, for 150 s
    counter.add_batch(10)
    clock.now += 5.0
  lines = [r.getMessage() for r in caplog.records
           if r.name == progress_lib.__name__]
  # At the first batch (no rate yet), then at 30, 60, 90, 120 s.
  assert len(lines) == 5
  assert lines[0] == "Embedded 10 documents in this worker process"
  assert lines[1] == (
      "Embedded 70 documents in this worker process, 2.0 docs/s")


def test_no_log_lines_while_a_display_shows_the_whole_run(caplog):
  clock = FakeClock()
  counter = ProgressCounter(clock=clock)
  counter.add_read(7)  # an earlier run in this process
  caplog.set_level(logging.INFO, logger=progress_lib.__name__)
  with counter.displayed():
    assert counter.snapshot() == ProgressSnapshot(now=clock.now,
                                                  whole_run=True)
    counter.add_read(50)
    counter.add_skipped(10)
    for _ in range(8):
      counter.add_batch(5)
      clock.now += 1.0
    snapshot = counter.snapshot()
  assert not caplog.records
  assert (snapshot.read, snapshot.skipped, snapshot.embedded,
          snapshot.batches) == (50, 10, 40, 8)
  assert snapshot.to_embed == 40
  assert describe(snapshot).startswith("Embedded 40 of 40 documents (100%)")
  assert not counter.snapshot().whole_run


def test_the_eta_counts_wordpieces_not_documents():
  # A buffer goes to the model shortest first: its first 300 documents are
  # 4,000 of its 100,000 estimated wordpieces. By documents the ETA would
  # be 7 s (700 left at 100 docs/s); the work left takes 64 s.
  snapshot = _snapshot(read=1000, embedded=300, batches=3,
                       first_batch_at=10.0, embedded_in_first_batch=100,
                       now=12.0, queued=1000, queued_tokens=100_000,
                       embedded_tokens=4000,
                       embedded_tokens_in_first_batch=1000)
  # 3,000 wordpieces in the 2 s since the first batch: 1,500 a second.
  assert eta_secs(snapshot) == pytest.approx(96_000 / 1500)
  assert describe(snapshot).endswith("100 docs/s, ETA 1m 04s")
  # Documents not queued yet count as the mean of those queued (100 each).
  half_queued = _snapshot(read=2000, embedded=300, batches=3,
                          first_batch_at=10.0, embedded_in_first_batch=100,
                          now=12.0, queued=1000, queued_tokens=100_000,
                          embedded_tokens=4000,
                          embedded_tokens_in_first_batch=1000)
  assert eta_secs(half_queued) == pytest.approx((96_000 + 1000 * 100) / 1500)


def test_the_counter_passes_wordpieces_to_its_snapshot():
  clock = FakeClock(0.0)
  counter = ProgressCounter(clock)
  with counter.displayed():
    counter.add_read(10)
    counter.add_queued(10, 500)
    counter.add_batch(4, 80)
    clock.now = 1.0
    counter.add_batch(3, 90)
    snapshot = counter.snapshot()
  assert (snapshot.queued, snapshot.queued_tokens) == (10, 500)
  assert snapshot.embedded_tokens == 170
  assert snapshot.embedded_tokens_in_first_batch == 80


def test_the_rate_stands_between_batches_and_after_the_last():
  # Measured to the latest batch: 200 documents in the 2 s from the first
  # batch to the third. The ETA counts down from the third.
  between = _snapshot(read=1000, embedded=300, batches=3, first_batch_at=10.0,
                      embedded_in_first_batch=100, last_batch_at=12.0,
                      now=13.5)
  assert docs_per_sec(between) == pytest.approx(100.0)
  assert eta_secs(between) == pytest.approx(7.0 - 1.5)
  # Everything embedded, the tables being written: the rate stays, ETA 0.
  done = _snapshot(read=1000, embedded=1000, batches=10, first_batch_at=10.0,
                   embedded_in_first_batch=100, last_batch_at=19.0, now=25.0)
  assert docs_per_sec(done) == pytest.approx(100.0)
  assert eta_secs(done) == 0.0
  assert describe(done) == ("Embedded 1,000 of 1,000 documents (100%), "
                            "100 docs/s, ETA 0s")
