"""Embeds a text corpus with a BERT model and writes a run directory.

  python -m pipeline.main --input 'corpus/*.jsonl' --output runs/today \\
      [--model MODEL_DIR] [flags] [Beam pipeline options]

The job itself is pipeline/job.py. This is the command line around it: a
run prints its progress and its summary, warnings and errors; Beam's and
TensorFlow's INFO logs and TensorFlow's native start-up notices only with
--verbose or --log_level INFO (pipeline/console.py). Hence the order of
`main`: logging and TensorFlow's environment are set up first; the flags,
and the local paths they name, are checked (without TensorFlow: a wrong
flag fails in about 2 s); then the
job is imported (which imports TensorFlow) with TensorFlow's notices
captured (transforms/native_logs.py), and it runs. `--help` lists the flags;
docs/ has the reference.

Exit status: 0 published; 1 the run failed; 2 a flag is wrong, or another
run holds --output (nothing ran); 3 a guardrail refused to publish (refused.json in the staging directory);
4 published, but --latest_pointer could not be moved to the run.
"""

import os
import sys

from transforms import native_logs
from pipeline import console
from pipeline.config import check_flags
from pipeline.errors import ConfigError
from pipeline.errors import RunFailedError
from pipeline.flags import format_help
from pipeline.preflight import check_local_paths

# Exit statuses a scheduler (cron, Cloud Scheduler, Airflow) can alert on.
EXIT_PUBLISHED = 0
EXIT_FAILED = 1
EXIT_WRONG_FLAG = 2
EXIT_REFUSED = 3
EXIT_LATEST_POINTER_NOT_MOVED = 4


def _job():
  # Imported here, not at the top: importing the job imports TensorFlow, which
  # must come after console.prepare_process and inside the capture of main.
  from pipeline import job  # pylint: disable=g-import-not-at-top
  return job


def _print_help(text: str):
  try:
    print(text, flush=True)
  except BrokenPipeError:
    # The reader stopped early (`--help | head`), which is no error. Python's
    # flush of stdout at exit would fail again (and print a traceback), so
    # stdout goes to /dev/null from here on.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(argv=None, save_main_session=True):
  """Runs the job to completion; returns the PipelineResult.

  Raises ConfigError, before anything runs, when a flag is wrong or another
  run holds --output; RunRefusedError when a guardrail kept the run from
  being published. Prints nothing itself (see `main`).
  """
  return _job().run(argv, save_main_session)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    settings = console.ConsoleSettings.from_argv(argv)
  except ConfigError as e:
    print(f"pipeline.main: error: {e}", file=sys.stderr)
    return EXIT_WRONG_FLAG
  console.prepare_process(settings)
  if "-h" in argv or "--help" in argv or "--help_beam" in argv:
    _print_help(format_help(with_beam_options="--help_beam" in argv))
    return EXIT_PUBLISHED
  try:
    check_local_paths(check_flags(argv))
  except ConfigError as e:
    print(f"pipeline.main: error: {e}", file=sys.stderr)
    return EXIT_WRONG_FLAG
  with native_logs.captured(show_all=settings.native_logs):
    native_logs.start_tensorflow()
    job = _job()
  if settings.log_level is None and not job.runs_locally(argv):
    # A remote job is followed through its runner's INFO log: the job's
    # state, its console URL.
    console.show_info_logs()
  try:
    with native_logs.quiet_model_loads(not settings.native_logs):
      outcome = job.run_job(argv, live_progress=True)
  except ConfigError as e:
    print(f"pipeline.main: error: {e}", file=sys.stderr)
    return EXIT_WRONG_FLAG
  except job.RunRefusedError as e:
    print(f"pipeline.main: refused to publish: {e}", file=sys.stderr)
    return EXIT_REFUSED
  except RunFailedError as e:
    print(f"pipeline.main: error: {e}", file=sys.stderr)
    return EXIT_FAILED
  if outcome.manifest is not None:
    print(console.format_summary(outcome.manifest, outcome.run_dir),
          file=sys.stderr)
  if outcome.unmoved_latest_pointer:
    print(f"pipeline.main: error: the run is published, but "
          f"--latest_pointer={outcome.unmoved_latest_pointer} does not name "
          "it (the log says why it could not be moved), so the next "
          "--previous_run=latest would read an older run. Write it by "
          f"hand: echo {outcome.run_dir} > {outcome.unmoved_latest_pointer}",
          file=sys.stderr)
    return EXIT_LATEST_POINTER_NOT_MOVED
  return EXIT_PUBLISHED


if __name__ == "__main__":
  sys.exit(main())
