"""Decompression of input files, by their suffix, that notices a cut file.

The suffixes are the ones Beam's filesystem layer knows
(`CompressionTypes.detect_compression_type`): .gz, .bz2, .deflate, .zst,
.zstd, .xz and .lzma. Beam's own decompressing reader stops quietly when the
compressed data ends before the codec's end-of-stream marker, so a file cut
in half (an upload that broke off) would lose its tail, or all of it, with no
error. This reader raises EOFError instead: the read stage then keeps the
records before the cut and reports the file as unreadable.

Memory stays bounded whatever the input: output is produced at most
`_OUTPUT_PIECE` bytes at a time (zstd, whose Python binding has no output
limit, gets its input in small pieces instead: a zstd block holds at most
128 KiB, so each piece expands to a bounded size). Concatenated streams
(several gzip members, bzip2 or xz streams, zstd frames) are read one after
another, as their command-line tools do.
"""

import bz2
import io
import lzma
import zlib
from typing import BinaryIO, Optional

import zstandard

GZIP = "gzip"
BZIP2 = "bzip2"
DEFLATE = "deflate"
ZSTD = "zstd"
LZMA = "lzma"

_BY_SUFFIX = {
    ".gz": GZIP,
    ".bz2": BZIP2,
    ".deflate": DEFLATE,
    ".zst": ZSTD,
    ".zstd": ZSTD,
    ".xz": LZMA,
    ".lzma": LZMA,
}
SUFFIXES = tuple(_BY_SUFFIX)

_INPUT_PIECE = 64 * 1024
_ZSTD_INPUT_PIECE = 1024  # expands to at most ~32 MiB (128 KiB blocks)
_OUTPUT_PIECE = 1 << 20
_BUFFER_SIZE = 1 << 20


def compression_of(path: str) -> Optional[str]:
  """The codec a file name's suffix names, or None for an uncompressed file."""
  lowered = path.lower()
  for suffix, codec in _BY_SUFFIX.items():
    if lowered.endswith(suffix):
      return codec
  return None


class _Stream:
  """One compressed stream (a gzip member, a zstd frame...) being decoded."""

  def __init__(self, codec: str):
    if codec == GZIP:
      self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif codec == DEFLATE:
      self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
    elif codec == BZIP2:
      self._decoder = bz2.BZ2Decompressor()
    elif codec == LZMA:
      self._decoder = lzma.LZMADecompressor()
    elif codec == ZSTD:
      self._decoder = zstandard.ZstdDecompressor().decompressobj()
    else:
      raise ValueError(f"unknown codec {codec!r}")
    self._zlib = codec in (GZIP, DEFLATE)
    self._zstd = codec == ZSTD
    self.started = False

  @property
  def eof(self) -> bool:
    return self._decoder.eof

  @property
  def unused_data(self) -> bytes:
    return self._decoder.unused_data

  @property
  def wants_input(self) -> bool:
    """Whether all input given so far has been turned into output."""
    if self._zlib:
      return not self._decoder.unconsumed_tail
    if self._zstd:
      return True
    return self._decoder.needs_input

  def decode(self, data: bytes) -> bytes:
    """Output for `data` (b"": for input given before), bounded in size."""
    self.started = self.started or bool(data)
    if self._zlib:
      return self._decoder.decompress(
          data or self._decoder.unconsumed_tail, _OUTPUT_PIECE)
    if self._zstd:
      return self._decoder.decompress(data)
    return self._decoder.decompress(data, _OUTPUT_PIECE)


class _DecompressedRaw(io.RawIOBase):
  """The decompressed bytes of `raw`, as a raw stream for io.BufferedReader."""

  def __init__(self, raw: BinaryIO, codec: str):
    super().__init__()
    self._raw = raw
    self._codec = codec
    self._stream: Optional[_Stream] = _Stream(codec)
    self._input = b""  # read from raw, not yet given to the decoder
    self._output = b""
    self._output_offset = 0

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    while self._output_offset >= len(self._output):
      if not self._produce():
        return 0
    n = min(len(buffer), len(self._output) - self._output_offset)
    buffer[:n] = self._output[self._output_offset:self._output_offset + n]
    self._output_offset += n
    return n

  def _produce(self) -> bool:
    """Decodes some more output; False at the clean end of the data."""
    while True:
      stream = self._stream
      if stream is None:  # between two streams: is there another one?
        if not self._take_input():
          return False
        stream = self._stream = _Stream(self._codec)
      if stream.wants_input:
        if not self._input and not self._take_input():
          if stream.started and not stream.eof:
            raise EOFError(
                f"the {self._codec} data ends before its end-of-stream "
                "marker: the file is truncated")
          return False
        piece = _ZSTD_INPUT_PIECE if self._codec == ZSTD else len(self._input)
        data, self._input = self._input[:piece], self._input[piece:]
      else:
        data = b""
      output = stream.decode(data)
      if stream.eof:
        self._input = stream.unused_data + self._input
        self._stream = None
      if output:
        self._output, self._output_offset = output, 0
        return True

  def _take_input(self) -> bool:
    if not self._input:
      self._input = self._raw.read(_INPUT_PIECE)
    return bool(self._input)

  def close(self):
    try:
      self._raw.close()
    finally:
      super().close()


class _RawReader(io.RawIOBase):
  """Any binary file object as a raw stream, so io.BufferedReader can wrap it
  (and give it a fast readline(size), which not every filesystem's file
  object has)."""

  def __init__(self, raw: BinaryIO):
    super().__init__()
    self._raw = raw

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    data = self._raw.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)

  def close(self):
    try:
      self._raw.close()
    finally:
      super().close()


def open_stream(raw: BinaryIO, codec: Optional[str]) -> io.BufferedReader:
  """A buffered reader of `raw`'s bytes, decompressed with `codec` if any.

  Closing it closes `raw`. Reading raises EOFError where compressed data is
  cut short, and the codec's own error (zlib.error, OSError, LZMAError,
  zstandard.ZstdError) where it is corrupt.
  """
  inner = _RawReader(raw) if codec is None else _DecompressedRaw(raw, codec)
  return io.BufferedReader(inner, buffer_size=_BUFFER_SIZE)
