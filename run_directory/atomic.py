"""The one way a file of the run directory is written: atomically.

A file is written under a temporary name next to it, then renamed into
place, so a reader (or a retried attempt) never sees half a file. A failed
attempt removes its temporary file; a repeated one overwrites it and the
final file with the same bytes.

A file that must change only after another one is written (the latest
pointer, after manifest.json) is written in two steps: `stage_text` writes
its content beside it, `commit_staged` renames it into place.
"""

import json
from typing import BinaryIO, Callable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# A file being written is `<its path><TEMP_SUFFIX>` until it is complete.
TEMP_SUFFIX = ".tmp"


def write_atomically(path: str, write: Callable[[BinaryIO], None],
                     temp_path: str = "") -> str:
  """Writes `path` through `write(file)`; returns the path.

  temp_path: the temporary name (default: `path` + TEMP_SUFFIX).
  """
  temp_path = temp_path or path + TEMP_SUFFIX
  try:
    with FileSystems.create(
        temp_path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      write(f)
  except BaseException:
    if FileSystems.exists(temp_path):
      FileSystems.delete([temp_path])
    raise
  FileSystems.rename([temp_path], [path])
  return path


def json_bytes(value) -> bytes:
  """A JSON document as the run directory writes it: sorted, indented."""
  return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_json_atomically(path: str, value) -> str:
  return write_atomically(path, lambda f: f.write(json_bytes(value)))


def write_text_atomically(path: str, text: str) -> str:
  return write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def staged_path(path: str, tag: str) -> str:
  """Where `stage_text` puts what `path` will hold: beside it."""
  return f"{path}.{tag}{TEMP_SUFFIX}"


def stage_text(path: str, text: str, tag: str) -> str:
  """Writes what `path` will hold, complete, under a name beside it (the
  `tag` tells concurrent writers apart); returns that name, for
  `commit_staged`. Nothing reads `path` differently until then."""
  return write_text_atomically(staged_path(path, tag), text)


def commit_staged(staged: str, path: str) -> None:
  """Moves a `stage_text` file into place: one rename."""
  FileSystems.rename([staged], [path])
