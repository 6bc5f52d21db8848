"""Nightly runs: incremental, idempotent, and never half-published."""

import filecmp
import json
import os
import subprocess

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipeline import latest_pointer
from pipeline import main
from pipeline import read_outputs
from pipeline.errors import ConfigError
from transforms import publish as publish_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["the", "quick", "brown", "fox", "lazy", "dog", "hello", "world",
         "cat", "sat", "on", "mat", "text", "vector", "search", "embed"]


def _corpus(n, seed=0):
  rng = np.random.default_rng(seed)
  return {f"doc-{i:04d}": " ".join(rng.choice(WORDS, size=rng.integers(2, 9)))
          for i in range(n)}


def _write_jsonl(path, corpus):
  with open(path, "w", encoding="utf-8") as f:
    for doc_id, text in corpus.items():
      f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
  return str(path)


def _run(model_dir, corpus_path, run_dir, *flags, run_id="nightly"):
  return main.run([f"--input={corpus_path}", f"--output={run_dir}",
                   f"--model={model_dir}", "--runner=DirectRunner",
                   f"--run_id={run_id}", "--neighbours_k=3", *flags])


def _counter(result, name):
  results = result.metrics().query(MetricsFilter().with_name(name))["counters"]
  return sum(r.committed for r in results)


def _rows_by_id(run_dir, table="embeddings"):
  rows = read_outputs.read_table(run_dir, table).to_pylist()
  if table == "neighbours":
    return {(r["id"], r["rank"]): r for r in rows}
  return {r["id"]: r for r in rows}


def _data_files(run_dir):
  manifest = read_outputs.load_manifest(run_dir)
  files = []
  for formats in manifest["outputs"].values():
    for value in formats.values():
      files += [value] if isinstance(value, str) else value
  return manifest, sorted(files)


def test_second_run_embeds_only_changed_and_added(tmp_path, tiny_model_dir):
  day1 = _corpus(200)
  day2 = dict(day1)
  changed = list(day1)[10:14]  # 2%
  removed = list(day1)[50:52]  # 1%
  for doc_id in changed:
    day2[doc_id] = day1[doc_id] + " changed"
  for doc_id in removed:
    del day2[doc_id]
  day2["doc-new-1"] = "hello new world"  # 1% added
  day2["doc-new-2"] = "a new lazy cat"
  (tmp_path / "day1").mkdir()
  (tmp_path / "day2").mkdir()
  corpus1 = _write_jsonl(tmp_path / "day1" / "corpus.jsonl", day1)
  corpus2 = _write_jsonl(tmp_path / "day2" / "corpus.jsonl", day2)

  # Short enough that some documents are cut: carried over, they still
  # count as truncated.
  short = "--max_seq_length=8"
  run1 = str(tmp_path / "run1")
  first = _run(tiny_model_dir, corpus1, run1, short)
  assert _counter(first, "inferred") == 200

  run2 = str(tmp_path / "run2")
  pointer = str(tmp_path / "LATEST")
  second = _run(tiny_model_dir, corpus2, run2, f"--previous_run={run1}",
                f"--latest_pointer={pointer}", short)
  # The model ran on the changed and the added documents only.
  assert _counter(second, "inferred") == len(changed) + 2
  assert _counter(second, "reused") == 200 - len(changed) - len(removed)
  manifest = read_outputs.load_manifest(run2)
  assert manifest["counts"]["reused"] == 200 - len(changed) - len(removed)
  assert manifest["counts"]["removed"] == len(removed)
  assert manifest["counts"]["embedded"] == len(day2)
  assert manifest["counts"]["inferred"] == len(changed) + 2
  assert manifest["counts"]["truncated"] > len(changed) + 2
  assert _counter(second, "truncated") == manifest["counts"]["truncated"]
  assert manifest["previous_run"]["reused"] is True
  with open(pointer) as f:
    assert f.read().strip() == run2

  # Equal to a full run over the new corpus.
  full = str(tmp_path / "full")
  _run(tiny_model_dir, corpus2, full, short)
  incremental_rows, full_rows = _rows_by_id(run2), _rows_by_id(full)
  assert set(incremental_rows) == set(full_rows) == set(day2)
  for doc_id, row in full_rows.items():
    other = incremental_rows[doc_id]
    np.testing.assert_allclose(other.pop("embedding"), row.pop("embedding"),
                               atol=1e-6)
    assert other == row
  incremental_neighbours = _rows_by_id(run2, "neighbours")
  full_neighbours = _rows_by_id(full, "neighbours")
  assert set(incremental_neighbours) == set(full_neighbours)
  for key, row in full_neighbours.items():
    assert incremental_neighbours[key]["neighbour_id"] == row["neighbour_id"]
    assert incremental_neighbours[key]["score"] == pytest.approx(
        row["score"], abs=1e-6)


def test_other_model_settings_reuse_nothing(tmp_path, tiny_model_dir):
  corpus = _write_jsonl(tmp_path / "corpus.jsonl", _corpus(20))
  run1 = str(tmp_path / "run1")
  _run(tiny_model_dir, corpus, run1)
  run2 = str(tmp_path / "run2")
  second = _run(tiny_model_dir, corpus, run2, f"--previous_run={run1}",
                "--max_seq_length=16")
  assert _counter(second, "inferred") == 20
  manifest = read_outputs.load_manifest(run2)
  assert manifest["counts"]["reused"] == 0
  assert manifest["previous_run"] == {
      "path": run1, "run_id": "nightly", "reused": False,
      "reason": "settings changed: max_seq_length"}


def test_previous_run_must_be_published(tmp_path, tiny_model_dir):
  corpus = _write_jsonl(tmp_path / "corpus.jsonl", _corpus(5))
  os.makedirs(tmp_path / "unpublished")
  with pytest.raises(ConfigError, match="not a published run"):
    _run(tiny_model_dir, corpus, str(tmp_path / "run"),
         f"--previous_run={tmp_path / 'unpublished'}")


def test_a_run_killed_while_publishing_leaves_no_manifest(
    tmp_path, tiny_model_dir, monkeypatch):
  corpus = _write_jsonl(tmp_path / "corpus.jsonl", _corpus(30))
  run_dir = str(tmp_path / "run")
  move_into_place = publish_stage.move_into_place

  def dies_half_way(staging_dir, final_dir, relative_paths):
    relative_paths = list(relative_paths)
    move_into_place(staging_dir, final_dir,
                    relative_paths[:len(relative_paths) // 2])
    raise RuntimeError("worker killed")

  monkeypatch.setattr(publish_stage, "move_into_place", dies_half_way)
  with pytest.raises(Exception, match="worker killed"):
    _run(tiny_model_dir, corpus, run_dir, run_id="attempt-1")
  assert not os.path.exists(os.path.join(run_dir, "manifest.json"))
  with pytest.raises(read_outputs.RunNotPublishedError):
    read_outputs.load_manifest(run_dir)

  monkeypatch.setattr(publish_stage, "move_into_place", move_into_place)
  _run(tiny_model_dir, corpus, run_dir, run_id="attempt-2")
  manifest, files = _data_files(run_dir)
  assert manifest["run_id"] == "attempt-2"
  assert manifest["counts"]["embedded"] == 30
  for name in files:
    assert os.path.isfile(os.path.join(run_dir, name)), name
  assert not [n for n in os.listdir(run_dir) if n.startswith(".staging")]


def test_same_input_twice_gives_identical_files(tmp_path, tiny_model_dir):
  corpus = _write_jsonl(tmp_path / "corpus.jsonl", _corpus(60))
  first, second = str(tmp_path / "a"), str(tmp_path / "b")
  _run(tiny_model_dir, corpus, first, "--bigquery_format=avro")
  _run(tiny_model_dir, corpus, second, "--bigquery_format=avro")
  manifest_a, files_a = _data_files(first)
  manifest_b, files_b = _data_files(second)
  assert files_a == files_b
  for name in files_a:
    if name == "report.html":
      continue  # it shows the run's times
    assert filecmp.cmp(os.path.join(first, name), os.path.join(second, name),
                       shallow=False), name
  for manifest in (manifest_a, manifest_b):
    manifest.pop("metrics")  # wall time
    manifest["settings"]["outputs"].pop("output")  # the two run directories
  assert manifest_a == manifest_b


def test_scheduled_runs_follow_the_latest_pointer(tmp_path, tiny_model_dir):
  corpus = _write_jsonl(tmp_path / "corpus.jsonl", _corpus(20))
  pointer = str(tmp_path / "runs" / "LATEST")
  flags = ["--previous_run=latest", f"--latest_pointer={pointer}"]
  output = str(tmp_path / "runs" / "{run_id}")
  first = _run(tiny_model_dir, corpus, output, *flags, run_id="night-1")
  assert _counter(first, "inferred") == 20  # no pointer yet: a full run
  second = _run(tiny_model_dir, corpus, output, *flags, run_id="night-2")
  assert _counter(second, "inferred") == 0  # nothing changed
  manifest = read_outputs.load_manifest(str(tmp_path / "runs" / "night-2"))
  assert manifest["counts"]["reused"] == 20
  assert manifest["previous_run"]["path"] == str(tmp_path / "runs" / "night-1")
  with open(pointer) as f:
    assert f.read().strip() == str(tmp_path / "runs" / "night-2")


def test_a_night_killed_before_moving_latest_moves_it_when_run_again(
    tmp_path, tiny_model_dir, monkeypatch, capsys):
  # Killed after manifest.json, before the pointer's rename: published, and
  # LATEST names the night before. run_nightly.sh skips a published night;
  # it must still move LATEST, or the next night diffs against the older run
  # (a Vertex delta would never delete what the killed night added).
  corpus = _write_jsonl(tmp_path / "corpus.jsonl", _corpus(10))
  runs = tmp_path / "runs"
  pointer = str(runs / "LATEST")
  flags = ["--previous_run=latest", f"--latest_pointer={pointer}"]
  _run(tiny_model_dir, corpus, str(runs / "{run_id}"), *flags,
       run_id="night-1")
  monkeypatch.setattr(publish_stage, "commit_staged",
                      lambda staged, path: None)  # killed here
  _run(tiny_model_dir, corpus, str(runs / "{run_id}"), *flags,
       run_id="night-2")
  monkeypatch.undo()
  assert os.path.exists(runs / "night-2" / "manifest.json")
  with open(pointer) as f:
    assert f.read().strip() == str(runs / "night-1")

  def run_nightly(run_id):
    env = dict(os.environ, RUNS_ROOT=str(runs), INPUT=corpus, RUN_ID=run_id)
    return subprocess.run([os.path.join(REPO, "run_nightly.sh")], env=env,
                          capture_output=True, text=True, timeout=300)

  # run_nightly.sh asks pipeline.latest_pointer (a test -f once, which
  # never saw a night published under a gs:// RUNS_ROOT): 3 runs the night.
  unpublished = [str(runs / "night-3"), f"--latest_pointer={pointer}"]
  capsys.readouterr()
  assert latest_pointer.main([*unpublished, "--if_published"]) == 3
  assert capsys.readouterr() == ("", "")
  assert latest_pointer.main(unpublished) == 2
  assert "no such run directory" in capsys.readouterr().err
  again = run_nightly("night-2")
  assert again.returncode == 0, again.stderr
  assert "night-2 is already published" in again.stdout
  with open(pointer) as f:
    assert f.read().strip() == str(runs / "night-2")
  assert not [n for n in os.listdir(runs) if n.endswith(".tmp")]
  # An older night run again never moves the pointer back.
  assert run_nightly("night-1").returncode == 0
  with open(pointer) as f:
    assert f.read().strip() == str(runs / "night-2")


def test_a_run_never_moves_the_pointer_from_one_published_while_it_ran(
    tmp_path, tiny_model_dir, monkeypatch, caplog):
  # Found by an acceptance audit: two runs sharing --latest_pointer
  # (overlapping nights), the later-started one published first, and the
  # earlier one, finishing last, moved the pointer back to itself.
  corpus = _write_jsonl(tmp_path / "corpus.jsonl", _corpus(10))
  runs = tmp_path / "runs"
  pointer = runs / "LATEST"
  flags = ["--previous_run=latest", f"--latest_pointer={pointer}"]
  pointer_only = [f"--latest_pointer={pointer}"]
  _run(tiny_model_dir, corpus, str(runs / "{run_id}"), *flags,
       run_id="night-1")
  assert pointer.read_text() == f"{runs / 'night-1'}\n"
  moved_into_place = publish_stage.move_into_place

  def another_run_publishes_first(staging_dir, run_dir, listed):
    pointer.write_text(f"{runs / 'night-3'}\n")
    moved_into_place(staging_dir, run_dir, listed)

  monkeypatch.setattr(publish_stage, "move_into_place",
                      another_run_publishes_first)
  outcome = main.main([f"--input={corpus}", f"--output={runs / 'night-2'}",
                       f"--model={tiny_model_dir}", "--runner=DirectRunner",
                       "--run_id=night-2", *flags])
  assert outcome == 0  # published, and the pointer left to the other run
  assert os.path.exists(runs / "night-2" / "manifest.json")
  assert pointer.read_text() == f"{runs / 'night-3'}\n"
  assert not [n for n in os.listdir(runs) if n.endswith(".tmp")]
  assert (f"--latest_pointer={pointer} names {runs / 'night-3'}, published "
          "while this run ran") in caplog.text
  # Found by a nightly trial: the other order. A run that started *before*
  # this one (night-2) published while it ran; this one read the newer
  # corpus, and published last, exit status 0, but the pointer was left on
  # the older night (and re-running the night did not move it). Without a
  # previous run too: the pointer is compared with what it named when the
  # run started.
  def an_earlier_run_publishes_first(staging_dir, run_dir, listed):
    pointer.write_text(f"{runs / 'night-2'}\n")
    moved_into_place(staging_dir, run_dir, listed)

  monkeypatch.setattr(publish_stage, "move_into_place",
                      an_earlier_run_publishes_first)
  caplog.clear()
  _run(tiny_model_dir, corpus, str(runs / "{run_id}"), *pointer_only,
       run_id="night-4")
  assert pointer.read_text() == f"{runs / 'night-4'}\n"
  assert "but that run started before this one" in caplog.text
  assert not [n for n in os.listdir(runs) if n.endswith(".tmp")]
  assert read_outputs.load_manifest(runs / "night-4")["metrics"][
      "started_at"] > read_outputs.load_manifest(runs / "night-2")[
          "metrics"]["started_at"]
  # ... and when that move fails, the run says so (exit status 4), as any
  # pointer it should have moved and could not.
  def the_move_fails(staged, final):
    raise OSError("read-only file system")

  monkeypatch.setattr(publish_stage, "commit_staged", the_move_fails)
  outcome = main.main([f"--input={corpus}", f"--output={runs / 'night-5'}",
                       f"--model={tiny_model_dir}", "--runner=DirectRunner",
                       "--run_id=night-5", *pointer_only])
  assert outcome == 4
  assert pointer.read_text() == f"{runs / 'night-2'}\n"


def test_run_nightly_reads_relative_paths_from_the_callers_directory(
    tmp_path, tiny_model_dir):
  # RUNS_ROOT and INPUT relative to where it is run, as for any command (it
  # once ran from the repository: the input "matched no file", the runs
  # landed in the checkout).
  (tmp_path / "corpus").mkdir()
  _write_jsonl(tmp_path / "corpus" / "part-0.jsonl", _corpus(6))
  # A trailing slash too: it named runs//night-1 in the messages.
  env = dict(os.environ, RUNS_ROOT="runs/", INPUT="corpus/*.jsonl",
             RUN_ID="night-1")
  result = subprocess.run(
      [os.path.join(REPO, "run_nightly.sh"), f"--model={tiny_model_dir}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "runs//" not in result.stdout + result.stderr
  run_dir = str(tmp_path / "runs" / "night-1")
  assert read_outputs.load_manifest(run_dir)["counts"]["embedded"] == 6
  with open(tmp_path / "runs" / "LATEST") as f:
    assert f.read().strip() == run_dir
  assert not os.path.exists(os.path.join(REPO, "runs", "night-1"))
