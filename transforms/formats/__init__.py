"""The input formats: one reader module per format, behind one record spec.

Each reader is a plain generator over a binary stream,
`read(stream, source, spec) -> Document | DeadLetter`, testable without Beam:

  text      text.py        one document per line
  jsonl     jsonl.py       one JSON object per line
  csv, tsv  delimited.py   a header row, then one record per row
  parquet   parquet.py     one record per row
  tfrecord  tfrecord.py    one tf.train.Example per record

What a record must hold, and how it becomes a Document or a dead letter, is
shared (fields.py). Adding a format means one module here and one entry in
READERS and _FORMAT_BY_EXTENSION.
"""

import os
import re
from typing import Callable, Dict, Iterator, Optional, Sequence

from transforms.formats.compression import SUFFIXES as COMPRESSION_SUFFIXES
from transforms.formats.delimited import read_csv_records
from transforms.formats.delimited import read_tsv_records
from transforms.formats.fields import Record
from transforms.formats.jsonl import read_jsonl_records
from transforms.formats.lines import UNPACK_ADVICE
from transforms.formats.lines import WORKBOOK_ADVICE
from transforms.formats.parquet import read_parquet_records
from transforms.formats.text import read_text_records
from transforms.formats.tfrecord import read_tfrecord_records

READERS: Dict[str, Callable[..., Iterator[Record]]] = {
    "text": read_text_records,
    "jsonl": read_jsonl_records,
    "csv": read_csv_records,
    "tsv": read_tsv_records,
    "parquet": read_parquet_records,
    "tfrecord": read_tfrecord_records,
}
INPUT_FORMATS = tuple(READERS)
# Formats read with random access (a footer first): never decompressed as a
# whole, their pages carry their own compression.
RANDOM_ACCESS_FORMATS = ("parquet",)

_FORMAT_BY_EXTENSION = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfr": "tfrecord",
}

# Extensions of files users export corpora as that no reader reads, and what
# to do instead: "pass --input_format" would send them to a reader that
# rejects their bytes line by line.
_UNREAD_EXTENSIONS = {
    ".zip": f"a ZIP archive: {UNPACK_ADVICE} (a single file may be "
            "compressed: .gz, .bz2, .xz, .zst)",
    ".tar": f"a tar archive: {UNPACK_ADVICE}",
    ".tgz": f"a tar archive: {UNPACK_ADVICE}",
    ".xlsx": f"an Excel workbook: {WORKBOOK_ADVICE}",
    ".xls": f"an Excel workbook: {WORKBOOK_ADVICE}",
    ".feather": "Arrow IPC (Feather): write Parquet instead, e.g. "
                "pyarrow.parquet.write_table or pandas to_parquet",
    ".arrow": "Arrow IPC: write Parquet instead, e.g. "
              "pyarrow.parquet.write_table or pandas to_parquet",
}


def _extension(pattern: str) -> str:
  """A file pattern's extension, looking through a compression suffix
  ("part-*.jsonl.gz": ".jsonl")."""
  name = re.split(r"[/\\]", pattern)[-1].lower()
  for suffix in COMPRESSION_SUFFIXES:
    if name.endswith(suffix):
      name = name[:-len(suffix)]
      break
  return os.path.splitext(name)[1]


def check_readable_extension(pattern: str):
  """Refuses a pattern whose extension names a kind of file no reader
  reads (an archive, a workbook), whatever --input_format says: read as a
  format, its bytes would be rejected line by line, or embedded.

  Raises:
    ValueError: naming what the files are and what to do.
  """
  extension = _extension(pattern)
  if extension in _UNREAD_EXTENSIONS:
    raise ValueError(
        f"{pattern!r} names {_UNREAD_EXTENSIONS[extension]}. The input "
        f"formats are: {', '.join(INPUT_FORMATS)}.")


def infer_input_format(pattern: str) -> str:
  """The input format named by a file pattern's extension.

  A compression suffix is looked through ("part-*.jsonl.gz" is JSONL).

  Raises:
    ValueError: if the extension names no known format (e.g. "data/*").
  """
  check_readable_extension(pattern)
  input_format = _FORMAT_BY_EXTENSION.get(_extension(pattern))
  if input_format is None:
    raise ValueError(
        f"Cannot infer the input format of {pattern!r} from its extension "
        f"(known: {', '.join(sorted(_FORMAT_BY_EXTENSION))}). Pass "
        f"--input_format, one of: {', '.join(INPUT_FORMATS)}.")
  return input_format


def resolve_input_format(patterns: Sequence[str],
                         input_format: Optional[str]) -> str:
  """The one format of all patterns: the given one, or the inferred one."""
  if input_format is not None:
    if input_format not in INPUT_FORMATS:
      raise ValueError(
          f"Unknown input format {input_format!r}: --input_format must be one "
          f"of {', '.join(INPUT_FORMATS)}.")
    return input_format
  inferred = {pattern: infer_input_format(pattern) for pattern in patterns}
  if len(set(inferred.values())) > 1:
    raise ValueError(
        f"The input patterns have different formats {inferred}; one run reads "
        f"one format. Pass --input_format to read them all as one format.")
  return next(iter(inferred.values()))
