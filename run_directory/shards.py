"""One shard of a table, written in each of its file formats: sorted rows,
the same bytes for the same rows.

`ShardWriter.write(shard, num_shards, elements)` sorts the shard's elements
by the table's sort key and writes each format with fixed settings: TFRecord
with canonical tf.Examples (features in key order), Avro with a sync marker
derived from the file name, Parquet with fixed compression and row groups cut
by the rows alone, JSON lines with sorted keys; every file atomically.
`shard_of` and `num_shards_for` say which shard a row goes to.
"""

import dataclasses
import functools
import hashlib
import itertools
import json
import math
from typing import BinaryIO, Iterable, Iterator, Mapping, Optional, Sequence

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from run_directory.arrow import to_arrow_schema
from run_directory.atomic import write_atomically
from run_directory.avro import to_avro_schema
from run_directory.layout import AVRO
from run_directory.layout import FILE_SUFFIXES
from run_directory.layout import JSONL
from run_directory.layout import PARQUET
from run_directory.layout import shard_path
from run_directory.layout import TFRECORD
from run_directory.layout import VERTEX_DELETE
from run_directory.layout import VERTEX_JSON
from run_directory.tables import Table
from run_directory.tfrecord import canonical_example
from run_directory.tfrecord import encode_examples
from run_directory.tfrecord import encode_frame

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


def shard_of(key: str, num_shards: int) -> int:
  """The shard of a sort key's first component: the same in every process.

  (Python's hash() of a str changes from process to process.)
  """
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") % num_shards


def num_shards_for(num_rows: int, rows_per_shard: int,
                   max_num_shards: Optional[int] = None) -> int:
  """Enough shards for rows_per_shard rows each, at least 1, at most
  max_num_shards (when given; shards then hold more rows)."""
  num_shards = max(1, math.ceil(num_rows / rows_per_shard))
  return num_shards if max_num_shards is None else min(num_shards,
                                                       max_num_shards)


def _json_line(row: dict) -> str:
  return json.dumps(
      row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def sort_rows(elements: Iterable, table: Table) -> list:
  """The elements in sort-key order; equal keys ordered by their content.

  Keys are unique in a well-formed table; the tie-break keeps the order (and
  so the bytes) independent of the input order even when they are not.
  """
  keyed = sorted(
      ((table.sort_key(e), e) for e in elements), key=lambda ke: ke[0])
  rows = []
  for _, group in itertools.groupby(keyed, key=lambda ke: ke[0]):
    group = [e for _, e in group]
    if len(group) > 1:
      group.sort(key=lambda e: _json_line(table.to_row(e)))
    rows.extend(group)
  return rows


def _batches(rows: Sequence, size: int) -> Iterator[Sequence]:
  for start in range(0, len(rows), size):
    yield rows[start:start + size]


@dataclasses.dataclass(frozen=True)
class ShardWriter:
  """Writes one shard of a table, sorted, in each of its formats.

  table: what the rows are (tables.py).
  prefixes: format -> file prefix (`layout.shard_prefix`); the formats to
    write.
  """
  table: Table
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
    rows = sort_rows(self.table.rows_of(elements), self.table)
    writers = {
        TFRECORD: self._write_tfrecord,
        AVRO: self._write_avro,
        PARQUET: self._write_parquet,
        JSONL: self._write_jsonl,
        VERTEX_JSON: self._write_jsonl,
        VERTEX_DELETE: self._write_id_lines,
    }
    paths = {}
    for file_format in self.formats:
      path = self.path(file_format, shard, num_shards)
      paths[file_format] = write_atomically(
          path, functools.partial(writers[file_format], rows=rows, path=path))
    return paths

  def _write_tfrecord(self, f: BinaryIO, rows: Sequence, path: str):
    del path  # unused
    for batch in _batches(rows, self.batch_size):
      for example in encode_examples(self.table.to_examples(batch)):
        f.write(encode_frame(canonical_example(example)))

  def _write_avro(self, f: BinaryIO, rows: Sequence, path: str):
    # Given unparsed: the header then holds this dict's JSON, in its own key
    # order (a parsed schema's key order changes from process to process).
    schema = to_avro_schema(self.table.columns, name=self.table.name)
    # Avro files carry a 16-byte sync marker, random by default.
    marker = hashlib.blake2b(
        FileSystems.split(path)[1].encode("utf-8"), digest_size=16).digest()
    fastavro.writer(
        f, schema, (self.table.to_row(e) for e in rows), codec=AVRO_CODEC,
        sync_marker=marker)

  def _write_parquet(self, f: BinaryIO, rows: Sequence, path: str):
    del path  # unused
    schema = to_arrow_schema(self.table.columns)
    # Lists as the Parquet spec (and BigQuery's list inference) wants them.
    # With page CRCs, which the readers check (readers.py): Parquet has no
    # other checksum, and a flipped bit came back as a changed value.
    with pq.ParquetWriter(
        f, schema, compression="snappy", use_compliant_nested_type=True,
        write_page_checksum=True) as writer:
      group, group_bytes = [], 0
      for batch in _batches(rows, self.batch_size):
        group.append(self.table.to_arrow(batch))
        group_bytes += group[-1].nbytes
        if group_bytes >= PARQUET_ROW_GROUP_BYTES:
          _write_row_group(writer, group, schema)
          group, group_bytes = [], 0
      if group:
        _write_row_group(writer, group, schema)

  def _write_jsonl(self, f: BinaryIO, rows: Sequence, path: str):
    del path  # unused
    for e in rows:
      f.write((_json_line(self.table.to_row(e)) + "\n").encode("utf-8"))


  def _write_id_lines(self, f: BinaryIO, rows: Sequence, path: str):
    """One id a line (the Vertex delete files): ids hold no line break
    (validation dead-letters them when the export is on)."""
    del path  # unused
    for e in rows:
      f.write((self.table.to_row(e)["id"] + "\n").encode("utf-8"))


def _write_row_group(writer: pq.ParquetWriter, batches: list, schema):
  table = pa.Table.from_batches(batches, schema=schema)
  writer.write_table(table, row_group_size=table.num_rows)
