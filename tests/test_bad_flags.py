"""Wrong flags and paths: each fails before anything runs, with exit status 2
and a message that names the fix (found by trying the pipeline as a new
user would, and by fuzzers)."""

import json
import logging
import os
import re
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
import google.auth
from google.auth.exceptions import DefaultCredentialsError
import pytest

from pipeline import main
from pipeline import preflight
from pipeline import read_outputs
from tests.main_runs import run_main as _run
from tests.network_guard import guard_network


# ---------------------------------------------------------------------------
# Flags: checked before anything runs, exit 2, a message naming the fix.


@pytest.mark.parametrize("flags, message", [
    (["--input={tmp}/nothing-*.jsonl"], r"matches no file"),
    (["--input={tmp}/missing.jsonl"], r"missing.jsonl does not exist"),
    (["--input={tmp}"], r"is a directory; name its files with a glob"),
    (["--output={tmp}/corpus.jsonl"], r"is a file; name a run directory"),
    (["--output={tmp}/run-*"], r"holds glob characters"),
    (["--output={tmp}/run-[1]"], r"holds glob characters"),
    (["--latest_pointer={tmp}"], r"is a directory; name a file inside it"),
    (["--latest_pointer={tmp}/corpus.jsonl/LATEST"],
     r"corpus.jsonl is a file, not a directory"),
    # Found by a user trial: the pointer replaced the run's manifest.json,
    # or was the run directory itself (found only after publishing).
    (["--latest_pointer={tmp}/run/manifest.json"],
     r"--latest_pointer=.*/run/manifest.json is inside the run directory "
     r"--output=.*/run, whose files it would replace; put it beside the "
     r"runs, e.g. --latest_pointer=.*/LATEST\."),
    (["--latest_pointer={tmp}/run/"], r"is inside the run directory"),
    (["--restrict_fields=a,b,a", "--vertex_export=full"],
     r"--restrict_fields names \['a'\] twice; name each field once"),
    (["--input={tmp}/no/such/dir/c.jsonl"],
     r"does not exist\. Check the path \(the nearest directory that exists "
     r"is .*\)"),
    (["--text_field="], r"--text_field is empty: name the field"),
    (["--id_field= "], r"--id_field is empty: name the field"),
    (["--max_seq_length=0"], r"--max_seq_length must be a positive integer"),
    (["--max_record_bytes=0"], r"--max_record_bytes must be a positive"),
    (["--neighbours_block_size=0"], r"--neighbours_block_size must be a"),
    (["--num_shards=-1"], r"--num_shards must be 0"),
    # Found by a fuzzer: tracebacks deep in the run (a C long, a histogram's
    # bins, an index-sized integer), or a hang loading 2**70 model copies.
    *[([f"--{name}={2**70}", *extra], rf"--{name}={2**70}: at most [0-9,]+\.")
      for name, extra in (("neighbours_k", []), ("model_copies", []),
                          ("max_chunks", ["--chunk_size=16"]),
                          ("max_record_bytes", []), ("max_batch_size", []),
                          ("max_batch_tokens", []),
                          ("neighbours_block_size", []))],
    # Found by a fuzzer: "/" stripped of its slash was the working directory.
    (["--output=/"], r"--output=/ is the root directory; name a run "
     r"directory"),
    (["--output= "], r"--output is required"),
    (["--input=http://example.com/x.txt"], r"--input=http://example.com/"
     r"x.txt: Beam has no file system for this scheme; use a local path or "
     r"gs://\."),
    (["--output={tmp}/r\udcffn"], r"--output=.*/r\\xffn: holds bytes that "
     r"are not UTF-8; rename the path \(or pass the value\) in UTF-8\."),
    (["--output", "{tmp}/r\udcffn"], r"--output=.*/r\\xffn: holds bytes"),
    (["--output=/tmp/.."], r"--output=/tmp/\.\. is the root directory"),
    (["--previous_run=latest"], r"--previous_run=latest needs "
     r"--latest_pointer, the file each published run writes its directory "
     r"into\."),
    # Where even root cannot write: tried, not judged by permissions.
    (["--output=/proc/run"], r"--output=/proc/run: /proc is not writable"),
    (["--latest_pointer=/proc/LATEST"], r"/proc is not writable"),
    (["--neighbours_of={tmp}/q-*.jsonl"], r"--neighbours_of=.* matches no"),
    # Values argparse cannot take: one line naming the flag, not Beam's
    # usage of every option.
    (["--max_bad_fraction=abc"], r"^pipeline.main: error: argument "
     r"--max_bad_fraction: invalid float value: 'abc'\.[^\n]*\n$"),
    (["--neighbours_mode=foo"], r"--neighbours_mode: invalid choice: 'foo'"),
    (["--max_bad_fractio=0.2"], r"^pipeline.main: error: unknown flag\(s\): "
     r"--max_bad_fractio \(did you mean --max_bad_fraction\?\)"),
    # Found by fuzzing the command line: a .jsonl read as text published
    # its JSON lines as the texts (a .csv its header as a document); a
    # .txt read as parquet was refused only after the run.
    (["--input_format=text"], r"^pipeline.main: error: --input_format text: "
     r"--input=.*corpus.jsonl names jsonl files by its extension, which the "
     r"text reader would misread\. Leave --input_format out"),
    (["--input={tmp}/c.txt", "--input_format=parquet"],
     r"--input_format parquet: --input=.*c.txt names text files"),
    # Ignored with a model directory, unchecked: a typo went unnoticed.
    (["--model_root={tmp}/mirror"], r"--model_root=.*mirror is not a "
     r"directory: name the local mirror"),
    # The first --input was dropped without a word.
    (["--input={tmp}/corpus.jsonl", "--input", "{tmp}/c.txt"],
     r"--input is given 2 times, with '.*corpus.jsonl', '.*c.txt', and only "
     r"the last would be read"),
    (["--previous_run="], r"--previous_run is empty"),
    # The published run replaced the corpus with its path.
    (["--latest_pointer={tmp}/corpus.jsonl"], r"--latest_pointer=.*corpus"
     r"\.jsonl is matched by --input=.*corpus\.jsonl: publishing would "
     r"replace that input file"),
    (["--latest_pointer={tmp}/c.txt"], r"--latest_pointer=.*c\.txt is a file "
     r"of more than one line, not a latest pointer"),
])
def test_wrong_paths_and_numbers_exit_2_before_anything_runs(
    flags, message, corpus_file, tiny_model_dir, tmp_path, capsys):
  defaults = {"--input": corpus_file, "--output": str(tmp_path / "run")}
  (tmp_path / "c.txt").write_text("a text\nanother text\n")
  argv = [flag.format(tmp=tmp_path) for flag in flags]
  for flag, value in defaults.items():
    if not any(arg.startswith(flag + "=") for arg in argv):
      argv.append(f"{flag}={value}")
  before = sorted(os.listdir(tmp_path))
  code = main.main(argv + [f"--model={tiny_model_dir}",
                           "--runner=DirectRunner"])
  assert code == 2
  err = capsys.readouterr().err
  assert "pipeline.main: error:" in err
  assert re.search(message, err), err
  assert sorted(os.listdir(tmp_path)) == before  # nothing made


@pytest.mark.parametrize("pointer_bytes", [b"\xff\xfe garbage\n", None,
                                           b"", b" \n"])
def test_an_unreadable_latest_pointer_exits_2(
    pointer_bytes, corpus_file, tiny_model_dir, tmp_path, capsys):
  # Found by a new user's trial: a pointer file of non-UTF-8 bytes was a
  # traceback. A directory in its place is not readable as text either.
  pointer = tmp_path / "LATEST"
  if pointer_bytes is None:
    pointer.mkdir()
    (pointer / "x").write_text("x")
  else:
    pointer.write_bytes(pointer_bytes)
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    "--previous_run=latest", f"--latest_pointer={pointer}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert re.search(r"pipeline.main: error: --latest_pointer=.*LATEST "
                   r"(cannot be read as the text naming the latest run|is a "
                   r"directory|is empty; write the latest published run's "
                   r"directory into it, or delete it)", err), err
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("flag", ["--output=gs://bucket/runs/x",
                                  "--latest_pointer=gs://bucket/LATEST",
                                  "--bigquery_table=my-project:ds.t"])
def test_gcs_paths_without_credentials_exit_2_at_once(
    flag, corpus_file, tiny_model_dir, tmp_path, capsys, monkeypatch):
  # Found by a fuzzer: each request retried for two minutes, then a
  # traceback (or, for the pointer, a hang after publishing).
  def no_credentials(*args, **kwargs):
    raise DefaultCredentialsError("none here")

  monkeypatch.setattr(google.auth, "default", no_credentials)
  argv = [f"--input={corpus_file}", f"--output={tmp_path}/run", flag,
          "--temp_location=gs://bucket/tmp"]
  code = main.main(argv + [f"--model={tiny_model_dir}",
                           "--runner=DirectRunner"])
  assert code == 2
  assert re.search(rf"^pipeline.main: error: {re.escape(flag)}: Google Cloud "
                   r"needs credentials, and none were found\. Run `gcloud "
                   r"auth application-default login`", capsys.readouterr().err)
  assert not os.path.exists(tmp_path / "run")


def test_gcs_paths_with_google_cloud_out_of_reach_exit_2_at_once(
    corpus_file, tiny_model_dir, tmp_path, capsys, monkeypatch):
  # Found by a user trial: with credentials but no way to Google Cloud (no
  # network, a proxy it needs), each request retried for two minutes, then
  # a traceback. A service account key that is never sent anywhere.
  private_key = rsa.generate_private_key(public_exponent=65537,
                                         key_size=2048)
  key_file = tmp_path / "key.json"
  key_file.write_text(json.dumps({
      "type": "service_account", "project_id": "p", "private_key_id": "k",
      "private_key": private_key.private_bytes(
          serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
          serialization.NoEncryption()).decode(),
      "client_email": "runner@p.iam.gserviceaccount.com", "client_id": "1",
      "token_uri": "https://oauth2.googleapis.com/token"}))
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
  guard_network(monkeypatch)  # unreachable wherever the test runs
  started = time.monotonic()
  code = main.main([f"--input={corpus_file}", "--output=gs://bucket/runs/x",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  assert time.monotonic() - started < 60
  assert re.search(r"^pipeline.main: error: --output=gs://bucket/runs/x: "
                   r"Google Cloud cannot be reached to sign in \(.*\)\. Check "
                   r"the network", capsys.readouterr().err, re.M)


@pytest.mark.parametrize("inside", ["manifest.json", "embeddings/LATEST"])
def test_a_latest_pointer_inside_a_published_run_exits_2(
    inside, corpus_file, tiny_model_dir, tmp_path, capsys):
  # Found by a user trial: --latest_pointer OTHER_RUN/manifest.json
  # replaced another published run's manifest with a path.
  other = tmp_path / "other"
  (other / "embeddings").mkdir(parents=True)
  (other / "manifest.json").write_text('{"run_id": "r", "outputs": {}}')
  # Other tools' manifest.json (a web app's, say) is not a run.
  (tmp_path / "manifest.json").write_text('{"name": "my-app"}')
  before = sorted(os.listdir(other))
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    f"--latest_pointer={other}/{inside}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  err = capsys.readouterr().err
  assert re.search(rf"--latest_pointer=.*/{inside} is inside the published "
                   rf"run {other}, whose files it would replace; put it "
                   rf"beside the runs, e.g. --latest_pointer={tmp_path}/"
                   r"LATEST\.", err), err
  assert sorted(os.listdir(other)) == before
  assert (other / "manifest.json").read_text() == (
      '{"run_id": "r", "outputs": {}}')
  preflight.check_latest_pointer(str(tmp_path / "LATEST"))  # beside: fine
  assert not os.path.exists(tmp_path / "run")


def test_a_previous_run_named_by_the_pointer_is_told_so(
    corpus_file, tiny_model_dir, tmp_path, capsys):
  # Found by a user trial: a pointer holding a wrong path was told as
  # "--previous_run=<that path>", which the user never typed; and the
  # pointer file passed as --previous_run was not recognised.
  pointer = tmp_path / "LATEST"
  pointer.write_text("runs/gone\n")
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    "--previous_run=latest", f"--latest_pointer={pointer}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  # (A relative path is read from the pointer's directory.)
  assert re.search(rf"--previous_run=latest \({tmp_path}/runs/gone, named by "
                   rf"--latest_pointer={pointer}\) has no manifest.json: it "
                   rf"is not a published run\. Write the last complete run's "
                   rf"directory into {pointer}\.", capsys.readouterr().err)
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    f"--previous_run={pointer}", f"--model={tiny_model_dir}",
                    "--runner=DirectRunner"])
  assert code == 2
  assert re.search(rf"If {pointer} is a --latest_pointer file, pass "
                   rf"--previous_run latest --latest_pointer {pointer}\.",
                   capsys.readouterr().err)


def test_a_relative_output_is_published_quietly_and_named_absolutely(
    tmp_path, corpus_file, tiny_model_dir, monkeypatch, caplog):
  # Found running ./run_local.sh (OUTPUT=runs/...): the run's own lock was
  # taken for a file left by an earlier publish, and LATEST would have held
  # a path relative to whatever directory the run was started in.
  monkeypatch.chdir(tmp_path)
  code = main.main([f"--input={corpus_file}", "--output=runs/today",
                    "--latest_pointer=LATEST", f"--model={tiny_model_dir}",
                    "--runner=DirectRunner"])
  assert code == 0
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], (
      caplog.text)
  run_dir = tmp_path / "runs" / "today"
  assert (tmp_path / "LATEST").read_text() == f"{run_dir}\n"
  assert read_outputs.load_manifest(str(run_dir))["counts"]["embedded"] == 1


def test_a_previous_run_with_missing_shards_is_refused(
    tmp_path, corpus_file, tiny_model_dir, capsys, caplog):
  code, previous = _run(tmp_path, tiny_model_dir, corpus_file,
                        output="previous")
  assert code == 0
  shard = read_outputs.load_manifest(previous)["outputs"]["embeddings"][
      "tfrecord"][0]
  os.remove(os.path.join(previous, shard))
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 f"--previous_run={previous}", output="next")
  assert code == 2
  err = capsys.readouterr().err
  assert "shard(s) that are gone" in err
  assert "or leave --previous_run out to embed everything." in err
  assert not os.path.exists(tmp_path / "next")
  # Named by a pointer (run_nightly.sh passes --previous_run=latest itself):
  # the fix offered is the pointer's, not a flag the user cannot leave out.
  pointer = tmp_path / "LATEST"
  pointer.write_text(f"{previous}\n")
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 "--previous_run=latest", f"--latest_pointer={pointer}",
                 output="next")
  assert code == 2
  assert capsys.readouterr().err.rstrip().endswith(
      f"Write the last complete run's directory into {pointer}, or delete "
      f"{pointer} to embed everything afresh.")
  assert not os.path.exists(tmp_path / "next")
  # A file reuse does not read gone (the Avro copy): carried over, and told.
  code, previous = _run(tmp_path, tiny_model_dir, corpus_file,
                        output="previous3")
  assert code == 0
  avro = read_outputs.load_manifest(previous)["outputs"]["embeddings"]["avro"]
  os.remove(os.path.join(previous, avro[0]))
  with caplog.at_level(logging.WARNING):
    code, run_dir = _run(tmp_path, tiny_model_dir, corpus_file,
                         f"--previous_run={previous}", output="next3")
  assert code == 0
  assert read_outputs.load_manifest(run_dir)["counts"]["reused"] == 1
  assert (f"--previous_run={previous} is damaged: 1 other file(s) its "
          f"manifest lists are gone, e.g. {previous}/{avro[0]}") in caplog.text
  # Its schema file gone: named, not a traceback.
  code, previous = _run(tmp_path, tiny_model_dir, corpus_file,
                        output="previous2")
  assert code == 0
  os.remove(os.path.join(previous, "embeddings", "bigquery_schema.json"))
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 f"--previous_run={previous}", output="next2")
  assert code == 2
  err = capsys.readouterr().err
  assert ("its embeddings schema (embeddings/bigquery_schema.json) cannot be "
          "read") in err, err
  assert "Traceback" not in err



@pytest.mark.parametrize("flags, message", [
    # The shell expanded an unquoted --input glob: Beam would drop all but
    # the first file with a warning.
    (["--input={tmp}/a.jsonl", "{tmp}/b.jsonl", "{tmp}/c.jsonl"],
     r"unexpected argument\(s\) '.*b\.jsonl', '.*c\.jsonl': .*quote it"),
    # Found by a fuzzer: told as "unknown flag(s): --, --neighbours_k (did
    # you mean --neighbours_k?)".
    (["--", "--neighbours_k=3"], r"`--` ends the flags, and the pipeline "
     r"takes nothing after them: leave it out\."),
    (["--runner=NoSuchRunner"],
     r"--runner=NoSuchRunner: Unexpected pipeline runner.*DataflowRunner"),
    (["--runner=no.such.Runner"], r"--runner=no.such.Runner: No module"),
    (["--direct_num_workers=-3"], r"--direct_num_workers=-3: must be 0"),
    # Found by a fuzzer: 2**70 workers forked until the machine stalled.
    (["--direct_num_workers=1180591620717411303424",
      "--direct_running_mode=multi_processing"],
     r"--direct_num_workers=1180591620717411303424: must be 0 \(one per "
     r"core\) to 64\."),
    # Found by a fuzzer: these fetched a binary from the internet.
    (["--runner=PrismRunner"], r"--runner=PrismRunner: the pipeline runs on "
     r"DirectRunner \(the default: local, with no outside connection\) or "
     r"DataflowRunner\."),
    (["--runner=FlinkRunner"], r"--runner=FlinkRunner: the pipeline runs on"),
    (["--runner=PortableRunner"], r"--runner=PortableRunner: the pipeline "
     r"runs on"),
    (["--runner=DataflowRunner", "--region=us-central1"],
     r"--runner=DataflowRunner: Missing required option: project.*--project"),
])
def test_wrong_beam_options_and_stray_arguments_exit_2_before_anything_runs(
    flags, message, tiny_model_dir, tmp_path, capsys):
  for name in "abc":
    (tmp_path / f"{name}.jsonl").write_text('{"id": "x", "text": "y"}\n')
  before = sorted(os.listdir(tmp_path))
  argv = [flag.format(tmp=tmp_path) for flag in flags]
  if not any(arg.startswith("--input=") for arg in argv):
    argv.append(f"--input={tmp_path}/a.jsonl")
  if not any(arg.startswith("--runner=") for arg in argv):
    argv.append("--runner=DirectRunner")
  code = main.main(argv + [f"--output={tmp_path / 'run'}",
                           f"--model={tiny_model_dir}"])
  assert code == 2
  err = capsys.readouterr().err
  assert re.search(r"^pipeline.main: error: " + message, err, re.M), err
  assert "Traceback" not in err
  assert sorted(os.listdir(tmp_path)) == before  # nothing made



def test_a_file_named_like_a_glob_is_told_how_to_escape_it(
    tmp_path, tiny_model_dir, capsys):
  # Found by a fuzzer: "corpus[1].jsonl" was "matches no file" ([1] is a
  # character class to Beam's globs); the escaped name reads it.
  named = tmp_path / "corpus[1].jsonl"
  named.write_text('{"id": "a", "text": "the quick brown fox"}\n')
  code, _ = _run(tmp_path, tiny_model_dir, str(named))
  assert code == 2
  err = capsys.readouterr().err
  escaped = str(tmp_path / "corpus[[]1].jsonl")
  assert "is read as a glob, in which * ? [ ] are special" in err
  assert f"escape them, --input='{escaped}'" in err
  code, run_dir = _run(tmp_path, tiny_model_dir, escaped)
  assert code == 0
  assert read_outputs.load_manifest(run_dir)["counts"]["embedded"] == 1
