"""How a previous run whose tables disagree with its manifest fails a run.

The stages that read the previous run's tables (transforms/reuse.py: its
embeddings; transforms/vertex.py: its vertex_state) check what they read
against the manifest before anything is carried over or deleted: the rows'
count with CheckRowCount, each row as it is parsed. A mismatch raises
PreviousRunDamagedError, "the previous run's <table> table ...": the runner
wraps it in its own error, and pipeline/job.py finds it there by
PREVIOUS_TABLE_DAMAGED, to tell it in one line.
"""

import re

import apache_beam as beam

PREVIOUS_TABLE_DAMAGED = re.compile(r"the previous run's (\w+) table [^\n]*")


class PreviousRunDamagedError(RuntimeError):
  """A table of the previous run does not hold what its manifest says."""


def previous_table_damaged(table: str, what: str) -> PreviousRunDamagedError:
  return PreviousRunDamagedError(f"the previous run's {table} table {what}")


class CheckRowCount(beam.PTransform):
  """A previous table's rows -> their count, once it is the manifest's.

  A side input of the step that must not start before the table is known to
  be whole: a file cut after a whole row, emptied or listed twice passes its
  format's own checks.

  table: the table's name; expected: the rows the manifest counts, as
  `unit` (e.g. "documents").
  """

  def __init__(self, table: str, expected: int, unit: str):
    super().__init__()
    self._table = table
    self._expected = expected
    self._unit = unit

  def expand(self, rows):
    return (rows
            | "Count" >> beam.combiners.Count.Globally()
            | "Check" >> beam.Map(_checked_count, self._table,
                                  self._expected, self._unit))


def _checked_count(rows: int, table: str, expected: int, unit: str) -> int:
  if rows != expected:
    raise previous_table_damaged(
        table, f"holds {rows} rows, but its manifest counts {expected} "
        f"{unit}: a file was cut short, emptied or listed twice")
  return rows
