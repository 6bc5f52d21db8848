"""Two-segment input (--text_field a --text_pair_field b) for pair tasks.

Readers of every format that can hold two fields, the packing ([CLS] a [SEP]
b [SEP], input_type_ids 0 then 1, round-robin truncation) against Hugging
Face's pair encoding and the encoder called directly, ids derived from both
texts, and a run of pipeline.main end to end.
"""

import io
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
from transformers import BertTokenizerFast

from bert_model import metadata as metadata_lib
from bert_model.loaded_model import LoadedBertModel
from bert_model.loaded_model import ModelSettings
from pipeline import main
from pipeline import read_outputs
from pipeline.embedder import Embedder
from pipeline.errors import ConfigError
from run_directory.records import DeadLetter
from run_directory.records import derive_document_id
from run_directory.records import Document
from tests import network_guard
from tests import tiny_v1
from transforms import formats
from transforms.embed import model_input
from transforms.formats.fields import RecordSpec
from transforms.read import ReadCorpus

MISSING = "missing_field"
NON_STRING = "non_string_field"
MAX_SEQ_LENGTH = 32  # the tiny model's own
PAIRS = [
    ("hello world", "the quick brown fox"),
    ("a lazy dog", "sat on the mat"),
    ("embedding search", "text vectors, 1, 2, 3!"),
    ("Hello", "Hello"),
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Refuses, and records, outside connections: no test may try one."""
  attempts = network_guard.guard_network(monkeypatch)
  yield attempts
  assert not attempts, f"network use attempted: {attempts}"


_PAIR_SPEC = RecordSpec(id_field="id", text_field="a", text_pair_field="b")


def _records(input_format, data: bytes, source):
  return list(formats.READERS[input_format](io.BytesIO(data), source,
                                            _PAIR_SPEC))


def _check_pair_records(records, source):
  """The common corpus: 0 has an id, 1 none, 2 lacks b, 3 has a non-string
  b (where the format can say so)."""
  first, second = records[0], records[1]
  assert first == Document(id="p0", text="hello", source=source, position=0,
                           text_pair="world")
  assert isinstance(second, Document) and second.text_pair == "fox"
  assert second.id == derive_document_id(source, "the", "fox")
  missing = records[2]
  assert isinstance(missing, DeadLetter) and missing.reason == MISSING
  assert missing.id == "p2" and "'b'" in missing.detail
  assert "--text_pair_field" in missing.detail or "null" in missing.detail


# ---------------------------------------------------------------------------
# Readers.


def test_jsonl_pairs():
  lines = [{"id": "p0", "a": "hello", "b": "world"},
           {"a": "the", "b": "fox"},
           {"id": "p2", "a": "no pair"},
           {"id": "p3", "a": "number", "b": 7}]
  records = _records("jsonl",
                     "".join(json.dumps(l) + "\n" for l in lines).encode(),
                     "pairs.jsonl")
  _check_pair_records(records, "pairs.jsonl")
  assert records[3].reason == NON_STRING and records[3].id == "p3"


def test_csv_pairs():
  data = b"id,a,b\np0,hello,world\n,the,fox\n"
  records = _records("csv", data, "pairs.csv")
  assert records[0] == Document("p0", "hello", "pairs.csv", 0, "world")
  assert records[1].id == derive_document_id("pairs.csv", "the", "fox")
  # A header without the pair column: every row is accounted for.
  records = _records("tsv", b"id\ta\np0\thello\np1\tworld\n", "pairs.tsv")
  assert [(r.reason, r.id) for r in records] == [(MISSING, "p0"),
                                                 (MISSING, "p1")]


def test_parquet_pairs():
  table = pa.table({"id": ["p0", None, "p2", "p3"],
                    "a": ["hello", "the", "no pair", "x"],
                    "b": ["world", "fox", None, "y"]})
  sink = io.BytesIO()
  pq.write_table(table, sink)
  records = _records("parquet", sink.getvalue(), "p.parquet")
  _check_pair_records(records, "p.parquet")
  assert records[3] == Document("p3", "x", "p.parquet", 3, "y")
  # Without the pair column at all.
  sink = io.BytesIO()
  pq.write_table(table.drop(["b"]), sink)
  records = _records("parquet", sink.getvalue(), "p.parquet")
  assert {r.reason for r in records} == {MISSING}


def test_tfrecord_pairs(tmp_path):
  def example(**features):
    feature = {}
    for key, value in features.items():
      if isinstance(value, int):
        feature[key] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[value]))
      else:
        feature[key] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[value.encode()]))
    return tf.train.Example(features=tf.train.Features(
        feature=feature)).SerializeToString()

  path = str(tmp_path / "pairs.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(example(id="p0", a="hello", b="world"))
    writer.write(example(a="the", b="fox"))
    writer.write(example(id="p2", a="no pair"))
    writer.write(example(id="p3", a="number", b=7))
  with open(path, "rb") as f:
    records = _records("tfrecord", f.read(), "pairs.tfrecord")
  _check_pair_records(records, "pairs.tfrecord")
  assert records[3].reason == NON_STRING


def test_plain_text_cannot_hold_pairs(tmp_path):
  with pytest.raises(ValueError, match="pair input"):
    ReadCorpus(str(tmp_path / "x.txt"), record=RecordSpec(text_pair_field="b"))


def test_pair_ids_cover_both_texts():
  one = derive_document_id("f.jsonl", "a question", "an answer")
  assert one == derive_document_id("dir/f.jsonl", "a question", "an answer")
  assert one != derive_document_id("f.jsonl", "a question", "another answer")
  assert one != derive_document_id("f.jsonl", "a question")
  # Where one text ends and the other starts is part of the id.
  assert derive_document_id("f", "ab", "c") != derive_document_id("f", "a",
                                                                   "bc")
  # Single texts keep their ids.
  assert derive_document_id("f", "x") == derive_document_id("f", "x", None)
  assert model_input(Document("i", "x", "f", 0)) == "x"
  assert model_input(Document("i", "x", "f", 0, "y")) == ("x", "y")


# ---------------------------------------------------------------------------
# Packing and vectors.


def _hf_tokenizer(model_dir):
  return BertTokenizerFast(os.path.join(model_dir, metadata_lib.VOCAB_FILE),
                           do_lower_case=True)


def _settings(model_dir, **kwargs):
  kwargs.setdefault("max_seq_length", MAX_SEQ_LENGTH)
  return ModelSettings(
      preprocess_path=os.path.join(model_dir, metadata_lib.PREPROCESS_DIR),
      encoder_path=os.path.join(model_dir, metadata_lib.ENCODER_DIR),
      text_pairs=True, **kwargs)


def _direct(encoder, encoded, seq_length):
  """The v2 encoder called on HF-encoded pairs padded to seq_length."""
  ids = np.zeros([len(encoded), seq_length], np.int32)
  types = np.zeros_like(ids)
  for i, item in enumerate(encoded):
    ids[i, :len(item["input_ids"])] = item["input_ids"]
    types[i, :len(item["token_type_ids"])] = item["token_type_ids"]
  return encoder({"input_word_ids": tf.constant(ids),
                  "input_mask": tf.constant((ids > 0).astype(np.int32)),
                  "input_type_ids": tf.constant(types)})


def test_pairs_are_packed_like_the_reference(tiny_model_dir):
  reference = _hf_tokenizer(tiny_model_dir)
  encoded = [reference(a, b) for a, b in PAIRS]
  model = LoadedBertModel(_settings(tiny_model_dir, pooling="cls",
                                    normalize=False, sequence_output=True))
  outputs = model.embed(PAIRS)
  for i, item in enumerate(encoded):
    n = int(outputs["num_tokens"][i])
    assert outputs["token_ids"][i, :n].tolist() == item["input_ids"]
  assert not outputs["truncated"].any()

  encoder = hub.load(os.path.join(tiny_model_dir, metadata_lib.ENCODER_DIR))
  direct = _direct(encoder, encoded, MAX_SEQ_LENGTH)
  # input_type_ids 1 for segment b: the vectors are the encoder's on the
  # reference's token_type_ids...
  np.testing.assert_allclose(outputs["embedding"],
                             direct["sequence_output"].numpy()[:, 0],
                             atol=1e-5)
  # ...which differ from all-zero type ids.
  for item in encoded:
    item["token_type_ids"] = [0] * len(item["token_type_ids"])
  zeros = _direct(encoder, encoded, MAX_SEQ_LENGTH)
  assert not np.allclose(outputs["embedding"],
                         zeros["sequence_output"].numpy()[:, 0], atol=1e-3)


def test_pair_truncation_is_round_robin(tiny_model_dir):
  reference = _hf_tokenizer(tiny_model_dir)
  long_text = " ".join(["the quick brown fox"] * 10)  # 40 wordpieces
  model = LoadedBertModel(_settings(tiny_model_dir, max_seq_length=16,
                                    sequence_output=True))
  outputs = model.embed([("hello", long_text), (long_text, long_text),
                         ("hello", "world")])
  assert outputs["truncated"].tolist() == [True, True, False]
  assert outputs["num_tokens"].tolist() == [16, 16, 5]
  # One long segment: the short one is kept whole (as longest-first does).
  expected = reference("hello", long_text, truncation="longest_first",
                       max_length=16)["input_ids"]
  assert outputs["token_ids"][0].tolist() == expected
  # Two long ones share the budget: 13 wordpieces, 7 + 6.
  row = outputs["token_ids"][1].tolist()
  sep = [i for i, t in enumerate(row) if t == 3]
  assert (sep[0] - 1, sep[1] - sep[0] - 1) in ((7, 6), (6, 7))


def test_pairs_with_a_v1_encoder(tmp_path):
  path = tiny_v1.write_tiny_v1_encoder(str(tmp_path / "v1"))
  model = LoadedBertModel(ModelSettings(
      preprocess_path=None, encoder_path=path, max_seq_length=MAX_SEQ_LENGTH,
      pooling="pooler", normalize=False, encoder_format="v1",
      text_pairs=True))
  outputs = model.embed(PAIRS)
  reference = BertTokenizerFast(os.path.join(path, "assets", "vocab.txt"),
                                do_lower_case=True)
  encoded = [reference(a, b) for a, b in PAIRS]
  ids = np.zeros([len(PAIRS), MAX_SEQ_LENGTH], np.int32)
  types = np.zeros_like(ids)
  for i, item in enumerate(encoded):
    ids[i, :len(item["input_ids"])] = item["input_ids"]
    types[i, :len(item["token_type_ids"])] = item["token_type_ids"]
  pooled, _ = tf.saved_model.load(path)(
      [tf.constant(ids), tf.constant((ids > 0).astype(np.int32)),
       tf.constant(types)])
  np.testing.assert_allclose(outputs["embedding"], pooled.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------
# End to end.


def test_pairs_end_to_end(tiny_model_dir, tmp_path):
  corpus = tmp_path / "pairs.jsonl"
  records = [{"id": f"p{i}", "question": a, "answer": b}
             for i, (a, b) in enumerate(PAIRS)]
  records.append({"question": "no id here", "answer": "the fox"})
  records.append({"id": "lonely", "question": "no answer"})
  corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
  run_dir = str(tmp_path / "run")
  result = main.run([
      "--input", str(corpus), "--output", run_dir, "--model", tiny_model_dir,
      "--text_field", "question", "--text_pair_field", "answer",
      "--neighbours_k", "2", "--runner=DirectRunner",
      "--max_bad_fraction=0.2"])  # 1 of 6 is bad on purpose
  assert result.state == PipelineState.DONE

  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["counts"]["read"] == 6
  assert manifest["counts"]["embedded"] == 5
  assert manifest["counts"]["dead_lettered"] == 1
  assert manifest["settings"]["input"]["text_pair_field"] == "answer"
  errors = read_outputs.read_errors(run_dir)
  assert [(e["reason"], e["id"]) for e in errors] == [(MISSING, "lonely")]
  assert "'answer'" in errors[0]["detail"]

  pairs = {f"p{i}": pair for i, pair in enumerate(PAIRS)}
  derived = derive_document_id(str(corpus), "no id here", "the fox")
  pairs[derived] = ("no id here", "the fox")
  ids, matrix = read_outputs.load_embeddings(run_dir)
  assert sorted(ids) == sorted(pairs)

  # Reference: the preprocess model's own packing at a fixed length, the
  # encoder, masked mean and L2 norm (the tiny model's pooling).
  preprocess = hub.load(os.path.join(tiny_model_dir,
                                     metadata_lib.PREPROCESS_DIR))
  encoder = hub.load(os.path.join(tiny_model_dir, metadata_lib.ENCODER_DIR))
  firsts = tf.constant([pairs[i][0] for i in ids])
  seconds = tf.constant([pairs[i][1] for i in ids])
  inputs = preprocess.bert_pack_inputs(
      [preprocess.tokenize(firsts), preprocess.tokenize(seconds)],
      seq_length=tf.constant(MAX_SEQ_LENGTH, tf.int32))
  assert inputs["input_type_ids"].numpy().max() == 1
  sequence = encoder(inputs)["sequence_output"].numpy()
  mask = inputs["input_mask"].numpy()[:, :, None]
  mean = (sequence * mask).sum(axis=1) / mask.sum(axis=1)
  expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
  np.testing.assert_allclose(matrix, expected, atol=1e-5)
  # The rows carry the first text as `text`.
  rows = read_outputs.read_table(run_dir, "embeddings",
                                 format="tfrecord").to_pylist()
  assert {r["id"]: r["text"] for r in rows} == {
      i: pair[0] for i, pair in pairs.items()}

  # Found by a user trial: a later run of single texts carried the pair
  # vectors over, and Embedder.from_run embedded queries unlike them.
  assert manifest["model"]["text_pairs"] is True
  # The refusal names what does search a pair run (a user trial).
  with pytest.raises(ValueError, match="the run embedded text pairs.*Find a "
                     "pair's neighbours with pipeline.main --neighbours_of"):
    Embedder.from_run(run_dir)
  # Runs before model.text_pairs was recorded: told by the settings.
  del manifest["model"]["text_pairs"]
  with open(os.path.join(run_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="the run embedded text pairs"):
    Embedder.from_run(run_dir)
  singles = str(tmp_path / "singles")
  main.run(["--input", str(corpus), "--output", singles, "--model",
            tiny_model_dir, "--text_field", "question", "--previous_run",
            run_dir, "--neighbours_k", "0", "--runner=DirectRunner",
            "--max_bad_fraction=0.2"])
  again = read_outputs.load_manifest(singles)
  assert again["counts"]["reused"] == 0 and again["counts"]["inferred"] == 6
  assert again["previous_run"]["reason"] == "settings changed: text_pairs"
  assert "text_pairs" not in again["model"]


@pytest.mark.parametrize("flags, message", [
    (["--input", "{txt}", "--text_pair_field", "b"],
     r"--text_pair_field: --input is plain text"),
    (["--input", "{jsonl}", "--text_pair_field", "text"],
     r"--text_pair_field='text'.*other than --text_field"),
    (["--input", "{jsonl}", "--text_pair_field", "b", "--previous_run",
      "{txt}"], r"cannot be combined with --previous_run"),
])
def test_pair_flag_errors(flags, message, tiny_model_dir, tmp_path):
  txt = tmp_path / "corpus.txt"
  txt.write_text("hello\n")
  jsonl = tmp_path / "corpus.jsonl"
  jsonl.write_text('{"text": "a", "b": "b"}\n')
  run_dir = str(tmp_path / "run")
  argv = [f.format(txt=txt, jsonl=jsonl) for f in flags]
  with pytest.raises(ConfigError, match=message):
    main.run([*argv, "--output", run_dir, "--model", tiny_model_dir,
              "--runner=DirectRunner"])
  assert not os.path.exists(run_dir)
