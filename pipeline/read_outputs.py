"""Reads a published run directory: its manifest, tables and errors.

The public reading API of the run-directory contract (run_directory/):

  load_manifest(run_dir) -> dict
  read_table(run_dir, table="embeddings", format=None) -> pyarrow.Table
  load_embeddings(run_dir, format=None) -> (ids, float32 matrix [N, H])
  read_vectors(run_dir, table="embeddings", format=None)
      -> (pyarrow.Table, ids, float32 matrix [N, H])   (embeddings or chunks)
  read_errors(run_dir) -> list of dicts
  load_refusal(run_dir) -> dict    (a run a guardrail kept from publishing)

A run directory is published once its manifest.json exists (written last);
every file is found through the manifest, never by listing the directory, so
shards of an interrupted or earlier attempt are never read.

Command line:

  python -m pipeline.read_outputs RUN_DIR
      [--table embeddings|chunks|neighbours|duplicates|errors]
      [--format avro|parquet|jsonl|tfrecord] [--head N]
      [--to_parquet PATH] [--to_numpy PATH.npz]

RUN_DIR and the output paths may be local or gs:// (Beam's FileSystems).
Exit status 2, with one line naming the problem, when the run cannot be read
(as for pipeline.query and pipeline.export_model).
Tables read from the BigQuery-loadable formats have the BigQuery shape;
read from TFRecord they have the flat tf.Example layout (docs/outputs.md).
"""

import argparse
import json
import io
import sys
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import CommandLineParser
from pipeline.errors import one_line
from pipeline.errors import print_error
from pipeline.errors import read_errors_of
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.layout import FORMATS
from run_directory.layout import TABLES
from run_directory.manifest import choose_format
from run_directory.manifest import load_manifest
from run_directory.manifest import load_refusal
from run_directory.manifest import refusal_paths
from run_directory.manifest import RunNotPublishedError
from run_directory.manifest import table_entry
from run_directory.readers import load_embeddings
from run_directory.readers import read_errors
from run_directory.readers import read_table
from run_directory.readers import read_vectors

PROG = "python -m pipeline.read_outputs"

__all__ = ["RunNotPublishedError", "load_embeddings", "load_manifest",
           "load_refusal", "read_errors", "read_table", "read_vectors",
           "refusal_paths"]


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
    for row in table.slice(0, min(head, table.num_rows)).to_pylist():
      lines.append("  " + _format_value(row))
  return "\n".join(lines)


def _write_bytes(path: str, data: bytes) -> None:
  with FileSystems.create(
      path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(data)


def _row_count(value: str) -> int:
  try:
    count = int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
  if count < 0:
    raise argparse.ArgumentTypeError(
        f"{value} is negative: give 0 for no rows, or N for the first N")
  return count


def _parse_args(argv):
  parser = CommandLineParser(
      prog=PROG,
      description="Summarize (and export) a table of a published run.")
  parser.add_argument("run_dir", help="The run directory, local or gs://.")
  parser.add_argument("--table", choices=TABLES, default=EMBEDDINGS)
  parser.add_argument(
      "--format", choices=FORMATS, default=None,
      help="Which copy to read; default: the BigQuery-loadable one.")
  parser.add_argument(
      "--head", type=_row_count, default=5, help="Rows to print (default 5).")
  parser.add_argument(
      "--to_parquet", metavar="PATH",
      help="Write the table as one Parquet file.")
  parser.add_argument(
      "--to_numpy", metavar="PATH.npz",
      help="Write ids and embedding matrix (arrays 'ids', 'embeddings').")
  args = parser.parse_args(argv)
  if args.to_numpy and args.table not in (EMBEDDINGS, CHUNKS):
    parser.error("--to_numpy exports vectors: use --table embeddings, or "
                 "--table chunks")
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(argv)
  try:
    return _read(args)
  except read_errors_of(args.run_dir) as e:
    return print_error(PROG, one_line(e))


def _read(args) -> int:
  manifest = load_manifest(args.run_dir)
  entry = table_entry(manifest, args.table)
  format_ = choose_format(entry, args.table, args.format)
  if args.to_numpy:  # embeddings or chunks (checked by argparse)
    table, ids, matrix = read_vectors(args.run_dir, args.table, format_)
  else:
    table = read_table(args.run_dir, args.table, format_)
  print(
      summarize(
          table, manifest, args.table, format_, len(entry[format_]), args.head))
  if args.to_parquet:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _write_bytes(args.to_parquet, buffer.getvalue())
    print(f"wrote {table.num_rows} rows to {args.to_parquet}")
  if args.to_numpy:
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(ids, dtype=str), embeddings=matrix)
    _write_bytes(args.to_numpy, buffer.getvalue())
    print(f"wrote {matrix.shape[0]}x{matrix.shape[1]} vectors of the "
          f"{args.table} table to {args.to_numpy}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
