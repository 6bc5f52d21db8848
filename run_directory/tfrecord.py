"""The one TFRecord codec: framing for every TFRecord file the project writes
and reads outside Beam's sources (input corpora, readers of a run),
tf.Examples to and from Arrow batches, and the canonical bytes of the
tf.Examples it writes. (Reuse reads a previous run inside the pipeline with
tfx-bsl's TFXIO source, which splits the files across workers.)

A TFRecord file is a sequence of frames:

  uint64 length (little-endian) | uint32 masked crc32c of the length
  | data[length] | uint32 masked crc32c of the data

Reading checks both CRCs, and never trusts a length: a frame's data is read
in pieces of at most _READ_PIECE bytes, so a garbage length costs no more
memory than the bytes really there, and a frame over `max_bytes` is skipped
(read and dropped) and reported as `OversizedFrame` instead of being held.
"""

import struct
import zlib
from typing import BinaryIO, Iterator, List, NamedTuple, Sequence, Union

import google_crc32c
import pyarrow as pa
# tfx-bsl's batch coders, in C++: tf.Examples <-> Arrow RecordBatches. Its
# public module, tfx_bsl.public.tfxio, re-exports the encoder (not the
# decoder) from here, but importing it imports TensorFlow and the whole TFXIO
# stack (4.5 s here), which the reader CLI and the read stage do not need.
# So this module, and only this one, imports the coders' own module.
from tfx_bsl.coders import example_coder

_HEADER = struct.Struct("<QI")  # length, masked crc32c of the length
_FOOTER = struct.Struct("<I")  # masked crc32c of the data
_READ_PIECE = 1 << 20
_NOT_TFRECORD = ("not a TFRecord file? (a compressed one must carry its "
                 "suffix, e.g. .tfrecord.gz)")
# TensorFlow writes compressed TFRecord files under any name
# (TFRecordOptions(compression_type=...)), often a bare ".tfrecord"; the
# codec's own header says which suffix the file needs. GZIP's is .gz, and
# ZLIB's .deflate (a zlib stream): renamed .gz, a ZLIB file fails again.
_GZIP_MAGIC = b"\x1f\x8b"
_COMPRESSED_TFRECORD = (
    "the file is {codec}-compressed (TensorFlow's TFRecordOptions("
    "compression_type='{option}')): name it with the suffix {suffix} "
    "(e.g. .tfrecord{suffix}) and it is decompressed as it is read")


def _not_tfrecord(header: bytes, first: bool) -> str:
  """Why a file's frame header is no TFRecord header, and what to do."""
  if first and header.startswith(_GZIP_MAGIC):
    return _COMPRESSED_TFRECORD.format(codec="gzip", option="GZIP",
                                       suffix=".gz")
  if first and _starts_a_zlib_stream(header):
    return _COMPRESSED_TFRECORD.format(codec="zlib", option="ZLIB",
                                       suffix=".deflate")
  return _NOT_TFRECORD


def _starts_a_zlib_stream(header: bytes) -> bool:
  """A zlib stream's first two bytes: deflate with a window of up to 32 KiB
  (0x78 for the largest, TensorFlow's), their number a multiple of 31; and
  the bytes after them inflate. Two bytes alone pass for text ("Hj")."""
  if (len(header) < 2 or header[0] & 0x0F != 8 or header[0] >> 4 > 7 or
      int.from_bytes(header[:2], "big") % 31):
    return False
  try:
    zlib.decompressobj().decompress(header)
  except zlib.error:
    return False
  return True


class OversizedFrame(NamedTuple):
  """A frame whose data is longer than the reader's limit."""
  size: int


class CorruptFrame(NamedTuple):
  """A frame whose data fails its CRC, though its length passes its own:
  the next frame starts where this one says it ends."""
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


def iter_frames(stream: BinaryIO, max_bytes: int = 1 << 62,
                skip_corrupt_data: bool = False
                ) -> Iterator[Union[bytes, OversizedFrame, CorruptFrame]]:
  """The data of each frame of a TFRecord stream, CRCs checked.

  skip_corrupt_data: a frame whose data fails its CRC, its length passing
    its own, is a CorruptFrame and reading goes on (an input corpus: one
    damaged record is that record's error); otherwise it raises (a run's
    own table: any damage is).

  Raises:
    ValueError: at the first frame that is truncated or fails a CRC (the
      frames before it have been yielded).
  """
  first = True
  while True:
    header, count = _read_up_to(stream, _HEADER.size)
    if not count:
      return
    if count < _HEADER.size:
      raise ValueError(
          f"truncated TFRecord header; {_not_tfrecord(header, first)}")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
      raise ValueError(
          f"TFRecord length fails its CRC; {_not_tfrecord(header, first)}")
    first = False
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
      if skip_corrupt_data:
        yield CorruptFrame(length)
        continue
      raise ValueError("TFRecord data fails its CRC")
    yield data


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7


_FIELD_1_BYTES = 0x0A  # protobuf tag: field 1, length-delimited


def canonical_example(serialized: bytes) -> bytes:
  """A serialized tf.Example with its features in key order.

  tfx-bsl's C++ encoder writes the feature map in hash-table order, which
  changes from process to process. This reorders the map entries (nothing
  else changes, so every length stays valid), giving the bytes of protobuf's
  deterministic serialization.

  Wire layout: Example{1: Features{1: repeated MapEntry{1: key, 2: Feature}}}.
  """
  if not serialized:
    return serialized
  if serialized[0] != _FIELD_1_BYTES:
    raise ValueError("Not a serialized tf.Example with features")
  length, start = _read_varint(serialized, 1)
  if start + length != len(serialized):
    raise ValueError("Not a serialized tf.Example: bad features length")
  entries = []
  pos = start
  while pos < len(serialized):
    entry_length, body = _read_varint(serialized, pos + 1)
    end = body + entry_length
    if serialized[pos] != _FIELD_1_BYTES or serialized[body] != _FIELD_1_BYTES:
      raise ValueError("Not a serialized tf.Example: unexpected field")
    key_length, key_start = _read_varint(serialized, body + 1)
    entries.append(
        (serialized[key_start:key_start + key_length], serialized[pos:end]))
    pos = end
  entries.sort(key=lambda entry: entry[0])
  return serialized[:start] + b"".join(entry for _, entry in entries)


def encode_examples(record_batch: pa.RecordBatch) -> List[bytes]:
  """One serialized tf.Example per row of a batch in the tf.Example layout
  (list columns of bytes, int64 or float32; run_directory/arrow.py)."""
  return example_coder.RecordBatchToExamplesEncoder().encode(record_batch)


class ExamplesDecoder:
  """Serialized tf.Examples -> one Arrow RecordBatch of list columns, a
  column per feature any of them has (absent: null)."""

  def __init__(self):
    self._decoder = example_coder.ExamplesToRecordBatchDecoder()

  def decode(self, examples: Sequence[bytes]) -> pa.RecordBatch:
    return self._decoder.DecodeBatch(list(examples))
