"""Reads a published run directory: its manifest, tables and errors.

A run directory is published once its manifest.json exists (written last);
every file is found through the manifest, never by listing the directory, so
shards of an interrupted or earlier attempt are never read.

Python API:

  load_manifest(run_dir) -> dict
  read_table(run_dir, table="embeddings", format=None) -> pyarrow.Table
  load_embeddings(run_dir, format=None) -> (ids, float32 matrix [N, H])
  read_errors(run_dir) -> list of dicts
  load_refusal(run_dir) -> dict    (a run a guardrail kept from publishing)

Command line:

  python -m pipeline.read_outputs RUN_DIR [--table embeddings|neighbours|errors]
      [--format avro|parquet|jsonl|tfrecord] [--head N]
      [--to_parquet PATH] [--to_numpy PATH.npz]

RUN_DIR and the output paths may be local or gs:// (Beam's FileSystems).

Tables read from the BigQuery-loadable formats have the BigQuery shape of
`transforms.schemas` (typed by the run's bigquery_schema.json). Read from
TFRecord they have the flat tf.Example layout instead, scalars unwrapped:
`token_ids` and `sequence_embedding` ([T*H] float32, float16 files decoded)
take the place of the `tokens` record.
"""

import argparse
import io
import json
import sys
from typing import Iterator, Optional, Sequence

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from tfx_bsl.coders import example_coder

from transforms import schemas
from transforms.formats.tfrecord_frames import iter_frames
from transforms.guardrails import REFUSAL_FILE
from transforms.write import AVRO
from transforms.write import BIGQUERY_FORMATS
from transforms.write import BIGQUERY_SCHEMA
from transforms.write import EMBEDDINGS
from transforms.write import ERRORS
from transforms.write import JSONL
from transforms.write import NEIGHBOURS
from transforms.write import PARQUET
from transforms.write import TFRECORD

MANIFEST_FILE = "manifest.json"
TABLES = (EMBEDDINGS, NEIGHBOURS, ERRORS)
FORMATS = BIGQUERY_FORMATS + (TFRECORD,)
# Examples decoded per Arrow batch when reading TFRecord.
_DECODE_BATCH_SIZE = 1024


class RunNotPublishedError(FileNotFoundError):
  """The run directory has no manifest.json: it is incomplete or unpublished."""


def _refusal_paths(run_dir: str) -> list[str]:
  pattern = FileSystems.join(run_dir, ".staging-*", REFUSAL_FILE)
  return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def load_refusal(run_dir: str) -> dict:
  """Why a guardrail kept the run in `run_dir` from being published.

  The refused.json the publish stage left in the run's staging directory
  (the latest one, if several runs were refused there).

  Raises:
    FileNotFoundError: if no run was refused there.
  """
  paths = _refusal_paths(run_dir)
  if not paths:
    raise FileNotFoundError(f"{run_dir} holds no refused run ({REFUSAL_FILE})")
  return json.loads(_read_bytes(paths[-1]))


def load_manifest(run_dir: str) -> dict:
  path = FileSystems.join(run_dir, MANIFEST_FILE)
  if not FileSystems.exists(path):
    refused = _refusal_paths(run_dir)
    if refused:
      raise RunNotPublishedError(
          f"{run_dir} has no {MANIFEST_FILE}: a guardrail refused to publish "
          f"the run; {refused[-1]} says why.")
    raise RunNotPublishedError(
        f"{run_dir} has no {MANIFEST_FILE}: the run is incomplete or was "
        "never published (the manifest is written last). Wait for the run to "
        "finish, or rerun it; do not read its files directly.")
  try:
    manifest = json.loads(_read_bytes(path))
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(manifest, dict) or not isinstance(
      manifest.get("outputs"), dict):
    raise ValueError(f"{path} has no \"outputs\" object")
  return manifest


def read_table(
    run_dir: str,
    table: str = EMBEDDINGS,
    format: Optional[str] = None,  # pylint: disable=redefined-builtin
) -> pa.Table:
  """All rows of one table of the run, from every shard the manifest lists.

  format: None reads the BigQuery-loadable copy (avro, parquet or jsonl,
  whichever the run wrote); "tfrecord" reads the tf.Example copy.
  """
  return _read_table(run_dir, load_manifest(run_dir), table, format)


def load_embeddings(
    run_dir: str,
    format: Optional[str] = None  # pylint: disable=redefined-builtin
) -> tuple[list[str], np.ndarray]:
  """The run's document ids and their vectors, float32 [N, H], in file order."""
  manifest = load_manifest(run_dir)
  table = _read_table(run_dir, manifest, EMBEDDINGS, format)
  return _ids_and_matrix(table, manifest)


def read_errors(run_dir: str) -> list[dict]:
  """One dict per rejected record (DeadLetter fields and run_id)."""
  manifest = load_manifest(run_dir)
  paths = _paths(run_dir, _table_entry(manifest, ERRORS), ERRORS, JSONL)
  return [row for path in paths for row in _json_lines(path)]


# ---------------------------------------------------------------------------
# Manifest lookups.


def _read_table(run_dir, manifest, table, format_) -> pa.Table:
  entry = _table_entry(manifest, table)
  format_ = _choose_format(entry, table, format_)
  paths = _paths(run_dir, entry, table, format_)
  columns = _columns(run_dir, entry, table)
  if format_ == TFRECORD:
    return _read_tfrecord(paths, columns)
  if format_ == PARQUET:
    return _read_parquet(paths, columns)
  if format_ == AVRO:
    rows = [row for path in paths for row in _avro_records(path)]
  else:
    rows = [row for path in paths for row in _json_lines(path)]
  if columns is None:
    return pa.Table.from_pylist(rows)
  return pa.Table.from_pylist(rows, schema=schemas.to_arrow_schema(columns))


def _table_entry(manifest: dict, table: str) -> dict:
  entry = manifest["outputs"].get(table)
  if not isinstance(entry, dict):
    raise ValueError(
        f"The run has no {table!r} table; it has "
        f"{sorted(manifest['outputs'])}")
  return entry


def _choose_format(entry: dict, table: str, format_: Optional[str]) -> str:
  available = [f for f in FORMATS if f in entry]
  if format_ is None:
    if not available:
      raise ValueError(f"The {table} table lists no files")
    return available[0]  # a BigQuery-loadable one when there is one
  if format_ not in available:
    raise ValueError(
        f"The {table} table has no {format_!r} files; it has {available}")
  return format_


def _paths(run_dir: str, entry: dict, table: str, format_: str) -> list[str]:
  files = entry.get(format_)
  if not isinstance(files, list):
    raise ValueError(f"manifest: outputs.{table}.{format_} is not a list")
  return [_resolve(run_dir, f) for f in files]


def _resolve(run_dir: str, relative: str) -> str:
  # The contract: paths are relative, so a run directory can be moved.
  if (not isinstance(relative, str) or not relative or
      relative.startswith("/") or "://" in relative or
      ".." in relative.split("/")):
    raise ValueError(
        f"manifest lists {relative!r}: output paths must be relative to the "
        "run directory")
  return FileSystems.join(run_dir, relative)


def _columns(run_dir: str, entry: dict, table: str):
  """The table's columns: from its schema file, else known, else inferred."""
  if BIGQUERY_SCHEMA in entry:
    path = _resolve(run_dir, entry[BIGQUERY_SCHEMA])
    return schemas.columns_from_bigquery_schema(json.loads(_read_bytes(path)))
  if table == ERRORS:
    return schemas.ERROR_COLUMNS
  return None


# ---------------------------------------------------------------------------
# File readers.


def _open(path: str):
  return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


def _read_bytes(path: str) -> bytes:
  with _open(path) as f:
    return f.read()


def _json_lines(path: str) -> Iterator[dict]:
  with _open(path) as f:
    for line in io.TextIOWrapper(f, encoding="utf-8"):
      if line.strip():
        yield json.loads(line)


def _avro_records(path: str) -> Iterator[dict]:
  with _open(path) as f:
    yield from fastavro.reader(f)


def _read_parquet(paths: Sequence[str], columns) -> pa.Table:
  schema = None if columns is None else schemas.to_arrow_schema(columns)
  tables = []
  for path in paths:
    with _open(path) as f:
      table = pq.read_table(f)
    tables.append(table if schema is None else table.cast(schema))
  if not tables:
    return (schema or pa.schema([])).empty_table()
  return pa.concat_tables(tables)


def _read_tfrecord(paths: Sequence[str], columns) -> pa.Table:
  # tfx-bsl decodes whole batches of tf.Examples in C++.
  decoder = example_coder.ExamplesToRecordBatchDecoder()
  schema = (
      None if columns is None else schemas.example_layout_arrow_schema(columns))
  batches = []
  for path in paths:
    with _open(path) as f:
      records = list(iter_frames(f))
    for start in range(0, len(records), _DECODE_BATCH_SIZE):
      decoded = decoder.DecodeBatch(records[start:start + _DECODE_BATCH_SIZE])
      batches.append(
          decoded if schema is None else _from_example_layout(decoded, schema))
  if not batches:
    return (schema or pa.schema([])).empty_table()
  return pa.Table.from_batches(batches)


def _from_example_layout(
    decoded: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
  """Decoded tf.Examples (all lists) typed by `example_layout_arrow_schema`."""
  arrays = []
  for field in schema:
    index = decoded.schema.get_field_index(field.name)
    if index < 0:
      if not field.nullable:
        raise ValueError(f"TFRecord examples lack the feature {field.name!r}")
      arrays.append(pa.nulls(decoded.num_rows, field.type))
    else:
      arrays.append(_feature_to_column(decoded.column(index), field))
  return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _feature_to_column(feature: pa.Array, field: pa.Field) -> pa.Array:
  if pa.types.is_null(feature.type):  # no example had a value
    if pa.types.is_list(field.type):
      return pa.array([[]] * len(feature), field.type)
    return pa.nulls(len(feature), field.type)
  if pa.types.is_list(field.type):
    if (field.name == schemas.SEQUENCE_EMBEDDING and
        pa.types.is_large_binary(feature.type.value_type)):
      return _float16_lists(feature, field.type)
    return feature.cast(field.type)
  lengths = pc.list_value_length(feature).to_numpy(zero_copy_only=False)
  if np.all(lengths == 1):
    values = feature.flatten()
  elif np.all(np.nan_to_num(lengths, nan=0) <= 1):  # some absent (NULL)
    values = pa.array([v[0] if v else None for v in feature.to_pylist()])
  else:
    raise ValueError(f"Feature {field.name!r} holds several values per row")
  return values.cast(field.type)


def _float16_lists(feature: pa.Array, list_type: pa.DataType) -> pa.Array:
  """One bytes value of little-endian float16 per row -> float32 lists."""
  parts = [
      np.frombuffer(value, dtype="<f2")
      for value in feature.flatten().to_pylist()
  ]
  offsets = np.zeros(len(parts) + 1, dtype=np.int32)
  np.cumsum([len(p) for p in parts], out=offsets[1:])
  values = (
      np.concatenate(parts).astype(np.float32) if parts else np.zeros(
          0, np.float32))
  return pa.ListArray.from_arrays(
      pa.array(offsets), pa.array(values), type=list_type)


def _ids_and_matrix(table: pa.Table, manifest: dict):
  ids = table.column("id").to_pylist()
  vectors = table.column("embedding").combine_chunks()
  lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False)
  if len(ids):
    hidden_size = int(lengths[0])
    if np.any(lengths != hidden_size):
      raise ValueError("The embeddings have different lengths")
  else:
    hidden_size = int(manifest.get("model", {}).get("hidden_size") or 0)
  values = vectors.flatten().to_numpy(zero_copy_only=False)
  return ids, values.astype(np.float32).reshape(len(ids), hidden_size)


# ---------------------------------------------------------------------------
# Command line.


def _format_value(value) -> str:
  """A short, one-line rendering of a cell: long lists and texts cut."""
  if isinstance(value, list):
    if len(value) <= 6:
      return "[" + ", ".join(_format_value(v) for v in value) + "]"
    shown = ", ".join(_format_value(v) for v in value[:4])
    return f"[{shown}, … {len(value)} values]"
  if isinstance(value, dict):
    return "{" + ", ".join(
        f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, str):
    return json.dumps(
        value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
  if isinstance(value, bytes):
    return repr(value[:30])
  return str(value)


def summarize(
    table: pa.Table, manifest: dict, table_name: str, format_: str,
    num_files: int, head: int) -> str:
  lines = [
      f"run: {manifest.get('run_id', '?')}",
      f"table: {table_name} ({format_}, {num_files} file"
      f"{'' if num_files == 1 else 's'})",
      f"rows: {table.num_rows}",
      "columns:",
  ]
  lines += [f"  {field.name}: {field.type}" for field in table.schema]
  if head > 0 and table.num_rows:
    lines.append(f"first {min(head, table.num_rows)} rows:")
    for row in table.slice(0, head).to_pylist():
      lines.append("  " + _format_value(row))
  return "\n".join(lines)


def _write_bytes(path: str, data: bytes) -> None:
  with FileSystems.create(
      path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(data)


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.read_outputs",
      description="Summarize (and export) a table of a published run.")
  parser.add_argument("run_dir", help="The run directory, local or gs://.")
  parser.add_argument("--table", choices=TABLES, default=EMBEDDINGS)
  parser.add_argument(
      "--format", choices=FORMATS, default=None,
      help="Which copy to read; default: the BigQuery-loadable one.")
  parser.add_argument(
      "--head", type=int, default=5, help="Rows to print (default 5).")
  parser.add_argument(
      "--to_parquet", metavar="PATH",
      help="Write the table as one Parquet file.")
  parser.add_argument(
      "--to_numpy", metavar="PATH.npz",
      help="Write ids and embedding matrix (arrays 'ids', 'embeddings').")
  args = parser.parse_args(argv)
  if args.to_numpy and args.table != EMBEDDINGS:
    parser.error("--to_numpy exports embedding vectors: use --table embeddings")
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(argv)
  try:
    manifest = load_manifest(args.run_dir)
    entry = _table_entry(manifest, args.table)
    format_ = _choose_format(entry, args.table, args.format)
    table = _read_table(args.run_dir, manifest, args.table, format_)
  except (RunNotPublishedError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(
      summarize(
          table, manifest, args.table, format_, len(entry[format_]), args.head))
  if args.to_parquet:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _write_bytes(args.to_parquet, buffer.getvalue())
    print(f"wrote {table.num_rows} rows to {args.to_parquet}")
  if args.to_numpy:
    ids, matrix = _ids_and_matrix(table, manifest)
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(ids, dtype=str), embeddings=matrix)
    _write_bytes(args.to_numpy, buffer.getvalue())
    print(f"wrote {matrix.shape[0]}x{matrix.shape[1]} embeddings to "
          f"{args.to_numpy}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
