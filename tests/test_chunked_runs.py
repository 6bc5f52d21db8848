"""Runs with --chunk_size: the chunks table, document vectors pooled from
chunks, chunk-level neighbours and retrieval, incremental reuse of chunks,
and the flags that cannot go with chunking.

The retrieval check uses real long documents (pydoc's topic help) and the
default model: sentences taken from deep inside documents must find their
own document through chunk-level neighbours at recall@1 >= 0.9.
"""

import logging
import re

import numpy as np
import pytest
from pydoc_data.topics import topics

from pipeline import main
from pipeline import read_outputs
from pipeline.errors import ConfigError
from tests.run_fixtures import write_jsonl


def _run(model_dir, corpus, run_dir, *flags):
  return main.run([f"--input={corpus}", f"--output={run_dir}",
                   f"--model={model_dir}", "--runner=DirectRunner",
                   "--run_id=chunked", "--bigquery_format=jsonl", *flags])


def _rows(run_dir, table):
  return read_outputs.read_table(run_dir, table).to_pylist()


def _long_documents(count):
  keys = sorted(k for k in topics if 4000 < len(topics[k]) < 20000)[:count]
  return {key: topics[key] for key in keys}


def _deep_sentences(text, per_document):
  """Sentences from the second half of a text: never in its first chunk."""
  half = text[len(text) // 2:]
  sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", half)]
  sentences = [s for s in sentences
               if 80 <= len(s) <= 300 and sum(c.isalpha() for c in s) >
               0.7 * len(s)]
  return sentences[:per_document]


@pytest.fixture(scope="module")
def retrieval_run(default_model_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("retrieval")
  documents = _long_documents(16)
  documents["short"] = "A short document of one sentence."
  queries = {}
  for doc_id, text in documents.items():
    for j, sentence in enumerate(_deep_sentences(text, 3)):
      queries[f"q-{doc_id}-{j}"] = (doc_id, sentence)
  corpus = write_jsonl(root / "corpus.jsonl",
                        [{"id": k, "text": v} for k, v in documents.items()])
  questions = write_jsonl(root / "questions.jsonl",
                           [{"id": k, "text": s}
                            for k, (_, s) in queries.items()])
  run_dir = str(root / "run")
  _run(default_model_dir, corpus, run_dir, "--chunk_size=128",
       "--neighbours_level=chunk", f"--neighbours_of={questions}",
       "--neighbours_k=1")
  return documents, queries, run_dir


def test_chunks_table_is_exact_and_counted(retrieval_run):
  documents, _, run_dir = retrieval_run
  manifest = read_outputs.load_manifest(run_dir)
  chunks = _rows(run_dir, "chunks")
  embeddings = {r["id"]: r for r in _rows(run_dir, "embeddings")}
  assert manifest["counts"]["chunks"] == len(chunks)
  assert manifest["model"]["chunking"] == {
      "chunk_size": 128, "chunk_overlap": 16, "max_chunks": 512}
  assert set(manifest["outputs"]["chunks"]) >= {"tfrecord", "jsonl",
                                                "bigquery_schema"}
  by_document = {}
  for row in chunks:
    by_document.setdefault(row["document_id"], []).append(row)
  assert set(by_document) == set(documents)
  for doc_id, rows in by_document.items():
    rows.sort(key=lambda r: r["chunk_index"])
    text = documents[doc_id]
    assert [r["id"] for r in rows] == [f"{doc_id}#{i}"
                                       for i in range(len(rows))]
    assert embeddings[doc_id]["num_chunks"] == len(rows)
    assert not embeddings[doc_id]["truncated"]
    for row in rows:
      assert row["text"] == text[row["start"]:row["end"]]
      assert row["num_tokens"] <= 128
    # The document's vector: its chunks' mean weighted by num_tokens.
    weights = np.array([r["num_tokens"] for r in rows], np.float64)
    mean = (np.array([r["embedding"] for r in rows]) *
            weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(embeddings[doc_id]["embedding"],
                               mean / np.linalg.norm(mean), atol=2e-6)
  # The TFRecord copy holds the same chunks as the BigQuery one.
  tfrecord = read_outputs.read_table(run_dir, "chunks", format="tfrecord")
  assert sorted(zip(tfrecord.column("id").to_pylist(),
                    tfrecord.column("start").to_pylist())) == sorted(
                        (r["id"], r["start"]) for r in chunks)
  assert len(by_document["short"]) == 1
  assert min(len(rows) for doc_id, rows in by_document.items()
             if doc_id != "short") >= 3


def test_chunk_vectors_export_to_numpy(retrieval_run, tmp_path, capsys):
  # Once refused ("use --table embeddings"), though read_vectors reads them.
  _, _, run_dir = retrieval_run
  path = str(tmp_path / "chunks.npz")
  assert read_outputs.main([run_dir, "--table", "chunks", "--to_numpy",
                            path]) == 0
  chunks = {r["id"]: r["embedding"] for r in _rows(run_dir, "chunks")}
  assert f"wrote {len(chunks)}x" in capsys.readouterr().out
  with np.load(path) as arrays:
    ids, matrix = arrays["ids"].tolist(), arrays["embeddings"]
  assert sorted(ids) == sorted(chunks)
  np.testing.assert_allclose(matrix, np.array([chunks[i] for i in ids]),
                             atol=1e-7)


def test_questions_find_their_passage_and_document(retrieval_run,
                                                   report_figure):
  _, queries, run_dir = retrieval_run
  rows = _rows(run_dir, "neighbours")
  assert rows and all(r["rank"] == 1 for r in rows)
  found = {}
  for row in rows:
    assert row["neighbour_id"].startswith(row["neighbour_document_id"] + "#")
    assert row["id"].startswith(row["document_id"] + "#")
    found.setdefault(row["document_id"], set()).add(
        row["neighbour_document_id"])
  hits = sum(queries[q][0] in found.get(q, ()) for q in queries)
  recall = hits / len(queries)
  report_figure("chunk-level recall@1 of deep sentences",
                f"{recall:.3f} over {len(queries)} queries")
  assert len(queries) >= 40
  assert recall >= 0.9


def test_chunk_neighbours_come_from_other_documents(tmp_path,
                                                    tiny_model_dir):
  words = "the quick brown fox jumps over the lazy dog".split()
  corpus = write_jsonl(tmp_path / "c.jsonl", [
      {"id": f"d{i}", "text": " ".join(words[j % 9] for j in range(i * 7,
                                                                    i * 7 + 40))}
      for i in range(5)])
  for mode in ("exact", "ann"):
    run_dir = str(tmp_path / mode)
    _run(tiny_model_dir, corpus, run_dir, "--chunk_size=8",
         "--neighbours_level=chunk", "--neighbours_k=3",
         f"--neighbours_mode={mode}")
    rows = _rows(run_dir, "neighbours")
    chunks = _rows(run_dir, "chunks")
    assert len(rows) == 3 * len(chunks)
    assert all(r["document_id"] != r["neighbour_document_id"] for r in rows)


def test_incremental_run_reuses_chunks(tmp_path, tiny_model_dir):
  texts = {f"d{i}": "hello world the cat sat on a mat . " * (3 + i)
           for i in range(4)}
  corpus = write_jsonl(tmp_path / "c1.jsonl",
                        [{"id": k, "text": v} for k, v in texts.items()])
  first = str(tmp_path / "first")
  _run(tiny_model_dir, corpus, first, "--chunk_size=10")
  texts["d1"] = "the quick brown fox jumps . " * 6
  corpus = write_jsonl(tmp_path / "c2.jsonl",
                        [{"id": k, "text": v} for k, v in texts.items()])
  second = str(tmp_path / "second")
  _run(tiny_model_dir, corpus, second, "--chunk_size=10",
       f"--previous_run={first}")
  manifest = read_outputs.load_manifest(second)
  assert manifest["counts"]["reused"] == 3
  assert manifest["counts"]["inferred"] == 1
  before = {r["id"]: r for r in _rows(first, "chunks")}
  after = {r["id"]: r for r in _rows(second, "chunks")}
  assert manifest["counts"]["chunks"] == len(after)
  for chunk_id, row in after.items():
    if row["document_id"] != "d1":
      assert row["embedding"] == before[chunk_id]["embedding"]
      assert row["text"] == before[chunk_id]["text"]
  new_chunks = [r for r in after.values() if r["document_id"] == "d1"]
  assert new_chunks and all(
      r["text"] == texts["d1"][r["start"]:r["end"]] for r in new_chunks)
  # Other chunk settings: nothing is carried over.
  third = str(tmp_path / "third")
  _run(tiny_model_dir, corpus, third, "--chunk_size=12",
       f"--previous_run={second}")
  manifest = read_outputs.load_manifest(third)
  assert manifest["counts"]["reused"] == 0
  assert "chunking" in manifest["previous_run"]["reason"]


def test_truncation_warning_names_chunk_size(tmp_path, tiny_model_dir,
                                             caplog):
  corpus = write_jsonl(tmp_path / "c.jsonl", [
      {"id": "long", "text": "hello world " * 100},
      {"id": "short", "text": "hello"}])
  with caplog.at_level(logging.WARNING):
    _run(tiny_model_dir, corpus, str(tmp_path / "run"), "--neighbours_k=0")
  warnings = [r.getMessage() for r in caplog.records
              if "--chunk_size" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("1 document(s)")
  # With chunks, text is lost only past --max_chunks: told as well (once
  # the run was silent, the manifest's count alone saying so).
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    _run(tiny_model_dir, corpus, str(tmp_path / "chunked"), "--neighbours_k=0",
         "--chunk_size=16", "--max_chunks=2")
  warnings = [r.getMessage() for r in caplog.records
              if "--max_chunks" in r.getMessage()]
  assert warnings == [
      "1 document(s) lost text: longer than --max_chunks (2 chunks of "
      "--chunk_size 16 wordpieces), or holding a word longer than a chunk; "
      "the rest of their text is in no chunk and not in their vectors. Raise "
      "--max_chunks to embed them whole."]


@pytest.mark.parametrize("flags, message", [
    (["--chunk_size=100"], "--max_seq_length"),
    (["--chunk_size=16", "--chunk_overlap=8"], "--chunk_overlap=8"),
    (["--chunk_overlap=4"], "needs --chunk_size"),
    # Once accepted and ignored: documents were still cut at --max_seq_length.
    (["--max_chunks=3"], "--max_chunks needs --chunk_size"),
    (["--neighbours_level=chunk"], "needs --chunk_size"),
    (["--chunk_size=16", "--text_pair_field=other"], "--text_pair_field"),
    (["--chunk_size=2"], "--chunk_size=2"),
    (["--chunk_size=16", "--max_chunks=0"], "--max_chunks"),
])
def test_wrong_chunk_flags_fail_before_the_run(tmp_path, tiny_model_dir,
                                               flags, message):
  corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "hello"}])
  with pytest.raises(ConfigError, match=re.escape(message)):
    _run(tiny_model_dir, corpus, str(tmp_path / "run"), *flags)
  assert not (tmp_path / "run" / "manifest.json").exists()
