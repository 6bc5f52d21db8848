"""Real files of other people's making, found on this machine.

Inputs nobody here wrote: Debian's package changelogs (gzip-compressed text,
in many languages and encodings), and the CSV and Parquet files that
matplotlib and pyarrow ship as sample and test data. Tests read them as they
are, and the fuzz tests damage them.
"""

import glob
import gzip
import os

import matplotlib
import pyarrow

_CHANGELOGS = "/usr/share/doc/*/changelog.Debian.gz"


def debian_changelogs(limit: int) -> list:
  """The first `limit` Debian changelogs, by path (gzip files)."""
  paths = sorted(glob.glob(_CHANGELOGS))[:limit]
  if len(paths) < limit:
    raise FileNotFoundError(
        f"only {len(paths)} files match {_CHANGELOGS}; the tests need a "
        "Debian (or Ubuntu) machine with package documentation")
  return paths


def gunzipped(path: str) -> bytes:
  with gzip.open(path, "rb") as f:
    return f.read()


def matplotlib_csvs() -> list:
  """matplotlib's sample data CSV files."""
  directory = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data",
                           "sample_data")
  return sorted(glob.glob(os.path.join(directory, "*.csv")))


def pyarrow_parquets() -> list:
  """pyarrow's Parquet test files (written by pyarrow 0.7.1, with pandas)."""
  directory = os.path.join(os.path.dirname(pyarrow.__file__), "tests", "data",
                           "parquet")
  return sorted(glob.glob(os.path.join(directory, "*.parquet")))
