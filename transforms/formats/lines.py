"""Lines of a byte stream, each at most a given size in memory.

`readline()` without a limit holds a whole line, however long: one 400 MB line
would cost gigabytes once decoded and copied. Here a line longer than the
limit is read on in pieces and dropped, and reported as `OversizedLine`, so
a reader's memory is bounded by the limit whatever the input.

Lines are UTF-8. A file that starts with a ZIP archive's, gzip's, zstd's or
xz's magic bytes is refused (ValueError: an unreadable file) with what to do: it
is no text, only misnamed. A file that starts with a UTF-16 or UTF-32
byte-order mark (what Windows tools write as "Unicode") is read in that
encoding and its lines given as UTF-8, so it reads like its UTF-8 twin;
bytes that encoding cannot decode become lone surrogates (shown escaped, as
\xed\xb0\x80, in the snippet), which reject their line as invalid UTF-8.
Such a file's limit counts characters before they are re-encoded, so a line
of it may hold up to four times the limit in memory.
"""

import codecs
import io
from typing import BinaryIO, Iterator, NamedTuple, Optional, Union

_UTF8_BOM = codecs.BOM_UTF8
# Longest first: UTF-32-LE's mark begins with UTF-16-LE's.
_UNICODE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# What to do with an archive or a workbook (told by a file's first bytes
# here, by its extension in formats/__init__.py).
UNPACK_ADVICE = "unpack it and point --input at its files"
WORKBOOK_ADVICE = ("save it as CSV UTF-8, or export it with pandas: "
                   "pd.read_excel(PATH).to_parquet(...)")
# The first bytes of files that are no text, whatever their name says, and
# what they are. gzip's, zstd's and xz's cannot start valid UTF-8 (\x8b and
# \xb5 are continuation bytes, \xfd no byte of UTF-8); ZIP's is "PK" and two
# control characters, which no text starts with. So a text file is never
# taken for one of them.
_NOT_TEXT = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one), not "
                    f"text: {UNPACK_ADVICE}; a workbook: {WORKBOOK_ADVICE}"),
    (b"\x1f\x8b", "gzip-compressed: name it with the suffix .gz (e.g. "
                  "corpus.csv.gz) and it is decompressed as it is read"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: name it with the suffix .zst "
                          "(e.g. corpus.csv.zst) and it is decompressed as "
                          "it is read"),
    (b"\xfd7zX", "xz-compressed: name it with the suffix .xz (e.g. "
                  "corpus.csv.xz) and it is decompressed as it is read"),
)
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
  stream = _as_utf8(stream)
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


class _Utf8Lines:
  """The lines of a UTF-16 or UTF-32 text stream, as UTF-8 bytes.

  readline(size) reads at most `size` characters, which may encode to more
  bytes: iter_lines measures the bytes it gets, so its limit still holds.
  """

  def __init__(self, stream: BinaryIO, encoding: str):
    # The codec reads the byte-order mark and takes its byte order from it.
    # Only "\n" ends a line, as in a UTF-8 file.
    self._text = io.TextIOWrapper(stream, encoding=encoding,
                                  errors=_UNDECODABLE, newline="\n")

  def readline(self, size: int = -1) -> bytes:
    # A lone surrogate encodes to bytes that are not UTF-8: its line is then
    # rejected (invalid_utf8) by the reader's own check.
    return self._text.readline(size).encode("utf-8", errors="surrogatepass")


def _keep_undecodable(error: UnicodeDecodeError):
  """Each byte the codec cannot decode becomes a lone surrogate: kept, and
  never valid text (surrogateescape does this for bytes >= 0x80 only)."""
  bad = error.object[error.start:error.end]
  return "".join(chr(0xDC00 + byte) for byte in bad), error.end


_UNDECODABLE = "bert_embeddings_keep_undecodable"
codecs.register_error(_UNDECODABLE, _keep_undecodable)


def _not_utf8_text(head: bytes) -> Optional[str]:
  """What a file is, by its first 4 bytes, if they show it is no text;
  else None."""
  for magic, what in _NOT_TEXT:
    if head.startswith(magic):
      return what
  return None


def _unicode_encoding(head: bytes) -> Optional[str]:
  """UTF-16 or UTF-32 when a stream starts with that byte-order mark."""
  for bom, encoding in _UNICODE_BOMS:
    if head.startswith(bom):
      return encoding
  return None


class _Prefixed(io.RawIOBase):
  """`head`, then the rest of `stream`: bytes read ahead, put back."""

  def __init__(self, head: bytes, stream: BinaryIO):
    super().__init__()
    self._head = head
    self._stream = stream

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    if self._head:
      n = min(len(buffer), len(self._head))
      buffer[:n] = self._head[:n]
      self._head = self._head[n:]
      return n
    data = self._stream.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)


def _first_bytes(stream, size: int):
  """(the stream's first `size` bytes or fewer at its end, a stream that
  still starts with them)."""
  head = stream.peek(size)[:size]
  if len(head) == size:
    return head, stream
  # peek() shows only what one read of the file gave, which can be shorter
  # (a decompressor's first piece): read them, and put them back in front.
  head = stream.read(size)
  return head, io.BufferedReader(_Prefixed(head, stream))


def _as_utf8(stream: BinaryIO):
  # Input files come as io.BufferedReader (compression.open_stream), which
  # can look at the first bytes without consuming them; a stream that
  # cannot is read as UTF-8.
  if not hasattr(stream, "peek"):
    return stream
  head, stream = _first_bytes(stream, 4)
  what = _not_utf8_text(head)
  if what is not None:
    # Read on, every line would be its own invalid_utf8 or malformed
    # record, none saying why.
    raise ValueError(f"the file is {what}")
  encoding = _unicode_encoding(head)
  return stream if encoding is None else _Utf8Lines(stream, encoding)
