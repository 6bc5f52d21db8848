"""Embeds a text corpus with a BERT model and writes a run directory.

  python -m pipeline.main --input 'corpus/*.jsonl' --output runs/today \\
      [--model MODEL_DIR] [flags] [Beam pipeline options]

flags -> frozen config (pipeline/config.py) -> plan_run: every read of the
world, the lock (pipeline/plan.py) -> build_pipeline (pipeline/build.py) ->
run. `--help` lists the flags; docs/ has the reference.

Exit status: 0 published; 1 the run failed; 2 a flag is wrong (nothing ran);
3 a guardrail refused to publish (refused.json in the staging directory).
"""

import json
import logging
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions

from pipeline import local_runner
from pipeline.build import build_pipeline
from pipeline.config import config_from_options
from pipeline.errors import ConfigError
from pipeline.flags import format_help
from pipeline.flags import reject_unknown_flags
from pipeline.plan import plan_run
from run_directory.layout import MANIFEST_FILE
from run_directory.layout import REFUSAL_FILE
from run_directory.manifest import load_manifest
from transforms.guardrails import describe_refusal
from transforms.guardrails import RunRefusedError

_LOG = logging.getLogger(__name__)

# Exit statuses a scheduler (cron, Cloud Scheduler, Airflow) can alert on.
EXIT_PUBLISHED = 0
EXIT_WRONG_FLAG = 2
EXIT_REFUSED = 3


def _raise_if_refused(staging_dir: str):
  path = FileSystems.join(staging_dir, REFUSAL_FILE)
  if FileSystems.exists(path):
    with FileSystems.open(path) as f:
      refusal = json.loads(f.read().decode("utf-8"))
    raise RunRefusedError(
        f"{describe_refusal(refusal)}\nThe staged outputs stay in "
        f"{staging_dir} for inspection; details: {path}") from None


def run(argv=None, save_main_session=True):
  """Runs the job to completion; returns the PipelineResult.

  Raises ConfigError, before anything runs, when a flag is wrong or another
  run holds --output; RunRefusedError when a guardrail kept the run from
  being published.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  reject_unknown_flags(argv)
  options = PipelineOptions(argv)
  options.view_as(SetupOptions).save_main_session = save_main_session
  plan = plan_run(config_from_options(options))
  try:
    runner = None
    if local_runner.is_local_runner(options):
      # DirectRunner would first try to download the Prism runner.
      runner = local_runner.LocalRunner()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, plan, time.time())
    try:
      result = pipeline.run()
      result.wait_until_finish()
    except Exception:  # pylint: disable=broad-except
      # The runner wraps the publish stage's RunRefusedError in its own
      # error; refused.json tells the two apart.
      _raise_if_refused(plan.staging_dir)
      raise
  finally:
    plan.release()
  _LOG.info("Run %s written to %s (manifest: %s)", plan.run_id, plan.run_dir,
            FileSystems.join(plan.run_dir, MANIFEST_FILE))
  if not plan.table.chunked:
    _warn_if_truncated(plan.run_dir, plan.handler.model.max_seq_length)
  return result


def _warn_if_truncated(run_dir: str, max_seq_length: int):
  """One warning when documents lost their ends to --max_seq_length."""
  try:
    truncated = int(load_manifest(run_dir)["counts"]["truncated"])
  except Exception:  # pylint: disable=broad-except
    return  # the run is published; a hint must never fail it
  if truncated:
    _LOG.warning(
        "%d document(s) were longer than --max_seq_length (%d wordpieces) "
        "and truncated: the rest of their text is not in their vectors. "
        "Set --chunk_size (e.g. --chunk_size %d) to embed long documents "
        "whole, in chunks.", truncated, max_seq_length, max_seq_length)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "-h" in argv or "--help" in argv or "--help_beam" in argv:
    print(format_help(with_beam_options="--help_beam" in argv))
    return EXIT_PUBLISHED
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s")
  try:
    run(argv)
  except ConfigError as e:
    print(f"pipeline.main: error: {e}", file=sys.stderr)
    return EXIT_WRONG_FLAG
  except RunRefusedError as e:
    print(f"pipeline.main: refused to publish: {e}", file=sys.stderr)
    return EXIT_REFUSED
  return EXIT_PUBLISHED


if __name__ == "__main__":
  sys.exit(main())
