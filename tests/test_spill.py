"""Tests of GroupByKeyOnDisk: the groups of GroupByKey, through files."""

import hashlib
import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pytest

from pipeline.local_runner import LocalRunner
from transforms import spill as spill_lib
from transforms.spill import GroupByKeyOnDisk
from transforms.spill import stable_partition


def _sorted_groups(key_and_values):
  key, values = key_and_values
  return key, sorted(values)


def _expected_groups(pairs):
  groups = {}
  for key, value in pairs:
    groups.setdefault(key, []).append(value)
  return [(key, sorted(values)) for key, values in groups.items()]


def test_groups_equal_group_by_key_through_files(tmp_path):
  # Many keys over few partitions, a buffer of 7 elements: every partition
  # file holds several pickled lists, and partitions several keys.
  pairs = [(f"id{i % 50}", (i, f"text {i}")) for i in range(1000)]
  spill_dir = str(tmp_path / "spill")
  with test_pipeline.TestPipeline(runner=LocalRunner()) as p:
    grouped = (p
               | beam.Create(pairs)
               | beam.Reshuffle()  # several bundles
               | GroupByKeyOnDisk(spill_dir, 4, buffer_elements=7))
    assert_that(grouped | beam.Map(_sorted_groups),
                equal_to(_expected_groups(pairs)))
  files = [name for _, _, names in os.walk(spill_dir) for name in names]
  assert files and all(name.endswith(".pickle") for name in files)
  # At most one file per partition and bundle.
  assert len({name.split("-")[1] for name in files}) <= 4


def test_partition_count_from_a_pcollection_and_int_keys(tmp_path):
  # The writers' case: keys are shard numbers, the count known at run time.
  pairs = [(i % 3, i) for i in range(30)]
  with test_pipeline.TestPipeline(runner=LocalRunner()) as p:
    count = p | "Count" >> beam.Create([3])
    grouped = (p
               | "Pairs" >> beam.Create(pairs)
               | GroupByKeyOnDisk(str(tmp_path), count))
    assert_that(grouped | beam.Map(_sorted_groups),
                equal_to(_expected_groups(pairs)))


def test_a_bundle_keeps_few_files_open_and_loses_nothing(tmp_path):
  # Thousands of partitions (the by-shard grouping with --num_shards in the
  # thousands): one open handle each would exceed the open-file limit.
  pairs = [(i % 40, (i, f"text {i}")) for i in range(600)]
  spill = spill_lib._SpillToFilesFn(str(tmp_path), buffer_elements=9,
                                    max_open_files=3)
  most_open = 0
  spill.start_bundle()
  for pair in pairs:
    spill.process(pair, 5000)
    most_open = max(most_open, len(spill._open))
  written = [value.value for value in spill.finish_bundle()]
  assert most_open == 3 and not spill._open
  assert len(written) > 40  # partitions went on in new files
  files_of = {}
  for partition, path in written:
    files_of.setdefault(partition, []).append(path)
  grouped = [group for partition in files_of.items()
             for group in spill_lib._read_partition(partition)]
  # Nothing lost, and each key's values in the order they came.
  assert sorted(grouped) == sorted(
      (key, [value for k, value in pairs if k == key])
      for key in {k for k, _ in pairs})


def test_stable_partition():
  assert [stable_partition(shard, 4) for shard in range(6)] == [
      0, 1, 2, 3, 0, 1]
  # blake2b, not hash(): the same in every process.
  assert stable_partition("doc-1", 64) == stable_partition(b"doc-1", 64)
  assert stable_partition("doc-1", 1 << 62) == int.from_bytes(
      hashlib.blake2b(b"doc-1", digest_size=8).digest(),
      "big") % (1 << 62)


def test_bad_arguments_fail_when_built(tmp_path):
  with pytest.raises(ValueError, match="num_partitions"):
    GroupByKeyOnDisk(str(tmp_path), 0)
  with pytest.raises(ValueError, match="buffer_elements"):
    GroupByKeyOnDisk(str(tmp_path), 2, buffer_elements=0)
