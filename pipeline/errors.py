"""The error every check of the driver raises for a wrong flag."""


class ConfigError(ValueError):
  """A flag is wrong; the message says which and how to fix it.

  Raised before the pipeline starts; `python -m pipeline.main` prints it and
  exits with status 2.
  """
