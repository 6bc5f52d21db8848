"""One run of the job: flags -> frozen config (pipeline/config.py) ->
plan_run: every read of the world, the lock (pipeline/plan.py) ->
build_pipeline (pipeline/build.py) -> run -> the published manifest.

pipeline/main.py is the command line around it; `run` is also what tests and
benchmarks call.
"""

import contextlib
import dataclasses
import json
import logging
import re
import sys
import time
import traceback
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.runners.runner import PipelineResult

from bert_model.loaded_model import ModelSettings
from pipeline import local_runner
from pipeline.build import build_pipeline
from pipeline.config import config_from_options
from pipeline.config import LATEST
from pipeline.console import LiveProgress
from pipeline.flags import reject_unknown_flags
from pipeline.errors import RunFailedError
from pipeline.plan import plan_run
from pipeline.plan import RunPlan
from pipeline.previous_run import told_and_fixes
from run_directory.layout import MANIFEST_FILE
from run_directory.layout import REFUSAL_FILE
from run_directory.layout import VERTEX_STATE
from run_directory.manifest import load_manifest
from run_directory.manifest import named_by_pointer
from run_directory.manifest import started_before
from transforms import native_logs
from transforms.guardrails import describe_refusal
from transforms.guardrails import RunRefusedError
from transforms.previous_run_damage import PREVIOUS_TABLE_DAMAGED

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class JobOutcome:
  """A finished run: Beam's result, and the run directory with its manifest
  (None if it could not be read back)."""
  result: PipelineResult
  run_dir: str
  manifest: Optional[dict]
  # The --latest_pointer file, when the run is published and the pointer
  # does not name it (moving it into place failed, after the manifest: the
  # run stands).
  unmoved_latest_pointer: Optional[str] = None


# The logger with which Beam's DoFn runner logs an exception raised in a
# DoFn, traceback and all, before the runner raises it again.
_DOFN_ERRORS_LOGGER = "apache_beam.runners.common"


class _RefusalIsNoCrash(logging.Filter):
  """Drops Beam's log of a guardrail's refusal: it is no crash, and its
  message is told once, by whoever catches RunRefusedError (pipeline.main
  prints it). For the stages that run in this process: the local runner's
  default; worker threads or processes (--direct_running_mode) log what
  their own harness logs."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and
                isinstance(record.exc_info[1], RunRefusedError))


@contextlib.contextmanager
def _quiet_refusals():
  logger, refusals = logging.getLogger(_DOFN_ERRORS_LOGGER), _RefusalIsNoCrash()
  logger.addFilter(refusals)
  try:
    yield
  finally:
    logger.removeFilter(refusals)


def _raise_if_refused(staging_dir: str):
  path = FileSystems.join(staging_dir, REFUSAL_FILE)
  if FileSystems.exists(path):
    with FileSystems.open(path) as f:
      refusal = json.loads(f.read().decode("utf-8"))
    raise RunRefusedError(
        f"{describe_refusal(refusal)}\nThe staged outputs stay in "
        f"{staging_dir} for inspection; details: {path}") from None


# What Beam's TFRecord reader raises on a damaged shard. In a run, TFRecord
# files are read only from --previous_run (transforms/reuse.py): the input's
# readers dead-letter damage, and spill files are pickles.
_DAMAGED_TFRECORD = re.compile(r"Not a valid TFRecord\. ([^:\n]*)")


def _raise_if_previous_run_damaged(plan: RunPlan, error: Exception):
  """A damaged --previous_run shard, told in one line instead of the
  runner's traceback with a hex dump (a missing one is found while
  planning)."""
  if plan.previous_run is None:
    return
  told = "".join(traceback.format_exception(error))
  # A shard Beam cannot read, or a table that disagrees with the manifest.
  found, rows_differ = (_DAMAGED_TFRECORD.search(told),
                        PREVIOUS_TABLE_DAMAGED.search(told))
  # Named as planning names it: by the --latest_pointer file, if it did.
  named_by = (plan.latest_pointer if plan.manifest_settings.get(
      "nightly", {}).get("previous_run") == LATEST else None)
  previous, _, fix = told_and_fixes(plan.previous_run.path, named_by)
  if found:
    damage = (f"a TFRecord shard of its tables is damaged (not a valid "
              f"TFRecord: {found.group(1)})")
  elif rows_differ:
    damage = rows_differ.group(0)
    if rows_differ.group(1) == VERTEX_STATE:
      # An older run's state is not what the index holds now: a delta from
      # it would leave stale datapoints in the index.
      fix = ("Run once with --vertex_export full and rebuild the index from "
             "it (isCompleteOverwrite), then go back to delta.")
  else:
    return
  raise RunFailedError(
      f"{previous}: {damage}, so nothing was published. {fix}") from None


def run_job(argv=None, save_main_session=True,
            live_progress=False) -> JobOutcome:
  """Runs the job to completion.

  live_progress: on the local runner, with every stage in this process,
    show the run's progress on stderr while it runs (pipeline/console.py).

  Raises ConfigError, before anything runs, when a flag is wrong or another
  run holds --output; RunRefusedError when a guardrail kept the run from
  being published.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  reject_unknown_flags(argv)
  options = PipelineOptions(argv)
  options.view_as(SetupOptions).save_main_session = save_main_session
  local = local_runner.is_local_runner(options)
  plan = plan_run(config_from_options(options), local_runner=local)
  try:
    runner = None
    watch = contextlib.nullcontext()
    if local:
      # DirectRunner would first try to download the Prism runner.
      runner = local_runner.LocalRunner()
      if not local_runner.runs_in_this_process(options):
        if native_logs.quiet_requested():
          # The worker processes print TensorFlow's notices as they start.
          watch = native_logs.notices_filtered()
      elif live_progress:
        watch = LiveProgress()
    pipeline = beam.Pipeline(runner=runner, options=options)
    started_at = time.time()
    build_pipeline(pipeline, plan, started_at)
    try:
      with watch, _quiet_refusals():
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as error:  # pylint: disable=broad-except
      # The runner wraps the publish stage's RunRefusedError in its own
      # error; refused.json tells the two apart.
      _raise_if_refused(plan.staging_dir)
      _raise_if_previous_run_damaged(plan, error)
      raise
  finally:
    plan.release()
  _LOG.info("Run %s written to %s (manifest: %s)", plan.run_id, plan.run_dir,
            FileSystems.join(plan.run_dir, MANIFEST_FILE))
  manifest = _published_manifest(plan.run_dir)
  if manifest:
    _warn_if_truncated(manifest, plan.handler.model)
  return JobOutcome(
      result=result, run_dir=plan.run_dir, manifest=manifest,
      unmoved_latest_pointer=(_unmoved_pointer(plan, started_at)
                              if manifest else None))


def run(argv=None, save_main_session=True) -> PipelineResult:
  """Runs the job to completion; returns the PipelineResult (see run_job)."""
  return run_job(argv, save_main_session).result


def runs_locally(argv) -> bool:
  """Whether these flags run the job on the local runner."""
  return local_runner.is_local_runner(PipelineOptions(list(argv)))


def _published_manifest(run_dir: str) -> Optional[dict]:
  try:
    return load_manifest(run_dir)
  except Exception:  # pylint: disable=broad-except
    return None  # the run is published; what is told about it must never fail it


def _unmoved_pointer(plan: RunPlan, started_at: float) -> Optional[str]:
  """The --latest_pointer file, when the published run's publish step should
  have moved it and it does not name the run (the move failed, after the
  manifest: the run stands). Checked by the driver: the publish step only
  logs (on a worker, on Dataflow) a pointer it could not move. None when it
  names the run, or a run that another process published while this one ran
  and that started after it (left to that one on purpose, and logged as
  such: transforms/publish.py)."""
  if not plan.latest_pointer:
    return None
  named = named_by_pointer(plan.latest_pointer)
  if named == plan.run_dir or (
      named and named != plan.latest_pointer_before and
      not started_before(named, started_at)):
    return None
  return plan.latest_pointer


def _warn_if_truncated(manifest: dict, model: ModelSettings):
  """One warning when documents lost text: their ends to --max_seq_length,
  or with chunks to --max_chunks (or a word longer than a chunk)."""
  truncated = int(manifest["counts"].get("truncated", 0))
  if not truncated:
    return
  if model.chunking is None:
    _LOG.warning(
        "%d document(s) were longer than --max_seq_length (%d wordpieces) "
        "and truncated: the rest of their text is not in their vectors. "
        "Set --chunk_size (e.g. --chunk_size %d) to embed long documents "
        "whole, in chunks.", truncated, model.max_seq_length,
        model.max_seq_length)
  else:
    _LOG.warning(
        "%d document(s) lost text: longer than --max_chunks (%d chunks of "
        "--chunk_size %d wordpieces), or holding a word longer than a "
        "chunk; the rest of their text is in no chunk and not in their "
        "vectors. Raise --max_chunks to embed them whole.", truncated,
        model.chunking.max_chunks, model.chunking.chunk_size)
