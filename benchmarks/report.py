"""How a benchmark hands its figures over: printed, and written to --json."""

import json
from typing import Optional


def print_and_write(report: dict, json_path: Optional[str], **dumps) -> None:
  """Prints the report as indented JSON; writes the same text to json_path
  too, when given. dumps: more json.dumps arguments (e.g. default=str)."""
  text = json.dumps(report, indent=2, **dumps)
  print(text)
  if json_path:
    with open(json_path, "w") as f:
      f.write(text + "\n")
