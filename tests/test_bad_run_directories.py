"""Run directories: one run per directory, nothing fallible after the
manifest, only unlisted files removed, and a damaged previous run told in
one line (issue 14's publishing cases)."""

import json
import os
import socket
import struct

import pytest

from pipeline import main
from pipeline import output_lock
from pipeline import preflight
from pipeline import read_outputs
from run_directory.staging import remove_unlisted_files
from transforms import publish as publish_stage
from tests.main_runs import run_main as _run


# ---------------------------------------------------------------------------
# Publishing: one run per directory, nothing fallible after the manifest,
# table directories hold only what the manifest lists.


def test_only_unlisted_files_of_the_runs_directories_are_removed(
    tmp_path, monkeypatch):
  # A run directory given relative to the cwd: its own top level (the lock,
  # the report) and a directory of the user's are left alone; a table's
  # stale shard goes, and so do the files of tables and of an index that an
  # earlier run wrote and this one does not.
  monkeypatch.chdir(tmp_path)
  for relative in (".run.lock", "report.html", "notes.txt", "mine/notes.txt",
                   "embeddings/avro/embeddings-00000-of-00001.avro",
                   "embeddings/avro/embeddings-00000-of-00002.avro",
                   "duplicates/avro/duplicates-00000-of-00001.avro",
                   "duplicates/bigquery_schema.json",
                   "ann_index/index.faiss", "ann_index/ids.jsonl"):
    path = tmp_path / "run" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
  remove_unlisted_files("run", [
      "report.html", "embeddings/avro/embeddings-00000-of-00001.avro"])
  left = sorted(str(p.relative_to(tmp_path / "run"))
                for p in (tmp_path / "run").rglob("*") if p.is_file())
  assert left == [".run.lock", "embeddings/avro/embeddings-00000-of-00001.avro",
                  "mine/notes.txt", "notes.txt", "report.html"]


def test_an_output_holding_other_files_is_refused_before_the_run(
    tmp_path, corpus_file, tiny_model_dir, capsys):
  # Found by fuzzing the flags: --output=MODEL_DIR (or a project directory)
  # was taken, and publishing clears the files of a run's own directories
  # that it does not list: a project's embeddings/ would have gone.
  project = tmp_path / "project"
  (project / "embeddings").mkdir(parents=True)
  (project / "embeddings" / "mine.npy").write_bytes(b"mine")
  (project / "README.md").write_text("my project")
  code = main.main([f"--input={corpus_file}", f"--output={project}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  assert (f"--output={project} holds other files (README.md, embeddings) "
          "and no run of this pipeline") in capsys.readouterr().err
  assert (project / "embeddings" / "mine.npy").read_bytes() == b"mine"
  assert sorted(os.listdir(project)) == ["README.md", "embeddings"]
  # An empty directory, and an earlier run's that did not publish (its
  # lock, or its staging directory), are a run's.
  for leftover in (None, ".run.lock", ".staging-killed"):
    run_dir = tmp_path / f"run-{leftover}"
    run_dir.mkdir()
    if leftover:
      (run_dir / leftover).mkdir()
    preflight.check_output(str(run_dir))


def test_a_second_run_into_a_locked_output_refuses_and_names_the_holder(
    tmp_path, corpus_file, tiny_model_dir, capsys):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  staged = run_dir / ".staging-live" / "embeddings"
  staged.mkdir(parents=True)
  holder = {"run_id": "live", "host": socket.gethostname(),
            "pid": os.getpid(), "started_at": "2026-12-01T00:00:00+00:00"}
  (run_dir / ".run.lock").write_text(json.dumps(holder))
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file)
  assert code == 2
  err = capsys.readouterr().err
  assert f"being written by run live (pid {os.getpid()}" in err
  assert staged.is_dir()  # the live run's staging is left alone
  assert json.loads((run_dir / ".run.lock").read_text()) == holder


def test_a_stale_lock_and_an_earlier_publish_leave_no_trace(
    tmp_path, corpus_file, tiny_model_dir, caplog):
  run_dir = tmp_path / "run"
  (run_dir / "embeddings" / "avro").mkdir(parents=True)
  # A killed publish left a shard of another shard count behind.
  leftover = run_dir / "embeddings" / "avro" / "embeddings-00001-of-00002.avro"
  leftover.write_bytes(b"old")
  (run_dir / ".staging-killed").mkdir()
  dead_pid = 2**22 + 12345  # above Linux's pid_max: never a live process
  (run_dir / ".run.lock").write_text(json.dumps({
      "run_id": "killed", "host": socket.gethostname(),
      "pid": dead_pid}))
  pointer = tmp_path / "pointers" / "LATEST"
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 f"--latest_pointer={pointer}")
  assert code == 0
  assert "Taking over the lock" in caplog.text
  manifest = read_outputs.load_manifest(str(run_dir))
  listed = {os.path.join(str(run_dir), path)
            for entry in manifest["outputs"].values()
            for files in entry.values()
            for path in ([files] if isinstance(files, str) else files)}
  for table in ("embeddings", "errors", "neighbours"):
    for directory, _, names in os.walk(run_dir / table):
      assert {os.path.join(directory, n) for n in names} <= listed
  assert sorted(os.listdir(run_dir)) == [
      "bigquery", "embeddings", "errors", "manifest.json", "neighbours",
      "report.html"]
  assert pointer.read_text() == f"{run_dir}\n"
  assert os.listdir(pointer.parent) == ["LATEST"]


def test_two_runs_that_find_one_stale_lock_do_not_both_take_it(
    tmp_path, monkeypatch):
  # A finds the lock stale; before it acts, B takes it over. A must then
  # see B's live lock, not delete it.
  (tmp_path / ".run.lock").write_text(json.dumps({
      "run_id": "killed", "host": socket.gethostname(),
      "pid": 2**22 + 12345}))
  first, second = (output_lock.OutputLock(str(tmp_path), "A"),
                   output_lock.OutputLock(str(tmp_path), "B"))
  real_is_gone, interleaved = output_lock._is_gone, []  # pylint: disable=protected-access

  def is_gone(holder):
    gone = real_is_gone(holder)
    if not interleaved:
      interleaved.append("B")
      second.acquire()
    return gone

  monkeypatch.setattr(output_lock, "_is_gone", is_gone)
  with pytest.raises(output_lock.OutputLockedError, match="run B"):
    first.acquire()
  assert json.loads((tmp_path / ".run.lock").read_text())["run_id"] == "B"
  assert sorted(os.listdir(tmp_path)) == [".run.lock"]
  second.release()
  assert not os.listdir(tmp_path)
  # A run killed while taking a stale lock over left its takeover file:
  # stale too, it does not keep the next run out.
  for name in (".run.lock", ".run.lock.takeover"):
    (tmp_path / name).write_text(json.dumps({
        "run_id": "killed", "host": socket.gethostname(),
        "pid": 2**22 + 12345}))
  monkeypatch.setattr(output_lock, "_is_gone", real_is_gone)
  third = output_lock.OutputLock(str(tmp_path), "C").acquire()
  assert sorted(os.listdir(tmp_path)) == [".run.lock"]
  third.release()


def test_nothing_after_the_manifest_can_fail_a_published_run(
    tmp_path, corpus_file, tiny_model_dir, monkeypatch, caplog, capsys):
  rename = publish_stage.FileSystems.rename

  def rename_but_not_the_pointer(sources, destinations):
    if destinations[0].endswith("LATEST"):
      raise OSError("the pointer's file system is gone")
    return rename(sources, destinations)

  monkeypatch.setattr(publish_stage.FileSystems, "rename",
                      rename_but_not_the_pointer)
  pointer = tmp_path / "LATEST"
  code, run_dir = _run(tmp_path, tiny_model_dir, corpus_file,
                       f"--latest_pointer={pointer}")
  # Published: the manifest is there. But a scheduler must see that the
  # pointer still names the run before (here, none): exit status 4.
  assert code == 4
  assert read_outputs.load_manifest(run_dir)["counts"]["embedded"] == 1
  assert not pointer.exists()
  assert "The run is published, but moving" in caplog.text
  assert "LATEST into place failed" in caplog.text
  assert f"echo {run_dir} > {pointer}" in capsys.readouterr().err


_NOT_VALID = "a TFRecord shard of its tables is damaged (not a valid TFRecord: "


def _three_documents(tmp_path) -> str:
  path = tmp_path / "three.jsonl"
  path.write_text("".join(
      json.dumps({"id": doc_id, "text": text}) + "\n" for doc_id, text in
      (("a", "hello world"), ("b", "the quick brown fox"),
       ("c", "a cat sat on the mat"))))
  return str(path)


def _first_run(tmp_path, model_dir):
  """(its corpus, its directory, its manifest) of a published run of three
  documents, for a test to damage as a --previous_run."""
  corpus_file = _three_documents(tmp_path)
  code, first = _run(tmp_path, model_dir, corpus_file, output="first")
  assert code == 0
  return corpus_file, first, read_outputs.load_manifest(first)


def _first_record_only(data: bytes) -> bytes:
  """A TFRecord file cut just after its first whole record: length (8
  bytes), its CRC (4), the data, the data's CRC (4)."""
  (length,) = struct.unpack("<Q", data[:8])
  return data[:8 + 4 + length + 4]


@pytest.mark.parametrize("damage, told", [
    ("flipped byte", _NOT_VALID),
    ("cut short", _NOT_VALID),
    # Found by a fuzzer: each of these passes TFRecord's checksums, so the
    # run counted fewer (or more) previous documents and its removed count,
    # which guards publishing, said nothing was gone.
    ("emptied", "the previous run's embeddings table holds 0 rows, but its "
     "manifest counts 3 documents"),
    ("cut after a whole record", "the previous run's embeddings table holds "
     "1 rows, but its manifest counts 3 documents"),
    ("listed twice", "the previous run's embeddings table holds 6 rows, but "
     "its manifest counts 3 documents"),
])
def test_a_damaged_previous_run_shard_fails_in_one_line(
    damage, told, tmp_path, tiny_model_dir, capsys):
  # Found by a fuzzer: the runner's traceback, with a hex dump of the
  # record. A missing shard is found while planning; a damaged one only
  # when it is read.
  corpus_file, first, manifest = _first_run(tmp_path, tiny_model_dir)
  assert manifest["counts"]["embedded"] == 3
  [shard] = manifest["outputs"]["embeddings"]["tfrecord"]
  path = os.path.join(first, shard)
  data = bytearray(open(path, "rb").read())
  if damage == "flipped byte":
    data[len(data) // 2] ^= 0x10
  elif damage == "cut short":
    data = data[:len(data) - 7]
  elif damage == "emptied":
    data = b""
  elif damage == "cut after a whole record":
    data = _first_record_only(bytes(data))
  else:
    manifest["outputs"]["embeddings"]["tfrecord"] = [shard, shard]
    with open(os.path.join(first, "manifest.json"), "w") as f:
      json.dump(manifest, f)
  with open(path, "wb") as f:
    f.write(data)
  capsys.readouterr()
  code, second = _run(tmp_path, tiny_model_dir, corpus_file,
                      f"--previous_run={first}", output="second")
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith(
      f"pipeline.main: error: --previous_run={first}: {told}"), err
  assert len(err.splitlines()) == 1
  assert not os.path.exists(os.path.join(second, "manifest.json"))


def test_a_damaged_previous_run_named_by_the_pointer_says_to_fix_it(
    tmp_path, tiny_model_dir, capsys):
  # Found by a nightly trial: run_nightly.sh passes --previous_run=latest,
  # and the message said to point --previous_run at a complete run, where
  # planning's own messages say to fix the pointer file.
  pointer = str(tmp_path / "LATEST")
  corpus_file = _three_documents(tmp_path)
  code, first = _run(tmp_path, tiny_model_dir, corpus_file,
                     f"--latest_pointer={pointer}", output="first")
  assert code == 0
  [shard] = read_outputs.load_manifest(first)["outputs"]["embeddings"][
      "tfrecord"]
  path = os.path.join(first, shard)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) - 7])
  capsys.readouterr()
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 "--previous_run=latest", f"--latest_pointer={pointer}",
                 output="second")
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith(
      f"pipeline.main: error: --previous_run=latest ({first}, named by "
      f"--latest_pointer={pointer}): {_NOT_VALID}"), err
  assert err.rstrip().endswith(
      f"Write the last complete run's directory into {pointer}, or delete "
      f"{pointer} to embed everything afresh."), err


@pytest.mark.parametrize("damage, told", [
    (lambda m: m["counts"].update(embedded=-5),
     "counts.embedded is -5, not a count"),
    (lambda m: m["counts"].update(embedded=1e30),
     "counts.embedded is 1e+30, not a count"),
    (lambda m: m["counts"].update(embedded=True),
     "counts.embedded is True, not a count"),
    (lambda m: m.update(settings=None),
     '"settings" is None, not a JSON object: the manifest is damaged'),
    (lambda m: m.pop("run_id"), "run_id is None, not a string"),
    (lambda m: m["model"].update(fingerprint=123),
     "model.fingerprint is 123, not a string"),
    (lambda m: m["outputs"]["embeddings"].update(tfrecord=[]),
     "outputs.embeddings.tfrecord lists no file"),
    (lambda m: m.update(model=[]),
     '"model" is [], not a JSON object: the manifest is damaged'),
])
def test_a_damaged_previous_manifest_is_a_flag_error(
    damage, told, tmp_path, tiny_model_dir, capsys):
  # Found by a fuzzer: tracebacks, "its manifest lacks int() argument ...",
  # or (a count of 0) a removed-documents guardrail that checked nothing.
  corpus_file, first, manifest = _first_run(tmp_path, tiny_model_dir)
  path = os.path.join(first, "manifest.json")
  damage(manifest)
  with open(path, "w") as f:
    json.dump(manifest, f)
  capsys.readouterr()
  code, second = _run(tmp_path, tiny_model_dir, corpus_file,
                      f"--previous_run={first}", output="second")
  assert code == 2
  err = capsys.readouterr().err
  assert err.startswith("pipeline.main: error: --previous_run") and (
      len(err.splitlines()) == 1), err
  if told.startswith('"'):  # told by load_manifest, as to every reader
    assert told in err, err
  else:
    assert err == (f"pipeline.main: error: --previous_run={first}: its "
                   f"manifest.json is damaged ({told}). Point --previous_run "
                   "at the last complete run directory, or leave "
                   "--previous_run out to embed everything.\n")
  assert not os.path.exists(second)
