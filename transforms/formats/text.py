"""Plain text: one document per line.

Positions are 0-based line numbers, empty lines included (validation rejects
them as empty_text). A line's text is its UTF-8 bytes without the "\\n" or
"\\r\\n"; a leading UTF-8 byte-order mark of the file is dropped.
"""

from typing import BinaryIO, Iterator

from transforms.formats.fields import decode_utf8
from transforms.formats.fields import document
from transforms.formats.fields import ENCODING_HINT
from transforms.formats.fields import Record
from transforms.formats.fields import RecordSpec
from transforms.formats.fields import Rejected
from transforms.formats.fields import too_large
from transforms.formats.lines import iter_lines
from transforms.formats.lines import OversizedLine
from transforms.formats.lines import strip_terminator


def read_text_records(stream: BinaryIO, source: str,
                      spec: RecordSpec) -> Iterator[Record]:
  """One Document per line, empty lines included (validation rejects them)."""
  for position, line in enumerate(iter_lines(stream, spec.max_record_bytes)):
    try:
      if isinstance(line, OversizedLine):
        raise too_large(line.size, spec.max_record_bytes, "line")
      line = strip_terminator(line)
      text = decode_utf8(line, "line", hint=ENCODING_HINT)
    except Rejected as rejected:
      raw = line.head if isinstance(line, OversizedLine) else line
      yield rejected.dead_letter(source, position, raw)
    else:
      yield document(source, position, None, text)
