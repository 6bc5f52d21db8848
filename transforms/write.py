"""Writes the run's tables into the run directory.

Each table is written twice, for two kinds of readers, plus its schema:

  <output_dir>/embeddings/tfrecord/embeddings-SSSSS-of-NNNNN.tfrecord
  <output_dir>/embeddings/<format>/embeddings-SSSSS-of-NNNNN.<format>
  <output_dir>/embeddings/bigquery_schema.json
  <output_dir>/neighbours/...            (the same shape, WriteNeighbours)
  <output_dir>/errors/errors-SSSSS-of-NNNNN.jsonl

TFRecord (tf.train.Example) is for TensorFlow readers; <format> is the
BigQuery-loadable copy: avro (default), parquet or jsonl, loadable with
`bq load --source_format=... --schema=bigquery_schema.json`. The columns and
row converters live in `transforms.schemas`; this module only moves rows into
files.

Every write returns the full paths of the files it wrote, every shard named,
for the manifest (written last, by another stage): `relative_to_run_dir` turns
them into the relative paths the manifest holds. An empty input still writes
one valid, empty shard per format.
"""

import dataclasses
import functools
import json
import re
from typing import Any, Callable, Sequence

import apache_beam as beam
import fastavro
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window
from tfx_bsl.coders import example_coder

from transforms import schemas
from transforms.schemas import Column
from transforms.schemas import EmbeddingTableSpec

# Table names: the run directory's sub-directories and the manifest's keys.
EMBEDDINGS = "embeddings"
NEIGHBOURS = "neighbours"
ERRORS = "errors"

# File formats: the sub-directories and the keys of the written paths (and of
# the manifest's "outputs" entries).
TFRECORD = "tfrecord"
AVRO = "avro"
PARQUET = "parquet"
JSONL = "jsonl"
BIGQUERY_FORMATS = (AVRO, PARQUET, JSONL)
FILE_SUFFIXES = {
    TFRECORD: ".tfrecord",
    AVRO: ".avro",
    PARQUET: ".parquet",
    JSONL: ".jsonl",
}
# Key of a table's BigQuery schema file in the written paths and manifest.
BIGQUERY_SCHEMA = "bigquery_schema"
SCHEMA_FILE_NAME = "bigquery_schema.json"

# Rows per Arrow batch for the TFRecord and Parquet paths: large enough that
# the per-batch overhead vanishes, small enough for sequence output
# (128 rows x 512 tokens x 1024 floats is 256 MiB).
DEFAULT_BATCH_SIZE = 128
# Parquet row groups of about this size (Beam's WriteToParquet default), rather
# than one tiny row group per Arrow batch.
PARQUET_ROW_GROUP_BYTES = 64 * 1024 * 1024


def shard_prefix(output_dir: str, table: str, file_format: str = "") -> str:
  """`<output_dir>/<table>/[<format>/]<table>`: shard names append to it."""
  parts = (table, file_format, table) if file_format else (table, table)
  return FileSystems.join(output_dir, *parts)


def relative_to_run_dir(run_dir: str, path: str) -> str:
  """A written path as the manifest holds it: relative to the run directory."""
  base = run_dir.rstrip("/") + "/"
  if not path.startswith(base):
    raise ValueError(f"{path} is not inside the run directory {run_dir}")
  return path[len(base):]


# ---------------------------------------------------------------------------
# One file format each. Every one returns the PCollection of its file paths.


class ListShards(beam.PTransform):
  """The paths of every shard of a finished sharded write.

  Beam's file sinks output the files their finalize step renamed into place;
  a retried finalize skips (and leaves out) shards an earlier attempt already
  renamed. So the list is rebuilt from the shard count in the names, and
  checked against the file system.

  Input: the file sink's output. Output: one path per shard, once it is final.
  """

  def __init__(self, file_prefix: str, suffix: str):
    super().__init__()
    self._file_prefix = file_prefix
    self._suffix = suffix

  def expand(self, written):
    return (
        written.pipeline
        | "Once" >> beam.Create([None])
        | "ListShards" >> beam.FlatMap(
            _list_shards, self._file_prefix, self._suffix,
            beam.pvalue.AsList(written)).with_output_types(str))


def _list_shards(unused_element, file_prefix, suffix, written) -> list[str]:
  name = re.compile(
      re.escape(FileSystems.split(file_prefix)[1]) + r"-(\d+)-of-(\d+)" +
      re.escape(suffix) + "$")

  def shard_counts(paths):
    matches = (name.match(FileSystems.split(path)[1]) for path in paths)
    return {int(m.group(2)) for m in matches if m}

  counts = shard_counts(written)
  if not counts:
    # Nothing emitted: a retried finalize found every file in place already.
    pattern = f"{file_prefix}-*-of-*{suffix}"
    counts = shard_counts(
        m.path for m in FileSystems.match([pattern])[0].metadata_list)
  if len(counts) != 1:
    raise RuntimeError(
        f"Cannot tell which {file_prefix}-*{suffix} shards this run wrote "
        f"(shard counts found: {sorted(counts)}). Write each run to a new, "
        "empty output directory.")
  num_shards = counts.pop()
  paths = [
      f"{file_prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"
      for shard in range(num_shards)
  ]
  missing = [path for path in paths if not FileSystems.exists(path)]
  if missing:
    raise RuntimeError(f"Shards missing after the write: {missing}")
  return paths


class _EncodeExamplesFn(beam.DoFn):
  """Arrow batch (tf.Example layout) -> serialized tf.Examples, in C++."""

  def setup(self):
    self._encoder = example_coder.RecordBatchToExamplesEncoder()

  def process(self, batch: pa.RecordBatch):
    yield from self._encoder.encode(batch)


class WriteExamples(beam.PTransform):
  """PCollection[pa.RecordBatch] in the tf.Example layout -> TFRecord shards."""

  def __init__(self, file_prefix: str, num_shards: int = 0):
    super().__init__()
    self._file_prefix = file_prefix
    self._num_shards = num_shards

  def expand(self, batches):
    suffix = FILE_SUFFIXES[TFRECORD]
    return (
        batches
        | "EncodeExamples" >> beam.ParDo(
            _EncodeExamplesFn()).with_output_types(bytes)
        | "WriteTFRecord" >> beam.io.WriteToTFRecord(
            self._file_prefix,
            file_name_suffix=suffix,
            num_shards=self._num_shards)
        | "ListShards" >> ListShards(self._file_prefix, suffix))


class WriteAvroRows(beam.PTransform):
  """PCollection[dict] (BigQuery shape) -> Avro shards."""

  def __init__(self, file_prefix: str, avro_schema: dict, num_shards: int = 0):
    super().__init__()
    # Parsed here so that a bad schema fails when the pipeline is built.
    fastavro.parse_schema(avro_schema)
    self._file_prefix = file_prefix
    self._avro_schema = avro_schema
    self._num_shards = num_shards

  def expand(self, rows):
    suffix = FILE_SUFFIXES[AVRO]
    return (
        rows
        | "WriteAvro" >> beam.io.WriteToAvro(
            self._file_prefix,
            schema=self._avro_schema,
            file_name_suffix=suffix,
            num_shards=self._num_shards)
        | "ListShards" >> ListShards(self._file_prefix, suffix))


def _to_json_line(row: dict) -> str:
  return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


class WriteJsonLines(beam.PTransform):
  """PCollection[dict] -> newline-delimited JSON shards."""

  def __init__(self, file_prefix: str, num_shards: int = 0):
    super().__init__()
    self._file_prefix = file_prefix
    self._num_shards = num_shards

  def expand(self, rows):
    suffix = FILE_SUFFIXES[JSONL]
    return (
        rows
        | "ToJson" >> beam.Map(_to_json_line).with_output_types(str)
        | "WriteText" >> beam.io.WriteToText(
            self._file_prefix,
            file_name_suffix=suffix,
            num_shards=self._num_shards)
        | "ListShards" >> ListShards(self._file_prefix, suffix))


class _CombineBatches(beam.DoFn):
  """Concatenates a bundle's Arrow batches into tables of ~target_bytes."""

  def __init__(self, target_bytes: int):
    self._target_bytes = target_bytes

  def start_bundle(self):
    self._batches = []
    self._bytes = 0

  def process(self, batch: pa.RecordBatch):
    self._batches.append(batch)
    self._bytes += batch.nbytes
    if self._bytes >= self._target_bytes:
      yield self._flush()

  def finish_bundle(self):
    if self._batches:
      yield window.GlobalWindows.windowed_value(self._flush())

  def _flush(self) -> pa.Table:
    table = pa.Table.from_batches(self._batches)
    self._batches = []
    self._bytes = 0
    return table


class WriteParquetBatches(beam.PTransform):
  """PCollection[pa.RecordBatch] (BigQuery shape) -> Parquet shards."""

  def __init__(
      self, file_prefix: str, arrow_schema: pa.Schema, num_shards: int = 0):
    super().__init__()
    self._file_prefix = file_prefix
    self._arrow_schema = arrow_schema
    self._num_shards = num_shards

  def expand(self, batches):
    suffix = FILE_SUFFIXES[PARQUET]
    return (
        batches
        | "CombineBatches" >> beam.ParDo(
            _CombineBatches(PARQUET_ROW_GROUP_BYTES))
        | "WriteParquet" >> beam.io.WriteToParquetBatched(
            self._file_prefix,
            schema=self._arrow_schema,
            codec="snappy",
            # Lists as the Parquet spec (and BigQuery's list inference) wants.
            use_compliant_nested_type=True,
            file_name_suffix=suffix,
            num_shards=self._num_shards)
        | "ListShards" >> ListShards(self._file_prefix, suffix))


def _write_text_file(unused_element, path: str, text: str) -> str:
  with FileSystems.create(
      path, mime_type="application/json",
      compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(text.encode("utf-8"))
  return path


class WriteBigQuerySchema(beam.PTransform):
  """Writes a table's BigQuery schema JSON when the pipeline runs.

  Apply to a pipeline (`p | WriteBigQuerySchema(...)`); outputs the path.
  """

  def __init__(self, path: str, columns: Sequence[Column]):
    super().__init__()
    fields = schemas.to_bigquery_schema(columns)
    schemas.validate_bigquery_schema(fields)
    self._path = path
    self._text = json.dumps(fields, indent=2) + "\n"

  def expand(self, pbegin):
    return (
        pbegin
        | "Once" >> beam.Create([None])
        | "WriteFile" >> beam.Map(
            _write_text_file, self._path, self._text).with_output_types(str))


# ---------------------------------------------------------------------------
# A table: TFRecord + a BigQuery-loadable format + schema.


@dataclasses.dataclass(frozen=True)
class TableEncoding:
  """How a table's elements become rows in each file layout.

  columns: the table's columns (`transforms.schemas`).
  to_row: element -> dict in the BigQuery shape (Avro, JSON lines).
  to_arrow: list of elements -> pa.RecordBatch typed by
    `schemas.to_arrow_schema(columns)` (Parquet).
  to_examples: list of elements -> pa.RecordBatch in the tf.Example layout
    (TFRecord).
  """
  columns: tuple[Column, ...]
  to_row: Callable[[Any], dict]
  to_arrow: Callable[[list], pa.RecordBatch]
  to_examples: Callable[[list], pa.RecordBatch]


class WriteTable(beam.PTransform):
  """Writes one table of a run: TFRecord, a BigQuery-loadable format, schema.

  Returns {"tfrecord": paths, <bigquery_format>: paths, "bigquery_schema":
  the schema file's path}: PCollections of full paths, with the keys of the
  manifest's entry for the table.
  """

  def __init__(
      self,
      output_dir: str,
      table: str,
      encoding: TableEncoding,
      bigquery_format: str = AVRO,
      num_shards: int = 0,
      batch_size: int = DEFAULT_BATCH_SIZE):
    super().__init__()
    if bigquery_format not in BIGQUERY_FORMATS:
      raise ValueError(
          f"bigquery_format must be one of {BIGQUERY_FORMATS}, got "
          f"{bigquery_format!r}")
    _check_num_shards(num_shards)
    if batch_size < 1:
      raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    self._output_dir = output_dir
    self._table = table
    self._encoding = encoding
    self._bigquery_format = bigquery_format
    self._num_shards = num_shards
    self._batch_size = batch_size
    # Built (and so checked) now, not when the pipeline runs.
    self._schema_writer = WriteBigQuerySchema(
        FileSystems.join(output_dir, table, SCHEMA_FILE_NAME),
        encoding.columns)
    self._loadable_writer = self._make_loadable_writer()

  def _make_loadable_writer(self) -> beam.PTransform:
    prefix = shard_prefix(self._output_dir, self._table, self._bigquery_format)
    if self._bigquery_format == AVRO:
      return WriteAvroRows(
          prefix,
          schemas.to_avro_schema(self._encoding.columns, name=self._table),
          self._num_shards)
    if self._bigquery_format == PARQUET:
      return WriteParquetBatches(
          prefix, schemas.to_arrow_schema(self._encoding.columns),
          self._num_shards)
    return WriteJsonLines(prefix, self._num_shards)

  def expand(self, elements):
    batches = elements | "Batch" >> beam.BatchElements(
        min_batch_size=self._batch_size, max_batch_size=self._batch_size)
    tfrecord = (
        batches
        | "ToExampleLayout" >> beam.Map(self._encoding.to_examples)
        | "WriteTFRecord" >> WriteExamples(
            shard_prefix(self._output_dir, self._table, TFRECORD),
            self._num_shards))
    if self._bigquery_format == PARQUET:
      loadable_input = batches | "ToArrow" >> beam.Map(self._encoding.to_arrow)
    else:
      loadable_input = elements | "ToRows" >> beam.Map(self._encoding.to_row)
    loadable = loadable_input | (
        f"Write{self._bigquery_format.capitalize()}" >> self._loadable_writer)
    schema = elements.pipeline | "WriteBigQuerySchema" >> self._schema_writer
    return {
        TFRECORD: tfrecord,
        self._bigquery_format: loadable,
        BIGQUERY_SCHEMA: schema,
    }


def _check_num_shards(num_shards: int) -> None:
  if not isinstance(num_shards, int) or num_shards < 0:
    raise ValueError(
        f"num_shards must be 0 (the runner decides) or more, got "
        f"{num_shards!r}")


# ---------------------------------------------------------------------------
# The pipeline's tables.


def embedding_encoding(
    spec: EmbeddingTableSpec, run_id: str,
    model_fingerprint: str) -> TableEncoding:
  ids = dict(spec=spec, run_id=run_id, model_fingerprint=model_fingerprint)
  return TableEncoding(
      columns=schemas.embedding_columns(spec),
      to_row=functools.partial(schemas.embedding_to_row, **ids),
      to_arrow=functools.partial(schemas.embeddings_to_arrow, **ids),
      to_examples=functools.partial(
          schemas.embeddings_to_record_batch, **ids))


def _convert_rows(elements: list, to_row, convert, columns) -> pa.RecordBatch:
  return convert([to_row(element) for element in elements], columns)


def neighbour_encoding(run_id: str, model_fingerprint: str) -> TableEncoding:
  to_row = functools.partial(
      schemas.neighbour_to_row, run_id=run_id,
      model_fingerprint=model_fingerprint)
  columns = schemas.NEIGHBOUR_COLUMNS
  return TableEncoding(
      columns=columns,
      to_row=to_row,
      to_arrow=functools.partial(
          _convert_rows, to_row=to_row, convert=schemas.rows_to_arrow,
          columns=columns),
      to_examples=functools.partial(
          _convert_rows, to_row=to_row,
          convert=schemas.rows_to_record_batch, columns=columns))


class WriteEmbeddings(WriteTable):
  """PCollection[Embedding] -> the embeddings table of the run directory.

  Writes embeddings/tfrecord/embeddings-SSSSS-of-NNNNN.tfrecord,
  embeddings/<bigquery_format>/embeddings-SSSSS-of-NNNNN.<bigquery_format>
  and embeddings/bigquery_schema.json under `output_dir`.

  Returns {"tfrecord": paths, <bigquery_format>: paths, "bigquery_schema":
  path}, each a PCollection of full paths, every shard named.

  num_shards: 0 lets the runner decide. batch_size: rows per Arrow batch.
  """

  def __init__(
      self,
      output_dir: str,
      spec: EmbeddingTableSpec,
      *,
      run_id: str,
      model_fingerprint: str,
      bigquery_format: str = AVRO,
      num_shards: int = 0,
      batch_size: int = DEFAULT_BATCH_SIZE):
    super().__init__(
        output_dir,
        EMBEDDINGS,
        embedding_encoding(spec, run_id, model_fingerprint),
        bigquery_format=bigquery_format,
        num_shards=num_shards,
        batch_size=batch_size)


class WriteNeighbours(WriteTable):
  """PCollection[dict(id, rank, neighbour_id, score)] -> the neighbours table.

  The same layout and outputs as WriteEmbeddings, under neighbours/.
  """

  def __init__(
      self,
      output_dir: str,
      *,
      run_id: str,
      model_fingerprint: str,
      bigquery_format: str = AVRO,
      num_shards: int = 0,
      batch_size: int = DEFAULT_BATCH_SIZE):
    super().__init__(
        output_dir,
        NEIGHBOURS,
        neighbour_encoding(run_id, model_fingerprint),
        bigquery_format=bigquery_format,
        num_shards=num_shards,
        batch_size=batch_size)


class WriteDeadLetters(beam.PTransform):
  """PCollection[DeadLetter] -> errors/errors-SSSSS-of-NNNNN.jsonl.

  One JSON object per rejected record: the DeadLetter's fields and run_id.
  Returns the PCollection of the files' full paths.
  """

  def __init__(self, output_dir: str, *, run_id: str, num_shards: int = 0):
    super().__init__()
    _check_num_shards(num_shards)
    self._output_dir = output_dir
    self._run_id = run_id
    self._num_shards = num_shards

  def expand(self, dead_letters):
    return (
        dead_letters
        | "ToRows" >> beam.Map(schemas.dead_letter_to_row, run_id=self._run_id)
        | "WriteJsonLines" >> WriteJsonLines(
            shard_prefix(self._output_dir, ERRORS), self._num_shards))
