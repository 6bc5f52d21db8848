"""Dataflow helpers: the job description offline, and the Flex Template
metadata (made by pipeline/flex_template.py). Their command line is
pipeline/dataflow_job.py.

  # What `run_dataflow.sh --dry_run` runs: writes the Dataflow job (JSON)
  # that `python -m pipeline.main PIPELINE_ARGS` would submit, offline.
  python -m pipeline.dataflow_job describe --job_file dataflow_job.json \\
      [--model_metadata_dir LOCAL_MODEL_DIR] PIPELINE_ARGS...

  # The Flex Template metadata, made from the pipeline's own flags.
  python -m pipeline.dataflow_job flex-metadata --output dataflow/flex_template_metadata.json

The offline job description
---------------------------
DataflowRunner writes a job description instead of submitting it when
`--template_location` is set (a classic template). The pipeline's own reads
of the world are injected (`offline_environment`, a PlanEnvironment for
`plan_run`):

  * a model that is not on this machine (gs://) is not checked: the metadata
    the graph needs (hidden size, layers, pooling, fingerprint, ...) is read
    from a local copy of the model instead (`--model_metadata_dir`, default:
    the default model, exported locally on first use). A local model
    directory is checked for real;
  * gs:// paths (the input matches files, the output holds no published run)
    are not checked, and recorded; local paths are checked for real;
  * no lock is taken on the output directory, and no stale staging files are
    removed there;
  * --previous_run is refused (it is read at submission, from GCS).

Beam's `--no_auth` keeps the Dataflow and storage clients anonymous (no
credential lookup), and `NO_GCE_CHECK=true` keeps google-auth from probing
the GCE metadata server. Where Beam has no such switch, `offline_dataflow()`
replaces its cloud calls, and nothing else:

  * the soft-delete check of the temp/staging buckets (a GCS bucket read made
    while the options are validated): skipped;
  * GCS staging (`DataflowApplicationClient.stage_file` for gs:// targets, and
    `_gcs_file_copy`, the upload of each artifact): recorded, not uploaded.
    Beam's own `_stage_resources` still runs, so the description names every
    artifact at the gs:// URL it would have.

The job file is written by Beam's own code (`create_job` -> `stage_file` to a
local path); its options show `no_auth` set, which the real submission does
not set.
"""

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.dataflow.internal import apiclient

from bert_model import default_model
from bert_model import metadata as metadata_lib
from bert_model import resolution
from pipeline import field_check
from pipeline import preflight
from pipeline.build import build_pipeline
from pipeline.config import config_from_options
from pipeline.errors import CommandLineParser
from pipeline.errors import ConfigError
from pipeline.errors import print_error
from pipeline.flex_template import flex_template_metadata
from pipeline.flags import flag_names
from pipeline.flags import reject_unknown_flags
from pipeline.plan import plan_run
from pipeline.plan import PlanEnvironment

_LOG = logging.getLogger(__name__)

# Flags this module sets itself when it writes the job description.
_OWN_FLAGS = ("--template_location", "--dataflow_job_file", "--no_auth")


# ---------------------------------------------------------------------------
# The job description, offline.


@dataclasses.dataclass
class OfflineRecord:
  """What the dry run left undone: uploads, models and paths not checked."""
  staged: List[str] = dataclasses.field(default_factory=list)
  unchecked_models: List[str] = dataclasses.field(default_factory=list)
  unchecked_paths: List[str] = dataclasses.field(default_factory=list)


def _is_remote(path: str) -> bool:
  return "://" in path


def _offline_resolve_model(metadata_dir: Optional[str], record: OfflineRecord):
  """resolve_model for the dry run: remote models are not checked."""

  def resolve(model, **kwargs):
    # --preprocessor / --model_root, when given, pass through unchanged.
    if model is None or not _is_remote(model) or model.startswith(
        ("http://", "https://")):
      return resolution.resolve_model(model, **kwargs)  # local, hub: real
    source = metadata_dir or default_model.ensure_default_model()
    metadata = metadata_lib.read_metadata(source)
    if metadata is None:
      raise FileNotFoundError(
          f"--model={model} cannot be read offline, and {source} has no "
          f"{metadata_lib.METADATA_FILE} to describe it with; pass a local "
          "copy of the model with --model_metadata_dir (DRY_RUN_MODEL_DIR "
          "for run_dataflow.sh).")
    _LOG.warning(
        "Dry run: --model=%s is not checked (that needs GCS); the job is "
        "described with the metadata of %s (%s, hidden size %d, fingerprint "
        "%s). Pass --model_metadata_dir (DRY_RUN_MODEL_DIR) when the model is "
        "not that one.", model, source, metadata.name, metadata.hidden_size,
        metadata.fingerprint[:12])
    record.unchecked_models.append(model)
    base = model.rstrip("/")
    return resolution.ResolvedModel(
        path=model,
        preprocess_path=(kwargs.get("preprocessor") or
                         f"{base}/{metadata_lib.PREPROCESS_DIR}"),
        encoder_path=f"{base}/{metadata_lib.ENCODER_DIR}",
        metadata=metadata)

  return resolve


def _offline_path_check(real_check, record: OfflineRecord):
  """A preflight check for the dry run: remote paths are not checked."""

  def check(*args):
    path = args[-1]
    if _is_remote(path):
      _LOG.warning("Dry run: %s is not checked (that needs GCS).", path)
      record.unchecked_paths.append(path)
      return None
    return real_check(*args)

  return check


def _offline_field_check(flag: str, corpus):
  """field_check.check_fields of local files only (the remote ones are
  listed as unchecked by the path check)."""
  if not _is_remote(corpus.pattern):
    field_check.check_fields(flag, corpus)


def offline_environment(model_metadata_dir: Optional[str],
                        record: OfflineRecord) -> PlanEnvironment:
  """How the dry run plans: nothing on GCS is read, no lock is taken."""
  return PlanEnvironment(
      resolve_model=_offline_resolve_model(model_metadata_dir, record),
      check_input=_offline_path_check(preflight.check_input, record),
      check_output=_offline_path_check(preflight.check_output, record),
      check_latest_pointer=_offline_path_check(preflight.check_latest_pointer,
                                               record),
      check_fields=_offline_field_check,
      check_cloud_credentials=lambda flags: None,  # nothing on GCS is read
      take_lock=False)


@contextlib.contextmanager
def offline_dataflow():
  """Replaces DataflowRunner's cloud calls that Beam has no switch for.

  Yields an OfflineRecord of what was not uploaded. See the module docstring
  for the list; everything is restored afterwards.
  """
  record = OfflineRecord()
  client = apiclient.DataflowApplicationClient
  real_stage_file = client.stage_file

  def skip_soft_delete_check(self, arg_name):
    _LOG.info("Dry run: soft-delete policy of --%s=%s not checked.", arg_name,
              getattr(self, arg_name, None))

  def stage_file(self, gcs_or_local_path, file_name, stream, *args, **kwargs):
    if gcs_or_local_path.startswith("gs://"):
      record.staged.append(f"{gcs_or_local_path.rstrip('/')}/{file_name}")
      return None
    # A local target: the job file itself (--template_location).
    return real_stage_file(self, gcs_or_local_path, file_name, stream, *args,
                           **kwargs)

  def gcs_file_copy(self, from_path, to_path, sha256):
    del self, from_path, sha256
    record.staged.append(to_path)

  patches = [
      (GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled",
       skip_soft_delete_check),
      (client, "stage_file", stage_file),
      (client, "_gcs_file_copy", gcs_file_copy),
  ]
  saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
  saved_gce_check = os.environ.get("NO_GCE_CHECK")
  os.environ["NO_GCE_CHECK"] = "true"
  try:
    for owner, name, replacement in patches:
      setattr(owner, name, replacement)
    yield record
  finally:
    for owner, name, original in reversed(saved):
      setattr(owner, name, original)
    if saved_gce_check is None:
      os.environ.pop("NO_GCE_CHECK", None)
    else:
      os.environ["NO_GCE_CHECK"] = saved_gce_check


def write_job_description(argv: Sequence[str], job_file: str,
                          model_metadata_dir: Optional[str] = None) -> dict:
  """Writes the Dataflow job `pipeline.main` would submit; returns it.

  Args:
    argv: the pipeline's arguments, as `python -m pipeline.main` takes them,
      with --runner=DataflowRunner and Dataflow's options (--project,
      --region, --temp_location, ...).
    job_file: where to write the job description (JSON); a local path.
    model_metadata_dir: a local model directory whose metadata describes a
      --model that is not on this machine (default: the default model).

  Raises:
    ConfigError: a flag is wrong (as `pipeline.main` would say), or the
      arguments do not ask for Dataflow.
  """
  argv = list(argv)
  own = [flag for flag in flag_names(argv) if flag in _OWN_FLAGS]
  if own:
    raise ConfigError(
        f"{', '.join(own)}: the dry run sets this itself; use --job_file to "
        "choose where the job description goes.")
  # The pipeline's config check reads the previous run (and the pointer to
  # it) at submission: from GCS, which a dry run cannot do.
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition("=")
    if name in ("--previous_run", "--latest_pointer"):
      value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
      if _is_remote(value) or value == "latest":
        what = ("the previous run" if name == "--previous_run" else
                "the run the pointer names")
        raise ConfigError(
            f"{name}={value}: the pipeline reads {what} at submission (from "
            "GCS), which a dry run cannot do; leave it out of the dry run "
            "(the job is the same apart from the documents carried over).")
  if _is_remote(job_file):
    raise ConfigError(f"--job_file={job_file}: the dry run writes a local "
                      "file; copy it to GCS afterwards if you need it there.")
  job_file = os.path.abspath(job_file)
  if os.path.isdir(job_file):
    raise ConfigError(f"--job_file={job_file} is a directory; name a file, "
                      f"e.g. {os.path.join(job_file, 'dataflow_job.json')}.")
  os.makedirs(os.path.dirname(job_file), exist_ok=True)
  argv += [f"--template_location={job_file}", "--no_auth"]

  reject_unknown_flags(argv)
  options = PipelineOptions(argv)
  runner = options.view_as(StandardOptions).runner
  if runner not in ("DataflowRunner", "dataflow"):
    raise ConfigError(
        f"--runner={runner}: the job description is DataflowRunner's; pass "
        "--runner=DataflowRunner.")
  # As pipeline.main.run does, so the description is the one it submits.
  options.view_as(SetupOptions).save_main_session = True
  with offline_dataflow() as record:
    plan = plan_run(config_from_options(options),
                    offline_environment(model_metadata_dir, record))
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, plan, time.time())
    pipeline.run()
  for path in record.staged:
    _LOG.info("Dry run: not uploaded: %s", path)
  with open(job_file) as f:
    return json.load(f)


# ---------------------------------------------------------------------------
# Reading a job description.


def pipeline_options_of(job: dict) -> dict:
  """The pipeline options recorded in a job description (name -> value)."""
  return job["environment"]["sdkPipelineOptions"]["options"]


def summarize(job: dict) -> Dict[str, object]:
  """The settings of a job description worth checking before a launch."""
  environment = job["environment"]
  pool = environment["workerPools"][0]
  options = pipeline_options_of(job)
  return {
      "name": job.get("name"),
      "machine_type": pool.get("machineType"),
      "container_image": pool.get("workerHarnessContainerImage"),
      "disk_size_gb": pool.get("diskSizeGb"),
      "max_workers": pool.get("autoscalingSettings", {}).get("maxNumWorkers"),
      "service_options": environment.get("serviceOptions", []),
      "experiments": environment.get("experiments", []),
      "input": options.get("input"),
      "output": options.get("output"),
      "model": options.get("model"),
      "model_copies": _whole(options.get("model_copies")),
  }


def _whole(value):
  # Numbers come back from the job's protobuf Struct as floats.
  return int(value) if isinstance(value, float) and value.is_integer() else value


# ---------------------------------------------------------------------------
# Command line.


def _parse(argv):
  parser = CommandLineParser(
      prog="python -m pipeline.dataflow_job", allow_abbrev=False,
      description=__doc__.split("\n\n", 1)[0])
  commands = parser.add_subparsers(dest="command", required=True)
  describe = commands.add_parser(
      "describe", allow_abbrev=False,
      help="Write the Dataflow job description offline (the dry run).")
  describe.add_argument("--job_file", default="dataflow_job.json",
                        help="Where to write it (default: %(default)s).")
  describe.add_argument(
      "--model_metadata_dir",
      help="A local model directory whose metadata stands in for a gs:// "
      "--model (default: the default model, exported on first use).")
  flex = commands.add_parser(
      "flex-metadata", allow_abbrev=False,
      help="Write the Flex Template metadata (every pipeline flag).")
  flex.add_argument("--output", help="File to write; default: stdout.")
  return parser.parse_known_args(argv)


def _write_flex_metadata(output: Optional[str], rest: Sequence[str]):
  if rest:
    raise ConfigError(f"unexpected arguments: {' '.join(rest)}; flex-metadata "
                      "takes only --output FILE (or none, for stdout).")
  text = json.dumps(flex_template_metadata(), indent=2) + "\n"
  if output:
    with open(output, "w") as f:
      f.write(text)
  else:
    sys.stdout.write(text)


def main(argv=None) -> int:
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s")
  args, rest = _parse(sys.argv[1:] if argv is None else argv)
  try:
    if args.command == "flex-metadata":
      _write_flex_metadata(args.output, rest)
      return 0
    job = write_job_description(rest, args.job_file, args.model_metadata_dir)
  except (ConfigError, OSError) as e:
    # OSError: a --job_file or --output that cannot be written (a directory,
    # a path under a file).
    return print_error("pipeline.dataflow_job", str(e))
  print(f"Dataflow job description written to {args.job_file} (nothing was "
        "submitted or uploaded):")
  print(json.dumps(summarize(job), indent=2))
  return 0

