"""How a previous run whose tables disagree with its manifest fails a run.

The stages that read the previous run's tables (transforms/reuse.py: its
embeddings; transforms/vertex.py: its vertex_state) count the rows and check
them against the manifest before anything is carried over or deleted. A
mismatch raises PreviousRunDamagedError, "the previous run's <table> table
...": the runner wraps it in its own error, and pipeline/job.py finds it
there by PREVIOUS_TABLE_DAMAGED, to tell it in one line.
"""

import re

PREVIOUS_TABLE_DAMAGED = re.compile(r"the previous run's (\w+) table [^\n]*")


class PreviousRunDamagedError(RuntimeError):
  """A table of the previous run does not hold what its manifest says."""


def previous_table_damaged(table: str, what: str) -> PreviousRunDamagedError:
  return PreviousRunDamagedError(f"the previous run's {table} table {what}")
