"""The --latest_pointer file: reading the run it names (`read_latest_pointer`,
for --previous_run=latest), and finishing the move of it to a run that is
published but that it does not name yet (`catch_up`).

A run publishes by writing manifest.json, and only then renames the latest
pointer into place (transforms/publish.py). A run killed between the two
(or one that exited with status 4) is published, but the pointer still
names the run before it; re-running the night must not just say "already
published": the next --previous_run=latest would diff against the older
run, and a Vertex AI delta would then never delete what the published run
added.

The pointer is moved only when it still names the run this one was built on
(its manifest's previous_run, or no run at all for a first run) and the run
was made to move this very pointer: a pointer that names a later run is
never moved back.

  python -m pipeline.latest_pointer RUN_DIR --latest_pointer FILE [--if_published]

Exit status 0 when the pointer names the run (now or already) or a run
other than its predecessor (left alone); 2 when the run is not published or
the pointer cannot be read or written. With --if_published, a run directory
that holds no published run is not an error: exit status 3, and nothing
printed. run_nightly.sh calls it that way before each night, so that the
check works wherever RUNS_ROOT is (a local directory or gs://): a night
already published is not run again.
"""

import argparse
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import CommandLineParser
from pipeline.errors import ConfigError
from pipeline.errors import one_line
from pipeline.errors import print_error
from pipeline.errors import read_errors_of
from pipeline.preflight import absolute
from pipeline.preflight import check_cloud_credentials
from run_directory.atomic import staged_path
from run_directory.atomic import write_text_atomically
from run_directory.manifest import RunNotPublishedError
from run_directory.manifest import load_manifest
from run_directory.manifest import read_pointer

PROG = "python -m pipeline.latest_pointer"

# What catch_up did.
NAMES_IT = "names it"
MOVED = "moved"
LEFT = "left"

# The exit status of --if_published for a run directory with no published run.
NOT_PUBLISHED = 3


def read_latest_pointer(pointer: str) -> Optional[str]:
  """The run directory a --latest_pointer file names; None before the first."""
  try:
    run_dir = read_pointer(pointer)
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(
        f"--latest_pointer={pointer} cannot be read as the text naming the "
        f"latest run ({one_line(e)}); write that run's directory into it, "
        "or delete it to start afresh (with no previous run).") from e
  if run_dir is None:
    return None  # the first scheduled run: nothing to carry over
  if not run_dir:
    # Only a missing pointer means "no run yet": an emptied one would let a
    # shrunken corpus pass the removal guardrail, and a Vertex delta delete
    # nothing.
    raise ConfigError(
        f"--latest_pointer={pointer} is empty; write the latest published "
        "run's directory into it, or delete it to start afresh (with no "
        "previous run).")
  return run_dir


def _same(path: Optional[str], other: Optional[str]) -> bool:
  if path is None or other is None:
    return path is other
  return absolute(path.rstrip("/")) == absolute(other.rstrip("/"))


def catch_up(run_dir: str, pointer: str) -> str:
  """Makes `pointer` name the published run `run_dir` if the run's own
  publish should have (see the module docstring); returns NAMES_IT, MOVED
  or LEFT.

  Raises RunNotPublishedError when run_dir has no manifest.json, ConfigError
  when the pointer is empty or unreadable.
  """
  run_dir = absolute(run_dir.rstrip("/"))
  manifest = load_manifest(run_dir)
  named = read_latest_pointer(pointer)
  if _same(named, run_dir):
    return NAMES_IT
  nightly = manifest.get("settings", {}).get("nightly", {})
  previous = (manifest.get("previous_run") or {}).get("path")
  if not _same(nightly.get("latest_pointer"), pointer) or not _same(
      named, previous):
    return LEFT
  # What the run's publish would have renamed into place.
  write_text_atomically(pointer, run_dir + "\n")
  leftover = staged_path(pointer, manifest["run_id"])
  if FileSystems.exists(leftover):
    FileSystems.delete([leftover])
  return MOVED


def _parse_args(argv):
  parser = CommandLineParser(
      prog=PROG, description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run_dir", help="a published run directory")
  parser.add_argument("--latest_pointer", required=True,
                      help="the pointer file the run was made to move")
  parser.add_argument(
      "--if_published", action="store_true",
      help=f"exit with status {NOT_PUBLISHED}, printing nothing, when "
      "RUN_DIR holds no published run (no manifest.json), instead of "
      "failing")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(argv)
  try:
    # The pointer may be written: checked as pipeline.main checks it, at
    # once, where Cloud Storage's client retries for two minutes.
    if args.latest_pointer.startswith("gs://"):
      check_cloud_credentials([f"--latest_pointer={args.latest_pointer}"])
    done = catch_up(args.run_dir, args.latest_pointer)
  except RunNotPublishedError as e:
    if args.if_published:
      return NOT_PUBLISHED
    return print_error(PROG, one_line(e))
  except ConfigError as e:
    return print_error(PROG, str(e))
  except read_errors_of(args.run_dir) as e:
    return print_error(PROG, one_line(e))
  print(f"{args.run_dir} is already published.")
  if done == MOVED:
    print(f"--latest_pointer={args.latest_pointer} named the run before "
          f"{args.run_dir} (its publish was killed, or could not move it): "
          "it names the run now.")
  elif done == LEFT:
    print(f"--latest_pointer={args.latest_pointer} names another run than "
          f"the one {args.run_dir} was built on (one published since): left "
          "as it is.")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
