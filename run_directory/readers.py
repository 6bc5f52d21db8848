"""Reading a published run's tables back, through its manifest.

  read_table(run_dir, table="embeddings", format=None) -> pyarrow.Table
  load_embeddings(run_dir, format=None) -> (ids, float32 matrix [N, H])
  read_vectors(run_dir, table="embeddings", format=None)
      -> (pyarrow.Table, ids, float32 matrix [N, H])
  read_errors(run_dir) -> list of dicts

RUN_DIR may be local or gs:// (Beam's FileSystems). Tables read from the
BigQuery-loadable formats have the BigQuery shape (typed by the run's
bigquery_schema.json). Read from TFRecord they have the flat tf.Example
layout instead, scalars unwrapped: `token_ids` and `sequence_embedding`
([T*H] float32, float16 files decoded) take the place of the `tokens` record.
"""

import contextlib
import io
import json
import os
from typing import Iterator, Optional, Sequence

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from run_directory.arrow import example_layout_arrow_schema
from run_directory.arrow import from_example_layout
from run_directory.arrow import to_arrow_schema
from run_directory.avro_blocks import check_snappy_blocks
from run_directory.layout import AVRO
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.layout import ERRORS
from run_directory.layout import JSONL
from run_directory.layout import PARQUET
from run_directory.layout import TFRECORD
from run_directory.manifest import choose_format
from run_directory.manifest import is_count
from run_directory.manifest import load_manifest
from run_directory.manifest import table_columns
from run_directory.manifest import table_entry
from run_directory.manifest import table_paths
from run_directory.tfrecord import ExamplesDecoder
from run_directory.tfrecord import iter_frames

# Examples decoded per Arrow batch when reading TFRecord.
_DECODE_BATCH_SIZE = 1024


def read_table(
    run_dir: str,
    table: str = EMBEDDINGS,
    format: Optional[str] = None,  # pylint: disable=redefined-builtin
) -> pa.Table:
  """All rows of one table of the run, from every shard the manifest lists.

  format: None reads the BigQuery-loadable copy (avro, parquet or jsonl,
  whichever the run wrote); "tfrecord" reads the tf.Example copy.
  """
  run_dir = os.fspath(run_dir)  # a pathlib.Path too
  return _read_checked(run_dir, load_manifest(run_dir), table, format)[0]


def read_vectors(
    run_dir: str,
    table: str = EMBEDDINGS,
    format: Optional[str] = None,  # pylint: disable=redefined-builtin
) -> tuple[pa.Table, list[str], np.ndarray]:
  """A table with vectors (embeddings or chunks), its ids and its float32
  [N, H] matrix, read and checked once."""
  run_dir = os.fspath(run_dir)
  result, vectors = _read_checked(run_dir, load_manifest(run_dir), table,
                                  format)
  if vectors is None:
    raise ValueError(f"The {table} table has no vectors; read "
                     f"{' or '.join(_VECTOR_TABLES)}")
  return (result, *vectors)


def load_embeddings(
    run_dir: str,
    format: Optional[str] = None  # pylint: disable=redefined-builtin
) -> tuple[list[str], np.ndarray]:
  """The run's document ids and their vectors, float32 [N, H], in file order."""
  return read_vectors(run_dir, EMBEDDINGS, format)[1:]


def read_errors(run_dir: str) -> list[dict]:
  """One dict per rejected record (DeadLetter fields and run_id)."""
  run_dir = os.fspath(run_dir)
  manifest = load_manifest(run_dir)
  paths = table_paths(run_dir, table_entry(manifest, ERRORS), ERRORS, JSONL)
  return [row for path in paths for row in _json_lines(path)]


# Tables whose rows carry a vector, checked as they are read.
_VECTOR_TABLES = (EMBEDDINGS, CHUNKS)


def _read_checked(run_dir, manifest, table, format_):
  """(the table, (ids, matrix) of its checked vectors, or None for a table
  without them)."""
  entry = table_entry(manifest, table)
  format_ = choose_format(entry, table, format_)
  paths = table_paths(run_dir, entry, table, format_)
  columns = table_columns(run_dir, entry, table)
  if format_ == TFRECORD:
    result = read_tfrecord(paths, columns)
  elif format_ == PARQUET:
    result = _read_parquet(paths, columns)
  else:
    result = _read_rows(paths, columns, _avro_records if format_ == AVRO
                        else _json_lines)
  _check_row_count(result, manifest, table, format_)
  vectors = (ids_and_matrix(result, manifest) if table in _VECTOR_TABLES
             else None)
  return result, vectors


def _read_rows(paths: Sequence[str], columns, records) -> pa.Table:
  """The rows of Avro or JSON-lines files, as one table."""
  rows = []
  for path in paths:
    with _reading(path):
      rows.extend(records(path))
  schema = None if columns is None else to_arrow_schema(columns)
  if schema is not None:
    # Arrow would fill a column the rows lack with nulls, and drop one the
    # schema lacks: a damaged name (in a row, or in an Avro file's header)
    # would read as a column of nulls.
    names = set(schema.names)
    for row in rows:
      unknown = row.keys() - names if isinstance(row, dict) else {"?"}
      if unknown:
        raise ValueError(
            f"{', '.join(paths)}: a row is not an object of the table's "
            f"columns (it holds {sorted(map(str, unknown))[:5]}): a file is "
            "damaged")
  # A row that does not fit the schema (a damaged or hand-edited file).
  with _reading(", ".join(paths)):
    return pa.Table.from_pylist(rows, schema=schema)


# The manifest's count of each table's rows.
_ROW_COUNTS = {EMBEDDINGS: "embedded", CHUNKS: "chunks"}


def _check_row_count(result: pa.Table, manifest: dict, table: str,
                     format_: str):
  """As many rows as the manifest counts: a file cut after a whole record
  or block, emptied or listed twice passes its format's own checks."""
  name = _ROW_COUNTS.get(table)
  counts = manifest.get("counts", {})
  if name not in counts:
    return
  expected = counts[name]
  if not is_count(expected):
    raise ValueError(
        f"manifest: counts.{name} is {expected!r}, not a number of rows: "
        "the manifest is damaged (or was edited).")
  if result.num_rows != expected:
    raise ValueError(
        f"The {table} table's {format_} files hold {result.num_rows} rows, "
        f"but the manifest counts {expected}: a file of it is damaged, "
        "emptied or listed twice.")


@contextlib.contextmanager
def _reading(path: str):
  """Whatever a damaged file makes its decoder raise, as a ValueError that
  names the file (pyarrow's errors on a damaged Parquet footer are OSErrors
  too); a file that is gone stays a FileNotFoundError, told as the run's."""
  try:
    yield
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"{path}, a file the run's manifest.json lists, is gone: the run is "
        "damaged. Rerun it (or restore the file).") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path} cannot be read: {type(e).__name__}: "
                     f"{str(e)[:300]}") from e


def _open(path: str):
  return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


def _json_lines(path: str) -> Iterator[dict]:
  with _open(path) as f:
    for line in io.TextIOWrapper(f, encoding="utf-8"):
      if line.strip():
        yield json.loads(line)


def _avro_records(path: str) -> Iterator[dict]:
  with _open(path) as f:
    data = f.read()
  # fastavro does not check the blocks' CRCs (avro_blocks.py).
  check_snappy_blocks(data)
  yield from fastavro.reader(io.BytesIO(data))


def _read_parquet(paths: Sequence[str], columns) -> pa.Table:
  schema = None if columns is None else to_arrow_schema(columns)
  tables = []
  for path in paths:
    with _reading(path), _open(path) as f:
      # Read whole, and through ParquetFile, not pq.read_table: the dataset
      # layer under read_table releases a Python file object on one of
      # Arrow's threads, which can happen while the interpreter exits and
      # abort the process ("terminate called without an active exception").
      # The pages' CRCs are checked (written since the run's writer asks
      # for them).
      table = pq.ParquetFile(
          pa.BufferReader(f.read()), page_checksum_verification=True).read()
      tables.append(table if schema is None else table.cast(schema))
  if not tables:
    return (schema or pa.schema([])).empty_table()
  return pa.concat_tables(tables)


def read_tfrecord(paths: Sequence[str], columns) -> pa.Table:
  # Whole batches of tf.Examples decoded at once, in C++.
  decoder = ExamplesDecoder()
  schema = (
      None if columns is None else example_layout_arrow_schema(columns))
  batches = []
  for path in paths:
    with _reading(path), _open(path) as f:
      records = list(iter_frames(f))
    for start in range(0, len(records), _DECODE_BATCH_SIZE):
      with _reading(path):
        decoded = decoder.decode(records[start:start + _DECODE_BATCH_SIZE])
      batches.append(
          decoded if schema is None else from_example_layout(decoded, schema))
  if not batches:
    return (schema or pa.schema([])).empty_table()
  return pa.Table.from_batches(batches)


def ids_and_matrix(table: pa.Table, manifest: dict):
  """The ids and the float32 [N, H] matrix of an embeddings table, its
  vectors checked (_check_vectors)."""
  ids = table.column("id").to_pylist()
  vectors = table.column("embedding").combine_chunks()
  lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False)
  declared = manifest.get("model", {}).get("hidden_size")
  if declared is not None and not is_count(declared):
    raise ValueError(f"manifest: model.hidden_size is {declared!r}, not a "
                     "number of values: the manifest is damaged.")
  if len(ids):
    hidden_size = int(lengths[0])
    if np.any(lengths != hidden_size):
      raise ValueError("The embeddings have different lengths")
    if declared is not None and hidden_size != declared:
      raise ValueError(
          f"The vectors hold {hidden_size} values, but the manifest's "
          f"model.hidden_size is {declared}: the manifest or a table file "
          "is damaged.")
  else:
    hidden_size = declared or 0
  values = vectors.flatten().to_numpy(zero_copy_only=False)
  matrix = values.astype(np.float32).reshape(len(ids), hidden_size)
  _check_vectors(ids, matrix, manifest)
  return ids, matrix


# How far a stored unit vector's norm may be from 1: float32 rounding of
# the model's normalisation, well inside this.
_UNIT_NORM_TOLERANCE = 1e-3


def _check_vectors(ids, matrix: np.ndarray, manifest: dict):
  """Every vector finite and, in a run that normalised them, of norm 1 (or
  0, a text with no vector): Avro's and Parquet's readers do not all check
  their blocks' checksums, so a damaged file can hand back a changed vector
  that would silently rank wrong."""
  bad = ~np.isfinite(matrix).all(axis=1)
  if manifest.get("model", {}).get("normalize") is True:
    norms = np.sqrt(np.square(matrix, dtype=np.float64).sum(axis=1))
    bad |= (np.abs(norms - 1) > _UNIT_NORM_TOLERANCE) & (norms != 0)
  if bad.any():
    first = int(np.flatnonzero(bad)[0])
    raise ValueError(
        f"{int(bad.sum())} stored vector(s) are not what the run wrote "
        f"(not finite, or not of norm 1 though the run normalised them; "
        f"first: id {ids[first]!r}): a table file is damaged. Read the "
        "TFRecord copy (--format tfrecord), whose records carry checksums.")
