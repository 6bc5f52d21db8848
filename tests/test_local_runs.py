"""Multi-process local runs: how many model copies a run really loads.

`pipeline.main.run` on ~200 short lines with the tiny model, on the local
runner with two SDK worker subprocesses (`--direct_num_workers=2
--direct_running_mode=multi_processing`). Two logs, both appended to by the
worker subprocesses (they inherit this process's environment):

- MODEL_LOAD_LOG_ENV: the product's own log, one "<pid>" line per model load;
- _INFERENCE_LOG_ENV: this test's spy, one "<pid>" line per RunInference batch
  (a subclass of the real handler that only records the pid, then defers to
  the real run_inference), i.e. which processes embedded something.

With --large_model one process loads the model and both embed through Beam's
multi-process shared proxy; without it every process that runs the Embed
stage loads its own copy, once.
"""

import os

import numpy as np
import pytest

from bert_model.loaded_model import MODEL_LOAD_LOG_ENV
from pipeline import build
from pipeline import main
from pipeline import read_outputs
from transforms.model_handler import BertEmbeddingModelHandler

_INFERENCE_LOG_ENV = "BERT_EMBEDDINGS_TEST_INFERENCE_LOG"

NUM_DOCS = 200
NUM_BLANK = 2
NUM_DUPLICATES = 1
NUM_LINES = NUM_DOCS + NUM_BLANK + NUM_DUPLICATES

MULTI_PROCESS_FLAGS = ("--runner=DirectRunner", "--direct_num_workers=2",
                       "--direct_running_mode=multi_processing")

pytestmark = pytest.mark.timeout(300)


def write_corpus(path):
  """200 distinct short lines, plus 2 blank lines and 1 repeated line."""
  words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
           "hello", "world", "cat", "sat", "on", "mat", "a", "search",
           "vector", "text"]
  rng = np.random.default_rng(7)
  lines = [
      " ".join(rng.choice(words, size=int(rng.integers(1, 10)))) + f" {i}"
      for i in range(NUM_DOCS)
  ]
  lines.insert(50, "")
  lines.insert(120, "   ")
  lines.append(lines[10])  # same source and text: the same derived id
  assert len(lines) == NUM_LINES
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(str(tmp_path_factory.mktemp("corpus") / "corpus.txt"))


def make_spy_handler_class():
  """BertEmbeddingModelHandler, logging its pid per batch.

  The class is defined in this function, so Beam's pickler (cloudpickle)
  ships it by value: the workers need not import this test module.
  """

  class PidRecordingHandler(BertEmbeddingModelHandler):

    def run_inference(self, batch, model, inference_args=None):
      path = os.environ.get(_INFERENCE_LOG_ENV)
      if path:
        with open(path, "a") as f:
          f.write(f"{os.getpid()}\n")
      return super().run_inference(batch, model, inference_args)

  return PidRecordingHandler


def read_pids(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [int(line) for line in f.read().split()]


def run_logged(monkeypatch, tmp_path, corpus, model_dir, *flags):
  """Runs the pipeline; returns (run_dir, load pids, inference pids)."""
  load_log = str(tmp_path / "model_loads.log")
  inference_log = str(tmp_path / "inference.log")
  output = str(tmp_path / "run")
  # Set before the run: the worker subprocesses inherit the environment.
  monkeypatch.setenv(MODEL_LOAD_LOG_ENV, load_log)
  monkeypatch.setenv(_INFERENCE_LOG_ENV, inference_log)
  monkeypatch.setattr(build, "BertEmbeddingModelHandler",
                      make_spy_handler_class())
  main.run(["--input", corpus, "--output", output, "--model", model_dir,
            "--run_id", "local-runs-test", *flags])
  return output, read_pids(load_log), read_pids(inference_log)


def check_manifest_counts(run_dir):
  manifest = read_outputs.load_manifest(run_dir)
  counts = manifest["counts"]
  assert counts["read"] == NUM_LINES
  assert counts["embedded"] == NUM_DOCS
  assert counts["dead_lettered"] == NUM_BLANK + NUM_DUPLICATES
  assert counts["read"] == counts["embedded"] + counts["dead_lettered"]
  assert counts["truncated"] == 0
  ids, vectors = read_outputs.load_embeddings(run_dir)
  assert len(ids) == len(set(ids)) == counts["embedded"]
  assert vectors.shape == (NUM_DOCS, 16)
  errors = read_outputs.read_errors(run_dir)
  assert len(errors) == counts["dead_lettered"]
  assert sorted(e["reason"] for e in errors) == sorted(
      ["empty_text"] * NUM_BLANK + ["duplicate_record"] * NUM_DUPLICATES)
  assert counts["repeated"] == NUM_DUPLICATES


def embeddings_by_id(run_dir):
  ids, vectors = read_outputs.load_embeddings(run_dir)
  order = np.argsort(ids)
  return [ids[i] for i in order], vectors[order]


@pytest.fixture(scope="module")
def single_process_run(tiny_model_dir, corpus, tmp_path_factory):
  """The same job in this process: the reference for the vectors."""
  tmp_path = tmp_path_factory.mktemp("single_process")
  with pytest.MonkeyPatch.context() as monkeypatch:
    run_dir, loads, inference_pids = run_logged(
        monkeypatch, tmp_path, corpus, tiny_model_dir,
        "--runner=DirectRunner", "--direct_num_workers=1")
  # In-process runner: one load, here; every batch embedded here.
  assert loads == [os.getpid()]
  assert set(inference_pids) == {os.getpid()}
  check_manifest_counts(run_dir)
  return embeddings_by_id(run_dir)


def check_same_embeddings(run_dir, single_process_run):
  ids, vectors = embeddings_by_id(run_dir)
  reference_ids, reference_vectors = single_process_run
  assert ids == reference_ids
  np.testing.assert_allclose(vectors, reference_vectors, atol=1e-5)


def check_two_processes_embedded(inference_pids):
  # Deterministic with Beam's FnApiRunner: the Embed stage reads the output
  # of ValidateDocuments' GroupById, which the runner splits round-robin by
  # key (200 distinct ids) into one non-empty part per worker, and runs the
  # parts as simultaneous bundles on the two different worker subprocesses.
  assert os.getpid() not in inference_pids
  assert len(set(inference_pids)) == 2, inference_pids


def test_large_model_loads_one_copy_for_all_worker_processes(
    tiny_model_dir, corpus, single_process_run, monkeypatch, tmp_path,
    report_figure):
  run_dir, loads, inference_pids = run_logged(
      monkeypatch, tmp_path, corpus, tiny_model_dir, *MULTI_PROCESS_FLAGS,
      "--large_model")
  report_figure("model loads (--large_model)", len(loads))
  # Two worker processes embedded, through one model loaded once.
  check_two_processes_embedded(inference_pids)
  assert len(loads) == 1, loads
  assert loads[0] != os.getpid()
  check_manifest_counts(run_dir)
  check_same_embeddings(run_dir, single_process_run)


def test_without_sharing_each_embedding_process_loads_its_own_copy(
    tiny_model_dir, corpus, single_process_run, monkeypatch, tmp_path,
    report_figure):
  run_dir, loads, inference_pids = run_logged(
      monkeypatch, tmp_path, corpus, tiny_model_dir, *MULTI_PROCESS_FLAGS)
  report_figure("model loads (no sharing)", len(loads))
  check_two_processes_embedded(inference_pids)
  # One load per process, never two in one process (Beam's per-process
  # Shared cache), and every process that embedded loaded its own copy.
  # Beam loads in DoFn.setup, so a worker that ran the Embed stage on an empty
  # part would load without embedding: loads are a superset of the embedding
  # processes, at most one per worker. Here that is exactly both workers.
  assert len(loads) == len(set(loads)), loads
  assert set(inference_pids) <= set(loads)
  assert 1 <= len(loads) <= 2
  assert os.getpid() not in loads
  check_manifest_counts(run_dir)
  check_same_embeddings(run_dir, single_process_run)
