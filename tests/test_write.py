"""Tests for transforms.write: write with Beam, read back with read_outputs."""

import glob
import json
import os
import re

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from pipeline import read_outputs
from pipeline.local_runner import LocalRunner
from transforms import schemas
from transforms import write
from transforms.records import DeadLetter
from transforms.records import Embedding
from transforms.schemas import EmbeddingTableSpec

H = 6
RUN_ID = "run-2024-01-01"
FINGERPRINT = "sha256:abc"

# Helpers, also used by test_read_outputs.


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
            embedding=rng.standard_normal(spec.hidden_size).astype(np.float32),
            num_tokens=num_tokens,
            truncated=i % 3 == 0,
            token_ids=rng.integers(0, 30522, num_tokens).astype(np.int32),
            sequence_embedding=rng.standard_normal(
                (num_tokens, spec.hidden_size)).astype(np.float32),
            layers={
                layer: rng.standard_normal(spec.hidden_size).astype(np.float32)
                for layer in spec.encoder_layers
            }))
  return embeddings


def make_dead_letters(n: int):
  return [
      DeadLetter(
          source=f"part-{i % 2}.jsonl", position=i, stage="validate",
          reason="empty_text", detail="the text is empty", snippet='{"t": ""}',
          id=None if i % 2 else f"doc-{i}") for i in range(n)
  ]


def _write_manifest(unused, run_dir, hidden_size, **files):
  outputs = {}
  for name, paths in files.items():
    table, key = name.split("__")
    relative = sorted(write.relative_to_run_dir(run_dir, p) for p in paths)
    if key == write.BIGQUERY_SCHEMA:
      (relative,) = relative
    outputs.setdefault(table, {})[key] = relative
  manifest = {
      "run_id": RUN_ID,
      "model": {"fingerprint": FINGERPRINT, "hidden_size": hidden_size},
      "counts": {},
      "outputs": outputs,
  }
  with open(os.path.join(run_dir, read_outputs.MANIFEST_FILE), "w") as f:
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


def names_every_shard(directory: str, suffix: str, num_shards: int = 0):
  """A matcher: the paths are every file in directory, all -of-N, N of them."""

  def check(paths):
    on_disk = sorted(glob.glob(os.path.join(directory, "*" + suffix)))
    assert sorted(paths) == on_disk
    counts = {re.search(r"-of-(\d+)\.", p).group(1) for p in paths}
    assert counts == {f"{len(paths):05d}"}
    if num_shards:
      assert len(paths) == num_shards

  return check


def write_embeddings_run(
    run_dir, embeddings, spec, bigquery_format, num_shards=0,
    dead_letters=(), batch_size=3):
  with TestPipeline(runner=LocalRunner()) as p:
    outputs = (
        p
        | "CreateEmbeddings" >> beam.Create(embeddings)
        | write.WriteEmbeddings(
            run_dir, spec, run_id=RUN_ID, model_fingerprint=FINGERPRINT,
            bigquery_format=bigquery_format, num_shards=num_shards,
            batch_size=batch_size))
    errors = (
        p
        | "CreateDeadLetters" >> beam.Create(list(dead_letters))
        | write.WriteDeadLetters(run_dir, run_id=RUN_ID))
    for fmt in (write.TFRECORD, bigquery_format):
      assert_that(
          outputs[fmt],
          names_every_shard(
              os.path.join(run_dir, "embeddings", fmt),
              write.FILE_SUFFIXES[fmt], num_shards),
          label=f"Check{fmt}Shards")
    publish_manifest(
        p, run_dir, spec.hidden_size, {
            write.EMBEDDINGS: outputs, write.ERRORS: {write.JSONL: errors}
        })
  return outputs


# --- Tests ------------------------------------------------------------------

CASES = [
    pytest.param(
        "avro",
        EmbeddingTableSpec(
            hidden_size=H, sequence_output=True, sequence_dtype="float16",
            encoder_layers=(1, 3)), 0, id="avro-float16-layers"),
    pytest.param(
        "parquet",
        EmbeddingTableSpec(
            hidden_size=H, sequence_output=True, encoder_layers=(0,)), 3,
        id="parquet-3-shards"),
    pytest.param(
        "jsonl", EmbeddingTableSpec(hidden_size=H, include_text=False), 0,
        id="jsonl-minimal"),
    pytest.param(
        "jsonl", EmbeddingTableSpec(
            hidden_size=H, sequence_output=True, sequence_dtype="float16"), 2,
        id="jsonl-float16-2-shards"),
]


def _by_id(table):
  return {row["id"]: row for row in table.to_pylist()}


@pytest.mark.parametrize("bigquery_format, spec, num_shards", CASES)
def test_write_embeddings_round_trip(
    tmp_path, bigquery_format, spec, num_shards):
  run_dir = str(tmp_path / "run")
  embeddings = make_embeddings(7, spec)
  write_embeddings_run(run_dir, embeddings, spec, bigquery_format, num_shards)
  expected = {e.id: e for e in embeddings}

  # The vectors, from both copies.
  for fmt in (None, write.TFRECORD):
    ids, matrix = read_outputs.load_embeddings(run_dir, format=fmt)
    assert sorted(ids) == sorted(expected)
    assert matrix.dtype == np.float32 and matrix.shape == (7, H)
    np.testing.assert_allclose(
        matrix, np.stack([expected[i].embedding for i in ids]), rtol=0, atol=0)

  # Every column of the BigQuery-loadable copy.
  rows = _by_id(read_outputs.read_table(run_dir))
  for id_, e in expected.items():
    assert rows[id_] == schemas.embedding_to_row(e, spec, RUN_ID, FINGERPRINT)
    if spec.include_text:
      assert rows[id_]["text"] == e.text
    for layer in spec.encoder_layers:
      np.testing.assert_array_equal(
          rows[id_][f"encoder_layer_{layer}"], e.layers[layer])

  # Every column of the TFRecord copy.
  examples = _by_id(read_outputs.read_table(run_dir, format=write.TFRECORD))
  for id_, e in expected.items():
    row = examples[id_]
    assert row["num_tokens"] == e.num_tokens
    assert row["truncated"] is bool(e.truncated)
    assert (row["run_id"], row["model_fingerprint"]) == (RUN_ID, FINGERPRINT)
    assert ("text" in row) is spec.include_text
    for layer in spec.encoder_layers:
      np.testing.assert_array_equal(
          row[f"encoder_layer_{layer}"], e.layers[layer])
    if spec.sequence_output:
      assert row["token_ids"] == e.token_ids.tolist()
      np.testing.assert_array_equal(
          np.reshape(row["sequence_embedding"], (-1, H)),
          e.sequence_embedding.astype(spec.sequence_dtype).astype(np.float32))
    else:
      assert "token_ids" not in row and "sequence_embedding" not in row

  # The schema file, as `bq load --schema` takes it.
  schema_path = os.path.join(run_dir, "embeddings", "bigquery_schema.json")
  with open(schema_path) as f:
    assert json.load(f) == schemas.to_bigquery_schema(
        schemas.embedding_columns(spec))


def test_run_directory_layout(tmp_path):
  run_dir = str(tmp_path / "run")
  spec = EmbeddingTableSpec(hidden_size=H)
  write_embeddings_run(
      run_dir, make_embeddings(5, spec), spec, "avro", num_shards=2,
      dead_letters=make_dead_letters(2))
  files = sorted(
      os.path.relpath(path, run_dir)
      for path in glob.glob(os.path.join(run_dir, "**"), recursive=True)
      if os.path.isfile(path))
  # No temporary files or directories left behind.
  assert files == [
      "embeddings/avro/embeddings-00000-of-00002.avro",
      "embeddings/avro/embeddings-00001-of-00002.avro",
      "embeddings/bigquery_schema.json",
      "embeddings/tfrecord/embeddings-00000-of-00002.tfrecord",
      "embeddings/tfrecord/embeddings-00001-of-00002.tfrecord",
      "errors/errors-00000-of-00001.jsonl",
      "manifest.json",
  ]
  assert sorted(os.listdir(run_dir)) == [
      "embeddings", "errors", "manifest.json"]
  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["outputs"]["embeddings"] == {
      "tfrecord": [
          "embeddings/tfrecord/embeddings-00000-of-00002.tfrecord",
          "embeddings/tfrecord/embeddings-00001-of-00002.tfrecord"
      ],
      "avro": [
          "embeddings/avro/embeddings-00000-of-00002.avro",
          "embeddings/avro/embeddings-00001-of-00002.avro"
      ],
      "bigquery_schema": "embeddings/bigquery_schema.json",
  }


@pytest.mark.parametrize("bigquery_format", write.BIGQUERY_FORMATS)
def test_empty_input_writes_readable_empty_files(tmp_path, bigquery_format):
  run_dir = str(tmp_path / "run")
  spec = EmbeddingTableSpec(hidden_size=H, sequence_output=True)
  write_embeddings_run(run_dir, [], spec, bigquery_format)
  manifest = read_outputs.load_manifest(run_dir)
  assert len(manifest["outputs"]["embeddings"][bigquery_format]) == 1
  assert len(manifest["outputs"]["embeddings"]["tfrecord"]) == 1
  for fmt, schema in (
      (None, schemas.to_arrow_schema(schemas.embedding_columns(spec))),
      ("tfrecord",
       schemas.example_layout_arrow_schema(schemas.embedding_columns(spec)))):
    table = read_outputs.read_table(run_dir, format=fmt)
    assert table.num_rows == 0
    assert table.schema.names == schema.names
    ids, matrix = read_outputs.load_embeddings(run_dir, format=fmt)
    assert ids == [] and matrix.shape == (0, H)
  assert read_outputs.read_errors(run_dir) == []


def test_write_dead_letters_round_trip(tmp_path):
  run_dir = str(tmp_path / "run")
  dead_letters = make_dead_letters(5)
  with TestPipeline(runner=LocalRunner()) as p:
    paths = (
        p
        | beam.Create(dead_letters)
        | write.WriteDeadLetters(run_dir, run_id=RUN_ID, num_shards=2))
    assert_that(
        paths, names_every_shard(os.path.join(run_dir, "errors"), ".jsonl", 2))
    publish_manifest(p, run_dir, H, {"errors": {"jsonl": paths}})
  errors = read_outputs.read_errors(run_dir)
  key = lambda row: (row["source"], row["position"])
  assert sorted(errors, key=key) == sorted(
      (schemas.dead_letter_to_row(d, RUN_ID) for d in dead_letters), key=key)
  assert {row["run_id"] for row in errors} == {RUN_ID}
  assert [row["id"] for row in sorted(errors, key=lambda r: r["position"])
         ] == ["doc-0", None, "doc-2", None, "doc-4"]
  table = read_outputs.read_table(run_dir, "errors")
  assert table.num_rows == 5
  assert table.schema.names == [c.name for c in schemas.ERROR_COLUMNS]


@pytest.mark.parametrize("bigquery_format", ["avro", "parquet"])
def test_write_neighbours_round_trip(tmp_path, bigquery_format):
  run_dir = str(tmp_path / "run")
  neighbours = [{
      "id": f"doc-{i}", "rank": np.int64(rank), "neighbour_id": f"doc-{j}",
      "score": np.float32(1.0 / (1 + rank))
  } for i in range(3) for rank, j in enumerate(
      [k for k in range(3) if k != i], start=1)]
  with TestPipeline(runner=LocalRunner()) as p:
    outputs = (
        p
        | beam.Create(neighbours)
        | write.WriteNeighbours(
            run_dir, run_id=RUN_ID, model_fingerprint=FINGERPRINT,
            bigquery_format=bigquery_format))
    publish_manifest(p, run_dir, H, {"neighbours": outputs})
  expected = sorted(
      (schemas.neighbour_to_row(n, RUN_ID, FINGERPRINT) for n in neighbours),
      key=lambda r: (r["id"], r["rank"]))
  for fmt in (None, "tfrecord"):
    rows = read_outputs.read_table(run_dir, "neighbours", fmt).to_pylist()
    assert sorted(rows, key=lambda r: (r["id"], r["rank"])) == expected
  assert os.path.exists(
      os.path.join(run_dir, "neighbours", "bigquery_schema.json"))


def test_list_shards_names_every_shard_after_a_retried_finalize(tmp_path):
  prefix = str(tmp_path / "t" / "embeddings")
  os.makedirs(tmp_path / "t")
  expected = [f"{prefix}-{i:05d}-of-00003.avro" for i in range(3)]
  for path in expected:
    open(path, "w").close()
  # A retried finalize emits only what it renamed this time, or nothing.
  assert write._list_shards(None, prefix, ".avro", expected[1:2]) == expected
  assert write._list_shards(None, prefix, ".avro", []) == expected
  # A stale shard of another count is ignored when the sink named its own...
  open(f"{prefix}-00000-of-00002.avro", "w").close()
  assert write._list_shards(None, prefix, ".avro", expected[:1]) == expected
  # ...and makes the listing ambiguous when it did not.
  with pytest.raises(RuntimeError, match="new, empty output directory"):
    write._list_shards(None, prefix, ".avro", [])
  os.remove(expected[2])
  with pytest.raises(RuntimeError, match="missing"):
    write._list_shards(None, prefix, ".avro", expected[:1])


def test_bad_arguments_fail_when_the_pipeline_is_built(tmp_path):
  spec = EmbeddingTableSpec(hidden_size=H)
  kwargs = dict(run_id=RUN_ID, model_fingerprint=FINGERPRINT)
  with pytest.raises(ValueError, match="bigquery_format"):
    write.WriteEmbeddings(str(tmp_path), spec, bigquery_format="csv", **kwargs)
  with pytest.raises(ValueError, match="num_shards"):
    write.WriteEmbeddings(str(tmp_path), spec, num_shards=-1, **kwargs)
  with pytest.raises(ValueError, match="batch_size"):
    write.WriteEmbeddings(str(tmp_path), spec, batch_size=0, **kwargs)


def test_relative_to_run_dir():
  assert write.relative_to_run_dir(
      "gs://b/runs/r1/", "gs://b/runs/r1/embeddings/x.avro") == (
          "embeddings/x.avro")
  assert write.relative_to_run_dir("/out", "/out/errors/e.jsonl") == (
      "errors/e.jsonl")
  with pytest.raises(ValueError, match="not inside"):
    write.relative_to_run_dir("/out", "/out2/errors/e.jsonl")
