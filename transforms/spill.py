"""GroupByKey through files, for the local runner: memory stays flat.

Beam's local runner (FnApiRunner) runs each fused stage as one bundle over
its whole input and keeps what crosses a stage boundary in memory until the
stage ends: a GroupByKey's input above all, as encoded bytes, more than once.
Grouping every document by id and every row by shard so held the whole
corpus, about 3.5 KB per document with a tiny model (more with vectors of
384 floats), on top of the model and TensorFlow.

GroupByKeyOnDisk groups the same way with the bulk on disk:

  (key, value) ──SpillToFiles──> (partition, spill file) ──GroupByKey──>
      (partition, [files]) ──ReadPartition──> (key, [values]) per key

Elements are pickled, in lists of at most `buffer_elements` summed over the
partitions, into one file per (bundle, partition) under `spill_dir`; only the
file names cross the stage boundary. A partition's files are then read
back and grouped in memory, one partition at a time: memory holds one
partition, not the input. A retried bundle writes files of new names (a
random part per bundle) and its first files are never named downstream.

Distributed runners do not need this (their shuffle is on disk already, and
one file per bundle and partition would be many small files there): the
pipeline uses it on the local runner only (`RunPlan.spill_dir`).
"""

import collections
import hashlib
import pickle
import uuid
from typing import Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window

# Elements buffered, over all partitions, before they are written out.
DEFAULT_BUFFER_ELEMENTS = 4096
# Spill files one bundle keeps open at once (Linux's default soft limit of
# open files is 1024, for the whole process).
DEFAULT_MAX_OPEN_FILES = 128
_MIME_TYPE = "application/octet-stream"


def stable_partition(key, num_partitions: int) -> int:
  """The partition of a key: the same in every process and run.

  An int key is its own partition modulo num_partitions (a shard number
  stays its shard); a str or bytes key goes by blake2b of its bytes.
  """
  if isinstance(key, int):
    return key % num_partitions
  data = key if isinstance(key, bytes) else str(key).encode(
      "utf-8", errors="surrogatepass")
  digest = hashlib.blake2b(data, digest_size=8).digest()
  return int.from_bytes(digest, "big") % num_partitions


class _SpillToFilesFn(beam.DoFn):
  """(key, value) -> (partition, file) once per file the bundle wrote.

  At most `max_open_files` files are open at once (the ones written to
  last): with more partitions (--num_shards in the thousands) one handle
  each would run into the process's limit of open files. A partition whose
  file was closed goes on in a new one.
  """

  def __init__(self, spill_dir: str, buffer_elements: int,
               max_open_files: int = DEFAULT_MAX_OPEN_FILES):
    self._spill_dir = spill_dir
    self._buffer_elements = buffer_elements
    self._max_open_files = max_open_files
    self._buffers = {}
    self._open = collections.OrderedDict()  # partition -> handle, LRU first
    self._written = []  # (partition, path), in the order created
    self._buffered = 0
    self._bundle = ""

  def start_bundle(self):
    self._close_open_files()  # a failed bundle's, if it left any
    self._buffers, self._written, self._buffered = {}, [], 0
    self._bundle = uuid.uuid4().hex

  def process(self, key_and_value, num_partitions: int):
    partition = stable_partition(key_and_value[0], num_partitions)
    self._buffers.setdefault(partition, []).append(key_and_value)
    self._buffered += 1
    if self._buffered >= self._buffer_elements:
      self._flush()

  def finish_bundle(self):
    self._flush()
    self._close_open_files()
    for partition, path in sorted(self._written):
      yield window.GlobalWindows.windowed_value_at_end_of_window(
          (partition, path))
    self._written = []

  def teardown(self):
    self._close_open_files()

  def _flush(self):
    for partition, elements in self._buffers.items():
      pickle.dump(elements, self._file_of(partition),
                  protocol=pickle.HIGHEST_PROTOCOL)
    self._buffers, self._buffered = {}, 0

  def _file_of(self, partition: int):
    if partition in self._open:
      self._open.move_to_end(partition)
      return self._open[partition]
    if len(self._open) >= self._max_open_files:
      _, handle = self._open.popitem(last=False)
      handle.close()
    # Numbered in creation order: a partition's files read back in the
    # order they were written.
    path = FileSystems.join(
        self._spill_dir,
        f"{self._bundle}-{partition:05d}-{len(self._written):06d}.pickle")
    self._open[partition] = FileSystems.create(
        path, mime_type=_MIME_TYPE,
        compression_type=CompressionTypes.UNCOMPRESSED)
    self._written.append((partition, path))
    return self._open[partition]

  def _close_open_files(self):
    while self._open:
      _, handle = self._open.popitem(last=False)
      handle.close()


def _read_spill_file(path: str):
  with FileSystems.open(path, mime_type=_MIME_TYPE,
                        compression_type=CompressionTypes.UNCOMPRESSED) as f:
    while True:
      try:
        yield from pickle.load(f)
      except EOFError:
        return


def _read_partition(partition_and_files):
  """The (key, [values]) of one partition's files, keys in sorted order."""
  _, paths = partition_and_files
  groups = {}
  for path in sorted(paths):
    for key, value in _read_spill_file(path):
      groups.setdefault(key, []).append(value)
  for key in sorted(groups):
    yield key, groups.pop(key)


class GroupByKeyOnDisk(beam.PTransform):
  """PCollection[(key, value)] -> PCollection[(key, [values])], like
  GroupByKey, through pickle files under spill_dir.

  num_partitions: an int, or a singleton PCollection of one (e.g. a shard
    count known only when the pipeline runs). Memory holds one partition's
    values at a time, so choose it to make a partition small.
  buffer_elements: elements held before they are written out.
  Keys must be ints, str or bytes (see stable_partition), and sortable.
  """

  def __init__(self, spill_dir: str,
               num_partitions: Union[int, beam.PCollection],
               buffer_elements: int = DEFAULT_BUFFER_ELEMENTS):
    super().__init__()
    if isinstance(num_partitions, int) and num_partitions < 1:
      raise ValueError(f"num_partitions must be at least 1, got "
                       f"{num_partitions}")
    if buffer_elements < 1:
      raise ValueError(f"buffer_elements must be at least 1, got "
                       f"{buffer_elements}")
    self._spill_dir = spill_dir
    self._num_partitions = num_partitions
    self._buffer_elements = buffer_elements

  def expand(self, pcoll):
    num_partitions = self._num_partitions
    if not isinstance(num_partitions, int):
      num_partitions = beam.pvalue.AsSingleton(num_partitions)
    # A directory per label, for whoever looks; file names hold a random
    # part per bundle, so two uses under one label never collide.
    spill_dir = FileSystems.join(self._spill_dir, _directory_name(self.label))
    return (
        pcoll
        | "SpillToFiles" >> beam.ParDo(
            _SpillToFilesFn(spill_dir, self._buffer_elements),
            num_partitions)
        | "GroupFilesByPartition" >> beam.GroupByKey()
        | "ReadPartition" >> beam.FlatMap(_read_partition))


def _directory_name(label: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
