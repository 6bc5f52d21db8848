"""Hostile input, failing bundles and killed workers lose nothing."""

import collections
import os
import shutil
import signal
import threading
import time

import pytest

from bert_model.loaded_model import MODEL_LOAD_LOG_ENV
from pipeline import main
from pipeline import read_outputs
from pipeline.errors import ConfigError
from run_directory.records import SNIPPET_CHARS
from tests.hostile_corpus import CODE_LIKE
from tests.hostile_corpus import write_hostile_corpus
from transforms import embed


def _run(model_dir, pattern, run_dir, *flags):
  # Hostile on purpose: the guardrails have tests of their own.
  return main.run([f"--input={pattern}", f"--output={run_dir}",
                   f"--model={model_dir}", "--neighbours_k=2",
                   "--runner=DirectRunner", "--max_bad_fraction=1", *flags])


def _files_outside(root, run_dir):
  return {
      os.path.join(d, f) for d, _, files in os.walk(root) for f in files
      if not os.path.join(d, f).startswith(run_dir)
  }


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
  return write_hostile_corpus(str(tmp_path_factory.mktemp("hostile")))


@pytest.mark.parametrize("family", ["text", "jsonl", "parquet"])
def test_every_hostile_record_ends_in_exactly_one_output(
    hostile, family, tmp_path, tiny_model_dir):
  pattern, expected = hostile[family]
  before = _files_outside(str(tmp_path), str(tmp_path / "run"))
  run_dir = str(tmp_path / "run")
  _run(tiny_model_dir, pattern, run_dir)

  counts = read_outputs.load_manifest(run_dir)["counts"]
  embeddings = read_outputs.read_table(run_dir, "embeddings").to_pylist()
  errors = read_outputs.read_errors(run_dir)
  assert counts["read"] == expected["records"]
  assert counts["read"] == counts["embedded"] + counts["dead_lettered"]
  assert counts["embedded"] == len(embeddings) == expected["embedded"]
  assert counts["dead_lettered"] == len(errors)
  assert dict(collections.Counter(e["reason"] for e in errors)) == (
      expected["reasons"])
  # Exactly once each: ids among the embeddings, places among the errors.
  assert len({e["id"] for e in embeddings}) == len(embeddings)
  assert len({(e["source"], e["position"]) for e in errors}) == len(errors)
  # Errors name the record but never carry more than a snippet of it.
  assert all(len(e["snippet"]) <= SNIPPET_CHARS for e in errors)
  # Nothing was written outside the run directory (ids are data, not paths).
  assert _files_outside(str(tmp_path), run_dir) == before

  texts = {e["text"] for e in embeddings}
  if family == "text":
    # Text is data: code-like input comes out verbatim, never evaluated.
    assert set(CODE_LIKE) <= texts
    assert not os.path.exists("/tmp/pwned")
    ten_mb = [e for e in embeddings if len(e["text"]) > 1_000_000]
    assert len(ten_mb) == 1 and ten_mb[0]["truncated"]
    assert ten_mb[0]["num_tokens"] == 32  # the tiny model's max length
  if family == "jsonl":
    assert "../../../etc/passwd" in {e["id"] for e in embeddings}


def test_a_bundle_that_fails_once_is_retried_without_duplicates(
    hostile, tmp_path, tiny_model_dir, monkeypatch):
  # Beam's bundle-based DirectRunner retries a failed bundle, as Dataflow
  # does; the first attempt's output must not reach the files.
  pattern, expected = hostile["jsonl"]
  attempts = []
  embedding_of = embed.embedding_of

  def fails_on_first_attempt(document, encoded, **kwargs):
    attempts.append(document.id)
    if len(attempts) == 3:
      raise RuntimeError("transient worker failure")
    return embedding_of(document, encoded, **kwargs)

  monkeypatch.setattr(embed, "embedding_of", fails_on_first_attempt)
  run_dir = str(tmp_path / "run")
  _run(tiny_model_dir, pattern, run_dir, "--runner=BundleBasedDirectRunner")
  assert len(attempts) > expected["embedded"]  # something was retried
  embeddings = read_outputs.read_table(run_dir, "embeddings").to_pylist()
  ids = [e["id"] for e in embeddings]
  assert len(ids) == len(set(ids)) == expected["embedded"]
  counts = read_outputs.load_manifest(run_dir)["counts"]
  assert counts["embedded"] == expected["embedded"]


@pytest.mark.timeout(300)
def test_a_killed_worker_never_publishes_partial_data(
    tmp_path, tiny_model_dir, monkeypatch):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(f"sentence number {i} about the fox"
                              for i in range(400)) + "\n")
  load_log = tmp_path / "loads.log"
  monkeypatch.setenv(MODEL_LOAD_LOG_ENV, str(load_log))
  killed = []

  def kill_first_worker_that_loads_the_model():
    deadline = time.time() + 120
    while time.time() < deadline and not killed:
      if load_log.exists() and load_log.read_text().split():
        pid = int(load_log.read_text().split()[0])
        if pid != os.getpid():
          os.kill(pid, signal.SIGKILL)
          killed.append(pid)
      time.sleep(0.05)

  killer = threading.Thread(target=kill_first_worker_that_loads_the_model)
  killer.start()
  run_dir = str(tmp_path / "run")
  failed = False
  try:
    _run(tiny_model_dir, str(corpus), run_dir, "--direct_num_workers=2",
         "--direct_running_mode=multi_processing")
  except Exception:  # pylint: disable=broad-except
    failed = True
  killer.join()
  assert killed, "no worker was killed: the test proved nothing"
  manifest_path = os.path.join(run_dir, "manifest.json")
  if failed:
    assert not os.path.exists(manifest_path)
  else:
    # Recovered: then the published data must be complete.
    counts = read_outputs.load_manifest(run_dir)["counts"]
    assert counts["read"] == counts["embedded"] == 400
    assert len(read_outputs.load_embeddings(run_dir)[0]) == 400


def test_missing_or_corrupt_model_fails_before_reading(tmp_path,
                                                       tiny_model_dir):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("hello world\n")
  with pytest.raises(ConfigError, match="no such directory"):
    _run(str(tmp_path / "missing"), str(corpus), str(tmp_path / "run"))
  corrupt = str(tmp_path / "corrupt")
  shutil.copytree(tiny_model_dir, corrupt)
  with open(os.path.join(corrupt, "encoder", "saved_model.pb"), "wb") as f:
    f.write(b"not a saved model")
  with pytest.raises(ConfigError, match="saved_model.pb is corrupt"):
    _run(corrupt, str(corpus), str(tmp_path / "run"))
  os.remove(os.path.join(corrupt, "model_metadata.json"))
  with pytest.raises(ConfigError, match="missing model_metadata.json"):
    _run(corrupt, str(corpus), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("model, message", [
    ("http://example.com/model", "refusing to load a model over plain http"),
    # A handle in no cache: tensorflow_hub's download fails (no such model,
    # or no network) before anything is read.
    ("https://tfhub.dev/google/x/1", "could not be downloaded"),
])
def test_model_schemes(tmp_path, model, message, monkeypatch):
  monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "tfhub_cache"))
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("hello\n")
  with pytest.raises(ConfigError, match=message):
    _run(model, str(corpus), str(tmp_path / "run"))


def test_run_ids_cannot_escape_the_output(tmp_path, tiny_model_dir):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("hello\n")
  with pytest.raises(ConfigError, match="--run_id"):
    _run(tiny_model_dir, str(corpus), str(tmp_path / "run"),
         "--run_id=../../escape")
