"""The embeddings and chunks tables: their columns, made from the run's
settings, and their rows both ways.

`EmbeddingTableSpec` (hidden size, text or not, sequence output, encoder
layers, chunked) fixes the columns (`embedding_columns`, `chunk_columns`:
a chunk row has the vectors of a document row, its place in its document
instead of a content hash and a truncation flag, and no layers). Converters,
all pure, each for documents and for chunks:

- `embedding_to_row` / `chunk_to_row`: one row in the BigQuery shape (Avro,
  JSON lines);
- `embeddings_to_arrow` / `chunks_to_arrow`: a batch in the BigQuery shape
  (Parquet), and `embeddings_to_record_batch` / `chunks_to_record_batch`: a
  batch in the tf.Example layout (TFRecord), both built column by column
  with numpy, no per-value Python;
- `vectors_from_examples` / `chunks_from_examples`: decoded tf.Examples of
  the tables back to Vectors, for a later run that reuses them.
"""

import dataclasses
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from run_directory.arrow import fixed_lists
from run_directory.arrow import float16_bytes
from run_directory.arrow import list_array
from run_directory.arrow import one_value_lists
from run_directory.arrow import repeat
from run_directory.arrow import to_arrow_schema
from run_directory.columns import Column
from run_directory.columns import CONTENT_HASH
from run_directory.columns import encoder_layer_column
from run_directory.columns import NULLABLE
from run_directory.columns import REPEATED
from run_directory.columns import REQUIRED
from run_directory.columns import SEQUENCE_EMBEDDING
from run_directory.columns import TOKEN_IDS
from run_directory.columns import TOKENS
from run_directory.records import content_hash
from run_directory.records import Chunk
from run_directory.records import ChunkVectors
from run_directory.records import Embedding
from run_directory.records import Vectors

# Sequence value types the tf.Example layout supports.
SEQUENCE_DTYPES = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class EmbeddingTableSpec:
  """What the embeddings table holds, which fixes its columns.

  hidden_size: H, the length of every vector.
  include_text: whether rows carry the document text.
  sequence_output: whether rows carry the per-token vectors of the real tokens.
  sequence_dtype: "float32" or "float16"; float16 halves the TFRecord size of
    the per-token vectors, and the other formats get the same rounded values.
  encoder_layers: encoder layers (non-negative indices) whose pooled vectors
    are written as `encoder_layer_{i}` columns.
  chunked: whether documents were cut into chunks (--chunk_size): then the
    embeddings table's rows gain `num_chunks`, and per-token vectors go to
    the chunks table only.
  """
  hidden_size: int
  include_text: bool = True
  sequence_output: bool = False
  sequence_dtype: str = "float32"
  encoder_layers: tuple[int, ...] = ()
  chunked: bool = False

  def __post_init__(self):
    if not isinstance(self.hidden_size, int) or self.hidden_size < 1:
      raise ValueError(
          f"hidden_size must be a positive int, got {self.hidden_size!r}")
    if self.sequence_dtype not in SEQUENCE_DTYPES:
      raise ValueError(
          f"sequence_dtype must be one of {SEQUENCE_DTYPES}, got "
          f"{self.sequence_dtype!r}")
    layers = tuple(self.encoder_layers)
    if any(not isinstance(i, int) or i < 0 for i in layers):
      raise ValueError(
          "encoder_layers must be non-negative layer indices, got "
          f"{self.encoder_layers!r}")
    if len(set(layers)) != len(layers):
      raise ValueError(f"encoder_layers has duplicates: {layers}")
    # Accept a list but keep the spec hashable and immutable.
    object.__setattr__(self, "encoder_layers", layers)


def _tokens_column(h: int) -> Column:
  # BigQuery has no arrays of arrays, hence a repeated record per token.
  return Column(
      TOKENS, "RECORD", REPEATED,
      "The real tokens (no padding), in order.",
      fields=(
          Column(
              "position", "INTEGER", REQUIRED,
              "0-based position in the encoder input ([CLS] is 0)."),
          Column("token_id", "INTEGER", REQUIRED, "Wordpiece id."),
          Column(
              "embedding", "FLOAT", REPEATED,
              f"The encoder's output for this token, {h} values."),
      ))


# The chunk's place in its document: chunks table columns after the id.
_CHUNK_PLACE_COLUMNS = (
    Column("document_id", "STRING", REQUIRED, "The chunk's document."),
    Column("chunk_index", "INTEGER", REQUIRED,
           "The chunk's place in its document, from 0."),
    Column("start", "INTEGER", REQUIRED,
           "Offset of the chunk's first character in the document's text "
           "(Unicode code points)."),
    Column("end", "INTEGER", REQUIRED,
           "Offset just past the chunk's last character: the chunk is "
           "text[start:end]."),
)


def embedding_columns(spec: EmbeddingTableSpec) -> tuple[Column, ...]:
  """The embeddings table: one row per document."""
  return _columns(spec, chunks=False)


def chunk_columns(spec: EmbeddingTableSpec) -> tuple[Column, ...]:
  """The chunks table: one row per chunk of a document (--chunk_size)."""
  return _columns(spec, chunks=True)


def _columns(spec: EmbeddingTableSpec, chunks: bool) -> tuple[Column, ...]:
  h = spec.hidden_size
  what = "Chunk" if chunks else "Document"
  columns = [
      Column(
          "id", "STRING", REQUIRED,
          "Chunk id: <document id>#<chunk index>." if chunks else
          "Document id: taken from the input, or derived from source and "
          "text."),
  ]
  if chunks:
    columns += _CHUNK_PLACE_COLUMNS
  if spec.include_text:
    columns.append(Column("text", "STRING", NULLABLE, f"The {what.lower()} "
                          "text."))
  columns += [
      Column(
          "embedding", "FLOAT", REPEATED,
          f"{what} embedding, {h} values."),
      Column(
          "num_tokens", "INTEGER", REQUIRED,
          "Wordpieces fed to the encoder, [CLS] and [SEP] included" +
          (", over all chunks." if spec.chunked and not chunks else ".")),
  ]
  if not chunks:
    columns.append(Column(
        "truncated", "BOOLEAN", REQUIRED,
        "Whether the text was cut: to the maximum sequence length, or to "
        "--max_chunks chunks."))
    if spec.chunked:
      columns.append(Column(
          "num_chunks", "INTEGER", REQUIRED,
          "Chunks of the document in the chunks table."))
  columns += [
      Column("run_id", "STRING", REQUIRED, "The run that wrote this row."),
      Column(
          "model_fingerprint", "STRING", REQUIRED,
          "Fingerprint of the model that computed the vectors."),
  ]
  if not chunks:
    columns.append(Column(
        CONTENT_HASH, "STRING", REQUIRED,
        "SHA-256 of the text: a later run with --previous_run reuses the "
        "vectors while the text and the model are unchanged."))
    for layer in spec.encoder_layers:
      columns.append(
          Column(
              encoder_layer_column(layer), "FLOAT", REPEATED,
              f"Pooled output of encoder layer {layer}, {h} values."))
  if _has_tokens(spec, chunks):
    columns.append(_tokens_column(h))
  return tuple(columns)


def _has_tokens(spec: EmbeddingTableSpec, chunks: bool) -> bool:
  """Per-token vectors: in the chunks table when documents are chunked."""
  return spec.sequence_output and (chunks or not spec.chunked)


# Converters.


def embedding_to_row(e: Embedding, spec: EmbeddingTableSpec, run_id: str,
                     model_fingerprint: str) -> dict:
  """An embeddings table row; vectors as lists of Python floats."""
  return _to_row(e, spec, False, run_id, model_fingerprint)


def chunk_to_row(c: Chunk, spec: EmbeddingTableSpec, run_id: str,
                 model_fingerprint: str) -> dict:
  """A chunks table row; vectors as lists of Python floats."""
  return _to_row(c, spec, True, run_id, model_fingerprint)


def _to_row(e, spec: EmbeddingTableSpec, chunks: bool, run_id: str,
            model_fingerprint: str) -> dict:
  h = spec.hidden_size
  row = {"id": e.id}
  if chunks:
    row.update(document_id=e.document_id, chunk_index=int(e.chunk_index),
               start=int(e.start), end=int(e.end))
  if spec.include_text:
    row["text"] = e.text
  row["embedding"] = _vector(e.embedding, h, e.id, "embedding").tolist()
  row["num_tokens"] = int(e.num_tokens)
  if not chunks:
    row["truncated"] = bool(e.truncated)
    if spec.chunked:
      row["num_chunks"] = int(e.num_chunks)
  row["run_id"] = run_id
  row["model_fingerprint"] = model_fingerprint
  if not chunks:
    row[CONTENT_HASH] = content_hash(e.text)
    for layer in spec.encoder_layers:
      row[encoder_layer_column(layer)] = _layer(e, layer, h).tolist()
  if _has_tokens(spec, chunks):
    token_ids, sequence = _sequence(e, spec)
    # float16 values become float32 here: the same numbers, in a type every
    # format has.
    vectors = sequence.astype(np.float32).tolist()
    row[TOKENS] = [{
        "position": position,
        "token_id": token_id,
        "embedding": vector,
    } for position, (token_id, vector) in enumerate(
        zip(token_ids.tolist(), vectors))]
  return row


@dataclasses.dataclass(frozen=True)
class _EmbeddingArrays:
  """A batch of embeddings (or chunks) as whole-batch arrays."""
  ids: list
  texts: list
  vectors: np.ndarray  # float32 [N, H]
  num_tokens: np.ndarray  # int64 [N]
  layers: dict  # layer -> float32 [N, H]
  token_counts: Optional[np.ndarray]  # int64 [N]
  token_ids: Optional[np.ndarray]  # int64 [sum T]
  sequence: Optional[np.ndarray]  # [sum T, H], float32 or float16


def _gather(batch: Sequence, spec: EmbeddingTableSpec,
            chunks: bool) -> _EmbeddingArrays:
  h = spec.hidden_size
  token_counts = token_ids = sequence = None
  if _has_tokens(spec, chunks):
    sequences = [_sequence(e, spec) for e in batch]
    token_counts = np.array([len(t) for t, _ in sequences], dtype=np.int64)
    token_ids = _concatenate([t for t, _ in sequences], np.int64, (0,))
    sequence = _concatenate(
        [s for _, s in sequences], np.dtype(spec.sequence_dtype), (0, h))
  return _EmbeddingArrays(
      ids=[e.id for e in batch],
      texts=[e.text for e in batch],
      vectors=_stack(
          [_vector(e.embedding, h, e.id, "embedding") for e in batch], h),
      num_tokens=np.array([e.num_tokens for e in batch], dtype=np.int64),
      layers={} if chunks else {
          layer: _stack([_layer(e, layer, h) for e in batch], h)
          for layer in spec.encoder_layers
      },
      token_counts=token_counts,
      token_ids=token_ids,
      sequence=sequence)


def _integers(batch: Sequence, name: str) -> np.ndarray:
  return np.array([int(getattr(e, name)) for e in batch], dtype=np.int64)


def embeddings_to_record_batch(batch: Sequence[Embedding],
                               spec: EmbeddingTableSpec, run_id: str,
                               model_fingerprint: str) -> pa.RecordBatch:
  """A batch of embeddings in the tf.Example layout (see arrow.py).

  Feed it to tfx_bsl's `RecordBatchToExamplesEncoder`: every column is a list
  column of bytes, int64 or float32, as that encoder requires.
  """
  return _to_record_batch(batch, spec, False, run_id, model_fingerprint)


def chunks_to_record_batch(batch: Sequence[Chunk], spec: EmbeddingTableSpec,
                           run_id: str,
                           model_fingerprint: str) -> pa.RecordBatch:
  """A batch of chunks in the tf.Example layout."""
  return _to_record_batch(batch, spec, True, run_id, model_fingerprint)


def _to_record_batch(batch: Sequence, spec: EmbeddingTableSpec, chunks: bool,
                     run_id: str, model_fingerprint: str) -> pa.RecordBatch:
  a = _gather(batch, spec, chunks)
  n, h = len(a.ids), spec.hidden_size
  columns = {"id": one_value_lists(pa.array(a.ids, pa.binary()))}
  if chunks:
    columns["document_id"] = one_value_lists(pa.array(
        [c.document_id for c in batch], pa.binary()))
    for name in ("chunk_index", "start", "end"):
      columns[name] = one_value_lists(pa.array(_integers(batch, name)))
  if spec.include_text:
    columns["text"] = one_value_lists(pa.array(a.texts, pa.binary()))
  columns["embedding"] = fixed_lists(a.vectors, h)
  columns["num_tokens"] = one_value_lists(pa.array(a.num_tokens))
  if not chunks:
    columns["truncated"] = one_value_lists(
        pa.array(np.array([bool(e.truncated) for e in batch], np.int64)))
    if spec.chunked:
      columns["num_chunks"] = one_value_lists(
          pa.array(_integers(batch, "num_chunks")))
  columns["run_id"] = one_value_lists(repeat(run_id.encode(), pa.binary(), n))
  columns["model_fingerprint"] = one_value_lists(
      repeat(model_fingerprint.encode(), pa.binary(), n))
  if not chunks:
    columns[CONTENT_HASH] = one_value_lists(
        pa.array([content_hash(t).encode() for t in a.texts], pa.binary()))
  for layer, vectors in a.layers.items():
    columns[encoder_layer_column(layer)] = fixed_lists(vectors, h)
  if _has_tokens(spec, chunks):
    columns[TOKEN_IDS] = list_array(a.token_ids, a.token_counts)
    if spec.sequence_dtype == "float16":
      columns[SEQUENCE_EMBEDDING] = one_value_lists(
          float16_bytes(a.sequence, a.token_counts * h))
    else:
      columns[SEQUENCE_EMBEDDING] = list_array(
          a.sequence.reshape(-1), a.token_counts * h)
  return pa.RecordBatch.from_arrays(
      list(columns.values()), names=list(columns))


def embeddings_to_arrow(batch: Sequence[Embedding], spec: EmbeddingTableSpec,
                        run_id: str, model_fingerprint: str) -> pa.RecordBatch:
  """A batch of embeddings in the BigQuery shape, typed by `to_arrow_schema`.

  The rows are those of `embedding_to_row`, built in bulk (Parquet path).
  """
  return _to_arrow(batch, spec, False, run_id, model_fingerprint)


def chunks_to_arrow(batch: Sequence[Chunk], spec: EmbeddingTableSpec,
                    run_id: str, model_fingerprint: str) -> pa.RecordBatch:
  """A batch of chunks in the BigQuery shape (the rows of chunk_to_row)."""
  return _to_arrow(batch, spec, True, run_id, model_fingerprint)


def _to_arrow(batch: Sequence, spec: EmbeddingTableSpec, chunks: bool,
              run_id: str, model_fingerprint: str) -> pa.RecordBatch:
  schema = to_arrow_schema(_columns(spec, chunks))
  a = _gather(batch, spec, chunks)
  n, h = len(a.ids), spec.hidden_size
  vector_type = schema.field("embedding").type
  columns = {"id": pa.array(a.ids, pa.string())}
  if chunks:
    columns["document_id"] = pa.array([c.document_id for c in batch],
                                      pa.string())
    for name in ("chunk_index", "start", "end"):
      columns[name] = pa.array(_integers(batch, name))
  if spec.include_text:
    columns["text"] = pa.array(a.texts, pa.string())
  columns["embedding"] = fixed_lists(a.vectors, h, vector_type)
  columns["num_tokens"] = pa.array(a.num_tokens)
  if not chunks:
    columns["truncated"] = pa.array([bool(e.truncated) for e in batch],
                                    pa.bool_())
    if spec.chunked:
      columns["num_chunks"] = pa.array(_integers(batch, "num_chunks"))
  columns["run_id"] = repeat(run_id, pa.string(), n)
  columns["model_fingerprint"] = repeat(model_fingerprint, pa.string(), n)
  if not chunks:
    columns[CONTENT_HASH] = pa.array([content_hash(t) for t in a.texts],
                                     pa.string())
  for layer, vectors in a.layers.items():
    columns[encoder_layer_column(layer)] = fixed_lists(vectors, h,
                                                       vector_type)
  if _has_tokens(spec, chunks):
    tokens_type = schema.field(TOKENS).type
    token_struct = tokens_type.value_type
    positions = _concatenate(
        [np.arange(count) for count in a.token_counts], np.int64, (0,))
    token_vectors = fixed_lists(
        a.sequence.astype(np.float32), h,
        token_struct.field("embedding").type)
    tokens = pa.StructArray.from_arrays(
        [pa.array(positions), pa.array(a.token_ids), token_vectors],
        fields=list(token_struct))
    columns[TOKENS] = list_array(tokens, a.token_counts, tokens_type)
  return pa.RecordBatch.from_arrays(list(columns.values()), schema=schema)


def _vector(value, h: int, id_: str, what: str) -> np.ndarray:
  vector = np.asarray(value, dtype=np.float32)
  if vector.shape != (h,):
    raise ValueError(
        f"Embedding {id_!r}: {what} has shape {vector.shape}, expected ({h},) "
        "from the table's hidden_size")
  return vector


def _layer(e: Embedding, layer: int, h: int) -> np.ndarray:
  if layer not in e.layers:
    raise ValueError(
        f"Embedding {e.id!r} has no pooled output for encoder layer {layer} "
        f"(it has layers {sorted(e.layers)}); the embed stage must be asked "
        "for the same encoder layers as the writer")
  return _vector(e.layers[layer], h, e.id, f"encoder layer {layer}")


def _sequence(e: Embedding, spec: EmbeddingTableSpec):
  """(token_ids int64 [T], sequence [T, H] in spec.sequence_dtype)."""
  if e.token_ids is None or e.sequence_embedding is None:
    raise ValueError(
        f"Embedding {e.id!r} has no per-token output; the embed stage must "
        "be run with sequence output when the table has it")
  token_ids = np.asarray(e.token_ids, dtype=np.int64).reshape(-1)
  # float16 rounding happens here, once, for every format.
  sequence = np.asarray(e.sequence_embedding).astype(spec.sequence_dtype)
  if sequence.shape != (len(token_ids), spec.hidden_size):
    raise ValueError(
        f"Embedding {e.id!r}: sequence_embedding has shape {sequence.shape}, "
        f"expected ({len(token_ids)}, {spec.hidden_size}) for its "
        f"{len(token_ids)} token ids")
  return token_ids, sequence


def _stack(vectors: list, h: int) -> np.ndarray:
  if not vectors:
    return np.zeros((0, h), dtype=np.float32)
  return np.stack(vectors)


def _concatenate(arrays: list, dtype, empty_shape) -> np.ndarray:
  if not arrays:
    return np.zeros(empty_shape, dtype=dtype)
  return np.concatenate(arrays).astype(dtype, copy=False)


# Reading the table back.


def _values(batch: pa.RecordBatch, name: str) -> pa.Array:
  return batch.column(batch.schema.get_field_index(name))


def _scalars(batch, name) -> list:
  return _values(batch, name).flatten().to_pylist()


def _matrix(batch, name, width) -> np.ndarray:
  values = _values(batch, name).flatten().to_numpy(zero_copy_only=False)
  return values.astype(np.float32).reshape(-1, width)


def _ragged(batch, name):
  """A list column as one numpy array per row."""
  column = _values(batch, name)
  offsets = column.offsets.to_numpy()
  values = column.flatten()
  if pa.types.is_large_binary(values.type) or pa.types.is_binary(
      values.type):  # float16 sequences: one bytes value per row
    return [np.frombuffer(v, dtype="<f2") for v in values.to_pylist()]
  values = values.to_numpy(zero_copy_only=False)
  return [values[offsets[i]:offsets[i + 1]] for i in range(len(column))]


def _ids(batch: pa.RecordBatch) -> list:
  return [v.decode("utf-8") for v in _scalars(batch, "id")]


def ids_from_examples(batch: pa.RecordBatch) -> list:
  """The ids of decoded tf.Examples of the table."""
  return _ids(batch)


def _vectors_of_rows(batch: pa.RecordBatch, spec: EmbeddingTableSpec,
                     chunks: bool) -> list:
  """Decoded tf.Examples of the embeddings (or chunks) table -> Vectors."""
  h = spec.hidden_size
  vectors = _matrix(batch, "embedding", h)
  num_tokens = _scalars(batch, "num_tokens")
  truncated = ([0] * len(num_tokens) if chunks else
               _scalars(batch, "truncated"))
  layers = {} if chunks else {
      layer: _matrix(batch, encoder_layer_column(layer), h)
      for layer in spec.encoder_layers
  }
  token_ids = sequences = None
  if _has_tokens(spec, chunks):
    token_ids = _ragged(batch, TOKEN_IDS)
    sequences = _ragged(batch, SEQUENCE_EMBEDDING)
  rows = []
  for i in range(len(num_tokens)):
    sequence = None
    if sequences is not None:
      sequence = sequences[i].reshape(-1, h).astype(spec.sequence_dtype)
    rows.append(Vectors(
        embedding=vectors[i],
        num_tokens=int(num_tokens[i]),
        truncated=bool(truncated[i]),
        token_ids=(token_ids[i].astype(np.int32)
                   if token_ids is not None else None),
        sequence_embedding=sequence,
        layers={layer: matrix[i] for layer, matrix in layers.items()}))
  return rows


def vectors_from_examples(batch: pa.RecordBatch, spec: EmbeddingTableSpec
                         ) -> Iterator[Tuple[str, str, Vectors, int]]:
  """Decoded tf.Examples of the embeddings table -> (id, content hash,
  Vectors, num_chunks: 0 unless spec.chunked)."""
  ids = _ids(batch)
  hashes = [v.decode("ascii") for v in _scalars(batch, CONTENT_HASH)]
  num_chunks = (_scalars(batch, "num_chunks") if spec.chunked else
                [0] * len(ids))
  for i, vectors in enumerate(_vectors_of_rows(batch, spec, chunks=False)):
    yield ids[i], hashes[i], vectors, int(num_chunks[i])


def chunks_from_examples(batch: pa.RecordBatch, spec: EmbeddingTableSpec
                        ) -> Iterator[Tuple[str, int, ChunkVectors]]:
  """Decoded tf.Examples of the chunks table -> (document id, chunk index,
  ChunkVectors)."""
  document_ids = [v.decode("utf-8") for v in _scalars(batch, "document_id")]
  indices = _scalars(batch, "chunk_index")
  starts, ends = _scalars(batch, "start"), _scalars(batch, "end")
  for i, vectors in enumerate(_vectors_of_rows(batch, spec, chunks=True)):
    yield document_ids[i], int(indices[i]), ChunkVectors(
        start=int(starts[i]), end=int(ends[i]), vectors=vectors)
