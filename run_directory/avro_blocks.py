"""An Avro container file's Snappy blocks checked against their CRCs.

The Avro spec's snappy codec follows each compressed block with the CRC32
(big-endian) of its uncompressed data, but fastavro's reader skips it: a
flipped bit in a table's Avro copy came back as a changed id, text or vector
with no error. The run's readers (readers.py) check every block with
`check_snappy_blocks` before fastavro decodes the file.

Container layout (avro.apache.org/docs, "Object Container Files"): the magic
b"Obj\\x01", a metadata map (the codec under "avro.codec"), a 16-byte sync
marker; then blocks of (row count, byte size, data, the sync marker), each
count and size a zig-zag varint.
"""

import zlib

from cramjam import snappy

_MAGIC = b"Obj\x01"
_SYNC_SIZE = 16
_CRC_SIZE = 4


class AvroBlockError(ValueError):
  """The file breaks the container layout, or a block fails its CRC."""


def _long(data: bytes, pos: int):
  """The zig-zag varint at `pos`, and the position after it."""
  shift = result = 0
  while True:
    if pos >= len(data):
      raise AvroBlockError("the file ends inside a number (cut short?)")
    byte = data[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return (result >> 1) ^ -(result & 1), pos
    shift += 7


def _bytes(data: bytes, pos: int):
  size, pos = _long(data, pos)
  if size < 0 or pos + size > len(data):
    raise AvroBlockError("a length points past the end of the file")
  return data[pos:pos + size], pos + size


def _codec_and_sync(data: bytes):
  """The header's codec, its sync marker, and where the blocks start."""
  if not data.startswith(_MAGIC):
    raise AvroBlockError("not an Avro container file (no Obj\\x01 magic)")
  pos, codec = len(_MAGIC), b"null"
  while True:
    count, pos = _long(data, pos)
    if count == 0:
      break
    if count < 0:  # a negative count is followed by the block's byte size
      count = -count
      _, pos = _long(data, pos)
    for _ in range(count):
      key, pos = _bytes(data, pos)
      value, pos = _bytes(data, pos)
      if key == b"avro.codec":
        codec = value
  sync = data[pos:pos + _SYNC_SIZE]
  if len(sync) != _SYNC_SIZE:
    raise AvroBlockError("the header is cut short")
  return codec, sync, pos + _SYNC_SIZE


def check_snappy_blocks(data: bytes) -> None:
  """Raises AvroBlockError unless every block of this Avro file (its whole
  bytes) is whole, ends with the sync marker and, for the snappy codec,
  decompresses to data of its CRC. Other codecs' blocks are only framed."""
  codec, sync, pos = _codec_and_sync(data)
  block = 0
  while pos < len(data):
    _, pos = _long(data, pos)  # rows in the block
    payload, pos = _bytes(data, pos)
    if codec == b"snappy":
      if len(payload) < _CRC_SIZE:
        raise AvroBlockError(f"block {block} is too short for its CRC")
      try:
        uncompressed = bytes(snappy.decompress_raw(payload[:-_CRC_SIZE]))
      except Exception as e:  # pylint: disable=broad-except  # cramjam's own
        raise AvroBlockError(f"block {block} does not decompress: {e}") from e
      if zlib.crc32(uncompressed) != int.from_bytes(payload[-_CRC_SIZE:],
                                                     "big"):
        raise AvroBlockError(f"block {block} fails its CRC")
    if data[pos:pos + _SYNC_SIZE] != sync:
      raise AvroBlockError(f"block {block} does not end with the sync marker")
    pos += _SYNC_SIZE
    block += 1
