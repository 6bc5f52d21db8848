"""The local runner's garbage-collection settings for a run, and their undo."""

import gc

import apache_beam as beam
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from pipeline import local_runner


def test_batch_garbage_collection_is_undone_afterwards():
  before = gc.get_threshold()
  assert gc.get_freeze_count() == 0
  with local_runner.batch_garbage_collection():
    assert gc.get_threshold() == local_runner._RUN_GC_THRESHOLD
    # The objects that existed at the start are out of every collection.
    assert gc.get_freeze_count() > 0
  assert gc.get_threshold() == before
  assert gc.get_freeze_count() == 0


def test_a_freeze_of_the_caller_is_left_alone():
  gc.freeze()
  try:
    with local_runner.batch_garbage_collection():
      assert gc.get_threshold() == local_runner._RUN_GC_THRESHOLD
    # Still frozen: the run did not unfreeze what it had not frozen.
    assert gc.get_freeze_count() > 0
  finally:
    gc.unfreeze()


def test_a_local_run_collects_with_the_batch_settings():
  before = gc.get_threshold()
  with beam.Pipeline(runner=local_runner.LocalRunner()) as p:
    seen = p | beam.Create([0]) | beam.Map(
        lambda _: (gc.get_threshold(), gc.get_freeze_count() > 0))
    assert_that(seen, equal_to([(local_runner._RUN_GC_THRESHOLD, True)]))
  assert gc.get_threshold() == before
  assert gc.get_freeze_count() == 0
