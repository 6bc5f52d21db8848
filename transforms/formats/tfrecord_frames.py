"""TFRecord framing: the one codec for every TFRecord file the project reads
or writes.

A TFRecord file is a sequence of frames:

  uint64 length (little-endian) | uint32 masked crc32c of the length
  | data[length] | uint32 masked crc32c of the data

Reading checks both CRCs, and never trusts a length: a frame's data is read
in pieces of at most _READ_PIECE bytes, so a garbage length costs no more
memory than the bytes really there, and a frame over `max_bytes` is skipped
(read and dropped) and reported as `OversizedFrame` instead of being held.
"""

import struct
from typing import BinaryIO, Iterator, NamedTuple, Union

import google_crc32c

_HEADER = struct.Struct("<QI")  # length, masked crc32c of the length
_FOOTER = struct.Struct("<I")  # masked crc32c of the data
_READ_PIECE = 1 << 20
_NOT_TFRECORD = ("not a TFRecord file? (a compressed one must carry its "
                 "suffix, e.g. .tfrecord.gz)")


class OversizedFrame(NamedTuple):
  """A frame whose data is longer than the reader's limit."""
  size: int


def masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


def encode_frame(data: bytes) -> bytes:
  """One TFRecord frame holding `data`."""
  length = struct.pack("<Q", len(data))
  return b"".join((length, _FOOTER.pack(masked_crc32c(length)), data,
                   _FOOTER.pack(masked_crc32c(data))))


def _read_up_to(stream: BinaryIO, size: int, keep: bool = True) -> tuple:
  """(bytes read or b"" when not kept, how many) for up to `size` bytes."""
  pieces, count = [], 0
  while count < size:
    piece = stream.read(min(size - count, _READ_PIECE))
    if not piece:
      break
    count += len(piece)
    if keep:
      pieces.append(piece)
  return b"".join(pieces), count


def iter_frames(stream: BinaryIO,
                max_bytes: int = 1 << 62) -> Iterator[Union[bytes,
                                                           OversizedFrame]]:
  """The data of each frame of a TFRecord stream, CRCs checked.

  Raises:
    ValueError: at the first frame that is truncated or fails a CRC (the
      frames before it have been yielded).
  """
  while True:
    header, count = _read_up_to(stream, _HEADER.size)
    if not count:
      return
    if count < _HEADER.size:
      raise ValueError(f"truncated TFRecord header; {_NOT_TFRECORD}")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
      raise ValueError(f"TFRecord length fails its CRC; {_NOT_TFRECORD}")
    keep = length <= max_bytes
    body, count = _read_up_to(stream, length + _FOOTER.size, keep)
    if count < length + _FOOTER.size:
      raise ValueError(
          f"truncated TFRecord data: the frame claims {length:,} bytes, the "
          f"file holds {max(count - _FOOTER.size, 0):,} more")
    if not keep:
      yield OversizedFrame(length)
      continue
    data = body[:length]
    (data_crc,) = _FOOTER.unpack(body[length:])
    if masked_crc32c(data) != data_crc:
      raise ValueError("TFRecord data fails its CRC")
    yield data
