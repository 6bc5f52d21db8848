"""Tests for the write stage and the run directory's files: write with Beam,
read back with read_outputs."""

import dataclasses
import glob
import hashlib
import json
import os
import re
import subprocess
import sys

import apache_beam as beam
import fastavro
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from pipeline import read_outputs
from pipeline.local_runner import LocalRunner
from run_directory import arrow
from run_directory import atomic
from run_directory import columns
from run_directory import embeddings as embeddings_lib
from run_directory import layout
from run_directory import readers
from run_directory import tables
from run_directory import tfrecord
from run_directory.embeddings import embedding_columns
from run_directory.embeddings import EmbeddingTableSpec
from tests.run_fixtures import all_format_writer
from tests.run_fixtures import FINGERPRINT
from tests.run_fixtures import FULL_SPEC
from tests.run_fixtures import H
from tests.run_fixtures import make_dead_letters
from tests.run_fixtures import make_embeddings
from tests.run_fixtures import make_neighbour_rows
from tests.run_fixtures import make_neighbours
from tests.run_fixtures import publish_manifest
from tests.run_fixtures import RUN_ID
from tests.run_fixtures import shuffled
from tests.run_fixtures import write_dead_letters
from tests.run_fixtures import write_embeddings
from tests.run_fixtures import write_neighbours

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
    dead_letters=(), batch_size=3, rows_per_shard=None, expected_shards=0,
    count=None):
  with TestPipeline(runner=LocalRunner()) as p:
    counted = None if count is None else (
        p | "CreateCounted" >> beam.Create(range(count)))
    outputs = (
        p
        | "CreateEmbeddings" >> beam.Create(embeddings)
        | write_embeddings(
            run_dir, spec, run_id=RUN_ID, model_fingerprint=FINGERPRINT,
            bigquery_format=bigquery_format, num_shards=num_shards,
            batch_size=batch_size, rows_per_shard=rows_per_shard,
            count=counted))
    errors = (
        p
        | "CreateDeadLetters" >> beam.Create(list(dead_letters))
        | write_dead_letters(run_dir, run_id=RUN_ID))
    for fmt in (layout.TFRECORD, bigquery_format):
      assert_that(
          outputs[fmt],
          names_every_shard(
              os.path.join(run_dir, "embeddings", fmt),
              layout.FILE_SUFFIXES[fmt], expected_shards or num_shards),
          label=f"Check{fmt}Shards")
    publish_manifest(
        p, run_dir, spec.hidden_size, {
            layout.EMBEDDINGS: outputs, layout.ERRORS: {layout.JSONL: errors}
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
  for fmt in (None, layout.TFRECORD):
    ids, matrix = read_outputs.load_embeddings(run_dir, format=fmt)
    assert sorted(ids) == sorted(expected)
    assert matrix.dtype == np.float32 and matrix.shape == (7, H)
    np.testing.assert_allclose(
        matrix, np.stack([expected[i].embedding for i in ids]), rtol=0, atol=0)

  # Every column of the BigQuery-loadable copy.
  rows = _by_id(read_outputs.read_table(run_dir))
  for id_, e in expected.items():
    assert rows[id_] == embeddings_lib.embedding_to_row(e, spec, RUN_ID,
                                                        FINGERPRINT)
    if spec.include_text:
      assert rows[id_]["text"] == e.text
    for layer in spec.encoder_layers:
      np.testing.assert_array_equal(
          rows[id_][f"encoder_layer_{layer}"], e.layers[layer])

  # Every column of the TFRecord copy.
  examples = _by_id(read_outputs.read_table(run_dir, format=layout.TFRECORD))
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
    assert json.load(f) == columns.to_bigquery_schema(
        embedding_columns(spec))


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


@pytest.mark.parametrize("bigquery_format", layout.BIGQUERY_FORMATS)
def test_empty_input_writes_readable_empty_files(tmp_path, bigquery_format):
  run_dir = str(tmp_path / "run")
  spec = EmbeddingTableSpec(hidden_size=H, sequence_output=True)
  write_embeddings_run(run_dir, [], spec, bigquery_format)
  manifest = read_outputs.load_manifest(run_dir)
  suffix = layout.FILE_SUFFIXES[bigquery_format]
  assert manifest["outputs"]["embeddings"][bigquery_format] == [
      f"embeddings/{bigquery_format}/embeddings-00000-of-00001{suffix}"]
  assert manifest["outputs"]["embeddings"]["tfrecord"] == [
      "embeddings/tfrecord/embeddings-00000-of-00001.tfrecord"]
  assert manifest["outputs"]["errors"]["jsonl"] == [
      "errors/errors-00000-of-00001.jsonl"]
  for fmt, schema in (
      (None, arrow.to_arrow_schema(embedding_columns(spec))),
      ("tfrecord",
       arrow.example_layout_arrow_schema(embedding_columns(spec)))):
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
        | write_dead_letters(run_dir, run_id=RUN_ID, num_shards=2))
    assert_that(
        paths, names_every_shard(os.path.join(run_dir, "errors"), ".jsonl", 2))
    publish_manifest(p, run_dir, H, {"errors": {"jsonl": paths}})
  errors = read_outputs.read_errors(run_dir)
  key = lambda row: (row["source"], row["position"])
  assert sorted(errors, key=key) == sorted(
      (tables.dead_letter_to_row(d, RUN_ID) for d in dead_letters), key=key)
  assert {row["run_id"] for row in errors} == {RUN_ID}
  assert [row["id"] for row in sorted(errors, key=lambda r: r["position"])
         ] == ["doc-0", None, "doc-2", None, "doc-4"]
  table = read_outputs.read_table(run_dir, "errors")
  assert table.num_rows == 5
  assert table.schema.names == [c.name for c in tables.ERROR_COLUMNS]


@pytest.mark.parametrize("bigquery_format", ["avro", "parquet"])
def test_write_neighbours_round_trip(tmp_path, bigquery_format):
  run_dir = str(tmp_path / "run")
  neighbours = make_neighbours(3)
  with TestPipeline(runner=LocalRunner()) as p:
    outputs = (
        p
        | beam.Create(neighbours)
        | write_neighbours(
            run_dir, run_id=RUN_ID, model_fingerprint=FINGERPRINT,
            bigquery_format=bigquery_format))
    publish_manifest(p, run_dir, H, {"neighbours": outputs})
  expected = sorted(
      (tables.neighbour_to_row(n, RUN_ID, FINGERPRINT)
       for n in make_neighbour_rows(3)),
      key=lambda r: (r["id"], r["rank"]))
  for fmt in (None, "tfrecord"):
    rows = read_outputs.read_table(run_dir, "neighbours", fmt).to_pylist()
    assert sorted(rows, key=lambda r: (r["id"], r["rank"])) == expected
  assert os.path.exists(
      os.path.join(run_dir, "neighbours", "bigquery_schema.json"))


def test_bad_arguments_fail_when_the_pipeline_is_built(tmp_path):
  spec = EmbeddingTableSpec(hidden_size=H)
  kwargs = dict(run_id=RUN_ID, model_fingerprint=FINGERPRINT)
  with pytest.raises(ValueError, match="bigquery_format"):
    write_embeddings(str(tmp_path), spec, bigquery_format="csv", **kwargs)
  with pytest.raises(ValueError, match="num_shards"):
    write_embeddings(str(tmp_path), spec, num_shards=-1, **kwargs)
  with pytest.raises(ValueError, match="batch_size"):
    write_embeddings(str(tmp_path), spec, batch_size=0, **kwargs)
  with pytest.raises(ValueError, match="rows_per_shard"):
    write_embeddings(str(tmp_path), spec, rows_per_shard=0, **kwargs)
  with pytest.raises(ValueError, match="rows_per_shard"):
    write_dead_letters(str(tmp_path), run_id=RUN_ID, rows_per_shard=-1)


def test_relative_to_run_dir():
  assert layout.relative_to_run_dir(
      "gs://b/runs/r1/", "gs://b/runs/r1/embeddings/x.avro") == (
          "embeddings/x.avro")
  assert layout.relative_to_run_dir("/out", "/out/errors/e.jsonl") == (
      "errors/e.jsonl")
  with pytest.raises(ValueError, match="not inside"):
    layout.relative_to_run_dir("/out", "/out2/errors/e.jsonl")


# --- Deterministic, sorted shards ---------------------------------------------

def expected_shard(key: str, num_shards: int) -> int:
  """The documented shard function, computed independently of the code."""
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") % num_shards


def error_key(row: dict) -> tuple:
  return (row["source"], row["position"], row["stage"], row["reason"],
          row["id"] or "")


def all_files(directory: str) -> dict:
  """{relative path: bytes} of every file under directory, hidden ones too."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def read_shard(path: str) -> list[dict]:
  """The rows of one shard file, in file order."""
  if path.endswith(".avro"):
    with open(path, "rb") as f:
      reader = fastavro.reader(f)
      # One of the two block codecs BigQuery loads (deflate, snappy).
      assert reader.codec == "snappy"
      return list(reader)
  if path.endswith(".parquet"):
    return pq.read_table(path).to_pylist()
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f]
  # tf.Example features are lists: unwrap the sort key's scalars.
  rows = readers.read_tfrecord([path], None).to_pylist()
  for row in rows:
    row["id"] = row["id"][0].decode()
    if "rank" in row:
      (row["rank"],) = row["rank"]
  return rows


def shard_rows(run_dir: str, table: str, fmt: str) -> list[list[dict]]:
  """Each listed shard's rows, by shard index; checks the names."""
  paths = read_outputs.load_manifest(run_dir)["outputs"][table][fmt]
  num_shards = len(paths)
  for shard, path in enumerate(paths):
    assert path.endswith(f"-{shard:05d}-of-{num_shards:05d}" +
                         layout.FILE_SUFFIXES[fmt])
  return [read_shard(os.path.join(run_dir, path)) for path in paths]


def write_all_tables(run_dir, bigquery_format, seed):
  """Embeddings, neighbours and errors, each in several shards, in an order
  given by seed."""
  with TestPipeline(runner=LocalRunner()) as p:
    ids = dict(run_id=RUN_ID, model_fingerprint=FINGERPRINT)
    embeddings = (
        p
        | "CreateEmbeddings" >> beam.Create(
            shuffled(make_embeddings(12, FULL_SPEC), seed))
        | write_embeddings(
            run_dir, FULL_SPEC, bigquery_format=bigquery_format,
            batch_size=2, rows_per_shard=4, **ids))
    neighbours = (
        p
        | "CreateNeighbours" >> beam.Create(shuffled(make_neighbours(12), seed))
        | write_neighbours(
            run_dir, bigquery_format=bigquery_format, batch_size=5,
            rows_per_shard=8, **ids))
    errors = (
        p
        | "CreateDeadLetters" >> beam.Create(
            shuffled(make_dead_letters(9), seed))
        | write_dead_letters(run_dir, run_id=RUN_ID, num_shards=2))
    publish_manifest(
        p, run_dir, H, {
            "embeddings": embeddings, "neighbours": neighbours,
            "errors": {"jsonl": errors}
        })


@pytest.mark.parametrize("bigquery_format", layout.BIGQUERY_FORMATS)
def test_same_input_in_another_order_gives_byte_identical_files(
    tmp_path, bigquery_format):
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  write_all_tables(first, bigquery_format, seed=1)
  write_all_tables(second, bigquery_format, seed=2)
  files = all_files(first)
  assert files == all_files(second)
  # Several shards of every table and format, none left out.
  manifest = read_outputs.load_manifest(first)
  counts = {(table, fmt): len(paths)
            for table, entry in manifest["outputs"].items()
            for fmt, paths in entry.items() if fmt != layout.BIGQUERY_SCHEMA}
  assert counts == {
      ("embeddings", "tfrecord"): 3, ("embeddings", bigquery_format): 3,
      ("neighbours", "tfrecord"): 3, ("neighbours", bigquery_format): 3,
      ("errors", "jsonl"): 2,
  }
  listed = {path for entry in manifest["outputs"].values()
            for value in entry.values()
            for path in ([value] if isinstance(value, str) else value)}
  assert set(files) == listed | {"manifest.json"}


@pytest.mark.parametrize("bigquery_format", layout.BIGQUERY_FORMATS)
def test_rows_are_sorted_within_shards_and_sharded_by_stable_hash(
    tmp_path, bigquery_format):
  run_dir = str(tmp_path / "run")
  write_all_tables(run_dir, bigquery_format, seed=3)

  for fmt in (layout.TFRECORD, bigquery_format):
    shards = shard_rows(run_dir, "embeddings", fmt)
    ids = [[row["id"] for row in rows] for rows in shards]
    assert [sorted(shard) for shard in ids] == ids
    assert sorted(i for shard in ids for i in shard) == [
        f"doc-{i:03d}" for i in range(12)]
    for shard, shard_ids in enumerate(ids):
      assert {expected_shard(i, len(ids)) for i in shard_ids} <= {shard}

    shards = shard_rows(run_dir, "neighbours", fmt)
    keys = [[(row["id"], row["rank"]) for row in rows] for rows in shards]
    assert [sorted(shard) for shard in keys] == keys
    assert sorted(k for shard in keys for k in shard) == sorted(
        (n["id"], int(n["rank"])) for n in make_neighbour_rows(12))
    for shard, shard_keys in enumerate(keys):
      assert {expected_shard(i, len(keys)) for i, _ in shard_keys} <= {shard}

  shards = shard_rows(run_dir, "errors", "jsonl")
  keys = [[error_key(row) for row in rows] for rows in shards]
  assert [sorted(shard) for shard in keys] == keys
  assert sum(len(shard) for shard in keys) == 9
  for shard, rows in enumerate(shards):
    assert {expected_shard(r["source"], 2) for r in rows} <= {shard}
    # JSON lines with sorted keys.
    assert all(list(row) == sorted(row) for row in rows)
  if bigquery_format == layout.JSONL:
    for rows in shard_rows(run_dir, "embeddings", layout.JSONL):
      assert all(list(row) == sorted(row) for row in rows)


@pytest.mark.parametrize(
    "num_rows, num_shards, rows_per_shard, expected",
    [
        pytest.param(10, 0, 3, 4, id="computed-rounds-up"),
        pytest.param(9, 0, 3, 3, id="computed-exact"),
        pytest.param(10, 2, 3, 2, id="given-wins"),
        pytest.param(2, 6, 3, 6, id="given-with-empty-shards"),
    ])
def test_shard_count_given_or_computed_from_the_row_count(
    tmp_path, num_rows, num_shards, rows_per_shard, expected):
  run_dir = str(tmp_path / "run")
  spec = EmbeddingTableSpec(hidden_size=H)
  embeddings = make_embeddings(num_rows, spec)
  # The matcher checks the paths name every file on disk, all -of-expected.
  write_embeddings_run(
      run_dir, embeddings, spec, "parquet", num_shards=num_shards,
      rows_per_shard=rows_per_shard, expected_shards=expected)
  for fmt in ("tfrecord", "parquet"):
    shards = shard_rows(run_dir, "embeddings", fmt)
    assert len(shards) == expected
    assert sum(len(rows) for rows in shards) == num_rows
    if num_rows < expected:
      assert any(not rows for rows in shards)  # empty, listed and readable
  ids, _ = read_outputs.load_embeddings(run_dir)
  assert sorted(ids) == [e.id for e in embeddings]


def test_shards_sized_by_a_count_of_another_collection(tmp_path):
  # e.g. the documents read, for the embeddings of those that succeed.
  run_dir = str(tmp_path / "run")
  spec = EmbeddingTableSpec(hidden_size=H)
  embeddings = make_embeddings(4, spec)
  write_embeddings_run(run_dir, embeddings, spec, "avro", rows_per_shard=3,
                       count=10, expected_shards=4)
  shards = shard_rows(run_dir, "embeddings", "avro")
  assert len(shards) == 4  # ceil(10 / 3), not ceil(4 / 3)
  assert sorted(row["id"] for rows in shards for row in rows) == [
      e.id for e in embeddings]


def test_default_rows_per_shard_bounds_a_shard_in_memory():
  small = EmbeddingTableSpec(hidden_size=384)
  assert tables.default_embedding_rows_per_shard(small) == 20_000
  sequence = EmbeddingTableSpec(hidden_size=384, sequence_output=True)
  rows = tables.default_embedding_rows_per_shard(sequence)
  # 128 tokens x 384 float32 values is ~200 KiB a row.
  assert 1_000 <= rows <= tables.SHARD_BYTES // (128 * 384 * 4)
  half = EmbeddingTableSpec(
      hidden_size=384, sequence_output=True, sequence_dtype="float16")
  assert tables.default_embedding_rows_per_shard(half) > rows


def test_a_retried_shard_write_leaves_the_same_files_and_no_temporaries(
    tmp_path):
  out = str(tmp_path / "out")
  writer = all_format_writer(out)
  embeddings = make_embeddings(5, FULL_SPEC)
  paths = writer.write(1, 3, embeddings)
  assert sorted(paths) == sorted(layout.FORMATS)
  first = all_files(out)
  assert sorted(first) == sorted(
      os.path.relpath(path, out) for path in paths.values())
  assert all(first.values())

  # A crashed attempt left a half-written temporary file; the retry gets the
  # rows in another order.
  stale = paths[layout.AVRO] + atomic.TEMP_SUFFIX
  with open(stale, "wb") as f:
    f.write(b"half a file")
  assert writer.write(1, 3, embeddings[::-1]) == paths
  assert all_files(out) == first

  # The rows in file order: sorted by id.
  assert [r["id"] for r in read_shard(paths[layout.AVRO])] == sorted(
      e.id for e in embeddings)


def test_a_shard_write_failing_half_way_leaves_no_file(tmp_path):
  out = str(tmp_path / "out")
  good = make_embeddings(4, FULL_SPEC)
  # Sorted last, so it fails after the first two batches were written.
  bad = dataclasses.replace(
      good[0], id="doc-999", vectors=dataclasses.replace(
          good[0].vectors, embedding=np.zeros(H + 1, np.float32)))
  with pytest.raises(ValueError, match="doc-999.*has shape"):
    all_format_writer(out, batch_size=2).write(0, 1, [bad] + good)
  assert all_files(out) == {}


def test_canonical_example_is_protobufs_deterministic_serialization():
  tf = pytest.importorskip("tensorflow")
  table = tables.embedding_table(FULL_SPEC, RUN_ID, FINGERPRINT)
  batch = table.to_examples(make_embeddings(4, FULL_SPEC))
  encoded = tfrecord.encode_examples(batch)
  for serialized in encoded:
    example = tf.train.Example.FromString(serialized)
    canonical = tfrecord.canonical_example(serialized)
    assert canonical == example.SerializeToString(deterministic=True)
    assert tf.train.Example.FromString(canonical) == example
  assert tfrecord.canonical_example(b"") == b""
  with pytest.raises(ValueError, match="tf.Example"):
    tfrecord.canonical_example(b"\x12\x00")


_WRITE_SHARD_SCRIPT = """
import sys
from run_directory import layout, shards, tables
from tests.run_fixtures import FINGERPRINT, RUN_ID
from tests.run_fixtures import make_embeddings, make_neighbours, shuffled
from tests.run_fixtures import all_format_writer, FULL_SPEC
out, seed = sys.argv[1], int(sys.argv[2])
all_format_writer(out, batch_size=3).write(
    0, 2, shuffled(make_embeddings(7, FULL_SPEC), seed))
shards.ShardWriter(
    tables.neighbour_table(RUN_ID, FINGERPRINT),
    {fmt: layout.shard_prefix(out, layout.NEIGHBOURS, fmt)
     for fmt in layout.FORMATS}).write(
         1, 2, shuffled(make_neighbours(7), seed))
"""


def test_files_are_byte_identical_across_processes(tmp_path):
  # tfx-bsl orders a tf.Example's features by a per-process hash, and a
  # parsed Avro schema's keys follow Python's per-process string hashing:
  # only separate processes show either.
  outputs = []
  for seed in (1, 2):
    out = str(tmp_path / f"process-{seed}")
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    subprocess.run(
        [sys.executable, "-c", _WRITE_SHARD_SCRIPT, out, str(seed)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env, check=True, capture_output=True, timeout=300)
    outputs.append(all_files(out))
  assert len(outputs[0]) == 8
  assert outputs[0] == outputs[1]
