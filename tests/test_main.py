"""End-to-end tests of `pipeline.main.run` over temporary files.

Every run uses the tiny random BERT of `conftest.tiny_model_dir` (hidden 16, one
layer, max_seq_length 32, mean pooling, normalised) on the local runner, and
reads every output back: the manifest, the embeddings from both the TFRecord
and the BigQuery-loadable copies, and the errors. Vectors are checked against
the model called directly (TF Hub preprocess + encoder, masked mean, L2 norm),
not through the project's model handler.

The end-to-end runs happen under a guard that refuses, and records, every
connection to a non-loopback address: local runs must never use the network.
"""

import collections
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (the preprocess model's ops)
from apache_beam.runners.runner import PipelineState

from pipeline import main
from pipeline import read_outputs
from pipeline.errors import ConfigError
from run_directory.records import derive_document_id
from tests import network_guard
from bert_model import tiny_checkpoint as tiny_bert

H = 16
MODEL_MAX_SEQ_LENGTH = 32
CLS_ID = tiny_bert.tiny_vocab().index("[CLS]")
SEP_ID = tiny_bert.tiny_vocab().index("[SEP]")

# Reasons, spelled out here (the errors table's contract), not imported.
EMPTY = "empty_text"
UTF8 = "invalid_utf8"
MALFORMED = "malformed_record"
MISSING = "missing_field"
NON_STRING = "non_string_field"
DUPLICATE = "duplicate_id"
REPEAT = "duplicate_record"
VALIDATE_REASONS = (EMPTY, DUPLICATE, REPEAT)

# Marks an expected error whose id is not checked.
ANY_ID = object()


# ---------------------------------------------------------------------------
# No network.


@pytest.fixture
def no_network(monkeypatch):
  """Refuses and records every connection to a non-loopback address."""
  return network_guard.guard_network(monkeypatch)


# ---------------------------------------------------------------------------
# The model, called directly.


class Reference:
  """The tiny model's TF Hub SavedModels, called without the pipeline."""

  def __init__(self, model_dir: str):
    self._preprocess = hub.load(os.path.join(model_dir, "preprocess"))
    self._encoder = hub.load(os.path.join(model_dir, "encoder"))

  def encode(self, texts, seq_length=MODEL_MAX_SEQ_LENGTH) -> dict:
    """text -> embedding, num_tokens, raw_tokens, token_ids, sequence, layer0.

    Inputs are packed to a fixed `seq_length` (the pipeline pads to each
    batch's longest row instead; masked, that must not change anything).
    """
    texts = list(texts)
    tokens = self._preprocess.tokenize(tf.constant(texts))
    raw_tokens = tokens.merge_dims(1, -1).row_lengths().numpy()
    inputs = self._preprocess.bert_pack_inputs(
        [tokens], seq_length=tf.constant(seq_length, tf.int32))
    outputs = self._encoder(inputs)
    mask = inputs["input_mask"].numpy().astype(np.float64)
    word_ids = inputs["input_word_ids"].numpy()
    sequence = outputs["sequence_output"].numpy().astype(np.float64)
    layer0 = outputs["encoder_outputs"][0].numpy().astype(np.float64)

    def pooled(values):
      mean = (values * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
      return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    embeddings, layer_vectors = pooled(sequence), pooled(layer0)
    result = {}
    for i, text in enumerate(texts):
      n = int(mask[i].sum())
      result[text] = {
          "embedding": embeddings[i],
          "layer0": layer_vectors[i],
          "num_tokens": n,
          "raw_tokens": int(raw_tokens[i]) + 2,  # with [CLS] and [SEP]
          "token_ids": word_ids[i, :n],
          "sequence": sequence[i, :n],
      }
    return result


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
  return Reference(tiny_model_dir)


# ---------------------------------------------------------------------------
# Corpora: one per input format, with bad records the format can have.
#
# Each builder writes its files under `directory` and returns
# (input pattern, good: {id: text}, bad: {(file name, position): (reason, id)}).


def _write(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)


def text_corpus(directory):
  path = os.path.join(directory, "corpus.txt")
  _write(path, b"\n".join([
      b"the quick brown fox",  # 0
      b"hello world",  # 1
      b"",  # 2 empty
      b"   ",  # 3 only whitespace
      b"\xff\xfe not utf-8",  # 4
      b"the quick brown fox",  # 5 same text: same derived id
      b"a cat sat on the mat",  # 6
      "\u00fcn\u00efcode text".encode(),  # 7
      b"search vector embeddings",  # 8
  ]) + b"\n")
  good = {
      derive_document_id(path, text): text for text in (
          "the quick brown fox", "hello world", "a cat sat on the mat",
          "\u00fcn\u00efcode text", "search vector embeddings")
  }
  bad = {
      ("corpus.txt", 2): (EMPTY, derive_document_id(path, "")),
      ("corpus.txt", 3): (EMPTY, derive_document_id(path, "   ")),
      ("corpus.txt", 4): (UTF8, None),
      # The same line again: an exact repeat of the kept record.
      ("corpus.txt", 5): (REPEAT,
                          derive_document_id(path, "the quick brown fox")),
  }
  return path, good, bad


def jsonl_corpus(directory):
  path = os.path.join(directory, "corpus.jsonl")
  _write(path, b"\n".join([
      b'{"id": "j1", "text": "the quick brown fox"}',  # 0
      b'{"id": "j2", "text": "hello world"}',  # 1
      b'{"id": "j3", "text": ""}',  # 2 empty
      b'{"id": "j9", "text": "no closing brace"',  # 3 malformed
      b'{"id": "j4"}',  # 4 no text
      b'{"id": "j5", "text": 42}',  # 5 text not a string
      b'{"id": "j1", "text": "another text"}',  # 6 duplicate id
      b'{"id": "j6", "text": "\xff bad"}',  # 7 invalid UTF-8
      b'{"id": 7, "text": "integer id"}',  # 8
      b'{"text": "no id at all"}',  # 9 derived id
      b'[1, 2]',  # 10 not an object
      b'{"id": "j8", "text": "lazy dog"}',  # 11
  ]) + b"\n")
  good = {
      "j1": "the quick brown fox",
      "j2": "hello world",
      "7": "integer id",
      derive_document_id(path, "no id at all"): "no id at all",
      "j8": "lazy dog",
  }
  bad = {
      ("corpus.jsonl", 2): (EMPTY, "j3"),
      ("corpus.jsonl", 3): (MALFORMED, None),
      ("corpus.jsonl", 4): (MISSING, "j4"),
      ("corpus.jsonl", 5): (NON_STRING, "j5"),
      ("corpus.jsonl", 6): (DUPLICATE, "j1"),
      ("corpus.jsonl", 7): (UTF8, ANY_ID),
      ("corpus.jsonl", 10): (MALFORMED, None),
  }
  return path, good, bad


def csv_corpus(directory):
  path = os.path.join(directory, "corpus.csv")
  _write(path, b"".join([
      b"id,text\n",
      b"c1,the quick brown fox\n",  # 0
      b'c2,"hello, world"\n',  # 1 quoted delimiter
      b'c3,""\n',  # 2 empty
      b"c4,a,b\n",  # 3 a column too many
      b"\n",  # blank line: no record
      b"c1,another text\n",  # 4 duplicate id
      b'c5,"multi\nline text"\n',  # 5 quoted newline
      b"c6,\xff bad\n",  # 6 invalid UTF-8
      b",no id here\n",  # 7 derived id
      b"c7,lazy dog\r\n",  # 8 CRLF
  ]))
  good = {
      "c1": "the quick brown fox",
      "c2": "hello, world",
      "c5": "multi\nline text",
      derive_document_id(path, "no id here"): "no id here",
      "c7": "lazy dog",
  }
  bad = {
      ("corpus.csv", 2): (EMPTY, "c3"),
      ("corpus.csv", 3): (MALFORMED, ANY_ID),
      ("corpus.csv", 4): (DUPLICATE, "c1"),
      ("corpus.csv", 6): (UTF8, "c6"),
  }
  return path, good, bad


def tsv_corpus(directory):
  path = os.path.join(directory, "corpus.tsv")
  _write(path, b"".join([
      b"text\tid\n",  # columns in the other order
      b"the quick brown fox\tt1\n",  # 0
      b"hello world\tt2\n",  # 1
      b"\tt3\n",  # 2 empty
      b"only one column\n",  # 3 malformed
      b"another text\tt1\n",  # 4 duplicate id
      b"\xff\xfe\tt6\n",  # 5 invalid UTF-8
      b"lazy dog\tt7\n",  # 6
      b'"quotes are text"\tt8\n',  # 7 TSV has no quoting
  ]))
  good = {
      "t1": "the quick brown fox",
      "t2": "hello world",
      "t7": "lazy dog",
      "t8": '"quotes are text"',
  }
  bad = {
      ("corpus.tsv", 2): (EMPTY, "t3"),
      ("corpus.tsv", 3): (MALFORMED, ANY_ID),
      ("corpus.tsv", 4): (DUPLICATE, "t1"),
      ("corpus.tsv", 5): (UTF8, "t6"),
  }
  return path, good, bad


def parquet_corpus(directory):
  a = os.path.join(directory, "a.parquet")
  pq.write_table(
      pa.table({
          "id": pa.array(["p1", "p2", "p3", "p1", None, "p5"], pa.string()),
          "text": pa.array([
              "the quick brown fox", None, "", "another text",
              "derived id text", "lazy dog"
          ], pa.string()),
          "other": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
      }), a)
  # A text column of the wrong type: every row is rejected.
  pq.write_table(
      pa.table({
          "id": pa.array([10, 11], pa.int64()),
          "text": pa.array([5, 6], pa.int64()),
      }), os.path.join(directory, "b.parquet"))
  # Integer ids.
  pq.write_table(
      pa.table({
          "id": pa.array([20, 21], pa.int64()),
          "text": pa.array(["hello world", None], pa.string()),
      }), os.path.join(directory, "c.parquet"))
  # An id already used in a.parquet, which sorts first and so keeps it.
  pq.write_table(
      pa.table({
          "id": pa.array(["p5"], pa.string()),
          "text": pa.array(["cross-file text"], pa.string()),
      }), os.path.join(directory, "d.parquet"))
  good = {
      "p1": "the quick brown fox",
      derive_document_id(a, "derived id text"): "derived id text",
      "p5": "lazy dog",
      "20": "hello world",
  }
  bad = {
      ("a.parquet", 1): (MISSING, "p2"),
      ("a.parquet", 2): (EMPTY, "p3"),
      ("a.parquet", 3): (DUPLICATE, "p1"),
      ("b.parquet", 0): (NON_STRING, "10"),
      ("b.parquet", 1): (NON_STRING, "11"),
      ("c.parquet", 1): (MISSING, "21"),
      ("d.parquet", 0): (DUPLICATE, "p5"),
  }
  return os.path.join(directory, "*.parquet"), good, bad


def tfrecord_corpus(directory):

  def example(**features):
    feature = {}
    for name, value in features.items():
      if isinstance(value, int):
        value = [value]
      if isinstance(value, bytes):
        value = [value]
      if value and isinstance(value[0], int):
        feature[name] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=value))
      else:
        feature[name] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=value))
    return tf.train.Example(features=tf.train.Features(
        feature=feature)).SerializeToString()

  path = os.path.join(directory, "corpus.tfrecord")
  records = [
      example(id=b"t1", text=b"the quick brown fox"),  # 0
      example(id=b"t2", text=b""),  # 1 empty
      example(id=b"t3", other=b"no text feature"),  # 2 missing
      example(id=b"t4", text=5),  # 3 int64 text
      b"\xff\xff\xff\xff not a tf.train.Example",  # 4 malformed
      example(id=b"t1", text=b"another text"),  # 5 duplicate id
      example(id=b"t6", text=b"\xff\xfe"),  # 6 invalid UTF-8
      example(id=7, text=b"hello world"),  # 7 integer id
      example(id=b"t8", text=[b"two", b"values"]),  # 8 not one string
      example(text=b"lazy dog"),  # 9 derived id
      example(id=b"t10", text=b"a cat sat on the mat"),  # 10
  ]
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  good = {
      "t1": "the quick brown fox",
      "7": "hello world",
      derive_document_id(path, "lazy dog"): "lazy dog",
      "t10": "a cat sat on the mat",
  }
  bad = {
      ("corpus.tfrecord", 1): (EMPTY, "t2"),
      ("corpus.tfrecord", 2): (MISSING, "t3"),
      ("corpus.tfrecord", 3): (NON_STRING, "t4"),
      ("corpus.tfrecord", 4): (MALFORMED, None),
      ("corpus.tfrecord", 5): (DUPLICATE, "t1"),
      ("corpus.tfrecord", 6): (UTF8, "t6"),
      ("corpus.tfrecord", 8): (NON_STRING, "t8"),
  }
  return path, good, bad


# ---------------------------------------------------------------------------
# Running and reading back.


def run_pipeline(input_pattern, output, model_dir, *extra):
  # The corpora are bad on purpose; the guardrails have tests of their own
  # (test_guardrails.py).
  result = main.run([
      "--input", input_pattern, "--output", output, "--model", model_dir,
      "--runner=DirectRunner", "--max_bad_fraction=1", *extra
  ])
  assert result.state == PipelineState.DONE
  return result


def check_manifest_files(run_dir, manifest, bigquery_format):
  outputs = manifest["outputs"]
  # The neighbour table is on by default (--neighbours_k 10); every run
  # has its report and its BigQuery scripts.
  assert set(outputs) == {"embeddings", "errors", "neighbours", "bigquery",
                          "report"}
  assert outputs["report"] == {"html": ["report.html"]}
  embeddings = outputs["embeddings"]
  assert set(embeddings) == {"tfrecord", bigquery_format, "bigquery_schema"}
  assert set(outputs["neighbours"]) == {"tfrecord", bigquery_format,
                                        "bigquery_schema"}
  assert set(outputs["errors"]) == {"jsonl"}
  # Every run's BigQuery scripts (tests/test_bigquery_scripts.py).
  assert outputs["bigquery"] == {
      "load_script": "bigquery/load.sh",
      "vector_search_sql": "bigquery/vector_search.sql"}

  listed = [embeddings["bigquery_schema"],
            outputs["neighbours"]["bigquery_schema"],
            *outputs["bigquery"].values(), "report.html"]
  for table, formats in outputs.items():
    for fmt, files in formats.items():
      if fmt == "bigquery_schema" or table in ("bigquery", "report"):
        continue
      assert isinstance(files, list) and files, (table, fmt)
      suffix = ".tfrecord" if fmt == "tfrecord" else f".{fmt}"
      for name in files:
        assert name.startswith(f"{table}/") and name.endswith(suffix), name
      listed += files
  for name in listed:
    assert not os.path.isabs(name) and ".." not in name.split("/"), name
    assert os.path.isfile(os.path.join(run_dir, name)), name
  # Nothing else is left behind: no temp files, no unlisted shards.
  on_disk = {
      os.path.relpath(os.path.join(root, f), run_dir)
      for root, _, files in os.walk(run_dir) for f in files
  }
  assert on_disk == set(listed) | {"manifest.json"}

  with open(os.path.join(run_dir, embeddings["bigquery_schema"])) as f:
    schema = {field["name"]: field for field in json.load(f)}
  assert schema["id"]["type"] == "STRING"
  assert schema["embedding"]["type"] == "FLOAT"
  assert schema["embedding"]["mode"] == "REPEATED"
  return schema


def check_embedding_rows(table, good, reference, manifest,
                         seq_length=MODEL_MAX_SEQ_LENGTH):
  """Every good id once, with the text and the model's vector."""
  rows = table.to_pylist()
  ids = [row["id"] for row in rows]
  assert collections.Counter(ids) == collections.Counter(set(good)), ids
  expected = reference.encode(good.values(), seq_length)
  for row in rows:
    ref = expected[good[row["id"]]]
    assert row["text"] == good[row["id"]]
    np.testing.assert_allclose(
        np.asarray(row["embedding"], np.float64), ref["embedding"],
        atol=1e-5, err_msg=row["id"])
    assert row["num_tokens"] == ref["num_tokens"], row["id"]
    assert row["truncated"] == (ref["raw_tokens"] > seq_length), row["id"]
    assert row["run_id"] == manifest["run_id"]
    assert row["model_fingerprint"] == manifest["model"]["fingerprint"]
  return {row["id"]: row for row in rows}


def read_tfrecord_independently(run_dir, manifest):
  """id -> embedding, parsed with TensorFlow, not with read_outputs."""
  vectors = {}
  for name in manifest["outputs"]["embeddings"]["tfrecord"]:
    for record in tf.data.TFRecordDataset(os.path.join(run_dir, name)):
      example = tf.train.Example.FromString(record.numpy())
      feature = example.features.feature
      doc_id = feature["id"].bytes_list.value[0].decode()
      assert doc_id not in vectors
      vectors[doc_id] = np.array(feature["embedding"].float_list.value)
  return vectors


def check_errors(run_dir, bad, input_dir):
  errors = read_outputs.read_errors(run_dir)
  assert read_outputs.read_table(run_dir, "errors").to_pylist() == errors
  keys = [(os.path.basename(e["source"]), e["position"]) for e in errors]
  assert collections.Counter(keys) == collections.Counter(set(bad)), keys
  for error in errors:
    key = (os.path.basename(error["source"]), error["position"])
    reason, doc_id = bad[key]
    assert error["reason"] == reason, (key, error)
    if doc_id is not ANY_ID:
      assert error["id"] == doc_id, (key, error)
    assert error["stage"] == ("validate"
                              if reason in VALIDATE_REASONS else "read"), error
    assert os.path.dirname(error["source"]) == input_dir, error
    assert error["detail"], error
  return errors


CORPORA = {
    "text": text_corpus,
    "jsonl": jsonl_corpus,
    "csv": csv_corpus,
    "tsv": tsv_corpus,
    "parquet": parquet_corpus,
    "tfrecord": tfrecord_corpus,
}


@pytest.mark.parametrize("input_format,bigquery_format", [
    ("text", "avro"),
    ("jsonl", "parquet"),
    ("csv", "jsonl"),
    ("tsv", "parquet"),
    ("parquet", "avro"),
    ("tfrecord", "jsonl"),
])
def test_every_input_format_end_to_end(input_format, bigquery_format,
                                       tiny_model_dir, reference, tmp_path,
                                       no_network):
  input_dir = str(tmp_path / "input")
  os.makedirs(input_dir)
  pattern, good, bad = CORPORA[input_format](input_dir)
  run_dir = str(tmp_path / "run")

  run_pipeline(pattern, run_dir, tiny_model_dir,
               f"--bigquery_format={bigquery_format}")
  assert no_network == []

  manifest = read_outputs.load_manifest(run_dir)
  counts = manifest["counts"]
  assert counts["read"] == counts["embedded"] + counts["dead_lettered"]
  assert counts == {
      "read": len(good) + len(bad),
      "embedded": len(good),
      "inferred": len(good),
      "dead_lettered": len(bad),
      "repeated": sum(reason == REPEAT for reason, _ in bad.values()),
      "truncated": 0,
      "reused": 0,  # no --previous_run
      "removed": 0,
      # The corpora's own ids are short; derived ones, 32 hex digits.
      "derived_ids": sum(len(doc_id) == 32 for doc_id in good),
  }
  with open(os.path.join(tiny_model_dir, "model_metadata.json")) as f:
    metadata = json.load(f)
  assert manifest["model"]["fingerprint"] == metadata["fingerprint"]
  assert manifest["model"]["hidden_size"] == H
  assert manifest["model"]["pooling"] == "mean"
  assert manifest["model"]["path"] == tiny_model_dir
  schema = check_manifest_files(run_dir, manifest, bigquery_format)
  assert "tokens" not in schema and "text" in schema

  loadable = read_outputs.read_table(run_dir, "embeddings")
  explicit = read_outputs.read_table(
      run_dir, "embeddings", format=bigquery_format)
  assert explicit.equals(loadable)
  tfrecord = read_outputs.read_table(run_dir, "embeddings", format="tfrecord")
  by_format = {}
  for name, table in (("loadable", loadable), ("tfrecord", tfrecord)):
    by_format[name] = check_embedding_rows(table, good, reference, manifest)
  # The two copies hold the same float32 values.
  for doc_id, row in by_format["loadable"].items():
    assert by_format["tfrecord"][doc_id]["embedding"] == row["embedding"]
  independent = read_tfrecord_independently(run_dir, manifest)
  assert set(independent) == set(good)
  for doc_id, vector in independent.items():
    np.testing.assert_array_equal(
        vector, np.asarray(by_format["loadable"][doc_id]["embedding"],
                           np.float32))

  errors = check_errors(run_dir, bad, input_dir)
  assert {e["run_id"] for e in errors} == {manifest["run_id"]}


# ---------------------------------------------------------------------------
# Sequence output, encoder layers, truncation.

SEQUENCE_TEXTS = {
    "s1": "the quick brown fox",  # 4 wordpieces
    "s2": "hello world \u00fcn\u00efcode",  # 8 wordpieces
    "s3": "a cat sat on the mat",  # 6 wordpieces
    "s4": "the quick brown fox jumps over the lazy dog hello world",  # 11
    "s5": "embedding search",  # 3 wordpieces
}


def write_sequence_corpus(directory):
  path = os.path.join(directory, "sequences.jsonl")
  with open(path, "w") as f:
    for doc_id, text in SEQUENCE_TEXTS.items():
      f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
  return path


def tokens_of(row):
  """(token_ids [T], vectors [T, H]) from either layout of a row."""
  if "tokens" in row:
    tokens = row["tokens"]
    assert [t["position"] for t in tokens] == list(range(len(tokens)))
    return (np.array([t["token_id"] for t in tokens]),
            np.array([t["embedding"] for t in tokens], np.float32))
  token_ids = np.array(row["token_ids"])
  return token_ids, np.array(row["sequence_embedding"],
                             np.float32).reshape(len(token_ids), H)


def test_sequence_output_and_encoder_layers(tiny_model_dir, reference,
                                            tmp_path, no_network):
  input_dir = str(tmp_path / "input")
  os.makedirs(input_dir)
  run_dir = str(tmp_path / "run")
  run_pipeline(write_sequence_corpus(input_dir), run_dir, tiny_model_dir,
               "--sequence_output", "--encoder_layers=-1",
               "--bigquery_format=parquet", "--run_id=seq-run")
  assert no_network == []

  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["run_id"] == "seq-run"
  assert manifest["counts"] == {
      "read": 5, "embedded": 5, "inferred": 5, "dead_lettered": 0,
      "repeated": 0, "truncated": 0, "reused": 0, "removed": 0,
      "derived_ids": 0}
  assert manifest["model"]["encoder_layers"] == [0]
  assert manifest["settings"]["outputs"]["encoder_layers"] == "-1"
  schema = check_manifest_files(run_dir, manifest, "parquet")
  assert schema["tokens"]["mode"] == "REPEATED"
  assert schema["encoder_layer_0"]["mode"] == "REPEATED"
  assert read_outputs.read_errors(run_dir) == []

  expected = reference.encode(SEQUENCE_TEXTS.values())
  for fmt in ("parquet", "tfrecord"):
    table = read_outputs.read_table(run_dir, "embeddings", format=fmt)
    rows = check_embedding_rows(table, SEQUENCE_TEXTS, reference, manifest)
    for doc_id, row in rows.items():
      ref = expected[SEQUENCE_TEXTS[doc_id]]
      token_ids, vectors = tokens_of(row)
      # Real tokens only: no padding, whatever the batch's longest row.
      assert len(token_ids) == row["num_tokens"] == ref["num_tokens"]
      assert vectors.shape == (row["num_tokens"], H)
      assert token_ids[0] == CLS_ID and token_ids[-1] == SEP_ID
      assert 0 not in token_ids
      np.testing.assert_array_equal(token_ids, ref["token_ids"])
      np.testing.assert_allclose(vectors, ref["sequence"], atol=1e-5,
                                 err_msg=f"{fmt} {doc_id}")
      # One layer: layer -1 is the last one, pooled like the main vector.
      layer = np.asarray(row["encoder_layer_0"], np.float64)
      np.testing.assert_allclose(layer, ref["layer0"], atol=1e-5)
      np.testing.assert_allclose(layer, row["embedding"], atol=1e-6)
  # The longest text decides the padded length of its batch; the shortest
  # one must still have only its own 5 tokens (3 wordpieces).
  assert expected[SEQUENCE_TEXTS["s5"]]["num_tokens"] == 5


def test_truncation_and_float16_sequences(tiny_model_dir, reference, tmp_path,
                                          no_network):
  input_dir = str(tmp_path / "input")
  os.makedirs(input_dir)
  run_dir = str(tmp_path / "run")
  run_pipeline(write_sequence_corpus(input_dir), run_dir, tiny_model_dir,
               "--max_seq_length", "8", "--sequence_output",
               "--sequence_dtype", "float16", "--bigquery_format=jsonl")
  assert no_network == []

  expected = reference.encode(SEQUENCE_TEXTS.values(), seq_length=8)
  truncated_ids = {"s2", "s4"}  # more than 8 - 2 wordpieces
  assert {
      doc_id for doc_id, text in SEQUENCE_TEXTS.items()
      if expected[text]["raw_tokens"] > 8
  } == truncated_ids

  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["counts"] == {
      "read": 5, "embedded": 5, "inferred": 5, "dead_lettered": 0,
      "repeated": 0, "truncated": 2, "reused": 0, "removed": 0,
      "derived_ids": 0}
  assert manifest["model"]["max_seq_length"] == 8
  assert manifest["model"]["sequence_dtype"] == "float16"
  assert manifest["settings"]["outputs"]["sequence_dtype"] == "float16"
  check_manifest_files(run_dir, manifest, "jsonl")

  values_by_format = {}
  for fmt in ("jsonl", "tfrecord"):
    table = read_outputs.read_table(run_dir, "embeddings", format=fmt)
    rows = check_embedding_rows(table, SEQUENCE_TEXTS, reference, manifest,
                                seq_length=8)
    assert {i for i, row in rows.items() if row["truncated"]} == truncated_ids
    for doc_id in truncated_ids | {"s3"}:  # s3: exactly 6 wordpieces
      assert rows[doc_id]["num_tokens"] == 8
    assert not rows["s3"]["truncated"]
    for doc_id, row in rows.items():
      ref = expected[SEQUENCE_TEXTS[doc_id]]
      token_ids, vectors = tokens_of(row)
      assert len(token_ids) == row["num_tokens"]
      assert token_ids[0] == CLS_ID and token_ids[-1] == SEP_ID
      np.testing.assert_array_equal(token_ids, ref["token_ids"])
      # Stored as float16: every value is a float16, within its rounding.
      np.testing.assert_array_equal(
          vectors, vectors.astype(np.float16).astype(np.float32))
      np.testing.assert_allclose(vectors, ref["sequence"], rtol=1e-3,
                                 atol=2e-3, err_msg=f"{fmt} {doc_id}")
      values_by_format.setdefault(doc_id, []).append(vectors)
  for doc_id, (a, b) in values_by_format.items():
    np.testing.assert_array_equal(a, b, err_msg=doc_id)


# ---------------------------------------------------------------------------
# Wrong flags fail before anything runs.


@pytest.mark.parametrize("flags,message", [
    (["--output", "{out}"], r"--input is required"),
    (["--input", "{inp}"], r"--output is required"),
    (["--input", "{inp}", "--output", "{out}", "--poolng", "mean"],
     r"unknown flag.*--poolng.*did you mean --pooling\?"),
    (["--input", "{inp}", "--output", "{out}", "--min_batch_size=8"],
     r"--min_batch_size was removed.*--sort_buffer_size"),
    (["--input", "{inp}", "--output", "{out}", "--sort_buffer_size=0"],
     r"--sort_buffer_size must be a positive integer"),
    (["--input", "{inp}", "--output", "{out}", "--sort_buffer_size=100"],
     r"--sort_buffer_size \(100\) is smaller than --max_batch_size \(256\)"
     r".*at least 256"),
    (["--input", "{inp}", "--output", "{out}", "--encoder_layers=5"],
     r"--encoder_layers='5'.*1 layers.*\[-1, 0\]"),
    (["--input", "{inp}", "--output", "{out}", "--encoder_layers=-1,x"],
     r"--encoder_layers.*'x' is not a layer index"),
    (["--input", "{inp}", "--output", "{out}", "--max_seq_length", "65"],
     r"--max_seq_length=65.*max_position_embeddings \(64\)"),
    (["--input", "{inp}", "--output", "{out}", "--model", "{missing_model}"],
     r"--model=.*no-such-model: no such directory"),
    # --input_format applies to the queries too: a questions.csv was read as
    # plain text, its header line a query, and the run published.
    (["--input", "{queries_txt}", "--output", "{out}", "--input_format",
      "text", "--neighbours_of", "{queries_csv}"],
     r"--neighbours_of=.*questions\.csv: its extension says csv, but "
     r"--input_format text applies to the queries too"),
    # A review: plain-text queries have no fields to name, and a workbook
    # is no input whatever --input_format says (it was an unreadable_file
    # once the corpus had been embedded).
    (["--input", "{inp}", "--output", "{out}", "--neighbours_of",
      "{queries_txt}", "--query_text_field", "question"],
     r"--query_text_field: --neighbours_of is plain text .* no fields"),
    (["--input", "{queries_csv}", "--output", "{out}", "--input_format",
      "csv", "--neighbours_of", "{queries_xlsx}"],
     r"--neighbours_of: '.*questions\.xlsx' names an Excel workbook"),
])
def test_wrong_flags_fail_before_the_pipeline_starts(
    flags, message, corpus_file, tiny_model_dir, tmp_path, no_network):
  output = str(tmp_path / "run")
  queries_csv = tmp_path / "questions.csv"
  queries_csv.write_text("id,text\nq1,how do I reset my password?\n")
  (tmp_path / "questions.txt").write_text("how do I reset my password?\n")
  (tmp_path / "questions.xlsx").write_bytes(b"PK\x03\x04 a workbook")
  values = dict(inp=corpus_file, out=output, queries_csv=str(queries_csv),
                queries_txt=str(tmp_path / "questions.txt"),
                queries_xlsx=str(tmp_path / "questions.xlsx"),
                missing_model=str(tmp_path / "no-such-model"))
  argv = [flag.format(**values) for flag in flags]
  if "--model" not in argv:
    argv += ["--model", tiny_model_dir]
  argv.append("--runner=DirectRunner")
  with pytest.raises(ConfigError, match=message):
    main.run(argv)
  assert not os.path.exists(output)
  assert no_network == []


def test_main_reports_a_wrong_flag_and_returns_2(corpus_file, tiny_model_dir,
                                                 tmp_path, capsys):
  output = str(tmp_path / "run")
  code = main.main([
      "--input", corpus_file, "--output", output, "--model", tiny_model_dir,
      "--runner=DirectRunner", "--poolng", "mean"
  ])
  assert code == 2
  err = capsys.readouterr().err
  assert "pipeline.main: error:" in err and "--pooling" in err
  assert not os.path.exists(output)


def test_an_output_that_holds_a_manifest_is_refused(corpus_file,
                                                    tiny_model_dir, tmp_path,
                                                    capsys):
  output = tmp_path / "run"
  output.mkdir()
  (output / "manifest.json").write_text('{"run_id": "earlier"}\n')
  argv = [
      "--input", corpus_file, "--output", str(output), "--model",
      tiny_model_dir, "--runner=DirectRunner"
  ]
  with pytest.raises(ConfigError, match=r"already holds a published run"):
    main.run(argv)
  assert main.main(argv) == 2
  assert "choose a new run directory" in capsys.readouterr().err
  assert os.listdir(output) == ["manifest.json"]
  assert (output / "manifest.json").read_text() == '{"run_id": "earlier"}\n'
