"""The errors the driver tells in one line: a wrong flag, a failed run."""


class ConfigError(ValueError):
  """A flag is wrong; the message says which and how to fix it.

  Raised before the pipeline starts; `python -m pipeline.main` prints it and
  exits with status 2.
  """


class RunFailedError(RuntimeError):
  """The run failed for a reason the message names, and how to go on;
  nothing was published. `python -m pipeline.main` prints it and exits with
  status 1, without the runner's traceback."""
