"""The write stage: a table of the run into sorted, deterministic shards.

Each table is written twice, for two kinds of readers, plus its schema
(run_directory/layout.py has the names):

  <output_dir>/<table>/tfrecord/<table>-SSSSS-of-NNNNN.tfrecord
  <output_dir>/<table>/<format>/<table>-SSSSS-of-NNNNN.<format>
  <output_dir>/<table>/bigquery_schema.json
  <output_dir>/errors/errors-SSSSS-of-NNNNN.jsonl   (JSON lines only)

TFRecord (tf.train.Example) is for TensorFlow readers; <format> is the
BigQuery-loadable copy: avro (default), parquet or jsonl. What a table's rows
are is the run-directory contract's (run_directory/tables.py); how one shard
becomes files too (run_directory/shards.py). This module is the Beam side:
count, assign shards, group, write.

Idempotent: the same input gives byte-identical files, whatever the input
order, the runner or the retries.

* A row goes to shard blake2b(first sort key component) % N, so an id always
  lands in the same shard.
* N is `num_shards`, or else ceil(rows / the table's rows_per_shard), at
  least 1.
* Rows are grouped by shard; every shard 0..N-1 is written, empty or not
  (shards without rows once the others are written), by one call of
  `ShardWriter.write`. On the local runner the grouping goes through files
  (`spill_dir`, transforms/spill.py), so that memory holds one shard at a
  time, not the whole table.

Every write returns the full paths of its files, every shard named, for the
manifest (written last, by the publish stage). An empty input still writes
one valid, empty shard per format.
"""

import dataclasses
import json
from typing import Optional, Sequence

import apache_beam as beam
import fastavro

from run_directory.atomic import write_text_atomically
from run_directory.avro import to_avro_schema
from run_directory.columns import Column
from run_directory.columns import to_bigquery_schema
from run_directory.columns import validate_bigquery_schema
from run_directory.layout import AVRO
from run_directory.layout import BIGQUERY_FORMATS
from run_directory.layout import BIGQUERY_SCHEMA
from run_directory.layout import JSONL
from run_directory.layout import schema_path
from run_directory.layout import shard_prefix
from run_directory.layout import TFRECORD
from run_directory.shards import DEFAULT_BATCH_SIZE
from run_directory.shards import num_shards_for
from run_directory.shards import shard_of
from run_directory.shards import ShardWriter
from run_directory.tables import Table
from transforms.spill import DEFAULT_BUFFER_ELEMENTS
from transforms.spill import GroupByKeyOnDisk


@dataclasses.dataclass(frozen=True)
class WriteSettings:
  """How the run's tables are written.

  bigquery_format: the BigQuery-loadable copy (avro, parquet or jsonl),
    beside TFRecord.
  num_shards: shards per file set; 0 sizes them to fit a worker's memory.
  """
  bigquery_format: str = AVRO
  num_shards: int = 0


class _WriteShardFn(beam.DoFn):
  """(shard, its rows) -> (shard, (format, path)) per written file."""

  def __init__(self, writer: ShardWriter):
    self._writer = writer

  def process(self, shard_and_rows, num_shards: int):
    shard, rows = shard_and_rows
    for written in self._writer.write(shard, num_shards, rows).items():
      yield shard, written


def _write_empty_shards(num_shards: int, written: list, writer: ShardWriter):
  """(format, path) of the files of every shard no row went to."""
  with_rows = {shard for shard, _ in written}
  for shard in range(num_shards):
    if shard not in with_rows:
      yield from writer.write(shard, num_shards, []).items()


def _paths_of_format(format_and_path, file_format: str):
  if format_and_path[0] == file_format:
    yield format_and_path[1]


def _assign_shard(element, table: Table, num_shards: int):
  return shard_of(table.shard_key(element), num_shards), element


def _count_rows(elements: beam.PCollection, table: Table) -> beam.PCollection:
  """How many rows the elements hold (one each, unless the table says)."""
  if table.rows_per_element is None:
    return elements | "Count" >> beam.combiners.Count.Globally()
  return (elements
          | "RowsOfElement" >> beam.Map(table.rows_per_element.count)
          | "Count" >> beam.CombineGlobally(sum))


class WriteShards(beam.PTransform):
  """PCollection[element] -> {format: PCollection[path]}, one path per shard.

  num_shards: fixed, or 0 for ceil(count / the table's rows_per_shard), at
    least 1.
  max_num_shards: at most this many shards when sized by the count (a
    reader's limit on files, e.g. Vertex AI's).
  count: what is counted for that, the rows the elements hold by default
    (Table.rows_per_element); otherwise its elements are counted: any
    PCollection at least as large (and the same in every run of the same
    input) will do. One complete before the elements are lets the shard
    assignment run in the stage that makes them, instead of in another pass
    over all of them.
  spill_dir: group the rows by shard through files there (GroupByKeyOnDisk)
    instead of in the runner's GroupByKey; for the local runner, which holds
    a GroupByKey's whole input in memory.
  """

  def __init__(
      self, writer: ShardWriter, num_shards: int,
      count: Optional[beam.PCollection] = None,
      max_num_shards: Optional[int] = None,
      spill_dir: Optional[str] = None):
    super().__init__()
    _check_num_shards(num_shards)
    _check_positive("rows_per_shard", writer.table.rows_per_shard)
    if max_num_shards is not None and num_shards > max_num_shards:
      raise ValueError(
          f"num_shards {num_shards} is over the limit of {max_num_shards}")
    self._writer = writer
    self._num_shards = num_shards
    self._rows_per_shard = writer.table.rows_per_shard
    self._count = count
    self._max_num_shards = max_num_shards
    self._spill_dir = spill_dir

  def expand(self, elements):
    if self._num_shards:
      num_shards = elements.pipeline | "NumShards" >> beam.Create(
          [self._num_shards])
    else:
      num_rows = (
          _count_rows(elements, self._writer.table) if self._count is None
          else self._count | "Count" >> beam.combiners.Count.Globally())
      num_shards = (
          num_rows
          | "NumShards" >> beam.Map(
              num_shards_for, self._rows_per_shard, self._max_num_shards))
    num_shards_side = beam.pvalue.AsSingleton(num_shards)
    if self._spill_dir is None:
      group_by_shard = beam.GroupByKey()
    else:
      # One partition per shard; elements buffered at most a shard's worth
      # of rows (or K times that, for the neighbours' K rows an element).
      group_by_shard = GroupByKeyOnDisk(
          self._spill_dir, num_shards,
          buffer_elements=min(DEFAULT_BUFFER_ELEMENTS, self._rows_per_shard))
    written = (
        elements
        | "AssignShard" >> beam.Map(
            _assign_shard, self._writer.table, num_shards_side)
        | "GroupByShard" >> group_by_shard
        | "WriteShard" >> beam.ParDo(
            _WriteShardFn(self._writer), num_shards_side))
    # Shards no row went to get their (empty) files afterwards, from the
    # list of written ones: joining "every shard" markers into the rows
    # before the grouping would cost the runner one more pass over all rows.
    empty = num_shards | "WriteEmptyShards" >> beam.FlatMap(
        _write_empty_shards, beam.pvalue.AsList(written), self._writer)
    files = ((written | "DropShard" >> beam.Values(), empty)
             | "AllShards" >> beam.Flatten())
    # One PCollection per format, each from its own transform rather than
    # tagged outputs of one ParDo: Beam's bundle-based DirectRunner mixes up
    # side inputs that come from the tagged outputs of a single transform.
    return {
        file_format: files | f"Paths[{file_format}]" >> beam.FlatMap(
            _paths_of_format, file_format).with_output_types(str)
        for file_format in self._writer.formats
    }


def _write_text_file(unused_element, path: str, text: str) -> str:
  return write_text_atomically(path, text)


class WriteBigQuerySchema(beam.PTransform):
  """Writes a table's BigQuery schema JSON when the pipeline runs.

  Apply to a pipeline (`p | WriteBigQuerySchema(...)`); outputs the path.
  """

  def __init__(self, path: str, columns: Sequence[Column]):
    super().__init__()
    fields = to_bigquery_schema(columns)
    validate_bigquery_schema(fields)
    self._path = path
    self._text = json.dumps(fields, indent=2) + "\n"

  def expand(self, pbegin):
    return (
        pbegin
        | "Once" >> beam.Create([None])
        | "WriteFile" >> beam.Map(
            _write_text_file, self._path, self._text).with_output_types(str))


class WriteTable(beam.PTransform):
  """Writes one table of a run: TFRecord, a BigQuery-loadable format, schema.

  Returns {"tfrecord": paths, <bigquery_format>: paths, "bigquery_schema":
  the schema file's path}: PCollections of full paths, with the keys of the
  manifest's entry for the table. bigquery_format None writes JSON lines
  only, without a schema file (the errors table).

  num_shards: 0 for one shard per `table.rows_per_shard` rows (rows as
  `count` counts them, see WriteShards). batch_size: rows per Arrow batch
  when converting. spill_dir: see WriteShards.
  """

  def __init__(
      self,
      output_dir: str,
      table: Table,
      bigquery_format: Optional[str] = AVRO,
      num_shards: int = 0,
      batch_size: int = DEFAULT_BATCH_SIZE,
      count: Optional[beam.PCollection] = None,
      spill_dir: Optional[str] = None):
    super().__init__()
    if bigquery_format is not None and bigquery_format not in BIGQUERY_FORMATS:
      raise ValueError(
          f"bigquery_format must be one of {BIGQUERY_FORMATS}, got "
          f"{bigquery_format!r}")
    _check_positive("batch_size", batch_size)
    if bigquery_format == AVRO:
      # Parsed here so that a bad schema fails when the pipeline is built.
      fastavro.parse_schema(to_avro_schema(table.columns, name=table.name))
    if bigquery_format is None:
      prefixes = {JSONL: shard_prefix(output_dir, table.name)}
    else:
      prefixes = {
          file_format: shard_prefix(output_dir, table.name, file_format)
          for file_format in (TFRECORD, bigquery_format)
      }
    self._table_name = table.name
    writer = ShardWriter(table, prefixes, batch_size)
    # Built (and so checked) now, not when the pipeline runs.
    self._shards = WriteShards(writer, num_shards, count, spill_dir=spill_dir)
    self._schema_writer = None
    if bigquery_format is not None:
      self._schema_writer = WriteBigQuerySchema(
          schema_path(output_dir, table.name), table.columns)

  def default_label(self) -> str:
    return f"WriteTable[{self._table_name}]"

  def expand(self, elements):
    files = elements | "WriteShards" >> self._shards
    if self._schema_writer is None:
      return files
    schema = elements.pipeline | "WriteBigQuerySchema" >> self._schema_writer
    return {**files, BIGQUERY_SCHEMA: schema}


def _check_num_shards(num_shards: int) -> None:
  if not isinstance(num_shards, int) or num_shards < 0:
    raise ValueError(
        f"num_shards must be 0 (one shard per rows_per_shard rows) or more, "
        f"got {num_shards!r}")


def _check_positive(name: str, value: int) -> None:
  if not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be at least 1, got {value!r}")
