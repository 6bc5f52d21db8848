"""Queries embedded exactly like the index: Embedder, the serving SavedModel,
and the query CLI, against what the pipeline wrote."""

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

from apache_beam.options.pipeline_options import PipelineOptions
import faiss
import hypothesis
from hypothesis import strategies as st
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the serving model's ops)
from tensorflow.core.protobuf import saved_model_pb2

from bert_model import resolution
from bert_model.chunking import ChunkSettings
from pipeline import export_job
from pipeline import export_model
from pipeline import model_plan
from pipeline import main
from pipeline import query
from pipeline import search as search_lib
from pipeline import read_outputs
from pipeline import embedder as embedder_lib
from pipeline.config import config_from_options
from pipeline.embedder import Embedder
from pipeline.errors import ConfigError
from tests.real_text import real_sentences


def _run(directory, texts: dict, model_dir, *flags) -> str:
  """Runs the pipeline on {id: text}; returns the run directory."""
  corpus = str(directory / "c.jsonl")
  with open(corpus, "w", encoding="utf-8") as f:
    for doc_id, text in texts.items():
      f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
  run_dir = str(directory / "run")
  main.run([f"--input={corpus}", f"--output={run_dir}",
            f"--model={model_dir}", "--neighbours_k=0",
            "--runner=DirectRunner", *flags])
  return run_dir


def _cosines(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(1) / (np.linalg.norm(a, axis=1) *
                           np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def real_run(default_model_dir, tmp_path_factory):
  """300 real sentences, some longer than --max_seq_length 32."""
  root = tmp_path_factory.mktemp("embedder")
  texts = {f"s{i:03d}": t for i, t in enumerate(real_sentences(300))}
  run_dir = _run(root, texts, default_model_dir, "--max_seq_length=32")
  rows = {r["id"]: r for r in read_outputs.read_table(run_dir).to_pylist()}
  return texts, rows, run_dir


def test_embedder_vectors_equal_the_pipelines(real_run):
  texts, rows, run_dir = real_run
  embedder = Embedder.from_run(run_dir)
  assert embedder.settings.max_seq_length == 32
  ids = sorted(texts, reverse=True)  # other batches than the pipeline's
  vectors = np.concatenate([embedder.embed([texts[i] for i in ids[s:s + 37]])
                            for s in range(0, len(ids), 37)])
  assert vectors.dtype == np.float32 and vectors.shape == (300, 384)
  cosine = _cosines(vectors, [rows[i]["embedding"] for i in ids])
  assert cosine.min() >= 0.999999
  assert sum(rows[i]["truncated"] for i in ids) >= 20


# The tensorflow_text ops the serving SavedModel may use: TF Serving's model
# server (and so Vertex AI's prebuilt TensorFlow containers) links these in;
# an op of a newer tensorflow_text (as FastBertNormalize once was:
# tensorflow/serving#2064) would fail to load there, and is named in
# docs/serving.md before it is added here.
SERVED_TEXT_OPS = {"FastWordpieceTokenizeWithOffsets", "NormalizeUTF8",
                   "RegexSplitWithOffsets"}


def _graph_ops(saved_model_dir: str) -> set:
  """The op types of a SavedModel's graph and its functions."""
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  graph = saved_model.meta_graphs[0].graph_def
  return ({node.op for node in graph.node} |
          {node.op for function in graph.library.function
           for node in function.node_def})


def test_serving_model_equals_the_embedder(real_run, tmp_path):
  texts, rows, run_dir = real_run
  serving_dir = str(tmp_path / "serving")
  # As a person runs it: one line of result, and none of TensorFlow's
  # notices (its start-up, the SavedModel's save).
  done = subprocess.run(
      [sys.executable, "-m", "pipeline.export_model", "--serving", run_dir,
       f"--output_dir={serving_dir}"], capture_output=True, text=True,
      check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(
          __file__))))
  assert done.stdout.startswith(
      f"Wrote the serving SavedModel of {run_dir} to {serving_dir}")
  assert done.stderr == ""
  # Only core TensorFlow ops (tf.raw_ops) and the tokenizer's, which model
  # servers link in.
  outside_core = {op for op in _graph_ops(serving_dir)
                  if not hasattr(tf.raw_ops, op)}
  assert outside_core == SERVED_TEXT_OPS
  served = tf.saved_model.load(serving_dir).signatures["serving_default"]
  some = [texts[i] for i in sorted(texts)[:40]]
  outputs = served(text=tf.constant(some))
  embedder = Embedder.from_run(run_dir)
  cosine = _cosines(outputs["embedding"].numpy(), embedder.embed(some))
  assert cosine.min() >= 0.999999
  expected = [rows[i] for i in sorted(texts)[:40]]
  np.testing.assert_array_equal(outputs["num_tokens"].numpy(),
                                [r["num_tokens"] for r in expected])
  np.testing.assert_array_equal(outputs["truncated"].numpy(),
                                [r["truncated"] for r in expected])
  # Found by a user trial: an empty request failed in RaggedToTensor.
  empty = served(text=tf.constant([], tf.string))
  assert empty["embedding"].shape == (0, embedder.hidden_size)
  assert empty["num_tokens"].shape == empty["truncated"].shape == (0,)
  # Refuses to write over a directory, and needs --output_dir.
  assert export_model.main(["--serving", run_dir,
                            f"--output_dir={serving_dir}"]) == 2
  with pytest.raises(SystemExit):
    export_model.main(["--serving", run_dir])


def test_query_finds_a_documents_own_text(real_run, capsys):
  texts, _, run_dir = real_run
  assert query.main([run_dir, texts["s007"], "--k", "3"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3
  assert lines[0].split()[2] == "s007"
  assert float(lines[0].split()[1]) == pytest.approx(1.0, abs=1e-5)
  embedder = Embedder.from_run(run_dir)
  for doc_id in ("s123", "s299"):
    score, row = search_lib.search(run_dir, texts[doc_id], k=1,
                                   embedder=embedder)[0]
    assert row["id"] == doc_id and row["text"] == texts[doc_id]
    assert score == pytest.approx(1.0, abs=1e-5)


def test_the_query_command_prints_its_hits_and_no_notices(real_run):
  # As a person runs it: TensorFlow's start-up and model-load notices
  # (oneDNN, CUDA probing, absl) stay off the screen, as in pipeline.main.
  texts, rows, run_dir = real_run

  def query_with(text):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.query", run_dir, text, "--k", "1"],
        capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

  done = query_with(texts["s042"])
  assert not rows["s042"]["truncated"]
  assert done.stdout.split()[2] == "s042"
  assert done.stderr == ""
  # Found by a user trial: a question longer than the run's documents may
  # be was cut without a word, as no document is.
  cut = next(i for i in sorted(rows) if rows[i]["truncated"])
  done = query_with(texts[cut])
  assert done.stdout.split()[2] == cut
  assert done.stderr == (
      "The question lost text, as the run's documents do when longer than "
      "32 wordpieces (max_seq_length): only its start was searched.\n")


def test_the_query_command_tells_why_a_no_text_runs_hits_are_bare_ids(
    tmp_path, tiny_model_dir, capsys):
  run_dir = _run(tmp_path, {"a": "the quick brown fox", "b": "hello world"},
                 tiny_model_dir, "--no_text")
  assert query.main([run_dir, "hello world", "--k", "1"]) == 0
  out, err = capsys.readouterr()
  assert out.split() == ["1", "1.0000", "b"]
  assert err == ("The run was made with --no_text: its rows hold no text, "
                 "so the hits show ids only.\n")


def test_embed_chunks_equals_the_chunks_table(tmp_path, tiny_model_dir):
  texts = {"long": "hello world the cat sat on a mat . " * 9,
           "short": "the quick brown fox"}
  run_dir = _run(tmp_path, texts, tiny_model_dir, "--chunk_size=12")
  embedder = Embedder.from_run(run_dir)
  rows = sorted((r for r in read_outputs.read_table(run_dir, "chunks")
                 .to_pylist() if r["document_id"] == "long"),
                key=lambda r: r["chunk_index"])
  chunks = embedder.embed_chunks(texts["long"])
  assert [(c.start, c.end, c.text, c.num_tokens) for c in chunks] == [
      (r["start"], r["end"], r["text"], r["num_tokens"]) for r in rows]
  assert _cosines([c.embedding for c in chunks],
                  [r["embedding"] for r in rows]).min() >= 0.999999
  # One text, told as such (it was "text 0 is of type list").
  with pytest.raises(TypeError, match=r"embed_chunks takes one text \(str\), "
                     "not list"):
    embedder.embed_chunks([texts["long"]])
  documents = {r["id"]: r for r in read_outputs.read_table(run_dir)
               .to_pylist()}
  assert _cosines(embedder.embed([texts["long"]]),
                  [documents["long"]["embedding"]]).min() >= 0.999999
  # The query CLI searches the chunks of a chunked run.
  hits = search_lib.search(run_dir, rows[1]["text"], k=1, embedder=embedder)
  assert hits[0][1]["id"] in {r["id"] for r in rows}
  # Found by a fuzzer: without its chunk settings, a chunked run's queries
  # were embedded whole, and ranked otherwise.
  path = os.path.join(run_dir, "manifest.json")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  del manifest["model"]["chunking"]
  with open(path, "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="has a chunks table but no "
                     "model.chunking settings"):
    Embedder.from_run(run_dir)


def test_a_serving_model_of_a_chunked_run_embeds_a_text_as_one_chunk(
    tmp_path, tiny_model_dir, capsys):
  # Found by an acceptance audit: it embedded texts whole up to
  # max_seq_length (32 here), so a text of 13-32 wordpieces, which the run
  # chunks, got a vector the run has for nothing, and truncated: false.
  texts = {"long": "hello world the cat sat on a mat . " * 9,
           "short": "the quick brown fox"}
  run_dir = _run(tmp_path, texts, tiny_model_dir, "--chunk_size=12")
  serving_dir = str(tmp_path / "serving")
  assert export_model.main(["--serving", run_dir,
                            f"--output_dir={serving_dir}"]) == 0
  assert ("chunks of 12 wordpieces: the SavedModel embeds a text as one "
          "chunk") in capsys.readouterr().out
  served = tf.saved_model.load(serving_dir).signatures["serving_default"]
  embedder = Embedder.from_run(run_dir)
  chunks = embedder.embed_chunks(texts["long"])
  asked = [texts["short"], chunks[1].text, texts["long"]]
  outputs = served(text=tf.constant(asked))
  # A text that fits one chunk: the run's vector of it, as a document and
  # as a chunk.
  assert _cosines(outputs["embedding"].numpy()[:2],
                  [embedder.embed([texts["short"]])[0],
                   chunks[1].embedding]).min() >= 0.999999
  assert outputs["num_tokens"].numpy().tolist()[:2] == [
      6, chunks[1].num_tokens]
  # A longer one is cut at the chunk size, and says so.
  assert outputs["truncated"].numpy().tolist() == [False, False, True]
  assert outputs["num_tokens"].numpy()[2] == 12


def test_a_run_with_a_relative_model_path_is_queried_from_anywhere(
    tmp_path, tiny_model_dir, monkeypatch):
  # The manifest names the model by its absolute path, so a run made with
  # --model=models/tiny works from another working directory too.
  os.makedirs(tmp_path / "made" / "models")
  os.symlink(tiny_model_dir, tmp_path / "made" / "models" / "tiny")
  monkeypatch.chdir(tmp_path / "made")
  run_dir = _run(tmp_path, {"a": "the cat sat", "b": "a dog ran"},
                 os.path.join("models", "tiny"))
  assert json.load(open(os.path.join(run_dir, "manifest.json")))[
      "model"]["path"] == str(tmp_path / "made" / "models" / "tiny")
  monkeypatch.chdir(tmp_path)
  hits = search_lib.search(run_dir, "the cat sat", k=1)
  assert hits[0][1]["id"] == "a"


def test_a_changed_model_is_refused(real_run, tmp_path):
  _, _, run_dir = real_run
  manifest_path = os.path.join(run_dir, "manifest.json")
  moved = str(tmp_path / "run")
  os.makedirs(moved)
  with open(manifest_path) as f:
    manifest = json.load(f)
  manifest["model"]["fingerprint"] = "sha256:other"
  with open(os.path.join(moved, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="fingerprint"):
    Embedder.from_run(moved)
  with pytest.raises(TypeError):
    Embedder.from_run(run_dir).embed("one text, not a list")


@pytest.fixture(scope="module")
def ann_run(tiny_model_dir, tmp_path_factory):
  """A run of 60 real sentences that kept its FAISS index."""
  texts = {f"t{i:02d}": t for i, t in enumerate(real_sentences(60))}
  run_dir = _run(tmp_path_factory.mktemp("ann"), texts, tiny_model_dir,
                 "--neighbours_k=3", "--neighbours_mode=ann")
  return texts, run_dir


def _copy_of(run_dir: str, tmp_path) -> str:
  copy = str(tmp_path / "copy")
  shutil.copytree(run_dir, copy)
  return copy


def test_a_run_searched_through_the_index_it_kept(ann_run, tmp_path,
                                                  monkeypatch):
  texts, run_dir = ann_run
  with open(os.path.join(run_dir, "manifest.json")) as f:
    listed = json.load(f)["outputs"]["ann_index"]
  assert listed == {"faiss": ["ann_index/index.faiss"],
                    "ids": ["ann_index/ids.jsonl"]}
  embedder = Embedder.from_run(run_dir)
  # The candidates come from the index (and --exact scores every row).
  asked = []
  index_candidates = search_lib._index_candidates  # pylint: disable=protected-access

  def recorded(*args):
    asked.append(args[-1])
    return index_candidates(*args)

  monkeypatch.setattr(search_lib, "_index_candidates", recorded)
  hits = search_lib.search(run_dir, texts["t17"], k=3, embedder=embedder)
  assert asked == [3]
  assert hits[0][1]["id"] == "t17"
  assert hits[0][0] == pytest.approx(1.0, abs=1e-5)
  exact = search_lib.search(run_dir, texts["t17"], k=3, embedder=embedder,
                            exact=True)
  assert [row for _, row in hits] == [row for _, row in exact]
  assert [s for s, _ in hits] == pytest.approx([s for s, _ in exact])
  assert asked == [3]
  # An ids file out of the index's order would name other rows: refused.
  run_dir = _copy_of(run_dir, tmp_path)
  ids_path = os.path.join(run_dir, "ann_index", "ids.jsonl")
  with open(ids_path) as f:
    ids = [json.loads(line) for line in f]
  assert ids == sorted(texts)
  ids[17], ids[18] = ids[18], ids[17]
  with open(ids_path, "w") as f:
    f.writelines(json.dumps(i) + "\n" for i in ids)
  with pytest.raises(ValueError, match="order of its ids file .row 17"):
    search_lib.search(run_dir, texts["t17"], k=1, embedder=embedder)
  assert search_lib.search(run_dir, texts["t17"], k=1, embedder=embedder,
                           exact=True)[0][1]["id"] == "t17"
  with pytest.raises(ValueError, match="k must be"):
    search_lib.search(run_dir, "x", k=0, embedder=embedder)
  with pytest.raises(ValueError, match="table must be"):
    search_lib.search(run_dir, "x", table="neighbours", embedder=embedder)


def _flat_index_bytes(rows: int, dimensions: int) -> bytes:
  index = faiss.IndexFlatIP(dimensions)
  index.add(np.ones((rows, dimensions), np.float32))
  return faiss.serialize_index(index).tobytes()


@pytest.mark.parametrize("file_name, damage", [
    ("index.faiss", lambda data: b"not an index"),
    ("index.faiss", lambda data: data[:len(data) // 2]),
    ("index.faiss", lambda data: b""),
    ("ids.jsonl", lambda data: b"".join(data.splitlines(True)[:-1])),
    ("ids.jsonl", lambda data: data.replace(b'"t03"', b'["t03"]')),
    ("ids.jsonl", lambda data: data.replace(b'"t03"', b'"t03')),
    ("ids.jsonl", lambda data: data.replace(b'"t03"', b'"zz"')),
    ("ids.jsonl", lambda data: data.replace(b'"t03"', b'"\xff"')),
    ("ids.jsonl", lambda data: data.replace(b'"t03"', b'"t04"')),
    ("index.faiss", None),  # gone
    ("index.faiss", "a directory"),
    ("index.faiss", lambda data: _flat_index_bytes(60, dimensions=8)),
])
def test_a_damaged_index_is_told_in_one_line(ann_run, tmp_path, capsys,
                                             file_name, damage):
  texts, run_dir = ann_run
  run_dir = _copy_of(run_dir, tmp_path)
  path = os.path.join(run_dir, "ann_index", file_name)
  if damage is None:
    os.remove(path)
  elif damage == "a directory":
    os.remove(path)
    os.mkdir(path)
  else:
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(damage(data))
  capsys.readouterr()
  assert query.main([run_dir, texts["t17"]]) == 2
  told = capsys.readouterr()
  assert told.out == "" and told.err.startswith("pipeline.query: error: ")
  assert len(told.err.strip().splitlines()) == 1
  assert "ann_index" in told.err  # the file at fault is named
  # --exact does without the index.
  assert query.main([run_dir, texts["t17"], "--exact", "--k=1"]) == 0
  assert capsys.readouterr().out.split()[2] == "t17"


def test_hit_lines_show_ids_a_terminal_cannot_be_fooled_by():
  # Ids come from the input: a newline would split a hit line, a carriage
  # return or a direction override rewrite it on a terminal.
  assert query._shown_id("plain-id_1") == "plain-id_1"  # pylint: disable=protected-access
  assert query._shown_id("new\nline\r\x00\u202eevil") == (  # pylint: disable=protected-access
      "new\\nline\\r\\x00\\u202eevil")
  shown = query._shown_id("é" * 500)  # pylint: disable=protected-access
  assert len(shown) == 80 and shown.endswith("\u2026")
  assert query._snippet("a\u202eb\n  c") == "a\\u202eb c"  # pylint: disable=protected-access


def test_a_damaged_table_is_told_in_one_line_naming_its_file(
    ann_run, tmp_path, capsys):
  texts, run_dir = ann_run
  run_dir = _copy_of(run_dir, tmp_path)
  # The TFRecord copy: what a search reads, for its checksums.
  with open(os.path.join(run_dir, "manifest.json")) as f:
    shard = json.load(f)["outputs"]["embeddings"]["tfrecord"][0]
  path = os.path.join(run_dir, shard)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  capsys.readouterr()
  assert query.main([run_dir, texts["t17"], "--exact"]) == 2
  told = capsys.readouterr()
  assert told.err.startswith(f"pipeline.query: error: {path} cannot be read")
  assert len(told.err.strip().splitlines()) == 1


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    scores=st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]),
                    max_size=40),
    k=st.integers(1, 45))
def test_best_first_is_the_full_sort_cut_at_k(scores, k):
  # Few distinct scores: most lists have ties across the k-th place.
  ids = [f"d{(i * 7919) % 41:02d}-{i}" for i in range(len(scores))]
  scores = np.asarray(scores)
  expected = sorted(range(len(scores)), key=lambda c: (-scores[c], ids[c]))[:k]
  assert search_lib._best_first(scores, ids.__getitem__, k) == expected


def test_texts_that_are_not_str_or_not_unicode_are_told():
  # Found by a fuzzer: TensorFlow's long "Binding inputs to tf.function
  # failed" for these, and a dict embedded as its keys.
  for texts, error, message in (
      ({"hello": 1}, TypeError, "not dict"),
      (None, TypeError, "not NoneType"),
      ("one text", TypeError, "embed\\(\\[text\\]\\)"),
      (["a", None], TypeError, "text 1 is of type NoneType, not str"),
      (["a", 1], TypeError, "text 1 is of type int, not str"),
      (["a\ud800b"], ValueError, "text 0 is not valid Unicode.*character 1"),
  ):
    with pytest.raises(error, match=message):
      embedder_lib._checked_texts(texts)
  assert embedder_lib._checked_texts(("a", "b")) == ["a", "b"]


def test_a_numpy_array_of_texts_is_embedded_as_its_list(ann_run):
  # Found by a user trial: a column's values (numpy, pandas) were refused
  # as "not ndarray".
  texts, run_dir = ann_run
  embedder = Embedder.from_run(run_dir)
  some = [texts["t01"], texts["t02"], "東京 🎉"]
  as_list = embedder.embed(some)
  for array in (np.array(some), np.array(some, dtype=object),
                pd.Series(some)):
    assert np.array_equal(embedder.embed(array), as_list)
  with pytest.raises(TypeError, match=r"1-D array of texts, not one of "
                     r"shape \(1, 3\); flatten it"):
    embedder.embed(np.array([some]))
  with pytest.raises(TypeError, match="text 1 is of type bytes, not str"):
    embedder.embed(np.array(["a", b"b"], dtype=object))


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.update(settings=None),
     '"settings" is None, not a JSON object'),
    # Found by a fuzzer: AttributeError tracebacks.
    (lambda m: m.update(model=["x"]), "\"model\" is ['x'], not a JSON object"),
    (lambda m: m.pop("model"), 'no "model" entry'),
    (lambda m: m["model"].update(path=5), "model.path is 5, not a str"),
    # Once told as "leave --model out", a flag the query has not.
    (lambda m: m["model"].update(path="/nonexistent/model"),
     "names the model /nonexistent/model, which is not there any more"),
    # Found by a user trial: told as the model, which was there.
    (lambda m: m["settings"]["model"].update(preprocessor="/nonexistent/pp"),
     "names the preprocess model /nonexistent/pp, which is not there any "
     "more: only that preprocess model"),
    (lambda m: m["model"].update(max_seq_length=-1),
     "model.max_seq_length is -1, less than 3"),
    (lambda m: m["model"].update(pooling="weird"),
     "model.pooling is 'weird', not one of"),
    (lambda m: m["model"].update(normalize="yes"),
     "model.normalize is 'yes', not a bool"),
    # Found by a fuzzer: TypeError, AttributeError or TensorFlow's shape
    # errors on the first long question.
    (lambda m: m["model"].update(chunking={"bogus": 1}),
     "model.chunking is {'bogus': 1}, not the chunk settings"),
    (lambda m: m["settings"]["model"].update(preprocessor=5),
     "settings.model.preprocessor is 5, not a path"),
    (lambda m: m["model"].update(max_seq_length=100_000),
     "max_seq_length=100000: must be between 3 and the model's"),
])
def test_a_damaged_manifest_is_told_in_one_line(ann_run, tmp_path, capsys,
                                                damage, message):
  _, run_dir = ann_run
  run_dir = _copy_of(run_dir, tmp_path)
  path = os.path.join(run_dir, "manifest.json")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  damage(manifest)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  assert query.main([run_dir, "some question"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"pipeline.query: error: {path}") or (
      err.startswith(f"pipeline.query: error: {run_dir}")), err
  assert message in err and len(err.splitlines()) == 1


def test_the_index_and_every_row_agree_on_ties(ann_run, tmp_path,
                                               tiny_model_dir):
  # Found by a fuzzer: copies of one text tied at the k-th place came out
  # differently with and without the index, and a row's score changed in
  # its last bit with the rows scored beside it.
  rng = np.random.default_rng(2)
  matrix = rng.standard_normal((500, 16)).astype(np.float32)
  query_vector = rng.standard_normal(16).astype(np.float32)
  rows = rng.permutation(500)[:37]
  np.testing.assert_array_equal(
      search_lib._cosines(matrix[rows], query_vector),
      search_lib._cosines(matrix, query_vector)[rows])
  texts, run_dir = ann_run
  copies = dict(texts)
  for i in range(0, 60, 3):  # every third text, twice more
    copies[f"u{i:02d}"] = copies[f"v{i:02d}"] = texts[f"t{i:02d}"]
  run_dir = _run(tmp_path, copies, tiny_model_dir, "--neighbours_k=3",
                 "--neighbours_mode=ann")
  for question in list(texts.values())[:20]:
    for k in (1, 2, 4, 7):
      through_index = search_lib.search(run_dir, question, k)
      every_row = search_lib.search(run_dir, question, k, exact=True)
      assert [(s, r["id"]) for s, r in through_index] == [
          (s, r["id"]) for s, r in every_row]


def test_a_serving_export_onto_a_file_is_told(ann_run, tmp_path, capsys):
  _, run_dir = ann_run
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  assert export_model.main(["--serving", run_dir, "--output_dir",
                            str(a_file)]) == 2
  assert f"{a_file} is a file; name a new directory" in capsys.readouterr().err
  assert a_file.read_text() == "not a directory"


@pytest.mark.parametrize("flags, told", [
    # Once silently ignored: the served vectors were the run's, mean-pooled.
    (["--pooling=cls"], "--pooling: RUN is a run directory, whose queries "
     "must be embedded with the run's own settings"),
    (["--normalize=false", "--max_seq_length=8"],
     "--normalize, --max_seq_length: RUN is a run directory"),
    (["--name=x"], "--name: for exporting a checkpoint; leave out with "
     "--serving"),
])
def test_a_serving_export_refuses_flags_it_would_ignore(
    ann_run, tmp_path, capsys, flags, told):
  _, run_dir = ann_run
  with pytest.raises(SystemExit) as exit_:
    export_model.main(["--serving", run_dir, "--output_dir",
                       str(tmp_path / "out")] + flags)
  assert exit_.value.code == 2
  assert told.replace("RUN", run_dir) in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "out")


def test_a_serving_export_of_a_refused_run_says_it_was_refused(
    tmp_path, capsys):
  # Once told as "not a complete model directory: missing encoder, ...".
  run_dir = tmp_path / "run"
  (run_dir / ".staging-night-1").mkdir(parents=True)
  (run_dir / ".staging-night-1" / "refused.json").write_text("{}")
  assert export_model.main(["--serving", str(run_dir), "--output_dir",
                            str(tmp_path / "out")]) == 2
  assert capsys.readouterr().err == (
      f"pipeline.export_model: error: {run_dir} has no manifest.json: a "
      f"guardrail refused to publish the run; {run_dir}/.staging-night-1/"
      "refused.json says why.\n")


def test_a_serving_export_of_a_missing_path_names_serving(tmp_path, capsys):
  # Once told as "--model=/x: no such directory ... or leave --model out".
  missing = str(tmp_path / "no_such_run")
  with pytest.raises(SystemExit) as exit_:
    export_model.main(["--serving", missing, "--output_dir",
                       str(tmp_path / "out")])
  assert exit_.value.code == 2
  err = capsys.readouterr().err.splitlines()[-1]
  assert err.startswith(f"pipeline.export_model: error: --serving={missing}: "
                        "no such directory. Pass a run directory"), err
  assert "--model=" not in err


def test_a_serving_export_of_a_missing_relative_name_names_serving(
    tmp_path, capsys, monkeypatch):
  # A relative path without "./" reads as a catalogue name to the resolver,
  # which once told it as "--model=runs/night-1: no such directory".
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as exit_:
    export_model.main(["--serving", "runs/night-1", "--output_dir", "out"])
  assert exit_.value.code == 2
  err = capsys.readouterr().err.splitlines()[-1]
  assert err.startswith("pipeline.export_model: error: --serving=runs/night-1"
                        ": no such run or model directory, and 'runs/night-1' "
                        "is not a model of the catalogue."), err
  assert "--model=" not in err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, argv", [
    ("pipeline.export_model", ["--no_such_flag"]),
    ("pipeline.query", []),
    ("pipeline.read_outputs", ["--no_such_flag"]),
    ("pipeline.catalog", ["--no_such_flag"]),
    ("pipeline.dataflow_job", ["describe", "--job_file"]),
])
def test_wrong_flags_are_told_like_the_commands_other_errors(command, argv):
  # argparse once said `python -m pipeline.query: error:`, the command's own
  # errors `pipeline.query: error:`: one prefix for a scheduler to grep.
  told = subprocess.run([sys.executable, "-m", command] + argv,
                        capture_output=True, text=True, check=False)
  assert told.returncode == 2
  assert told.stderr.splitlines()[-1].startswith(f"{command}: error: "), (
      told.stderr)


@pytest.mark.parametrize("argv, told", [
    (["RUN", "   "], "the question is empty"),
    (["RUN", "a question", "--k", "0"], "--k must be at least 1"),
    (["RUN", "-rf", "--k", "2"], "the following arguments are required: "
     "question; a question that starts with '-' goes after --")])
def test_query_refuses_a_wrong_argument_before_reading(argv, told, capsys):
  # An empty question once printed ten hits: the pipeline rejects empty
  # texts (empty_text), so the query does too.
  with pytest.raises(SystemExit) as exit_:
    query.main(argv)
  assert exit_.value.code == 2
  assert told in capsys.readouterr().err


def test_a_query_the_index_can_hold_no_vector_for_is_refused(ann_run,
                                                              capsys):
  # Found by a user trial: a question of only zero-width or control
  # characters printed hits; the pipeline rejects such a text (empty_text).
  _, run_dir = ann_run
  for question in ("\u200b", "\u00ad", "\x01\x02"):
    assert query.main([run_dir, question]) == 2
    assert capsys.readouterr().err == (
        "pipeline.query: error: the question has no wordpieces: only "
        "characters the tokenizer drops (control, zero-width or format "
        "characters)\n")
  # Bytes that are not UTF-8 are told as the question's, before the model.
  assert query.main([run_dir, "caf\udce9"]) == 2
  assert capsys.readouterr().err.startswith(
      "pipeline.query: error: the question is not valid Unicode")


def test_a_short_list_from_the_index_falls_back_to_every_row(
    ann_run, monkeypatch):
  # Found by a user trial: HNSW reaches about efSearch rows, and --k 2000
  # printed 1674 hits on a run of 20,500.
  texts, run_dir = ann_run
  embedder = Embedder.from_run(run_dir)
  monkeypatch.setattr(search_lib, "_index_candidates",
                      lambda index, rows, query, k: rows[:2])
  hits = search_lib.search(run_dir, texts["t05"], k=20, embedder=embedder)
  exact = search_lib.search(run_dir, texts["t05"], k=20, embedder=embedder,
                            exact=True)
  assert len(hits) == 20
  assert [row for _, row in hits] == [row for _, row in exact]


def test_a_remote_run_that_cannot_be_read_is_told_in_one_line(
    monkeypatch, capsys):
  # Found by a user trial: an unreachable gs:// run ended in Cloud Storage's
  # RetryError (or TensorFlow's FailedPreconditionError) and a traceback.
  def unreachable(*args, **kwargs):
    raise RuntimeError("Timeout of 120.0s exceeded, last exception: ...")

  monkeypatch.setattr(search_lib, "search", unreachable)
  assert query.main(["gs://bucket/run", "a question"]) == 2
  assert capsys.readouterr().err == (
      "pipeline.query: error: Timeout of 120.0s exceeded, last exception: "
      "...\n")
  # A local run's unexpected error is a bug, shown with its traceback.
  with pytest.raises(RuntimeError):
    query.main(["runs/x", "a question"])


def test_a_run_whose_remote_model_cannot_be_read_is_told_in_one_line(
    ann_run, tmp_path, monkeypatch, capsys):
  # Found in review: a local run whose model is on gs://, read without
  # network, ended in TensorFlow's FailedPreconditionError and a traceback.
  _, run_dir = ann_run
  run_dir = _copy_of(run_dir, tmp_path)
  manifest_path = os.path.join(run_dir, "manifest.json")
  with open(manifest_path) as f:
    manifest = json.load(f)
  manifest["model"]["path"] = "gs://bucket/model"
  with open(manifest_path, "w") as f:
    json.dump(manifest, f)
  isdir = tf.io.gfile.isdir

  def unreachable(path):
    if path.startswith("gs://"):
      raise tf.errors.FailedPreconditionError(
          None, None, "Could not resolve host:\twww.googleapis.com")
    return isdir(path)

  monkeypatch.setattr(tf.io.gfile, "isdir", unreachable)
  assert query.main([run_dir, "a question"]) == 2
  assert capsys.readouterr().err == (
      f"pipeline.query: error: {run_dir}/manifest.json names the model "
      "gs://bucket/model: --model=gs://bucket/model cannot be read: Could "
      "not resolve host: www.googleapis.com\n")


def test_paths_are_taken_as_pathlib_paths_too(ann_run):
  # Found by a user trial: BeamIOError ... 'PosixPath' object has no
  # attribute 'strip'.
  texts, run_dir = ann_run
  embedder = Embedder.from_run(pathlib.Path(run_dir))
  ids, matrix = read_outputs.load_embeddings(pathlib.Path(run_dir))
  assert len(ids) == len(texts)
  hits = search_lib.search(pathlib.Path(run_dir), texts["t03"], k=1,
                           embedder=embedder)
  assert hits[0][1]["id"] == "t03"


@pytest.mark.parametrize("arguments, error, told", [
    # Once quietly misread: "false" is true, "" was the model's pooling.
    ({"normalize": "false"}, TypeError, "normalize must be True, False or "
     "None"),
    ({"pooling": ""}, ValueError, "pooling '' is not one of"),
    ({"chunking": {"chunk_size": 16}}, TypeError, "chunking must be a "
     "bert_model.chunking.ChunkSettings"),
    ({"max_batch_tokens": 0}, ValueError, "max_batch_tokens must be a "
     "positive"),
])
def test_embedder_arguments_of_the_wrong_kind_are_told(tiny_model_dir,
                                                       arguments, error, told):
  with pytest.raises(error, match=re.escape(told)):
    Embedder(tiny_model_dir, **arguments)


def _assert_both_commands_tell(path, told, tmp_path, capsys):
  """pipeline.query and export_model --serving, given `path` as the run,
  exit 2 with the error `told`."""
  assert query.main([str(path), "a question"]) == 2
  assert capsys.readouterr().err.startswith(f"pipeline.query: error: {told}")
  assert export_model.main(["--serving", str(path), "--output_dir",
                            str(tmp_path / "out")]) == 2
  assert capsys.readouterr().err.startswith(
      f"pipeline.export_model: error: {told}")


def test_a_run_a_pointer_or_a_killed_run_given_as_the_run_is_told(
    ann_run, tmp_path, capsys):
  # Found by a user trial: a --latest_pointer file was "no such run
  # directory", and a killed run's directory "not a complete model
  # directory" to export_model --serving.
  _, run_dir = ann_run
  pointer = tmp_path / "LATEST"
  pointer.write_text(run_dir + "\n")
  killed = tmp_path / "killed"
  (killed / ".staging-night-1").mkdir(parents=True)
  for path, told in ((pointer, f"{pointer} is a file, not a run directory; "
                      "if it is a --latest_pointer file, pass the run it "
                      f"names: {run_dir}"),
                     (killed, f"{killed} has no manifest.json: the run is "
                      "incomplete")):
    _assert_both_commands_tell(path, told, tmp_path, capsys)


def test_a_part_of_a_run_given_as_the_run_is_told(ann_run, tmp_path,
                                                  capsys):
  # Found by a user trial: export_model --serving told a refused run's
  # staging directory, or a run's tables without their manifest, as "not a
  # complete model directory: missing encoder, ..."; both commands told a
  # table's directory as a run "incomplete or never published".
  _, run_dir = ann_run
  staging = tmp_path / "refused" / ".staging-night-1"
  (staging / "embeddings").mkdir(parents=True)
  (staging / "refused.json").write_text("{}")
  copied = tmp_path / "copied"
  shutil.copytree(os.path.join(run_dir, "embeddings"), copied / "embeddings")
  table = os.path.join(run_dir, "embeddings")
  for path, told in (
      (staging, f"{staging} holds the staged outputs of a run a guardrail "
       f"refused to publish (no manifest.json): {staging}/refused.json says "
       "why"),
      (table, f"{table} is a directory inside the run {run_dir}: pass the "
       "run directory itself"),
      (copied, f"{copied} has no manifest.json: the run is incomplete")):
    _assert_both_commands_tell(path, told, tmp_path, capsys)
  assert not (tmp_path / "out").exists()


def test_a_tf_hub_encoder_is_served_with_its_preprocessor(
    tiny_model_dir, ann_run, tmp_path, capsys, monkeypatch):
  # Found by a user trial: a TF Hub encoder without a known preprocess model
  # was told to pass --preprocessor, a flag export_model did not have.
  _, run_dir = ann_run
  encoder = os.path.join(tiny_model_dir, "encoder")
  preprocess = os.path.join(tiny_model_dir, "preprocess")
  out = str(tmp_path / "out")
  assert export_model.main(["--serving", encoder, "--output_dir", out]) == 2
  assert capsys.readouterr().err.startswith(
      f"pipeline.export_model: error: --serving={encoder} is a TF Hub encoder "
      "with the dict (v2) interface and no known preprocess model: pass the "
      "one it was trained with as --preprocessor")
  saved = []
  monkeypatch.setattr(Embedder, "save_serving_model",
                      lambda self, output_dir: saved.append(self.settings))
  assert export_model.main(["--serving", encoder, "--preprocessor",
                            preprocess, "--output_dir", out]) == 0
  assert saved[0].preprocess_path == preprocess
  assert saved[0].encoder_path == encoder
  for argv, told in (
      ([], "--preprocessor: for --serving only"),
      (["--serving", run_dir], f"--preprocessor: {run_dir} is a run "
       "directory")):
    with pytest.raises(SystemExit):
      export_model.main(argv + ["--preprocessor", preprocess, "--output_dir",
                                out])
    assert told in capsys.readouterr().err


def test_a_run_whose_model_moved_is_searched_with_its_new_place(
    ann_run, tiny_model_dir, tmp_path, capsys, monkeypatch):
  # Found by a user trial: a run whose model directory moved (or a run
  # copied to another machine) could only be told "Restore it";
  # Embedder.from_run(run, model=...) was a TypeError.
  texts, run_dir = ann_run
  copy = _copy_of(run_dir, tmp_path)
  path = os.path.join(copy, "manifest.json")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  manifest["model"]["path"] = str(tmp_path / "gone")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  moved = tmp_path / "moved"
  shutil.copytree(tiny_model_dir, moved)
  question = texts["t07"]
  assert query.main([copy, question]) == 2
  assert "Restore it, or give where it is now (pipeline.query and " \
      "export_model --serving: --model DIR" in capsys.readouterr().err
  assert query.main([copy, question, "--k", "1", "--model", str(moved)]) == 0
  assert capsys.readouterr().out.split()[2] == "t07"
  assert np.array_equal(
      Embedder.from_run(copy, model=moved).embed([question]),
      Embedder.from_run(run_dir).embed([question]))
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"the run's model was given as {tmp_path / 'nope'}, which is not "
      "there")):
    Embedder.from_run(copy, model=tmp_path / "nope")
  monkeypatch.setattr(Embedder, "save_serving_model",
                      lambda self, output_dir: None)
  assert export_model.main(["--serving", copy, "--model", str(moved),
                            "--output_dir", str(tmp_path / "out")]) == 0


def test_the_query_command_tells_a_k_beyond_the_rows_and_a_missing_table(
    ann_run, capsys):
  # Found by a user trial: --k 1000 on a run of 60 printed 60 hits without
  # a word; --table chunks of a run without chunks named no fix.
  texts, run_dir = ann_run
  assert query.main([run_dir, texts["t03"], "--k", "1000"]) == 0
  printed = capsys.readouterr()
  assert len(printed.out.splitlines()) == 60
  assert printed.err == ("The run holds 60 rows to search, fewer than --k "
                         "1000: all are shown.\n")
  assert query.main([run_dir, "a question", "--table", "chunks"]) == 2
  assert capsys.readouterr().err == (
      "pipeline.query: error: The run has no chunks table (it was made "
      "without --chunk_size): search its embeddings instead (--table "
      "embeddings, or leave --table out)\n")


def test_a_serving_export_never_overwrites_what_is_not_a_savedmodel(
    ann_run, tmp_path, capsys):
  # Found by a user trial: --output_dir runs --overwrite replaced the
  # directory of published runs (the exported one too) with the SavedModel.
  _, run_dir = ann_run
  runs = tmp_path / "runs"
  shutil.copytree(run_dir, runs / "a")
  for output_dir, told in ((runs, f"{runs} overlaps {runs / 'a'}, which the "
                            "SavedModel is made from"),
                           (runs / "a", f"{runs / 'a'} overlaps {runs / 'a'}"),
                           (tmp_path, f"{tmp_path} overlaps")):
    assert export_model.main(["--serving", str(runs / "a"), "--output_dir",
                              str(output_dir), "--overwrite"]) == 2
    assert capsys.readouterr().err.startswith(
        f"pipeline.export_model: error: {told}")
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("kept")
  assert export_model.main(["--serving", str(runs / "a"), "--output_dir",
                            str(other), "--overwrite"]) == 2
  assert "is not an earlier serving SavedModel" in capsys.readouterr().err
  assert (other / "notes.txt").read_text() == "kept"
  assert (runs / "a" / "manifest.json").exists()
  # An earlier SavedModel is what --overwrite replaces.
  served = tmp_path / "served"
  for _ in range(2):
    assert export_model.main(["--serving", str(runs / "a"), "--output_dir",
                              str(served), "--overwrite"]) == 0
  assert (served / "saved_model.pb").exists()


def test_a_serving_export_never_overwrites_the_model_it_is_made_from(
    tiny_model_dir, tmp_path, capsys):
  # Found in review: the model's encoder/ holds a saved_model.pb too.
  model = tmp_path / "model"
  shutil.copytree(tiny_model_dir, model)
  assert export_model.main(["--serving", str(model), "--output_dir",
                            str(model / "encoder"), "--overwrite"]) == 2
  assert capsys.readouterr().err.startswith(
      f"pipeline.export_model: error: {model / 'encoder'} overlaps ")
  assert (model / "encoder" / "saved_model.pb").exists()


@pytest.mark.parametrize("value", [
    "experts/pubmed", "https://tfhub.dev/google/experts/bert/pubmed/2"])
def test_a_catalogue_name_or_handle_is_taken_by_serving(value, tmp_path):
  # Found in review: a catalogue name holding "/" was told as a missing
  # directory, and a handle as a file system TensorFlow has not.
  args = export_job.parse_args(["--serving", value, "--output_dir",
                                str(tmp_path / "out")], "")
  assert args.serving == value


def test_a_model_with_damaged_weights_is_told_as_damaged(tiny_model_dir,
                                                         tmp_path):
  # Found by a fuzzer: TensorFlow's DataLossError, a traceback in query and
  # export_model.
  copy = str(tmp_path / "model")
  shutil.copytree(tiny_model_dir, copy)
  path = os.path.join(copy, "encoder", "variables",
                      "variables.data-00000-of-00001")
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(data)
  with pytest.raises(ValueError, match=r"The model at .*encoder is damaged "
                     r"\(TensorBundle .*Checksum does not match.*\); export "
                     r"it again"):
    Embedder(copy).embed(["hello world"])


@pytest.mark.parametrize("settings, told", [
    (dict(max_seq_length=10_000), "max_seq_length=10000: must be between 3 "
     "and the model's max_position_embeddings"),
    # Found by a fuzzer: 0 was taken for "the model's own".
    (dict(max_seq_length=0), "max_seq_length=0: must be between 3"),
    (dict(precision="bogus"), "precision 'bogus' is not one of"),
    (dict(pooling="weird"), "pooling 'weird' is not one of"),
    (dict(chunking=ChunkSettings(chunk_size=64, chunk_overlap=8,
                                 max_chunks=4), max_seq_length=32),
     "chunk_size=64: longer than max_seq_length 32"),
])
def test_settings_the_model_cannot_compute_are_refused(
    tiny_model_dir, settings, told):
  # Found by a fuzzer: a run's manifest with max_seq_length past the
  # model's positions made a serving model that failed on long texts.
  with pytest.raises(ValueError, match=told):
    Embedder(tiny_model_dir, **settings)


def test_models_loaded_one_after_another_are_not_warned_of_retracing(
    tiny_model_dir, caplog):
  # Found in the test suite: TensorFlow counts traces by the method's code,
  # across models, and warned of "excessive retracing" from the sixth.
  with caplog.at_level(logging.WARNING):
    for _ in range(7):
      Embedder(tiny_model_dir, chunking=ChunkSettings(
          chunk_size=16, chunk_overlap=2, max_chunks=4)).embed(["hello"])
  assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_the_settings_check_is_the_pipelines(tiny_model_dir):
  # One check for the pipeline's planning (as flags) and the Embedder.
  model = resolution.resolve_model(tiny_model_dir)
  no_pooler = dataclasses.replace(model, metadata=dataclasses.replace(
      model.metadata, has_pooler=False))
  assert model.settings_problem(32, "pooler") is None
  assert no_pooler.settings_problem(32, "pooler") == (
      "pooling=pooler: this model has no pooler weights; use pooling=cls or "
      "pooling=mean")
  assert no_pooler.settings_problem(32, "mean", chunk_size=32) is None
  for length in (2, True, 32.0, model.max_position_embeddings + 1):
    assert model.settings_problem(length, "mean").startswith(
        f"max_seq_length={length!r}: must be between 3")
  config = config_from_options(PipelineOptions(
      ["--input", "x", "--output", "y", "--pooling", "pooler"]))
  with pytest.raises(ConfigError, match=r"^--pooling=pooler: this model has "
                     r"no pooler weights; use --pooling=cls or "
                     r"--pooling=mean\.$"):
    model_plan.model_settings(config, no_pooler)


@pytest.mark.parametrize("metadata", [b"{garbage", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_model_metadata_file_is_told_naming_it(
    tiny_model_dir, tmp_path, metadata):
  copy = str(tmp_path / "model")
  shutil.copytree(tiny_model_dir, copy)
  with open(os.path.join(copy, "model_metadata.json"), "wb") as f:
    f.write(metadata)
  with pytest.raises(ValueError, match=r"model_metadata.json is damaged \(.*"
                     r"\); export the model again"):
    Embedder(copy)
