"""The neighbour table and pictures, end to end through pipeline.main."""

import collections
import json
import os

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipeline import main
from pipeline import read_outputs
from transforms import visualize
from transforms.names import METRICS_NAMESPACE
from transforms.neighbours import maths as neighbours_lib

CORPUS = [
    "the quick brown fox", "the lazy dog", "hello world", "the cat sat",
    "a cat on a mat", "embed text", "vector search", "the fox jumps",
    "hello hello world", "the dog sat on the mat", "quick quick fox",
    "unknown words", "brown dog", "lazy cat", "text search",
]
QUERIES = ["the quick dog", "hello cat", "search vector text", ""]


def _write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def _run(tmp_path, model_dir, *flags, name="run", with_result=False):
  corpus = _write_lines(tmp_path / "corpus.txt", CORPUS)
  run_dir = str(tmp_path / name)
  result = main.run([f"--input={corpus}", f"--output={run_dir}",
                     f"--model={model_dir}", "--runner=DirectRunner", *flags])
  manifest = read_outputs.load_manifest(run_dir)
  return (run_dir, manifest, result) if with_result else (run_dir, manifest)


def _counters(result) -> dict:
  """The pipeline's counters, by name."""
  query = result.metrics().query(
      MetricsFilter().with_namespace(METRICS_NAMESPACE))
  totals = collections.Counter()
  for counter in query["counters"]:
    totals[counter.key.metric.name] += counter.committed
  return totals


def _neighbour_lists(run_dir):
  table = read_outputs.read_table(run_dir, "neighbours").to_pydict()
  lists = collections.defaultdict(list)
  for row in sorted(zip(table["id"], table["rank"], table["neighbour_id"],
                        table["score"])):
    lists[row[0]].append(row[1:])
  return lists


def test_exact_neighbours_equal_brute_force(tmp_path, tiny_model_dir):
  run_dir, manifest = _run(tmp_path, tiny_model_dir, "--neighbours_k=4",
                           "--neighbours_block_size=4",
                           "--bigquery_format=jsonl")
  ids, vectors = read_outputs.load_embeddings(run_dir)
  expected = neighbours_lib.brute_force_neighbours(ids, vectors, 4)
  actual = _neighbour_lists(run_dir)
  assert set(actual) == set(ids)
  for query_id, neighbours in expected:
    rows = actual[query_id]
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [r[1] for r in rows] == [n for _, n in neighbours]
    assert query_id not in [r[1] for r in rows]
    np.testing.assert_allclose([r[2] for r in rows],
                               [s for s, _ in neighbours], atol=1e-6)
  stats = manifest["neighbours"]
  assert stats["mode"] == "exact" and stats["k"] == 4
  assert stats["shards"] == 4  # 15 documents in blocks of 4
  with open(os.path.join(run_dir, manifest["outputs"]["neighbours"][
      "bigquery_schema"])) as f:
    names = [field["name"] for field in json.load(f)]
  assert names[:4] == ["id", "rank", "neighbour_id", "score"]


def test_ann_mode_reports_measured_recall(tmp_path, tiny_model_dir):
  run_dir, manifest = _run(tmp_path, tiny_model_dir, "--neighbours_k=3",
                           "--neighbours_mode=ann")
  stats = manifest["neighbours"]
  assert stats["mode"] == "ann"
  assert stats["recall_sample_size"] == len(CORPUS)
  assert stats["recall_at_k"] >= 0.95
  assert all(len(rows) == 3 for rows in _neighbour_lists(run_dir).values())


def test_neighbours_of_a_query_corpus(tmp_path, tiny_model_dir):
  queries = _write_lines(tmp_path / "queries.txt", QUERIES)
  # One query of four is empty on purpose: over the default
  # --max_bad_fraction, which the query corpus is held to as well.
  run_dir, manifest, result = _run(
      tmp_path, tiny_model_dir, "--neighbours_k=2",
      f"--neighbours_of={queries}", "--max_bad_fraction=0.25",
      with_result=True)
  counts = manifest["counts"]
  assert counts["queries"] == {
      "read": 4, "embedded": 3, "inferred": 3, "dead_lettered": 1,
      "repeated": 0, "truncated": 0, "reused": 0, "removed": 0,
      "derived_ids": 3}
  assert counts["read"] == counts["embedded"] == len(CORPUS)
  # The counters say what the manifest says, the queries in their own scope.
  counters = _counters(result)
  for name in ("read", "inferred", "dead_lettered"):
    assert counters[name] == counts[name], name
    assert counters[f"queries.{name}"] == counts["queries"][name], name
  errors = read_outputs.read_errors(run_dir)
  assert [e["reason"] for e in errors] == ["empty_text"]
  assert errors[0]["source"].endswith("queries.txt")

  corpus_ids, corpus_vectors = read_outputs.load_embeddings(run_dir)
  actual = _neighbour_lists(run_dir)
  assert len(actual) == 3  # one list per embedded query
  assert all(r[1] in corpus_ids for rows in actual.values() for r in rows)
  assert not set(actual) & set(corpus_ids)


def test_queries_read_with_their_own_field_names(tmp_path, tiny_model_dir,
                                                capsys):
  # Found in a user trial: questions kept under "question" and "qid", a
  # corpus under "text": every query was dead-lettered, after the corpus was
  # embedded, with "set --text_field", which would have broken the corpus.
  # Now the queries' first records are read before the run, and the flag
  # that fixes them is named then.
  questions = tmp_path / "questions.jsonl"
  questions.write_text("".join(
      json.dumps({"qid": f"q{i}", "question": text}) + "\n"
      for i, text in enumerate(QUERIES[:3])))
  flags = ["--neighbours_k=2", f"--neighbours_of={questions}",
           "--input_format=jsonl"]
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": text}) + "\n"
                            for i, text in enumerate(CORPUS)))

  refused_dir, run_dir = str(tmp_path / "refused"), str(tmp_path / "run")
  refused = main.main([f"--input={corpus}", f"--output={refused_dir}",
                       f"--model={tiny_model_dir}", *flags])
  published = main.main([f"--input={corpus}", f"--output={run_dir}",
                         f"--model={tiny_model_dir}", *flags,
                         "--query_text_field=question",
                         "--query_id_field=qid"])

  assert refused == 2  # a wrong flag, before the run
  assert not os.path.exists(refused_dir)
  assert (f"--neighbours_of={questions}: no 'text' field (fields: qid, "
          "question); set --query_text_field.") in capsys.readouterr().err
  assert published == 0
  lists = _neighbour_lists(run_dir)
  assert sorted(lists) == ["q0", "q1", "q2"]
  corpus_ids = set(read_outputs.load_embeddings(run_dir)[0])
  assert corpus_ids == {f"d{i}" for i in range(len(CORPUS))}
  assert all(r[1] in corpus_ids for rows in lists.values() for r in rows)


@pytest.mark.parametrize("flags", [
    ["--neighbours_mode=exact"], ["--neighbours_mode=ann"],
    ["--chunk_size=16", "--neighbours_level=chunk"],
])
def test_a_query_with_a_corpus_id_is_matched_with_that_document(
    tmp_path, tiny_model_dir, flags):
  # Found by an acceptance audit: a --neighbours_of query whose id a corpus
  # document also has (questions numbered like the corpus; here a file of
  # the same name, whose derived ids are the same) was taken for that
  # document, and never matched with it, at score 1.0 or not.
  questions = tmp_path / "questions"
  questions.mkdir()
  queries = _write_lines(questions / "corpus.txt",
                         ["the lazy dog", "vector search"])
  run_dir, _ = _run(tmp_path, tiny_model_dir, "--neighbours_k=2",
                    f"--neighbours_of={queries}", *flags)
  table = "chunks" if "--neighbours_level=chunk" in flags else "embeddings"
  corpus_ids = read_outputs.read_table(run_dir, table).column(
      "id").to_pylist()
  lists = _neighbour_lists(run_dir)
  assert len(lists) == 2 and set(lists) <= set(corpus_ids)  # the same ids
  for query_id, rows in lists.items():
    assert rows[0][1] == query_id and rows[0][2] == 1.0, (query_id, rows)


def test_no_neighbours_plot_and_projector(tmp_path, tiny_model_dir):
  run_dir, manifest = _run(tmp_path, tiny_model_dir, "--neighbours_k=0",
                           "--similarity_plot", "--projector_export")
  outputs = manifest["outputs"]
  assert "neighbours" not in outputs and "neighbours" not in manifest
  assert outputs["similarity_plot"] == {"png": ["similarity.png"]}
  assert outputs["projector"] == {
      "tsv": ["projector/metadata.tsv", "projector/vectors.tsv"]}
  with open(os.path.join(run_dir, "similarity.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(run_dir, "projector", "vectors.tsv")) as f:
    assert len(f.read().splitlines()) == len(CORPUS)


def test_no_text_leaves_the_texts_out_of_the_pictures(tmp_path,
                                                      tiny_model_dir,
                                                      monkeypatch):
  # Found by a docs check: with --no_text the tables held no text, but the
  # projector's metadata.tsv held every one, and the plot was labelled
  # with them.
  labels = []
  draw = visualize.similarity_heatmap_png

  def recording(texts, *args):
    labels.extend(texts)
    return draw(texts, *args)

  monkeypatch.setattr(visualize, "similarity_heatmap_png", recording)
  run_dir, _ = _run(tmp_path, tiny_model_dir, "--neighbours_k=0",
                    "--similarity_plot", "--projector_export", "--no_text")
  ids, _ = read_outputs.load_embeddings(run_dir)
  assert sorted(labels) == sorted(ids)
  with open(os.path.join(run_dir, "projector", "metadata.tsv")) as f:
    assert f.read().splitlines() == sorted(ids)  # one column: no header
