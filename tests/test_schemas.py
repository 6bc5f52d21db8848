"""Tests of the run-directory contract: schemas as data, and the row
converters (run_directory/columns, arrow, avro, embeddings, tables)."""

import copy
import dataclasses
import hashlib
import io

import fastavro
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from google.cloud.bigquery import SchemaField

from run_directory import arrow as arrow_lib
from run_directory import avro as avro_lib
from run_directory import columns as columns_lib
from run_directory import embeddings as embeddings_lib
from run_directory import tables
from run_directory.columns import Column
from run_directory.columns import NULLABLE
from run_directory.columns import REQUIRED
from run_directory.embeddings import chunk_columns
from run_directory.embeddings import embedding_columns
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.records import Chunk
from run_directory.records import DeadLetter
from run_directory.records import Embedding
from run_directory.records import Vectors
from run_directory.tfrecord import encode_examples
from run_directory.tfrecord import ExamplesDecoder

H = 8
FULL_SPEC = EmbeddingTableSpec(
    hidden_size=H, sequence_output=True, encoder_layers=(0, 5))
FLOAT16_SPEC = EmbeddingTableSpec(
    hidden_size=H, sequence_output=True, sequence_dtype="float16",
    encoder_layers=(2,))


def make_embedding(rng, id_="doc-1", num_tokens=5, layers=(0, 5), h=H):
  return Embedding(
      id=id_,
      text=f"text of {id_}",
      source="corpus.txt",
      vectors=Vectors(
          embedding=rng.standard_normal(h).astype(np.float32),
          num_tokens=num_tokens,
          truncated=num_tokens % 2 == 1,
          token_ids=rng.integers(0, 30000, num_tokens).astype(np.int32),
          sequence_embedding=rng.standard_normal((num_tokens, h)).astype(
              np.float32),
          layers={
              i: rng.standard_normal(h).astype(np.float32) for i in layers
          }))


def names_types_modes(fields):
  return [(f["name"], f["type"], f["mode"]) for f in fields]


# --- BigQuery schema JSON ---------------------------------------------------


def test_bigquery_schema_of_minimal_spec():
  spec = EmbeddingTableSpec(hidden_size=H, include_text=False)
  fields = columns_lib.to_bigquery_schema(embedding_columns(spec))
  assert names_types_modes(fields) == [
      ("id", "STRING", "REQUIRED"),
      ("embedding", "FLOAT", "REPEATED"),
      ("num_tokens", "INTEGER", "REQUIRED"),
      ("truncated", "BOOLEAN", "REQUIRED"),
      ("run_id", "STRING", "REQUIRED"),
      ("model_fingerprint", "STRING", "REQUIRED"),
      ("content_hash", "STRING", "REQUIRED"),
  ]
  assert all("fields" not in f for f in fields)
  columns_lib.validate_bigquery_schema(fields)


def test_bigquery_schema_of_full_spec():
  fields = columns_lib.to_bigquery_schema(embedding_columns(FULL_SPEC))
  assert names_types_modes(fields) == [
      ("id", "STRING", "REQUIRED"),
      ("text", "STRING", "NULLABLE"),
      ("embedding", "FLOAT", "REPEATED"),
      ("num_tokens", "INTEGER", "REQUIRED"),
      ("truncated", "BOOLEAN", "REQUIRED"),
      ("run_id", "STRING", "REQUIRED"),
      ("model_fingerprint", "STRING", "REQUIRED"),
      ("content_hash", "STRING", "REQUIRED"),
      ("encoder_layer_0", "FLOAT", "REPEATED"),
      ("encoder_layer_5", "FLOAT", "REPEATED"),
      ("tokens", "RECORD", "REPEATED"),
  ]
  assert names_types_modes(fields[-1]["fields"]) == [
      ("position", "INTEGER", "REQUIRED"),
      ("token_id", "INTEGER", "REQUIRED"),
      ("embedding", "FLOAT", "REPEATED"),
  ]
  columns_lib.validate_bigquery_schema(fields)
  # BigQuery's own client reads it back the same (no network involved).
  parsed = [SchemaField.from_api_repr(f) for f in fields]
  assert [(f.name, f.field_type, f.mode) for f in parsed] == [
      (f["name"], f["type"], f["mode"]) for f in fields]
  assert [f.name for f in parsed[-1].fields] == [
      "position", "token_id", "embedding"]


def test_sequence_dtype_does_not_change_bigquery_schema():
  float32 = EmbeddingTableSpec(hidden_size=H, sequence_output=True)
  float16 = EmbeddingTableSpec(
      hidden_size=H, sequence_output=True, sequence_dtype="float16")
  assert columns_lib.to_bigquery_schema(
      embedding_columns(float32)) == columns_lib.to_bigquery_schema(
          embedding_columns(float16))


def test_neighbour_and_error_schemas():
  neighbours = columns_lib.to_bigquery_schema(tables.NEIGHBOUR_COLUMNS)
  assert names_types_modes(neighbours) == [
      ("id", "STRING", "REQUIRED"),
      ("rank", "INTEGER", "REQUIRED"),
      ("neighbour_id", "STRING", "REQUIRED"),
      ("score", "FLOAT", "REQUIRED"),
      ("run_id", "STRING", "REQUIRED"),
      ("model_fingerprint", "STRING", "REQUIRED"),
  ]
  errors = columns_lib.to_bigquery_schema(tables.ERROR_COLUMNS)
  assert [f["name"] for f in errors] == list(DeadLetter._fields) + ["run_id"]
  assert dict((f["name"], f["mode"]) for f in errors)["id"] == "NULLABLE"
  columns_lib.validate_bigquery_schema(neighbours)
  columns_lib.validate_bigquery_schema(errors)


def test_columns_round_trip_through_bigquery_json():
  for columns in (embedding_columns(FULL_SPEC),
                  tables.NEIGHBOUR_COLUMNS, tables.ERROR_COLUMNS):
    fields = columns_lib.to_bigquery_schema(columns)
    assert columns_lib.columns_from_bigquery_schema(fields) == columns


def test_validate_accepts_every_bigquery_type():
  fields = [{"name": f"c_{t.lower()}", "type": t, "mode": "NULLABLE"}
            for t in columns_lib.BIGQUERY_TYPES
            if t not in columns_lib.RECORD_TYPES]
  fields.append({"name": "r", "type": "STRUCT", "fields": [
      {"name": "x", "type": "INT64"}]})
  columns_lib.validate_bigquery_schema(fields)


VALID = [{"name": "id", "type": "STRING", "mode": "REQUIRED"},
         {"name": "tokens", "type": "RECORD", "mode": "REPEATED", "fields": [
             {"name": "embedding", "type": "FLOAT", "mode": "REPEATED"}]}]


def _broken(change):
  fields = copy.deepcopy(VALID)
  change(fields)
  return fields


@pytest.mark.parametrize("fields, message", [
    (_broken(lambda f: f[0].update(type="STIRNG")), "'STIRNG'"),
    (_broken(lambda f: f[0].update(type="FLOAT32")), "'FLOAT32'"),
    (_broken(lambda f: f[1]["fields"][0].update(type="FLAOT")),
     "tokens.embedding: unknown type 'FLAOT'"),
    (_broken(lambda f: f[0].update(mode="REPEATD")), "'REPEATD'"),
    (_broken(lambda f: f[0].update(name="1st")), "'1st'"),
    (_broken(lambda f: f[0].update(name="bad-name")), "'bad-name'"),
    (_broken(lambda f: f[0].update(name="x" * 301)), "bad column name"),
    (_broken(lambda f: f[0].update(name="_PARTITIONTIME")), "reserved"),
    (_broken(lambda f: f[1].update(name="ID")), "duplicate"),
    (_broken(lambda f: f[1].pop("fields")), "tokens: expected a non-empty"),
    (_broken(lambda f: f[1].update(fields=[])), "tokens: expected a non-empty"),
    (_broken(lambda f: f[0].update(fields=[{"name": "a", "type": "STRING"}])),
     "only RECORD columns have fields"),
    (_broken(lambda f: f[0].update(mdoe="REQUIRED")), "unknown keys ['mdoe']"),
    ([], "non-empty list"),
    ({"name": "id", "type": "STRING"}, "non-empty list"),
])
def test_validate_rejects(fields, message):
  with pytest.raises(ValueError, match="Invalid BigQuery schema") as raised:
    columns_lib.validate_bigquery_schema(fields)
  assert message in str(raised.value)


def test_validate_accepts_the_unbroken_schema():
  columns_lib.validate_bigquery_schema(VALID)


def test_spec_rejects_bad_values():
  with pytest.raises(ValueError, match="sequence_dtype"):
    EmbeddingTableSpec(hidden_size=H, sequence_dtype="bfloat16")
  with pytest.raises(ValueError, match="non-negative"):
    EmbeddingTableSpec(hidden_size=H, encoder_layers=(-1,))
  with pytest.raises(ValueError, match="duplicates"):
    EmbeddingTableSpec(hidden_size=H, encoder_layers=(1, 1))
  with pytest.raises(ValueError, match="hidden_size"):
    EmbeddingTableSpec(hidden_size=0)
  spec = EmbeddingTableSpec(hidden_size=H, encoder_layers=[3])
  assert spec.encoder_layers == (3,)


# --- Arrow and Avro schemas -------------------------------------------------


def test_arrow_schema():
  schema = arrow_lib.to_arrow_schema(embedding_columns(FULL_SPEC))
  assert schema.field("id").type == pa.string()
  assert not schema.field("id").nullable
  assert schema.field("text").nullable
  assert schema.field("embedding").type == pa.list_(
      pa.field("element", pa.float32(), nullable=False))
  assert schema.field("truncated").type == pa.bool_()
  token = schema.field("tokens").type.value_type
  assert [f.name for f in token] == ["position", "token_id", "embedding"]
  assert token.field("token_id").type == pa.int64()


def test_avro_schema_parses_and_holds_rows():
  columns = embedding_columns(FULL_SPEC)
  avro_schema = avro_lib.to_avro_schema(columns, name="embeddings")
  parsed = fastavro.parse_schema(avro_schema)
  by_name = {f["name"]: f["type"] for f in avro_schema["fields"]}
  assert by_name["id"] == "string"
  assert by_name["text"] == ["null", "string"]
  assert by_name["embedding"] == {"type": "array", "items": "float"}
  assert by_name["tokens"]["type"] == "array"
  assert by_name["tokens"]["items"]["type"] == "record"

  rng = np.random.default_rng(0)
  rows = [
      embeddings_lib.embedding_to_row(
          make_embedding(rng, f"d{i}"), FULL_SPEC, "run", "fp")
      for i in range(3)
  ]
  rows[1]["text"] = None  # NULLABLE
  buffer = io.BytesIO()
  fastavro.writer(buffer, parsed, rows, validator=True)
  buffer.seek(0)
  # float32 storage holds the float32 values exactly.
  assert list(fastavro.reader(buffer)) == rows


def test_error_and_neighbour_avro_schemas_parse():
  fastavro.parse_schema(avro_lib.to_avro_schema(tables.ERROR_COLUMNS, "errors"))
  fastavro.parse_schema(
      avro_lib.to_avro_schema(tables.NEIGHBOUR_COLUMNS, "neighbours"))


# --- Row converters ---------------------------------------------------------


def test_embedding_to_row_values():
  rng = np.random.default_rng(1)
  e = make_embedding(rng, num_tokens=4)
  row = embeddings_lib.embedding_to_row(e, FULL_SPEC, "run-7", "fp-9")
  assert [k for k in row] == [
      c.name for c in embedding_columns(FULL_SPEC)]
  assert row["id"] == "doc-1"
  assert row["text"] == "text of doc-1"
  assert row["num_tokens"] == 4 and type(row["num_tokens"]) is int
  assert row["truncated"] is False
  assert (row["run_id"], row["model_fingerprint"]) == ("run-7", "fp-9")
  assert row["content_hash"] == hashlib.sha256(
      b"text of doc-1").hexdigest()
  assert all(type(v) is float for v in row["embedding"])
  np.testing.assert_array_equal(
      np.array(row["embedding"], np.float32), e.embedding)
  np.testing.assert_array_equal(
      np.array(row["encoder_layer_0"], np.float32), e.layers[0])
  np.testing.assert_array_equal(
      np.array(row["encoder_layer_5"], np.float32), e.layers[5])
  assert [t["position"] for t in row["tokens"]] == [0, 1, 2, 3]
  assert [t["token_id"] for t in row["tokens"]] == e.token_ids.tolist()
  np.testing.assert_array_equal(
      np.array([t["embedding"] for t in row["tokens"]], np.float32),
      e.sequence_embedding)


def test_embedding_to_row_without_text_or_sequence():
  rng = np.random.default_rng(2)
  spec = EmbeddingTableSpec(hidden_size=H, include_text=False)
  row = embeddings_lib.embedding_to_row(make_embedding(rng), spec, "r", "f")
  assert set(row) == {
      "id", "embedding", "num_tokens", "truncated", "run_id",
      "model_fingerprint", "content_hash"}


def test_embedding_to_row_rounds_float16_sequence():
  rng = np.random.default_rng(3)
  e = make_embedding(rng, layers=(2,))
  row = embeddings_lib.embedding_to_row(e, FLOAT16_SPEC, "r", "f")
  written = np.array([t["embedding"] for t in row["tokens"]])
  assert all(type(v) is float for v in row["tokens"][0]["embedding"])
  expected = e.sequence_embedding.astype(np.float16).astype(np.float64)
  np.testing.assert_array_equal(written, expected)
  # Random float32 values are not float16 values: the rounding did happen.
  assert np.any(written != e.sequence_embedding.astype(np.float64))


@pytest.mark.parametrize("change, message", [
    (dict(layers={}), "encoder layer 0"),
    (dict(embedding=np.zeros(H + 1, np.float32)), r"shape \(9,\)"),
    (dict(token_ids=None), "no per-token output"),
    (dict(sequence_embedding=np.zeros((2, H), np.float32)),
     "sequence_embedding"),
])
def test_embedding_to_row_rejects_inconsistent_embeddings(change, message):
  e = make_embedding(np.random.default_rng(4))
  e = dataclasses.replace(e, vectors=dataclasses.replace(e.vectors, **change))
  with pytest.raises(ValueError, match=message):
    embeddings_lib.embedding_to_row(e, FULL_SPEC, "r", "f")
  with pytest.raises(ValueError, match=message):
    embeddings_lib.embeddings_to_record_batch([e], FULL_SPEC, "r", "f")


def test_dead_letter_and_neighbour_rows():
  d = DeadLetter(
      source="a.jsonl", position=3, stage="validate", reason="empty_text",
      detail="no text", snippet="{}", id="x")
  assert tables.dead_letter_to_row(d, "run") == {
      "source": "a.jsonl", "position": 3, "stage": "validate",
      "reason": "empty_text", "detail": "no text", "snippet": "{}",
      "id": "x", "run_id": "run"}
  row = tables.neighbour_to_row(
      {"id": "a", "rank": np.int64(1), "neighbour_id": "b", "score": 0.1},
      "run", "fp")
  assert row == {
      "id": "a", "rank": 1, "neighbour_id": "b",
      "score": float(np.float32(0.1)), "run_id": "run",
      "model_fingerprint": "fp"}
  assert type(row["rank"]) is int


# --- Arrow batches ----------------------------------------------------------


def _decode(serialized):
  example = tf.train.Example.FromString(serialized)
  return example.features.feature


def test_record_batch_encodes_to_tf_examples():
  rng = np.random.default_rng(5)
  batch = [make_embedding(rng, f"d{i}", num_tokens=3 + i) for i in range(3)]
  record_batch = embeddings_lib.embeddings_to_record_batch(
      batch, FULL_SPEC, "run-1", "fp-1")
  examples = encode_examples(record_batch)
  assert len(examples) == 3
  for e, serialized in zip(batch, examples):
    f = _decode(serialized)
    assert set(f) == {
        "id", "text", "embedding", "num_tokens", "truncated", "run_id",
        "model_fingerprint", "content_hash", "encoder_layer_0",
        "encoder_layer_5", "token_ids", "sequence_embedding"}
    assert f["content_hash"].bytes_list.value == [
        hashlib.sha256(e.text.encode()).hexdigest().encode()]
    assert f["id"].bytes_list.value == [e.id.encode()]
    assert f["text"].bytes_list.value == [e.text.encode()]
    np.testing.assert_array_equal(f["embedding"].float_list.value, e.embedding)
    assert f["num_tokens"].int64_list.value == [e.num_tokens]
    assert f["truncated"].int64_list.value == [int(e.truncated)]
    assert f["run_id"].bytes_list.value == [b"run-1"]
    assert f["model_fingerprint"].bytes_list.value == [b"fp-1"]
    np.testing.assert_array_equal(
        f["encoder_layer_5"].float_list.value, e.layers[5])
    assert list(f["token_ids"].int64_list.value) == e.token_ids.tolist()
    np.testing.assert_array_equal(
        np.array(f["sequence_embedding"].float_list.value).reshape(-1, H),
        e.sequence_embedding)


def test_record_batch_float16_sequence_is_one_bytes_value():
  rng = np.random.default_rng(6)
  batch = [make_embedding(rng, f"d{i}", num_tokens=2 + i, layers=(2,))
           for i in range(3)]
  examples = encode_examples(embeddings_lib.embeddings_to_record_batch(
      batch, FLOAT16_SPEC, "r", "f"))
  for e, serialized in zip(batch, examples):
    f = _decode(serialized)
    (data,) = f["sequence_embedding"].bytes_list.value
    assert len(data) == e.num_tokens * H * 2
    np.testing.assert_array_equal(
        np.frombuffer(data, "<f2").reshape(-1, H),
        e.sequence_embedding.astype(np.float16))
    assert "encoder_layer_0" not in f
    np.testing.assert_array_equal(
        f["encoder_layer_2"].float_list.value, e.layers[2])


def test_record_batch_without_optional_columns():
  rng = np.random.default_rng(7)
  spec = EmbeddingTableSpec(hidden_size=H, include_text=False)
  record_batch = embeddings_lib.embeddings_to_record_batch(
      [make_embedding(rng)], spec, "r", "f")
  assert record_batch.schema.names == [
      "id", "embedding", "num_tokens", "truncated", "run_id",
      "model_fingerprint", "content_hash"]


@pytest.mark.parametrize("spec", [FULL_SPEC, FLOAT16_SPEC])
def test_arrow_batch_matches_row_converter(spec):
  rng = np.random.default_rng(8)
  batch = [
      make_embedding(rng, f"d{i}", num_tokens=1 + i, layers=(0, 2, 5))
      for i in range(4)
  ]
  arrow = embeddings_lib.embeddings_to_arrow(batch, spec, "r", "f")
  assert arrow.schema == arrow_lib.to_arrow_schema(
      embedding_columns(spec))
  assert arrow.to_pylist() == [
      embeddings_lib.embedding_to_row(e, spec, "r", "f") for e in batch]


def test_empty_batches():
  for to_batch in (embeddings_lib.embeddings_to_record_batch,
                   embeddings_lib.embeddings_to_arrow):
    assert to_batch([], FULL_SPEC, "r", "f").num_rows == 0


def test_neighbour_rows_to_tf_examples():
  rows = [
      tables.neighbour_to_row(
          {"id": "a", "rank": r, "neighbour_id": f"n{r}", "score": 1 / r},
          "run", "fp") for r in (1, 2)
  ]
  examples = encode_examples(
      arrow_lib.rows_to_record_batch(rows, tables.NEIGHBOUR_COLUMNS))
  f = _decode(examples[1])
  assert f["id"].bytes_list.value == [b"a"]
  assert f["rank"].int64_list.value == [2]
  assert f["neighbour_id"].bytes_list.value == [b"n2"]
  assert f["score"].float_list.value == [pytest.approx(0.5)]
  assert f["model_fingerprint"].bytes_list.value == [b"fp"]


def test_flat_rows_to_tf_examples_nulls_and_booleans():
  # A NULL is a feature without values, not an empty string or a 0; a
  # boolean is an int64 0/1; the rows stay apart (the offsets of the flat
  # arrays).
  columns = (
      Column("id", "STRING", REQUIRED, "."),
      Column("note", "STRING", NULLABLE, "."),
      Column("flag", "BOOLEAN", REQUIRED, "."),
      Column("count", "INTEGER", NULLABLE, "."),
  )
  rows = [
      {"id": "x\u00e9", "note": None, "flag": True, "count": 3},
      {"id": "y", "note": "", "flag": False, "count": None},
      {"id": "z", "note": "n", "flag": True, "count": 0},
  ]
  decoded = [_decode(e) for e in encode_examples(
      arrow_lib.rows_to_record_batch(rows, columns))]
  assert [list(f["note"].bytes_list.value) for f in decoded] == [
      [], [b""], [b"n"]]
  assert [list(f["count"].int64_list.value) for f in decoded] == [
      [3], [], [0]]
  assert decoded[0]["id"].bytes_list.value == ["x\u00e9".encode("utf-8")]
  assert decoded[1]["note"].bytes_list.value == [b""]
  assert [f["flag"].int64_list.value[0] for f in decoded] == [1, 0, 1]
  assert decoded[2]["count"].int64_list.value == [0]


def test_example_layout_schema():
  schema = arrow_lib.example_layout_arrow_schema(
      embedding_columns(FULL_SPEC))
  assert schema.names == [
      "id", "text", "embedding", "num_tokens", "truncated", "run_id",
      "model_fingerprint", "content_hash", "encoder_layer_0",
      "encoder_layer_5", "token_ids", "sequence_embedding"]
  assert schema.field("truncated").type == pa.bool_()
  assert schema.field("sequence_embedding").type.value_type == pa.float32()


# --- The chunks table (--chunk_size) ----------------------------------------

CHUNKED_SPEC = dataclasses.replace(FULL_SPEC, chunked=True)


def make_chunk(rng, document_id="doc-1", index=0, num_tokens=4):
  e = make_embedding(rng, document_id, num_tokens=num_tokens, layers=())
  return Chunk(id=f"{document_id}#{index}", document_id=document_id,
               chunk_index=index, start=3 * index, end=3 * index + 7,
               text=f"chunk {index} ✓", vectors=e.vectors)


def test_chunk_table_columns():
  columns = [c.name for c in chunk_columns(CHUNKED_SPEC)]
  assert columns == ["id", "document_id", "chunk_index", "start", "end",
                     "text", "embedding", "num_tokens", "run_id",
                     "model_fingerprint", "tokens"]
  # The documents' table: num_chunks, and the tokens go to the chunks.
  document_columns = [c.name for c in embedding_columns(CHUNKED_SPEC)]
  assert "num_chunks" in document_columns and "tokens" not in (
      document_columns)
  for spec in (CHUNKED_SPEC, dataclasses.replace(CHUNKED_SPEC,
                                                 include_text=False)):
    columns_lib.validate_bigquery_schema(
        columns_lib.to_bigquery_schema(chunk_columns(spec)))
  neighbour_columns = [c.name for c in tables.CHUNK_NEIGHBOUR_COLUMNS]
  assert neighbour_columns == ["id", "document_id", "rank", "neighbour_id",
                               "neighbour_document_id", "score", "run_id",
                               "model_fingerprint"]


def test_chunk_converters_agree_and_round_trip():
  rng = np.random.default_rng(3)
  batch = [make_chunk(rng, f"d{i // 2}", i % 2, num_tokens=2 + i)
           for i in range(5)]
  arrow = embeddings_lib.chunks_to_arrow(batch, CHUNKED_SPEC, "r", "f")
  assert arrow.schema == arrow_lib.to_arrow_schema(
      chunk_columns(CHUNKED_SPEC))
  assert arrow.to_pylist() == [
      embeddings_lib.chunk_to_row(c, CHUNKED_SPEC, "r", "f") for c in batch]
  examples = encode_examples(embeddings_lib.chunks_to_record_batch(
      batch, CHUNKED_SPEC, "r", "f"))
  decoded = ExamplesDecoder().decode(examples)
  back = list(embeddings_lib.chunks_from_examples(decoded, CHUNKED_SPEC))
  assert [(d, i, c.start, c.end) for d, i, c in back] == [
      (c.document_id, c.chunk_index, c.start, c.end) for c in batch]
  for (_, _, chunk), original in zip(back, batch):
    np.testing.assert_array_equal(chunk.vectors.embedding, original.embedding)
    np.testing.assert_array_equal(chunk.vectors.token_ids,
                                  original.token_ids)
    np.testing.assert_array_equal(chunk.vectors.sequence_embedding,
                                  original.sequence_embedding)
