"""One model copy per device: which copy a process's model is.

With `model_copies` N > 1, each copy Beam loads on a machine claims the next
copy index there (0, 1, ...), whichever SDK process loads it, and goes on
the device of that index (bert_model/devices.py).
"""

import os
import tempfile
from typing import Optional


def claim_copy_index(run_token: str, directory: Optional[str] = None) -> int:
  """The smallest copy index no process of this machine has claimed for
  this run (`run_token`): an empty file created exclusively, so that two
  processes never get the same one."""
  directory = directory or tempfile.gettempdir()
  index = 0
  while True:
    path = os.path.join(directory, f"{run_token}.copy{index}")
    try:
      os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
      return index
    except FileExistsError:
      index += 1
