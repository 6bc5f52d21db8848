"""Near-duplicate groups (--duplicate_threshold): the pairs equal brute
force, the groups equal brute-force connected components (chains, groups
larger than k, exact copies, ties at the threshold), in Beam on every
runner, and the same rows on every rerun."""

import json

import apache_beam as beam
import hypothesis.strategies as st
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from hypothesis import given
from hypothesis import settings as hypothesis_settings

from pipeline import main
from pipeline import read_outputs
from pipeline.errors import ConfigError
from run_directory.records import Embedding
from run_directory.records import Vectors
from transforms.duplicates import DUPLICATE_ROWS
from transforms.duplicates import DuplicateSettings
from transforms.duplicates import NearDuplicates
from transforms.duplicates import STATS
from transforms.duplicates.components import ConnectedComponents
from transforms.duplicates.pairs import block_pairs
from transforms.duplicates.pairs import brute_force_groups
from transforms.duplicates.pairs import brute_force_pairs
from transforms.duplicates.pairs import union_find_roots
from tests.real_text import real_sentences
from transforms.neighbours.maths import normalize_rows


def _fail(value):
  raise AssertionError(f"unexpected {value!r}")


def _embeddings(ids, vectors):
  return [Embedding(id=i, text=i, source="s",
                    vectors=Vectors(embedding=np.asarray(v, np.float32),
                                    num_tokens=3, truncated=False))
          for i, v in zip(ids, vectors)]


def _clustered(n=60, h=16, seed=0):
  """Clusters of near copies (some chains), exact copies and loners."""
  rng = np.random.default_rng(seed)
  vectors = []
  for i in range(n):
    if i % 15 == 0 or not vectors:
      vectors.append(rng.standard_normal(h))
    else:  # a step from the previous one: chains form, or break
      step = rng.choice([0.15, 0.3, 0.6])
      vectors.append(vectors[-1] + step * rng.standard_normal(h))
  vectors[7] = vectors[3]  # an exact copy
  return [f"d{i:03d}" for i in range(n)], np.array(vectors, np.float32)


def _expected_rows(ids, vectors, threshold):
  groups = brute_force_groups(ids, vectors, threshold)
  pairs = brute_force_pairs(ids, vectors, threshold)
  best = {}
  for a, b, score in pairs:
    best[a] = max(best.get(a, -2), score)
    best[b] = max(best.get(b, -2), score)
  sizes = {}
  for group in groups.values():
    sizes[group] = sizes.get(group, 0) + 1
  return [{"id": d, "group_id": g, "group_size": sizes[g],
           "representative": d == g, "max_score": best[d]}
          for d, g in groups.items()]


def test_block_pairs_equal_brute_force_across_blocks():
  ids, vectors = _clustered()
  normalized = normalize_rows(vectors)
  expected = brute_force_pairs(ids, vectors, 0.9)
  assert len(expected) > 20
  found = []
  for start in range(0, len(ids), 17):
    for other in range(start, len(ids), 17):
      found += block_pairs(ids[start:start + 17], normalized[start:start + 17],
                           ids[other:other + 17], normalized[other:other + 17],
                           0.9, same_block=start == other)
  assert sorted(found) == expected


def test_a_tie_at_the_threshold_is_in():
  ids, vectors = _clustered()
  a, b, score = brute_force_pairs(ids, vectors, 0.9)[5]
  at_threshold = brute_force_pairs(ids, vectors, score)
  assert (a, b, score) in at_threshold
  assert (a, b, score) not in brute_force_pairs(
      ids, vectors, float(np.nextafter(np.float32(score), np.float32(2))))


def test_exact_copies_are_pairs_at_threshold_1():
  # A float32 unit vector's squared norm is 1 only to within rounding: its
  # dot product with an identical copy is often 0.99999994, below
  # float32(1). Divided by the vectors' own norms it is exactly 1.
  rng = np.random.default_rng(5)
  # Few dimensions, or a few large components: the norms' rounding shows.
  originals = normalize_rows(np.concatenate([
      rng.standard_normal((100, 16)).repeat(24, axis=1) *
      rng.uniform(0.5, 2, 384),
      rng.standard_exponential((100, 384)) ** 3]))
  dots = (originals.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
  assert (dots < 1).sum() >= 10  # the trap is real in this data
  vectors = np.concatenate([originals, originals])
  ids = [f"a{i:03d}" for i in range(200)] + [f"b{i:03d}" for i in range(200)]
  expected = [(f"a{i:03d}", f"b{i:03d}", 1.0) for i in range(200)]
  assert brute_force_pairs(ids, vectors, 1.0) == expected
  found = []
  for start in range(0, 400, 128):
    for other in range(start, 400, 128):
      found += block_pairs(ids[start:start + 128], vectors[start:start + 128],
                           ids[other:other + 128], vectors[other:other + 128],
                           1.0, same_block=start == other)
  assert sorted(found) == expected


def test_union_find_chains_and_roots():
  roots = union_find_roots([("c", "d"), ("a", "b"), ("b", "c"), ("x", "y")])
  assert roots == {"a": "a", "b": "a", "c": "a", "d": "a", "x": "x", "y": "x"}


@hypothesis_settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)),
                max_size=60), st.integers(0, 3))
def test_components_in_beam_equal_union_find(edges, rounds):
  edges = sorted({(f"n{min(a, b):02d}", f"n{max(a, b):02d}")
                  for a, b in edges if a != b})
  with TestPipeline() as p:
    labels = (p | beam.Create(edges)
              | ConnectedComponents(rounds=rounds))["labels"]
    assert_that(labels, equal_to(sorted(union_find_roots(edges).items())))


def test_a_long_chain_needs_the_last_step():
  # A path of 64 nodes in a scrambled order: one round cannot finish it.
  order = [f"n{(i * 37) % 64:02d}" for i in range(64)]
  edges = sorted({tuple(sorted(pair)) for pair in zip(order, order[1:])})
  with TestPipeline() as p:
    result = p | beam.Create(edges) | ConnectedComponents(rounds=1)
    assert_that(result["labels"],
                equal_to([(node, "n00") for node in sorted(set(order))]),
                label="Labels")
    # One round leaves edges between labels: the last step merged them.
    assert_that(result["unresolved"],
                lambda counts: counts[0] > 0 or _fail(counts),
                label="Unresolved")


@pytest.mark.parametrize("mode", ["exact", "ann"])
def test_stage_equals_brute_force_components(mode):
  ids, vectors = _clustered(80)
  threshold = 0.9
  expected = _expected_rows(ids, vectors, threshold)
  assert max(r["group_size"] for r in expected) > 10  # more than a k
  assert any(r["group_size"] == 2 for r in expected)
  assert len(expected) < len(ids)  # and documents in no group
  pairs = {(a, b) for a, b, _ in brute_force_pairs(ids, vectors, threshold)}
  assert any((ids[i], ids[i + 1]) in pairs and (ids[i + 1], ids[i + 2]) in
             pairs and (ids[i], ids[i + 2]) not in pairs
             for i in range(len(ids) - 2))  # a chain: a~b, b~c, a!~c
  with TestPipeline() as p:
    result = (p | beam.Create(_embeddings(ids, vectors))
              | NearDuplicates(DuplicateSettings(threshold, mode=mode,
                                                 block_size=16)))
    assert_that(result[DUPLICATE_ROWS], equal_to(expected), label="Rows")

    def check_stats(stats):
      assert len(stats) == 1
      assert stats[0]["groups"] == len({r["group_id"] for r in expected})
      assert stats[0]["documents"] == len(expected)
      if mode == "ann":
        assert stats[0]["pair_recall"] == 1.0

    assert_that(result[STATS], check_stats, label="Stats")


def _write_corpus(path):
  base = ["the quick brown fox jumps over the lazy dog",
          "hello world the cat sat on a mat",
          "a text about vector search and embedding"]
  records = []
  for i in range(24):
    text = base[i % 3] + (" ." * (i // 3 % 3))
    records.append({"id": f"doc-{i:02d}", "text": text})
  records.append({"id": "lonely", "text": "unknown"})
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return str(path)


def _run(model_dir, corpus, run_dir, *flags):
  return main.run([f"--input={corpus}", f"--output={run_dir}",
                   f"--model={model_dir}", "--run_id=dups",
                   "--bigquery_format=jsonl", "--duplicate_threshold=0.98",
                   *flags])


@pytest.mark.timeout(600)
def test_runs_write_the_same_groups_on_every_runner(tmp_path, tiny_model_dir):
  corpus = _write_corpus(tmp_path / "c.jsonl")
  outputs = []
  for name, flags in (
      ("direct", ["--runner=DirectRunner", "--neighbours_k=0"]),
      ("again", ["--runner=DirectRunner", "--neighbours_k=3"]),
      ("multi", ["--runner=DirectRunner", "--direct_num_workers=2",
                 "--direct_running_mode=multi_processing",
                 "--neighbours_k=0"])):
    run_dir = str(tmp_path / name)
    _run(tiny_model_dir, corpus, run_dir, *flags)
    manifest = read_outputs.load_manifest(run_dir)
    rows = sorted(read_outputs.read_table(run_dir, "duplicates").to_pylist(),
                  key=lambda r: r["id"])
    with open(f"{run_dir}/{manifest['outputs']['duplicates']['tfrecord'][0]}",
              "rb") as f:
      outputs.append((rows, f.read(), manifest["duplicates"]))
  rows, _, stats = outputs[0]
  # The same groups on every runner (the vectors' last bits, and so the
  # scores, follow the batches the runner made) ...
  groups = [[(r["id"], r["group_id"], r["group_size"], r["representative"])
             for r in o[0]] for o in outputs]
  assert groups == [groups[0]] * 3
  # ... and on a rerun, byte-identical files.
  assert outputs[1][0] == rows and outputs[1][1] == outputs[0][1]
  assert stats["threshold"] == 0.98
  assert stats["groups"] == len({r["group_id"] for r in rows}) >= 3
  assert stats["documents"] == len(rows)
  assert "lonely" not in {r["id"] for r in rows}
  for row in rows:
    assert row["representative"] == (row["id"] == row["group_id"])
    assert row["group_id"] <= row["id"]


def test_threshold_1_groups_every_copy_of_a_text(tmp_path, tiny_model_dir):
  # Texts the tests did not write, each under two ids, in batches of 4:
  # copies land in different batches.
  texts = list(dict.fromkeys(real_sentences(80)))[:40]
  corpus = tmp_path / "copies.jsonl"
  with open(corpus, "w", encoding="utf-8") as f:
    for copy in "ab":
      for i, text in enumerate(texts):
        f.write(json.dumps({"id": f"{copy}{i:02d}", "text": text}) + "\n")
  run_dir = str(tmp_path / "run")
  _run(tiny_model_dir, str(corpus), run_dir, "--runner=DirectRunner",
       "--neighbours_k=0", "--duplicate_threshold=1", "--max_batch_size=4")
  group_of = {row["id"]: row["group_id"] for row in
              read_outputs.read_table(run_dir, "duplicates").to_pylist()}
  for i in range(len(texts)):
    assert group_of.get(f"a{i:02d}") == group_of.get(f"b{i:02d}") is not None


def test_duplicate_flags_fail_before_the_run(tmp_path, tiny_model_dir):
  corpus = _write_corpus(tmp_path / "c.jsonl")
  with pytest.raises(ConfigError, match="--duplicate_threshold=1.5"):
    _run(tiny_model_dir, corpus, str(tmp_path / "a"),
         "--duplicate_threshold=1.5")
  with pytest.raises(ConfigError, match="--neighbours_of"):
    _run(tiny_model_dir, corpus, str(tmp_path / "b"),
         f"--neighbours_of={corpus}")


def _groups_of_run(run_dir) -> dict:
  """id -> group_id of the run's duplicates table."""
  return {row["id"]: row["group_id"]
          for row in read_outputs.read_table(run_dir, "duplicates").to_pylist()}


def _brute_force_groups_of_run(run_dir, threshold) -> dict:
  """id -> group_id, of every document in a group of two or more, from the
  run's own document vectors."""
  ids, vectors = read_outputs.load_embeddings(run_dir)
  groups = brute_force_groups(ids, vectors, threshold)
  sizes = {}
  for group in groups.values():
    sizes[group] = sizes.get(group, 0) + 1
  return {i: g for i, g in groups.items() if sizes[g] > 1}


@pytest.mark.timeout(600)
def test_groups_with_chunking_and_over_an_incremental_run(tmp_path,
                                                          tiny_model_dir):
  # Documents long enough to be cut into chunks: their groups are of their
  # document vectors (the token-weighted mean of their chunks').
  threshold = 0.98
  day1 = _write_corpus(tmp_path / "day1.jsonl")
  chunked = ["--runner=DirectRunner", "--neighbours_k=0", "--chunk_size=8",
             "--chunk_overlap=2"]
  run1 = str(tmp_path / "run1")
  _run(tiny_model_dir, day1, run1, *chunked)
  manifest = read_outputs.load_manifest(run1)
  assert manifest["counts"]["chunks"] > manifest["counts"]["embedded"]
  groups1 = _groups_of_run(run1)
  assert groups1 and groups1 == _brute_force_groups_of_run(run1, threshold)

  # The next night: some documents gone, a copy of the loner added. The
  # groups are those of the whole current corpus, carried-over documents
  # with the newly embedded ones.
  with open(day1) as f:
    records = [json.loads(line) for line in f]
  records = [r for r in records if r["id"] not in ("doc-00", "doc-03")]
  records.append({"id": "lonely-copy", "text": "unknown"})
  day2 = tmp_path / "day2.jsonl"
  day2.write_text("".join(json.dumps(r) + "\n" for r in records))
  run2 = str(tmp_path / "run2")
  _run(tiny_model_dir, str(day2), run2, *chunked, f"--previous_run={run1}")
  counts = read_outputs.load_manifest(run2)["counts"]
  assert (counts["reused"], counts["inferred"], counts["removed"]) == (
      len(records) - 1, 1, 2)
  groups2 = _groups_of_run(run2)
  assert groups2 == _brute_force_groups_of_run(run2, threshold)
  assert groups2["lonely-copy"] == groups2["lonely"] == "lonely"
  assert not {"doc-00", "doc-03"} & set(groups2)
