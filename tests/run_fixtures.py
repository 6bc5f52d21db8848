"""Shared test data for the run-directory writers and readers.

Rows of every table (embeddings, neighbours, dead letters), a shard writer
of every format, the write stage set up as the pipeline sets it up, and a
manifest for what a test pipeline wrote. Used by test_write and
test_read_outputs.
"""

import json
import os
import random

import apache_beam as beam
import numpy as np

from run_directory.embeddings import EmbeddingTableSpec
from run_directory.layout import BIGQUERY_SCHEMA
from run_directory.layout import EMBEDDINGS
from run_directory.layout import FORMATS
from run_directory.layout import JSONL
from run_directory.layout import MANIFEST_FILE
from run_directory.layout import relative_to_run_dir
from run_directory.layout import shard_prefix
from run_directory.records import DeadLetter
from run_directory.records import Embedding
from run_directory.records import Vectors
from run_directory.shards import DEFAULT_BATCH_SIZE
from run_directory.shards import ShardWriter
from run_directory.tables import embedding_table
from run_directory.tables import ERROR_ROWS_PER_SHARD
from run_directory.tables import error_table
from run_directory.tables import NEIGHBOUR_ROWS_PER_SHARD
from run_directory.tables import neighbour_rows
from run_directory.tables import neighbour_table
from transforms.write import WriteTable

H = 6
RUN_ID = "run-2024-01-01"
FINGERPRINT = "sha256:abc"
# Every optional column of the embeddings table: per-token vectors (float16)
# and two encoder layers.
FULL_SPEC = EmbeddingTableSpec(
    hidden_size=H, sequence_output=True, sequence_dtype="float16",
    encoder_layers=(0, 2))

def write_jsonl(path, records) -> str:
  """A JSONL corpus of `records` (dicts) at `path`; returns the path."""
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return str(path)


def all_format_writer(output_dir: str, batch_size: int = 2) -> ShardWriter:
  """A shard writer of the FULL_SPEC embeddings table in every format."""
  return ShardWriter(
      embedding_table(FULL_SPEC, RUN_ID, FINGERPRINT),
      {fmt: shard_prefix(output_dir, EMBEDDINGS, fmt) for fmt in FORMATS},
      batch_size)


def make_embeddings(n: int, spec: EmbeddingTableSpec, seed: int = 0):
  rng = np.random.default_rng(seed)
  embeddings = []
  for i in range(n):
    num_tokens = 2 + i % 4
    embeddings.append(
        Embedding(
            id=f"doc-{i:03d}",
            text=f"text number {i} ✓",
            source="corpus.jsonl",
            vectors=Vectors(
                embedding=rng.standard_normal(spec.hidden_size).astype(
                    np.float32),
                num_tokens=num_tokens,
                truncated=i % 3 == 0,
                token_ids=rng.integers(0, 30522, num_tokens).astype(np.int32),
                sequence_embedding=rng.standard_normal(
                    (num_tokens, spec.hidden_size)).astype(np.float32),
                layers={
                    layer: rng.standard_normal(spec.hidden_size).astype(
                        np.float32)
                    for layer in spec.encoder_layers
                })))
  return embeddings


def make_dead_letters(n: int):
  return [
      DeadLetter(
          source=f"part-{i % 2}.jsonl", position=i, stage="validate",
          reason="empty_text", detail="the text is empty", snippet='{"t": ""}',
          id=None if i % 2 else f"doc-{i}") for i in range(n)
  ]


def make_neighbours(n: int, k: int = 2):
  """The neighbours table's elements: (query id, [(score, neighbour id)])."""
  return [(f"doc-{i:03d}",
           [(np.float32(1.0 / (1 + rank + i)), f"doc-{(i + rank) % n:03d}")
            for rank in range(1, k + 1)])
          for i in range(n)]


def make_neighbour_rows(n: int, k: int = 2):
  """The rows of make_neighbours(n, k)."""
  return [row for query in make_neighbours(n, k)
          for row in neighbour_rows(query)]


def shuffled(items, seed: int) -> list:
  items = list(items)
  random.Random(seed).shuffle(items)
  return items


def _write_manifest(unused, run_dir, hidden_size, **files):
  outputs = {}
  for name, paths in files.items():
    table, key = name.split("__")
    relative = sorted(relative_to_run_dir(run_dir, p) for p in paths)
    if key == BIGQUERY_SCHEMA:
      (relative,) = relative
    outputs.setdefault(table, {})[key] = relative
  manifest = {
      "run_id": RUN_ID,
      "model": {"fingerprint": FINGERPRINT, "hidden_size": hidden_size},
      "counts": {},
      "outputs": outputs,
  }
  with open(os.path.join(run_dir, MANIFEST_FILE), "w") as f:
    json.dump(manifest, f)


def publish_manifest(p, run_dir: str, hidden_size: int, outputs: dict):
  """Writes manifest.json from the writers' outputs, after all of them.

  outputs: {table: {key: PCollection of paths}}, as the manifest stage gets.
  """
  side_inputs = {
      f"{table}__{key}": beam.pvalue.AsList(paths)
      for table, entry in outputs.items() for key, paths in entry.items()
  }
  _ = (
      p
      | "ManifestOnce" >> beam.Create([None])
      | "WriteManifest" >> beam.Map(
          _write_manifest, run_dir, hidden_size, **side_inputs))


def write_embeddings(output_dir, spec, *, run_id=RUN_ID,
                     model_fingerprint=FINGERPRINT, bigquery_format="avro",
                     num_shards=0, batch_size=DEFAULT_BATCH_SIZE,
                     rows_per_shard=None, count=None) -> WriteTable:
  """The embeddings table's write stage, as the pipeline builds it."""
  return WriteTable(
      output_dir, embedding_table(spec, run_id, model_fingerprint,
                                  rows_per_shard),
      bigquery_format=bigquery_format, num_shards=num_shards,
      batch_size=batch_size, count=count)


def write_neighbours(output_dir, *, run_id=RUN_ID,
                     model_fingerprint=FINGERPRINT, bigquery_format="avro",
                     num_shards=0, batch_size=DEFAULT_BATCH_SIZE,
                     rows_per_shard=NEIGHBOUR_ROWS_PER_SHARD) -> WriteTable:
  """The neighbours table's write stage."""
  return WriteTable(
      output_dir, neighbour_table(run_id, model_fingerprint, rows_per_shard),
      bigquery_format=bigquery_format, num_shards=num_shards,
      batch_size=batch_size)


class write_dead_letters(beam.PTransform):  # pylint: disable=invalid-name
  """The errors table's write stage (JSON lines only): its file paths."""

  def __init__(self, output_dir, *, run_id=RUN_ID, num_shards=0,
               rows_per_shard=ERROR_ROWS_PER_SHARD):
    super().__init__()
    self._write = WriteTable(output_dir, error_table(run_id, rows_per_shard),
                             bigquery_format=None, num_shards=num_shards)

  def expand(self, dead_letters):
    return (dead_letters | "WriteTable" >> self._write)[JSONL]
