"""The errors the driver tells in one line: a wrong flag, a failed run."""

import argparse
import sys


class ConfigError(ValueError):
  """The run cannot start as asked: a flag is wrong, or what one names (an
  input glob, the model, the previous run, the latest pointer) is, or
  another run holds --output. The message says which and how to fix it.

  Raised before the pipeline starts; `python -m pipeline.main` prints it and
  exits with status 2.
  """


class RunFailedError(RuntimeError):
  """The run failed for a reason the message names, and how to go on;
  nothing was published. `python -m pipeline.main` prints it and exits with
  status 1, without the runner's traceback."""


# What reading a damaged or incomplete run directory raises: a file that is
# gone or is a directory (OSError), one that breaks its format (ValueError),
# an entry its manifest lacks (KeyError). The commands that read runs
# (pipeline.query, pipeline.read_outputs) tell them in one line.
READ_ERRORS = (OSError, ValueError, KeyError)


def read_errors_of(run_dir: str) -> tuple:
  """What reading run_dir raises that a command tells in one line:
  READ_ERRORS, and for a remote run directory (gs://) any error, as its
  clients' (google-api-core's retries, TensorFlow's file system) share no
  narrower class."""
  return (Exception,) if "://" in run_dir else READ_ERRORS


def one_line(error: Exception) -> str:
  """A read error as the one line a command prints."""
  if isinstance(error, KeyError):
    return (f"the run's manifest.json has no {error.args[0]!r} entry: it is "
            "damaged, or not written by this pipeline")
  return " ".join(str(error).split("\n"))


class CommandLineParser(argparse.ArgumentParser):
  """argparse's parser for the smaller commands (pipeline.query, ...), whose
  wrong flags read like their other errors: `pipeline.query: error: ...`
  after the usage, exit status 2."""

  def error(self, message):
    self.print_usage(sys.stderr)
    self.exit(2, f"{command_name(self.prog)}: error: {message}\n")


def command_name(prog: str) -> str:
  """`python -m pipeline.query` -> `pipeline.query`: how errors name it
  (a sub-command's too: `python -m pipeline.dataflow_job describe`)."""
  return prog.removeprefix("python -m ").split()[0]


def print_error(prog: str, message: str) -> int:
  """Tells an error in one line; returns 2, a wrong argument's status."""
  print(f"{command_name(prog)}: error: {message}", file=sys.stderr)
  return 2
