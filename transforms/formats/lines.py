"""Lines of a byte stream, each at most a given size in memory.

`readline()` without a limit holds a whole line, however long: one 400 MB line
would cost gigabytes once decoded and copied. Here a line longer than the
limit is read on in pieces and dropped, and reported as `OversizedLine`, so
a reader's memory is bounded by the limit whatever the input.
"""

from typing import BinaryIO, Iterator, NamedTuple, Union

_UTF8_BOM = b"\xef\xbb\xbf"
# Pieces in which the rest of an oversized line is read and dropped.
_DISCARD_PIECE = 1 << 20


class OversizedLine(NamedTuple):
  """A line over the limit: its first bytes (for a snippet) and its size."""
  head: bytes
  size: int


Line = Union[bytes, OversizedLine]


def strip_terminator(line: bytes) -> bytes:
  """The line without its "\\n" or "\\r\\n"; other whitespace is content."""
  if line.endswith(b"\n"):
    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
  return line


def iter_lines(stream: BinaryIO, max_bytes: int) -> Iterator[Line]:
  """The stream's lines, terminators included, without a leading UTF-8 BOM.

  A line whose content (terminator excluded) exceeds `max_bytes` comes as an
  OversizedLine. `stream` must support `readline(size)` (any io reader does).
  """
  first = True
  while True:
    # Two more bytes than the limit: room for a "\r\n" after a full line.
    line = stream.readline(max_bytes + 2)
    if not line:
      return
    if first:
      first = False
      if line.startswith(_UTF8_BOM):
        line = line[len(_UTF8_BOM):]
    if line.endswith(b"\n") or len(line) <= max_bytes:
      if len(strip_terminator(line)) <= max_bytes:
        yield line
      else:
        yield OversizedLine(line[:1024], len(line))
      continue
    yield OversizedLine(line[:1024], len(line) + _discard_rest_of_line(stream))


def _discard_rest_of_line(stream: BinaryIO) -> int:
  """Reads up to the end of the current line; returns how many bytes."""
  size = 0
  while True:
    piece = stream.readline(_DISCARD_PIECE)
    size += len(piece)
    if not piece or piece.endswith(b"\n"):
      return size
