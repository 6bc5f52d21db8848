"""Tests for transforms.batching: length-sorted batches, bounded buffer."""

import numpy as np
import pytest
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from pipeline.local_runner import LocalRunner
from transforms import batching
from transforms.batching import cut_sorted
from transforms.batching import estimate_tokens
from transforms.batching import SortAndBatchByLength
from transforms.progress import PROGRESS


def test_estimate_tokens():
  assert estimate_tokens("", 32) == 2  # [CLS] and [SEP]
  assert estimate_tokens("abcd" * 10, 32) == 12
  assert estimate_tokens("x" * 400, 32) == 32  # capped at max_seq_length
  assert estimate_tokens(("abcd" * 2, "abcd" * 3), 32) == 7  # a pair: both


def test_cut_sorted_cases():
  assert cut_sorted([], 4, 100) == []
  # By count.
  assert cut_sorted([1] * 5, 2, 100) == [slice(0, 2), slice(2, 4),
                                         slice(4, 5)]
  # By padded tokens: (elements x largest) within the budget.
  assert cut_sorted([2, 3, 5, 10], 10, 12) == [slice(0, 2), slice(2, 3),
                                               slice(3, 4)]
  # Larger than the budget: a batch of its own.
  assert cut_sorted([1, 50, 60], 10, 20) == [slice(0, 1), slice(1, 2),
                                             slice(2, 3)]


def run_fn(elements, buffer_size, max_batch_size=1000, max_batch_tokens=10**9):
  """The DoFn over one bundle, by hand: [(when emitted, batch)]."""
  fn = batching._SortAndBatchByLengthFn(  # pylint: disable=protected-access
      len, buffer_size, max_batch_size, max_batch_tokens)
  fn.start_bundle()
  emitted = []
  for position, element in enumerate(elements):
    for batch in fn.process(element) or ():
      emitted.append((position, batch))
  for windowed in fn.finish_bundle() or ():
    emitted.append(("finish", windowed.value))
  return emitted


def test_buffer_bounds_what_is_held():
  rng = np.random.default_rng(0)
  elements = ["x" * int(n) for n in rng.integers(0, 50, size=25)]
  emitted = run_fn(elements, buffer_size=10, max_batch_size=4)
  # A full buffer is flushed at once: by the 10th and 20th element, and the
  # last 5 at the end of the bundle, each from its own 10 arrivals.
  by_flush = {}
  for when, batch in emitted:
    by_flush.setdefault(when, []).append(batch)
  assert sorted(by_flush, key=str) == [19, 9, "finish"]
  for when, start in ((9, 0), (19, 10), ("finish", 20)):
    flushed = [e for batch in by_flush[when] for e in batch]
    assert sorted(flushed) == sorted(elements[start:start + 10])
    assert [len(e) for e in flushed] == sorted(len(e) for e in flushed)
    assert all(len(batch) <= 4 for batch in by_flush[when])


def test_equal_lengths_keep_arrival_order():
  elements = [f"{i:03d}" for i in range(12)]  # all of length 3
  emitted = run_fn(elements, buffer_size=100, max_batch_size=5)
  assert [e for _, batch in emitted for e in batch] == elements


def test_each_flushed_buffer_is_queued_for_the_eta():
  # The progress display's measure of the work ahead: every element, with
  # the size it was sorted by, counted as its buffer is flushed.
  elements = ["x" * n for n in range(0, 100, 4)]  # 25
  with PROGRESS.displayed():
    run_fn(elements, buffer_size=10, max_batch_size=4)
    snapshot = PROGRESS.snapshot()
  assert snapshot.queued == 25
  assert snapshot.queued_tokens == sum(len(e) for e in elements)


@pytest.mark.parametrize("buffer_size", [1, 7, 1000])
def test_pipeline_batches_every_element_once_sorted(buffer_size):
  rng = np.random.default_rng(buffer_size)
  elements = [(f"id{i}", "w " * int(n))
              for i, n in enumerate(rng.integers(0, 80, size=200))]

  def size(element):
    return estimate_tokens(element[1], 64)

  def check(batches):
    flat = [e for batch in batches for e in batch]
    assert sorted(flat) == sorted(elements)
    for batch in batches:
      sizes = [size(e) for e in batch]
      assert sizes == sorted(sizes)
      assert len(batch) <= 16
      assert len(batch) * max(sizes) <= 256 or len(batch) == 1
    if buffer_size == 1000:
      # One buffer per bundle: far fewer, fuller batches than one by one.
      assert len(batches) < len(elements) / 4

  with TestPipeline(runner=LocalRunner()) as p:
    batches = (p | beam.Create(elements)
               | SortAndBatchByLength(size, buffer_size=buffer_size,
                                      max_batch_size=16,
                                      max_batch_tokens=256))
    assert_that(batches, check)


def test_rejects_bad_settings_and_windows():
  with pytest.raises(ValueError, match="buffer_size must be positive"):
    SortAndBatchByLength(len, buffer_size=0, max_batch_size=1,
                         max_batch_tokens=1)
  with pytest.raises(ValueError, match="global window only"):
    with TestPipeline(runner=LocalRunner()) as p:
      _ = (p | beam.Create(["a"])
           | beam.WindowInto(beam.window.FixedWindows(10))
           | SortAndBatchByLength(len, buffer_size=2, max_batch_size=1,
                                  max_batch_tokens=10))
