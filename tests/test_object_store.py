"""Run directories on an object store (gs://), which has no directories:
FileSystems.exists does not see a "directory", a `*` glob stops at "/", and
`test -f` sees nothing. mirror:// (tests/mirror_filesystem.py) is such a
store over a local directory.

Found so: nights published under a gs:// RUNS_ROOT were run again (and
failed, "already holds a published run"), and every run left its staging
"directory", spill files included, behind; a run into a directory never
removed an earlier run's staged files.
"""

import json
import os
import subprocess

import google.auth
from google.auth.exceptions import DefaultCredentialsError
import pytest

from pipeline import latest_pointer
from run_directory.staging import remove_stale_staging
from run_directory.staging import remove_unlisted_files
from run_directory.staging import remove_tree
from tests import mirror_filesystem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def store(tmp_path, monkeypatch):
  monkeypatch.setenv(mirror_filesystem.ROOT_VARIABLE, str(tmp_path / "store"))
  return tmp_path / "store"


def _files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file())


def _write(root, *relative_paths):
  for relative in relative_paths:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


def test_a_tree_and_stale_staging_are_removed_by_their_objects(store):
  _write(store, "run/.staging-old/spill/a/0.pickle",
         "run/.staging-old/refused.json", "run/.staging-older/x",
         "run/.run.lock", "run/embeddings/avro/e.avro", "run/spill/mine")
  remove_tree("mirror://run/.staging-old/spill")
  assert _files(store / "run" / ".staging-old") == ["refused.json"]
  remove_stale_staging("mirror://run")
  assert _files(store) == ["run/.run.lock", "run/embeddings/avro/e.avro",
                           "run/spill/mine"]
  remove_tree("mirror://run/absent")  # nothing there: no error


def test_only_unlisted_files_of_the_runs_directories_are_removed(store):
  # As tests/test_bad_run_directories.py checks it on a local directory.
  _write(store, "run/.run.lock", "run/report.html", "run/mine/notes.txt",
         "run/embeddings/avro/embeddings-00000-of-00001.avro",
         "run/embeddings/avro/embeddings-00000-of-00002.avro",
         "run/duplicates/avro/duplicates-00000-of-00001.avro",
         "run/ann_index/index.faiss")
  remove_unlisted_files("mirror://run", [
      "report.html", "embeddings/avro/embeddings-00000-of-00001.avro"])
  assert _files(store / "run") == [
      ".run.lock", "embeddings/avro/embeddings-00000-of-00001.avro",
      "mine/notes.txt", "report.html"]


def test_nights_under_an_object_store(store, tmp_path, tiny_model_dir):
  env = dict(os.environ, RUNS_ROOT="mirror://runs",
             PYTHONPATH=mirror_filesystem.make_sitecustomize(
                 str(tmp_path / "site")))
  corpus = {f"doc-{i}": f"text number {i} of the corpus" for i in range(8)}

  def run_nightly(run_id, records):
    path = tmp_path / f"{run_id}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    env.update(RUN_ID=run_id, INPUT=str(path))
    return subprocess.run(
        [os.path.join(REPO, "run_nightly.sh"), f"--model={tiny_model_dir}"],
        env=env, capture_output=True, text=True, timeout=600)

  def staged():
    return [f for f in _files(store) if "/.staging-" in f]

  texts = [{"id": k, "text": v} for k, v in corpus.items()]
  first = run_nightly("night-1", texts)
  assert first.returncode == 0, first.stderr[-3000:]
  again = run_nightly("night-1", texts)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "mirror://runs/night-1 is already published" in again.stdout
  assert not staged()
  # Refused (nothing embedded): its staged outputs stay, its spill files not.
  refused = run_nightly("night-2", [{"id": "x", "text": " "}])
  assert refused.returncode == 3, refused.stderr[-3000:]
  assert "runs/night-2/.staging-night-2/refused.json" in staged()
  assert not [f for f in staged() if "/spill/" in f]
  # Run again: published, reusing night-1's vectors, nothing staged left.
  texts[0]["text"] = "an edited text"
  second = run_nightly("night-2", texts)
  assert second.returncode == 0, second.stderr[-3000:]
  assert not staged()
  assert (store / "runs" / "LATEST").read_text() == "mirror://runs/night-2\n"
  counts = json.loads((store / "runs" / "night-2" / "manifest.json")
                      .read_text())["counts"]
  assert (counts["reused"], counts["inferred"]) == (7, 1)


def test_a_night_on_cloud_storage_without_credentials_exits_2_at_once(
    monkeypatch, capsys):
  # run_nightly.sh's first step: Cloud Storage's client went on anonymously
  # and retried for two minutes before this said anything.
  def no_credentials(*args, **kwargs):
    raise DefaultCredentialsError("none here")

  monkeypatch.setattr(google.auth, "default", no_credentials)
  assert latest_pointer.main([
      "gs://bucket/runs/night-1", "--latest_pointer=gs://bucket/runs/LATEST",
      "--if_published"]) == 2
  assert ("--latest_pointer=gs://bucket/runs/LATEST: Google Cloud needs "
          "credentials") in capsys.readouterr().err


def test_a_relative_path_in_a_pointer_is_read_from_its_directory(
    store, tmp_path, monkeypatch):
  # Found in a nightly trial: `echo 20261207 > runs/LATEST`, and the run
  # looked for ./20261207 wherever it was started. Read as TensorFlow reads
  # a `checkpoint` file's paths: from the file's own directory.
  runs = tmp_path / "runs"
  runs.mkdir()
  (runs / "LATEST").write_text("20261207\n")
  (runs / "OLDER").write_text("../archive/20261101\n")
  (runs / "FULL").write_text(f"{runs / 'night-1'}\n")
  monkeypatch.chdir(tmp_path)
  assert latest_pointer.read_latest_pointer("runs/LATEST") == str(runs / "20261207")
  assert latest_pointer.read_latest_pointer("runs/OLDER") == str(
      tmp_path / "archive" / "20261101")
  assert latest_pointer.read_latest_pointer(str(runs / "FULL")) == str(runs / "night-1")
  _write(store, "runs/LATEST")
  (store / "runs" / "LATEST").write_text("20261207\n")
  assert latest_pointer.read_latest_pointer("mirror://runs/LATEST") == (
      "mirror://runs/20261207")
