"""Writes the run's tables into the run directory: sorted, deterministic shards.

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

Idempotent: the same input gives byte-identical files, whatever the input
order, the runner or the retries.

* Each table has a sort key (embeddings: id; neighbours: (id, rank); errors:
  (source, position, stage, reason, id)). A row goes to shard
  blake2b(first key component) % N, so an id always lands in the same shard.
* N is `num_shards`, or else ceil(rows / rows_per_shard), at least 1.
* Rows are grouped by shard; every shard 0..N-1 is written, empty or not
  (shards without rows once the others are written), by one call of
  `ShardWriter.write`, which sorts the shard's rows by the sort
  key and writes each format with fixed settings: TFRecord with its features
  in key order, Avro with a sync marker derived from the file name, Parquet
  with fixed compression and row groups cut by the rows alone, JSON lines
  with sorted keys.
* Every file is written under a temporary name next to it and renamed into
  place, so a retried shard rewrites the same bytes and leaves neither half
  files nor duplicates.

Every write returns the full paths of its files, every shard named, for the
manifest (written last, by another stage): `relative_to_run_dir` turns them
into the relative paths the manifest holds. An empty input still writes one
valid, empty shard per format.
"""

import dataclasses
import functools
import hashlib
import itertools
import json
import math
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping
from typing import Optional, Sequence

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
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
# A file being written is `<its path><TEMP_SUFFIX>` until it is complete.
TEMP_SUFFIX = ".tmp"

# Rows per Arrow batch for the TFRecord and Parquet paths: large enough that
# the per-batch overhead vanishes, small enough for sequence output
# (128 rows x 512 tokens x 1024 floats is 256 MiB).
DEFAULT_BATCH_SIZE = 128
# Avro data blocks are Snappy-compressed, one of the two codecs BigQuery loads
# (with deflate). Float vectors barely compress: on all-MiniLM-L6-v2 rows
# deflate made the files 11% smaller for 29 us of CPU per row, half of all
# Avro writing; Snappy (cramjam) costs under 1 us and still shrinks long texts.
AVRO_CODEC = "snappy"
# Parquet row groups end at the first batch boundary past this many bytes:
# a function of the (sorted) rows alone, so the same rows give the same file.
PARQUET_ROW_GROUP_BYTES = 64 * 1024 * 1024

# Memory: one worker holds all rows of a shard while it sorts and writes them
# (plus one converted batch), so rows_per_shard bounds a worker's memory:
# with N = ceil(rows / rows_per_shard) shards, hashing gives each about
# rows / N <= rows_per_shard rows (give or take a few times its square root).
# A fixed num_shards gives rows / num_shards instead. Shards aim at about
# SHARD_BYTES of rows in memory.
SHARD_BYTES = 256 * 1024 * 1024
# An embedding row in memory: its float32 vectors (1.5 KiB at H=384), its text
# and the Python objects around them (~3 KiB together): ~4.5 KiB, so 20_000
# rows is ~90 MiB; more rows per shard would only make fewer, bigger files.
EMBEDDING_ROWS_PER_SHARD = 20_000
_EMBEDDING_ROW_OVERHEAD_BYTES = 3 * 1024
# With sequence output a row also holds its per-token vectors; assume this
# many tokens per row (the real count is only known when the rows exist).
_TOKENS_PER_ROW_ESTIMATE = 128
# Neighbour rows are small dicts (two ids, a rank, a score: ~0.5 KiB) and
# error rows short records (~1 KiB of source, detail and snippet), so more of
# them fit in the same memory: ~100 MiB per shard either way.
NEIGHBOUR_ROWS_PER_SHARD = 200_000
ERROR_ROWS_PER_SHARD = 100_000


def shard_prefix(output_dir: str, table: str, file_format: str = "") -> str:
  """`<output_dir>/<table>/[<format>/]<table>`: shard names append to it."""
  parts = (table, file_format, table) if file_format else (table, table)
  return FileSystems.join(output_dir, *parts)


def shard_path(prefix: str, shard: int, num_shards: int, suffix: str) -> str:
  return f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"


def relative_to_run_dir(run_dir: str, path: str) -> str:
  """A written path as the manifest holds it: relative to the run directory."""
  base = run_dir.rstrip("/") + "/"
  if not path.startswith(base):
    raise ValueError(f"{path} is not inside the run directory {run_dir}")
  return path[len(base):]


def shard_of(key: str, num_shards: int) -> int:
  """The shard of a sort key's first component: the same in every process.

  (Python's hash() of a str changes from process to process.)
  """
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") % num_shards


def num_shards_for(num_rows: int, rows_per_shard: int) -> int:
  return max(1, math.ceil(num_rows / rows_per_shard))


def default_embedding_rows_per_shard(spec: EmbeddingTableSpec) -> int:
  """EMBEDDING_ROWS_PER_SHARD, fewer when rows are big (see SHARD_BYTES)."""
  vectors = 1 + len(spec.encoder_layers)
  row_bytes = 4 * spec.hidden_size * vectors + _EMBEDDING_ROW_OVERHEAD_BYTES
  if spec.sequence_output:
    value_bytes = 2 if spec.sequence_dtype == "float16" else 4
    row_bytes += _TOKENS_PER_ROW_ESTIMATE * (
        value_bytes * spec.hidden_size + 8)
  return max(1, min(EMBEDDING_ROWS_PER_SHARD, SHARD_BYTES // row_bytes))


# ---------------------------------------------------------------------------
# A table's rows, and how they become files.


@dataclasses.dataclass(frozen=True)
class TableEncoding:
  """How a table's elements are ordered and become rows in each file layout.

  columns: the table's columns (`transforms.schemas`).
  sort_key: element -> tuple; rows are sorted by it within a shard and
    sharded by a hash of its first component (a str).
  to_row: element -> dict in the BigQuery shape (Avro, JSON lines).
  to_arrow: list of elements -> pa.RecordBatch typed by
    `schemas.to_arrow_schema(columns)` (Parquet); None if never needed.
  to_examples: list of elements -> pa.RecordBatch in the tf.Example layout
    (TFRecord); None if never needed.
  """
  columns: tuple[Column, ...]
  sort_key: Callable[[Any], tuple]
  to_row: Callable[[Any], dict]
  to_arrow: Optional[Callable[[list], pa.RecordBatch]] = None
  to_examples: Optional[Callable[[list], pa.RecordBatch]] = None


def _json_line(row: dict) -> str:
  return json.dumps(
      row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def sort_rows(elements: Iterable, encoding: TableEncoding) -> list:
  """The elements in sort-key order; equal keys ordered by their content.

  Keys are unique in a well-formed table; the tie-break keeps the order (and
  so the bytes) independent of the input order even when they are not.
  """
  keyed = sorted(
      ((encoding.sort_key(e), e) for e in elements), key=lambda ke: ke[0])
  rows = []
  for _, group in itertools.groupby(keyed, key=lambda ke: ke[0]):
    group = [e for _, e in group]
    if len(group) > 1:
      group.sort(key=lambda e: _json_line(encoding.to_row(e)))
    rows.extend(group)
  return rows


def _batches(rows: Sequence, size: int) -> Iterator[Sequence]:
  for start in range(0, len(rows), size):
    yield rows[start:start + size]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7


_FIELD_1_BYTES = 0x0A  # protobuf tag: field 1, length-delimited


def canonical_example(serialized: bytes) -> bytes:
  """A serialized tf.Example with its features in key order.

  tfx-bsl's C++ encoder writes the feature map in hash-table order, which
  changes from process to process. This reorders the map entries (nothing
  else changes, so every length stays valid), giving the bytes of protobuf's
  deterministic serialization.

  Wire layout: Example{1: Features{1: repeated MapEntry{1: key, 2: Feature}}}.
  """
  if not serialized:
    return serialized
  if serialized[0] != _FIELD_1_BYTES:
    raise ValueError("Not a serialized tf.Example with features")
  length, start = _read_varint(serialized, 1)
  if start + length != len(serialized):
    raise ValueError("Not a serialized tf.Example: bad features length")
  entries = []
  pos = start
  while pos < len(serialized):
    entry_length, body = _read_varint(serialized, pos + 1)
    end = body + entry_length
    if serialized[pos] != _FIELD_1_BYTES or serialized[body] != _FIELD_1_BYTES:
      raise ValueError("Not a serialized tf.Example: unexpected field")
    key_length, key_start = _read_varint(serialized, body + 1)
    entries.append(
        (serialized[key_start:key_start + key_length], serialized[pos:end]))
    pos = end
  entries.sort(key=lambda entry: entry[0])
  return serialized[:start] + b"".join(entry for _, entry in entries)


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> str:
  """Writes `path` through `write(file)`: to a temporary name, then renamed.

  A failed attempt removes its temporary file; a repeated one overwrites it
  and the final file. Returns the path.
  """
  temp_path = path + TEMP_SUFFIX
  try:
    with FileSystems.create(
        temp_path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      write(f)
  except BaseException:
    if FileSystems.exists(temp_path):
      FileSystems.delete([temp_path])
    raise
  FileSystems.rename([temp_path], [path])
  return path


@dataclasses.dataclass(frozen=True)
class ShardWriter:
  """Writes one shard of a table, sorted, in each of its formats.

  table: the table's name (Avro record name).
  prefixes: format -> file prefix (`shard_prefix`); the formats to write.
  """
  table: str
  encoding: TableEncoding
  prefixes: Mapping[str, str]
  batch_size: int = DEFAULT_BATCH_SIZE

  @property
  def formats(self) -> tuple[str, ...]:
    return tuple(self.prefixes)

  def path(self, file_format: str, shard: int, num_shards: int) -> str:
    return shard_path(
        self.prefixes[file_format], shard, num_shards,
        FILE_SUFFIXES[file_format])

  def write(self, shard: int, num_shards: int,
            elements: Iterable) -> dict[str, str]:
    """Writes the shard's files; returns {format: path}. Safe to repeat."""
    rows = sort_rows(elements, self.encoding)
    writers = {
        TFRECORD: self._write_tfrecord,
        AVRO: self._write_avro,
        PARQUET: self._write_parquet,
        JSONL: self._write_jsonl,
    }
    paths = {}
    for file_format in self.formats:
      path = self.path(file_format, shard, num_shards)
      paths[file_format] = write_atomically(
          path, functools.partial(writers[file_format], rows=rows, path=path))
    return paths

  def _write_tfrecord(self, f: BinaryIO, rows: Sequence, path: str):
    del path  # unused
    encoder = example_coder.RecordBatchToExamplesEncoder()
    for batch in _batches(rows, self.batch_size):
      for example in encoder.encode(self.encoding.to_examples(batch)):
        _TFRecordUtil.write_record(f, canonical_example(example))

  def _write_avro(self, f: BinaryIO, rows: Sequence, path: str):
    # Given unparsed: the header then holds this dict's JSON, in its own key
    # order (a parsed schema's key order changes from process to process).
    schema = schemas.to_avro_schema(self.encoding.columns, name=self.table)
    # Avro files carry a 16-byte sync marker, random by default.
    marker = hashlib.blake2b(
        FileSystems.split(path)[1].encode("utf-8"), digest_size=16).digest()
    fastavro.writer(
        f, schema, (self.encoding.to_row(e) for e in rows), codec=AVRO_CODEC,
        sync_marker=marker)

  def _write_parquet(self, f: BinaryIO, rows: Sequence, path: str):
    del path  # unused
    schema = schemas.to_arrow_schema(self.encoding.columns)
    # Lists as the Parquet spec (and BigQuery's list inference) wants them.
    with pq.ParquetWriter(
        f, schema, compression="snappy",
        use_compliant_nested_type=True) as writer:
      group, group_bytes = [], 0
      for batch in _batches(rows, self.batch_size):
        group.append(self.encoding.to_arrow(batch))
        group_bytes += group[-1].nbytes
        if group_bytes >= PARQUET_ROW_GROUP_BYTES:
          _write_row_group(writer, group, schema)
          group, group_bytes = [], 0
      if group:
        _write_row_group(writer, group, schema)

  def _write_jsonl(self, f: BinaryIO, rows: Sequence, path: str):
    del path  # unused
    for e in rows:
      f.write((_json_line(self.encoding.to_row(e)) + "\n").encode("utf-8"))


def _write_row_group(writer: pq.ParquetWriter, batches: list, schema):
  table = pa.Table.from_batches(batches, schema=schema)
  writer.write_table(table, row_group_size=table.num_rows)


# ---------------------------------------------------------------------------
# The Beam side: count, assign shards, group, write.


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


def _assign_shard(element, sort_key, num_shards: int):
  return shard_of(sort_key(element)[0], num_shards), element


class WriteShards(beam.PTransform):
  """PCollection[element] -> {format: PCollection[path]}, one path per shard.

  num_shards: fixed, or 0 for ceil(count / rows_per_shard), at least 1.
  count: what is counted for that, the elements themselves by default; any
    PCollection at least as large (and the same in every run of the same
    input) will do. One complete before the elements are lets the shard
    assignment run in the stage that makes them, instead of in another pass
    over all of them.
  """

  def __init__(
      self, writer: ShardWriter, num_shards: int, rows_per_shard: int,
      count: Optional[beam.PCollection] = None):
    super().__init__()
    _check_num_shards(num_shards)
    _check_positive("rows_per_shard", rows_per_shard)
    self._writer = writer
    self._num_shards = num_shards
    self._rows_per_shard = rows_per_shard
    self._count = count

  def expand(self, elements):
    if self._num_shards:
      num_shards = elements.pipeline | "NumShards" >> beam.Create(
          [self._num_shards])
    else:
      num_shards = (
          (elements if self._count is None else self._count)
          | "Count" >> beam.combiners.Count.Globally()
          | "NumShards" >> beam.Map(
              num_shards_for, self._rows_per_shard))
    num_shards_side = beam.pvalue.AsSingleton(num_shards)
    written = (
        elements
        | "AssignShard" >> beam.Map(
            _assign_shard, self._writer.encoding.sort_key, num_shards_side)
        | "GroupByShard" >> beam.GroupByKey()
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
  return write_atomically(path, lambda f: f.write(text.encode("utf-8")))


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


class WriteTable(beam.PTransform):
  """Writes one table of a run: TFRecord, a BigQuery-loadable format, schema.

  Returns {"tfrecord": paths, <bigquery_format>: paths, "bigquery_schema":
  the schema file's path}: PCollections of full paths, with the keys of the
  manifest's entry for the table.

  num_shards: 0 for one shard per rows_per_shard rows (rows as `count`
  counts them, see WriteShards). batch_size: rows per Arrow batch when
  converting.
  """

  def __init__(
      self,
      output_dir: str,
      table: str,
      encoding: TableEncoding,
      bigquery_format: str = AVRO,
      num_shards: int = 0,
      batch_size: int = DEFAULT_BATCH_SIZE,
      rows_per_shard: int = EMBEDDING_ROWS_PER_SHARD,
      count: Optional[beam.PCollection] = None):
    super().__init__()
    if bigquery_format not in BIGQUERY_FORMATS:
      raise ValueError(
          f"bigquery_format must be one of {BIGQUERY_FORMATS}, got "
          f"{bigquery_format!r}")
    _check_positive("batch_size", batch_size)
    if bigquery_format == AVRO:
      # Parsed here so that a bad schema fails when the pipeline is built.
      fastavro.parse_schema(
          schemas.to_avro_schema(encoding.columns, name=table))
    writer = ShardWriter(
        table, encoding, {
            file_format: shard_prefix(output_dir, table, file_format)
            for file_format in (TFRECORD, bigquery_format)
        }, batch_size)
    # Built (and so checked) now, not when the pipeline runs.
    self._shards = WriteShards(writer, num_shards, rows_per_shard, count)
    self._schema_writer = WriteBigQuerySchema(
        FileSystems.join(output_dir, table, SCHEMA_FILE_NAME),
        encoding.columns)

  def expand(self, elements):
    files = elements | "WriteShards" >> self._shards
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


# ---------------------------------------------------------------------------
# The pipeline's tables.


def embedding_sort_key(e) -> tuple:
  return (e.id,)


def neighbour_sort_key(neighbour: Mapping) -> tuple:
  return (neighbour["id"], int(neighbour["rank"]))


def error_sort_key(d) -> tuple:
  return (d.source, d.position, d.stage, d.reason, d.id or "")


def embedding_encoding(
    spec: EmbeddingTableSpec, run_id: str,
    model_fingerprint: str) -> TableEncoding:
  ids = dict(spec=spec, run_id=run_id, model_fingerprint=model_fingerprint)
  return TableEncoding(
      columns=schemas.embedding_columns(spec),
      sort_key=embedding_sort_key,
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
      sort_key=neighbour_sort_key,
      to_row=to_row,
      to_arrow=functools.partial(
          _convert_rows, to_row=to_row, convert=schemas.rows_to_arrow,
          columns=columns),
      to_examples=functools.partial(
          _convert_rows, to_row=to_row,
          convert=schemas.rows_to_record_batch, columns=columns))


def error_encoding(run_id: str) -> TableEncoding:
  return TableEncoding(
      columns=schemas.ERROR_COLUMNS,
      sort_key=error_sort_key,
      to_row=functools.partial(schemas.dead_letter_to_row, run_id=run_id))


class WriteEmbeddings(WriteTable):
  """PCollection[Embedding] -> the embeddings table of the run directory.

  Writes embeddings/tfrecord/embeddings-SSSSS-of-NNNNN.tfrecord,
  embeddings/<bigquery_format>/embeddings-SSSSS-of-NNNNN.<bigquery_format>
  and embeddings/bigquery_schema.json under `output_dir`, rows sorted by id.

  Returns {"tfrecord": paths, <bigquery_format>: paths, "bigquery_schema":
  path}, each a PCollection of full paths, every shard named.

  num_shards: 0 for one shard per rows_per_shard rows (default:
  `default_embedding_rows_per_shard(spec)`). batch_size: rows per Arrow batch.
  count: counted instead of the rows to size the shards (see WriteShards),
  e.g. the documents read.
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
      batch_size: int = DEFAULT_BATCH_SIZE,
      rows_per_shard: Optional[int] = None,
      count: Optional[beam.PCollection] = None):
    super().__init__(
        output_dir,
        EMBEDDINGS,
        embedding_encoding(spec, run_id, model_fingerprint),
        bigquery_format=bigquery_format,
        num_shards=num_shards,
        batch_size=batch_size,
        rows_per_shard=(
            default_embedding_rows_per_shard(spec)
            if rows_per_shard is None else rows_per_shard),
        count=count)


class WriteNeighbours(WriteTable):
  """PCollection[dict(id, rank, neighbour_id, score)] -> the neighbours table.

  The same layout and outputs as WriteEmbeddings, under neighbours/, rows
  sorted by (id, rank); all of an id's neighbours are in one shard.
  """

  def __init__(
      self,
      output_dir: str,
      *,
      run_id: str,
      model_fingerprint: str,
      bigquery_format: str = AVRO,
      num_shards: int = 0,
      batch_size: int = DEFAULT_BATCH_SIZE,
      rows_per_shard: int = NEIGHBOUR_ROWS_PER_SHARD):
    super().__init__(
        output_dir,
        NEIGHBOURS,
        neighbour_encoding(run_id, model_fingerprint),
        bigquery_format=bigquery_format,
        num_shards=num_shards,
        batch_size=batch_size,
        rows_per_shard=rows_per_shard)


class WriteDeadLetters(beam.PTransform):
  """PCollection[DeadLetter] -> errors/errors-SSSSS-of-NNNNN.jsonl.

  One JSON object per rejected record: the DeadLetter's fields and run_id,
  sorted by (source, position, stage, reason, id); all of a source's errors
  are in one shard. Returns the PCollection of the files' full paths.
  """

  def __init__(
      self, output_dir: str, *, run_id: str, num_shards: int = 0,
      rows_per_shard: int = ERROR_ROWS_PER_SHARD):
    super().__init__()
    writer = ShardWriter(
        ERRORS, error_encoding(run_id),
        {JSONL: shard_prefix(output_dir, ERRORS)})
    self._shards = WriteShards(writer, num_shards, rows_per_shard)

  def expand(self, dead_letters):
    return (dead_letters | "WriteShards" >> self._shards)[JSONL]
