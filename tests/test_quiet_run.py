"""`python -m pipeline.main` as a person runs it, in a process of its own:
by default it prints only its progress and summary (no TensorFlow, CUDA,
absl or setuptools noise, no Beam INFO logs); --verbose brings them back."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a local run printed before (issue 18), one pattern each.
NOISE = [
    r"absl::InitializeLog",
    r"oneDNN",
    r"cuda",
    r"cuInit",
    r"pkg_resources",
    r"UserWarning",
    r"[IWE]\d{4} \d\d:\d\d:",  # any absl-formatted native line
    r"Creating state cache",
    r"INFO",
]
# All a quiet local run may print on stderr.
ALLOWED = [
    r"Published run \S+ in [\d.]+ s \([\d.,]+ docs/s\): .*",
    r"Queries \(--neighbours_of\): .*",
    r"Rejected records \(.*\): python -m pipeline.read_outputs .*",
    r"Run directory: .*",
    # Progress: once the first batch is back, once the rate is known, then
    # every 30 s.
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d Embedded .*",
]


def _run(argv, timeout=600):
  env = dict(os.environ, NO_GCE_CHECK="true", HF_HUB_OFFLINE="1")
  # The pipeline must quiet TensorFlow itself, as from a plain shell.
  for name in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS"):
    env.pop(name, None)
  return subprocess.run([sys.executable, "-m", "pipeline.main", *argv],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.parametrize("runner_flags", [
    [],
    # Worker processes, which print TensorFlow's notices as they start and
    # send Beam's start-up warnings to the driver.
    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
], ids=["in_process", "worker_processes"])
def test_a_local_run_prints_only_its_progress_and_summary(tiny_model_dir,
                                                          tmp_path,
                                                          runner_flags):
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(
      json.dumps({"id": f"d{i}", "text": text}) + "\n"
      for i, text in enumerate(["the first text", "a second one", "", "last"])))
  run_dir = tmp_path / "run"

  result = _run([f"--input={corpus}", f"--output={run_dir}",
                 f"--model={tiny_model_dir}", "--runner=DirectRunner",
                 "--max_bad_fraction=0.5", *runner_flags])

  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == ""
  for pattern in NOISE:
    assert not re.search(pattern, result.stderr), (pattern, result.stderr)
  lines = result.stderr.splitlines()
  unexpected = [line for line in lines
                if not any(re.fullmatch(p, line) for p in ALLOWED)]
  assert not unexpected, result.stderr
  lines = [line for line in lines if not re.fullmatch(ALLOWED[-1], line)]
  assert lines[0].startswith("Published run ")
  assert "4 records read, 3 embedded" in lines[0] and "1 rejected" in lines[0]
  assert lines[1].startswith("Rejected records (empty_text 1): ")
  assert lines[-1] == (f"Run directory: {run_dir} (manifest.json lists every "
                       "file)")
  assert (run_dir / "manifest.json").exists()


def test_run_local_sh_prints_only_its_progress_and_summary(
    default_model_dir, tmp_path):
  # The README's first command, as a new user runs it: the default model,
  # the sample corpus, the default run directory in the repository (where a
  # relative --output once made the run warn about its own lock), named by
  # the run id it publishes (it once took the script's time, the run id the
  # pipeline's, seconds apart).
  home = tmp_path / "home"
  (home / "models").mkdir(parents=True)
  os.symlink(default_model_dir, home / "models" / "all-MiniLM-L6-v2")
  env = dict(os.environ, NO_GCE_CHECK="true", HF_HUB_OFFLINE="1",
             BERT_EMBEDDINGS_HOME=str(home))
  for name in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", "INPUT", "OUTPUT"):
    env.pop(name, None)
  output = None
  try:
    result = subprocess.run([os.path.join(REPO, "run_local.sh")], cwd=REPO,
                            env=env, capture_output=True, text=True,
                            timeout=600)
    told = re.fullmatch(r"Look at the results with: \.venv/bin/python -m "
                        r"pipeline\.read_outputs (runs/sample-(\w+)) "
                        r"--head 5\n", result.stdout)
    output = told and told.group(1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert told, result.stdout
    run_id = told.group(2)
    # As the pipeline makes it absolute: from the resolved working directory.
    run_dir = os.path.join(os.path.realpath(REPO), output)
    with open(os.path.join(run_dir, "manifest.json")) as manifest:
      assert json.load(manifest)["run_id"] == run_id
    for pattern in NOISE:
      assert not re.search(pattern, result.stderr), (pattern, result.stderr)
    # Besides the progress lines.
    lines = [line for line in result.stderr.splitlines()
             if not re.fullmatch(ALLOWED[-1], line)]
    assert len(lines) == 2, result.stderr
    assert re.fullmatch(rf"Published run {run_id} in [\d.]+ s \([\d.,]+ "
                        r"docs/s\): 60 records read, 60 embedded, 0 "
                        r"rejected\.", lines[0]), lines[0]
    assert lines[1] == (f"Run directory: {run_dir} (manifest.json lists "
                        "every file)")
  finally:
    if output:
      shutil.rmtree(os.path.join(REPO, output), ignore_errors=True)


def test_run_local_sh_reads_relative_paths_from_the_callers_directory(
    tmp_path):
  # Found in a user trial: run_local.sh changed into the repository first,
  # so INPUT=corpus.txt, given from the corpus's own directory, "does not
  # exist" (run_nightly.sh reads paths from the caller's directory).
  (tmp_path / "corpus.txt").write_text("a first text\nand a second\n")
  (tmp_path / "published").mkdir()
  (tmp_path / "published" / "manifest.json").write_text("{}")
  env = dict(os.environ, NO_GCE_CHECK="true", HF_HUB_OFFLINE="1",
             INPUT="corpus.txt", OUTPUT="published")
  result = subprocess.run([os.path.join(REPO, "run_local.sh")],
                          cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
  # The corpus was found; the output, also read from tmp_path, is refused.
  assert result.returncode == 2, result.stderr[-3000:]
  assert "--output=published already holds a published run" in (
      result.stderr), result.stderr[-3000:]


def test_verbose_shows_tensorflow_and_errors_always_show(tmp_path):
  # A model that is not there: told by planning, after TensorFlow's import
  # (a wrong local path is told before it).
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("one text\n")
  missing = str(tmp_path / "no-model")
  argv = [f"--input={corpus}", f"--output={tmp_path / 'run'}",
          f"--model={missing}"]

  result = _run(argv + ["--verbose"])

  assert result.returncode == 2
  assert "pipeline.main: error: " in result.stderr
  assert missing in result.stderr
  # TensorFlow's start-up notices, captured while it was imported, are
  # written back with --verbose.
  assert re.search(r"absl::InitializeLog|oneDNN custom operations",
                   result.stderr), result.stderr
