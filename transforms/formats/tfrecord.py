"""TFRecord files of tf.train.Example: one record per Example.

Positions are record indexes. The text feature must hold exactly one bytes
value (UTF-8): absent or empty is MISSING_FIELD; an int64/float feature, or
several values, is NON_STRING_FIELD (a list of strings is not a string, as
for a JSON array). The id feature is optional: one bytes or int64 value.

Why not tfx-bsl's TFExampleRecord TFXIO: it reads through Beam's
ReadFromTFRecord, whose records carry no index within their file, and it
fails the whole read on a corrupt file. Here each file is framed by the
project's TFRecord codec (positions; corrupt framing is one dead letter, the
records before it kept; a record whose data alone fails its CRC is that
record's malformed_record, and reading goes on), and the Examples are decoded by tfx-bsl's C++
decoder a batch at a time, into Arrow columns (the codec's ExamplesDecoder).
"""

from typing import BinaryIO, Iterator, List, Optional, Tuple

import pyarrow as pa

from run_directory.records import Reason
from run_directory.tfrecord import CorruptFrame
from run_directory.tfrecord import ExamplesDecoder
from run_directory.tfrecord import iter_frames
from run_directory.tfrecord import OversizedFrame
from transforms.formats.carried import carried_fields
from transforms.formats.fields import decode_utf8
from transforms.formats.fields import document
from transforms.formats.fields import id_from_int
from transforms.formats.fields import Record
from transforms.formats.fields import RecordSpec
from transforms.formats.fields import Rejected
from transforms.formats.fields import too_large

# Serialized Examples per decode batch: large enough that the C++ decoding
# dominates, small enough to bound memory (a batch is also capped by its size
# in bytes).
_BATCH_RECORDS = 1024
_BATCH_BYTES = 16 << 20

# (position, serialized Example) of the frames of one decode batch.
_Batch = List[Tuple[int, bytes]]


def _batches(stream: BinaryIO, source: str, spec: RecordSpec
            ) -> Iterator[Tuple[_Batch, List[Record]]]:
  """(batch of frames, dead letters of rejected or corrupt frames) in
  file order.

  A framing error is raised only after the batch before it, so the records
  read before a corrupt frame are kept.
  """
  batch, batch_bytes, rejected = [], 0, []
  frames = iter_frames(stream, spec.max_record_bytes, skip_corrupt_data=True)
  position = 0
  while True:
    try:
      frame = next(frames, None)
    except ValueError:
      if batch or rejected:
        yield batch, rejected
      raise
    if frame is None:
      break
    if isinstance(frame, OversizedFrame):
      rejected.append(
          too_large(frame.size, spec.max_record_bytes,
                    "record").dead_letter(source, position, b""))
    elif isinstance(frame, CorruptFrame):
      rejected.append(Rejected(
          Reason.MALFORMED_RECORD,
          f"the record's {frame.size:,} bytes fail their CRC (damaged); its "
          "framing is intact, so reading goes on at the next record"
      ).dead_letter(source, position, b""))
    else:
      batch.append((position, frame))
      batch_bytes += len(frame)
    position += 1
    if len(batch) >= _BATCH_RECORDS or batch_bytes >= _BATCH_BYTES:
      yield batch, rejected
      batch, batch_bytes, rejected = [], 0, []
  if batch or rejected:
    yield batch, rejected


def read_tfrecord_records(stream: BinaryIO, source: str,
                          spec: RecordSpec) -> Iterator[Record]:
  """One record per serialized tf.train.Example (see the module docstring)."""
  decoder = ExamplesDecoder()
  for batch, rejected in _batches(stream, source, spec):
    records = list(rejected)
    if batch:
      records.extend(_decode_examples(decoder, batch, source, spec))
    # In file order: the position after the last record is where an
    # unreadable_file dead letter says reading stopped.
    yield from sorted(records, key=lambda record: record.position)


def _decode_examples(decoder, batch: _Batch, source: str,
                     spec: RecordSpec) -> Iterator[Record]:
  try:
    record_batch = decoder.decode([example for _, example in batch])
  except RuntimeError:
    # One unparsable proto, or a feature whose kind differs between Examples,
    # fails the whole batch: decode one by one so that only bad ones are lost.
    for position, example in batch:
      try:
        one = decoder.decode([example])
      except RuntimeError as error:
        yield Rejected(Reason.MALFORMED_RECORD,
                       f"not a tf.train.Example: {error}").dead_letter(
                           source, position, example)
      else:
        yield from _examples_from_batch(one, [(position, example)], source,
                                        spec)
    return
  yield from _examples_from_batch(record_batch, batch, source, spec)


def _examples_from_batch(record_batch: pa.RecordBatch, batch: _Batch,
                         source: str, spec: RecordSpec) -> Iterator[Record]:
  schema = record_batch.schema
  fields = [spec.id_field, spec.text_field]
  if spec.text_pair_field is not None:
    fields.append(spec.text_pair_field)
  fields.extend(field.name for field in spec.carried)
  types = {name: _feature_value_type(schema, name) for name in fields}
  values = {name: _column_values(record_batch, name, types[name])
            for name in fields}
  for offset, (position, example) in enumerate(batch):
    try:
      doc_id = _id_from_feature(values[spec.id_field][offset], spec.id_field,
                                types[spec.id_field])
      text = _text_from_feature(values[spec.text_field][offset],
                                spec.text_field, types[spec.text_field],
                                doc_id, spec.text_flag)
      text_pair = None
      if spec.text_pair_field is not None:
        text_pair = _text_from_feature(
            values[spec.text_pair_field][offset], spec.text_pair_field,
            types[spec.text_pair_field], doc_id, spec.text_pair_flag)
      carried = carried_fields(
          spec.carried, lambda name, row=offset: values[name][row], doc_id)
    except Rejected as rejected:
      yield rejected.dead_letter(source, position, example)
    else:
      yield document(source, position, doc_id, text, text_pair, carried)


def _feature_value_type(schema: pa.Schema,
                        name: str) -> Optional[pa.DataType]:
  """The value type of a decoded feature (binary, int64, float), or None.

  A feature that no Example of the batch sets decodes as an all-null column.
  """
  index = schema.get_field_index(name)
  if index < 0 or pa.types.is_null(schema.field(index).type):
    return None
  return schema.field(index).type.value_type


def _column_values(batch: pa.RecordBatch, name: str,
                   value_type: Optional[pa.DataType]) -> list:
  if value_type is None:
    return [None] * batch.num_rows
  return batch.column(name).to_pylist()


def _is_bytes_type(value_type: pa.DataType) -> bool:
  return pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type)


def _text_from_feature(values: Optional[list], field: str,
                       value_type: Optional[pa.DataType],
                       doc_id: Optional[str], flag: str) -> str:
  if not values:
    raise Rejected(Reason.MISSING_FIELD,
                   f"no {field!r} feature; set {flag}", doc_id)
  if not _is_bytes_type(value_type):
    raise Rejected(
        Reason.NON_STRING_FIELD,
        f"feature {field!r} holds {value_type} values, not bytes", doc_id)
  if len(values) != 1:
    raise Rejected(
        Reason.NON_STRING_FIELD,
        f"feature {field!r} holds {len(values)} values, not one string",
        doc_id)
  return decode_utf8(values[0], f"feature {field!r}", doc_id)


def _id_from_feature(values: Optional[list], id_field: str,
                     value_type: Optional[pa.DataType]) -> Optional[str]:
  if not values:
    return None
  if len(values) == 1:
    if pa.types.is_integer(value_type):
      return id_from_int(values[0])
    if _is_bytes_type(value_type):
      return decode_utf8(values[0], f"feature {id_field!r}") or None
  raise Rejected(
      Reason.NON_STRING_FIELD,
      f"feature {id_field!r} holds {len(values)} {value_type} values, not one "
      f"string or integer")
