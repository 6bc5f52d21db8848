"""The output tables' schemas, as data, and the pure functions that fill them.

One column description (`Column`) per table is the single source of truth;
everything else is rendered from it:

  embedding_columns(spec) ──> to_bigquery_schema  (bigquery_schema.json)
  NEIGHBOUR_COLUMNS       ──> to_arrow_schema     (Parquet, readers)
  ERROR_COLUMNS           ──> to_avro_schema      (Avro)
                          ──> example_layout_arrow_schema (TFRecord readers)

Row converters come in two shapes, both pure functions of their inputs:

* one dict per row, in the BigQuery shape (Avro, JSON lines):
  `embedding_to_row`, `neighbour_to_row`, `dead_letter_to_row`;
* one `pyarrow.RecordBatch` per batch, built column by column with numpy so no
  per-value Python runs on the hot path: `embeddings_to_arrow` (BigQuery shape,
  for Parquet) and `embeddings_to_record_batch` (tf.Example layout, for
  tfx-bsl's C++ `RecordBatchToExamplesEncoder`).

Floats: every FLOAT the pipeline produces is a float32 (tf.Example can only
hold float32), so the files store FLOAT columns as 32-bit floats in every
format; BigQuery widens them to FLOAT64 exactly on load. JSON lines carry the
same values as decimal text.

The tf.Example layout is flat (tf.Example has no nesting): every column is a
feature of the same name, scalars as one-value lists, booleans as int64 0/1,
strings as bytes; the nested `tokens` column is stored as two parallel
features, `token_ids` [T] and `sequence_embedding` [T*H] (row major; or one
bytes value of little-endian float16 when `sequence_dtype` is float16).

Loading Parquet into BigQuery needs `--parquet_enable_list_inference` so that
Parquet lists become REPEATED columns.
"""

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from transforms.records import DeadLetter
from transforms.records import Embedding
from transforms.records import content_hash

# BigQuery column modes.
NULLABLE = "NULLABLE"
REQUIRED = "REQUIRED"
REPEATED = "REPEATED"
MODES = (NULLABLE, REQUIRED, REPEATED)

# Every type BigQuery's load API knows (standard and legacy SQL spellings).
# BigQuery's Python client accepts any string as a type, so a misspelt type
# would only fail at load time, hours later: `validate_bigquery_schema` checks.
BIGQUERY_TYPES = (
    "STRING", "BYTES", "INTEGER", "INT64", "FLOAT", "FLOAT64", "NUMERIC",
    "BIGNUMERIC", "BOOLEAN", "BOOL", "TIMESTAMP", "DATE", "TIME", "DATETIME",
    "GEOGRAPHY", "JSON", "RECORD", "STRUCT")
RECORD_TYPES = ("RECORD", "STRUCT")

# The keys of a BigQuery TableFieldSchema; anything else is a typo BigQuery
# would silently ignore (a misspelt "mode" makes a column NULLABLE).
_FIELD_KEYS = frozenset((
    "name", "type", "mode", "fields", "description", "policyTags",
    "maxLength", "precision", "scale", "defaultValueExpression", "collation",
    "roundingMode", "rangeElementType", "foreignTypeDefinition",
    "dataPolicies"))
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
# Prefixes BigQuery reserves for its own pseudo-columns.
_RESERVED_PREFIXES = (
    "_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLON_")

# Sequence value types the tf.Example layout supports.
SEQUENCE_DTYPES = ("float32", "float16")

# Column and feature names other stages and readers refer to.
TOKENS = "tokens"
CONTENT_HASH = "content_hash"
TOKEN_IDS = "token_ids"
SEQUENCE_EMBEDDING = "sequence_embedding"


def encoder_layer_column(layer: int) -> str:
  return f"encoder_layer_{layer}"


@dataclasses.dataclass(frozen=True)
class Column:
  """One column of an output table, in BigQuery's terms."""
  name: str
  type: str
  mode: str = NULLABLE
  description: str = ""
  fields: tuple["Column", ...] = ()  # only for RECORD columns


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
  """
  hidden_size: int
  include_text: bool = True
  sequence_output: bool = False
  sequence_dtype: str = "float32"
  encoder_layers: tuple[int, ...] = ()

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


# ---------------------------------------------------------------------------
# The tables.


def embedding_columns(spec: EmbeddingTableSpec) -> tuple[Column, ...]:
  h = spec.hidden_size
  columns = [
      Column(
          "id", "STRING", REQUIRED,
          "Document id: taken from the input, or derived from source and "
          "text."),
  ]
  if spec.include_text:
    columns.append(Column("text", "STRING", NULLABLE, "The document text."))
  columns += [
      Column(
          "embedding", "FLOAT", REPEATED,
          f"Sentence embedding, {h} values."),
      Column(
          "num_tokens", "INTEGER", REQUIRED,
          "Wordpieces fed to the encoder, [CLS] and [SEP] included."),
      Column(
          "truncated", "BOOLEAN", REQUIRED,
          "Whether the text was cut to the maximum sequence length."),
      Column("run_id", "STRING", REQUIRED, "The run that wrote this row."),
      Column(
          "model_fingerprint", "STRING", REQUIRED,
          "Fingerprint of the model that computed the vectors."),
      Column(
          CONTENT_HASH, "STRING", REQUIRED,
          "SHA-256 of the text: a later run with --previous_run reuses the "
          "vectors while the text and the model are unchanged."),
  ]
  for layer in spec.encoder_layers:
    columns.append(
        Column(
            encoder_layer_column(layer), "FLOAT", REPEATED,
            f"Pooled output of encoder layer {layer}, {h} values."))
  if spec.sequence_output:
    # BigQuery has no arrays of arrays, hence a repeated record per token.
    columns.append(
        Column(
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
            )))
  return tuple(columns)


NEIGHBOUR_COLUMNS = (
    Column("id", "STRING", REQUIRED, "The query document."),
    Column("rank", "INTEGER", REQUIRED, "1 for the nearest neighbour."),
    Column("neighbour_id", "STRING", REQUIRED, "The neighbouring document."),
    Column("score", "FLOAT", REQUIRED, "Cosine similarity."),
    Column("run_id", "STRING", REQUIRED, "The run that wrote this row."),
    Column(
        "model_fingerprint", "STRING", REQUIRED,
        "Fingerprint of the model that computed the vectors."),
)

# DeadLetter's fields, plus the run. A test keeps the two in step.
ERROR_COLUMNS = (
    Column("source", "STRING", REQUIRED, "The file the record came from."),
    Column("position", "INTEGER", REQUIRED, "Line, row or record in source."),
    Column("stage", "STRING", REQUIRED, "read, validate or embed."),
    Column("reason", "STRING", REQUIRED, "Machine-readable reason."),
    Column("detail", "STRING", NULLABLE, "Human-readable explanation."),
    Column("snippet", "STRING", NULLABLE, "The start of the raw record."),
    Column("id", "STRING", NULLABLE, "Document id, when known."),
    Column("run_id", "STRING", REQUIRED, "The run that wrote this row."),
)

# ---------------------------------------------------------------------------
# Renderers: the same columns as BigQuery JSON, Arrow and Avro schemas.


def to_bigquery_schema(columns: Sequence[Column]) -> list[dict]:
  """The schema as `bq load --schema=FILE.json` and the BigQuery API take it."""
  fields = []
  for column in columns:
    field = {"name": column.name, "type": column.type, "mode": column.mode}
    if column.description:
      field["description"] = column.description
    if column.fields:
      field["fields"] = to_bigquery_schema(column.fields)
    fields.append(field)
  return fields


def columns_from_bigquery_schema(
    fields: Sequence[Mapping]) -> tuple[Column, ...]:
  """The inverse of `to_bigquery_schema`, for readers of a written schema."""
  validate_bigquery_schema(fields)
  return _columns_from_fields(fields)


def _columns_from_fields(fields: Sequence[Mapping]) -> tuple[Column, ...]:
  return tuple(
      Column(
          name=field["name"],
          type=field["type"].upper(),
          mode=field.get("mode", NULLABLE).upper(),
          description=field.get("description", ""),
          fields=_columns_from_fields(field.get("fields", ())))
      for field in fields)


def validate_bigquery_schema(fields: Any) -> None:
  """Raises ValueError listing every problem BigQuery would reject at load.

  Checks types, modes and names (the Python client accepts misspelt types),
  keys (a misspelt key is silently ignored by BigQuery), duplicate names
  (case-insensitive, as in BigQuery) and that RECORDs, and only they, have
  fields.
  """
  problems = []
  _collect_schema_problems(fields, "", problems)
  if problems:
    raise ValueError(
        "Invalid BigQuery schema:\n  " + "\n  ".join(problems))


def _collect_schema_problems(fields, parent: str, problems: list) -> None:
  where = parent or "schema"
  if not isinstance(fields, (list, tuple)) or not fields:
    problems.append(f"{where}: expected a non-empty list of fields")
    return
  seen = set()
  for index, field in enumerate(fields):
    if not isinstance(field, Mapping):
      problems.append(f"{where}[{index}]: expected an object, got {field!r}")
      continue
    name = field.get("name")
    path = f"{parent}.{name}" if parent else str(name)
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
      problems.append(
          f"{where}[{index}]: bad column name {name!r} (letters, digits and "
          "underscores, not starting with a digit, at most 300 characters)")
    elif name.upper().startswith(_RESERVED_PREFIXES):
      problems.append(f"{path}: the name prefix is reserved by BigQuery")
    elif name.lower() in seen:
      problems.append(f"{path}: duplicate column name")
    else:
      seen.add(name.lower())
    unknown = sorted(set(field) - _FIELD_KEYS)
    if unknown:
      problems.append(f"{path}: unknown keys {unknown}")
    type_ = field.get("type")
    if not isinstance(type_, str) or type_.upper() not in BIGQUERY_TYPES:
      problems.append(
          f"{path}: unknown type {type_!r}; expected one of "
          f"{', '.join(BIGQUERY_TYPES)}")
      type_ = None
    mode = field.get("mode", NULLABLE)
    if not isinstance(mode, str) or mode.upper() not in MODES:
      problems.append(
          f"{path}: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    is_record = type_ is not None and type_.upper() in RECORD_TYPES
    if is_record:
      _collect_schema_problems(field.get("fields"), path, problems)
    elif type_ is not None and "fields" in field:
      problems.append(f"{path}: only RECORD columns have fields")


_ARROW_TYPES = {
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "INTEGER": pa.int64(),
    "INT64": pa.int64(),
    "FLOAT": pa.float32(),  # see the module docstring
    "FLOAT64": pa.float32(),
    "BOOLEAN": pa.bool_(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "DATE": pa.date32(),
}


def to_arrow_schema(columns: Sequence[Column]) -> pa.Schema:
  """Arrow schema of the BigQuery-shaped rows (Parquet files, readers)."""
  return pa.schema([_arrow_field(column) for column in columns])


def _arrow_field(column: Column) -> pa.Field:
  if column.type in RECORD_TYPES:
    value_type = pa.struct([_arrow_field(f) for f in column.fields])
  elif column.type in _ARROW_TYPES:
    value_type = _ARROW_TYPES[column.type]
  else:
    raise ValueError(
        f"Column {column.name}: type {column.type} has no Arrow rendering")
  if column.mode == REPEATED:
    # BigQuery arrays are never NULL and hold no NULLs. "element" is the name
    # the Parquet spec gives list items.
    return pa.field(
        column.name, _arrow_list(value_type), nullable=False)
  return pa.field(column.name, value_type, nullable=column.mode != REQUIRED)


def _arrow_list(value_type: pa.DataType) -> pa.ListType:
  return pa.list_(pa.field("element", value_type, nullable=False))


_AVRO_TYPES = {
    "STRING": "string",
    "BYTES": "bytes",
    "INTEGER": "long",
    "INT64": "long",
    "FLOAT": "float",  # see the module docstring
    "FLOAT64": "float",
    "BOOLEAN": "boolean",
    "BOOL": "boolean",
    "TIMESTAMP": {"type": "long", "logicalType": "timestamp-micros"},
    "DATE": {"type": "int", "logicalType": "date"},
}


def to_avro_schema(
    columns: Sequence[Column],
    name: str,
    namespace: str = "bert_batch_embeddings") -> dict:
  """Avro record schema: REPEATED is an array, NULLABLE a union with null."""
  return {
      "type": "record",
      "name": name,
      "namespace": namespace,
      "fields": [_avro_field(column, name) for column in columns],
  }


def _avro_field(column: Column, record_name: str) -> dict:
  if column.type in RECORD_TYPES:
    # Avro record names must be unique within a schema.
    nested_name = f"{record_name}_{column.name}"
    value_type = {
        "type": "record",
        "name": nested_name,
        "fields": [_avro_field(f, nested_name) for f in column.fields],
    }
  elif column.type in _AVRO_TYPES:
    value_type = _AVRO_TYPES[column.type]
  else:
    raise ValueError(
        f"Column {column.name}: type {column.type} has no Avro rendering")
  field = {"name": column.name}
  if column.description:
    field["doc"] = column.description
  if column.mode == REPEATED:
    field["type"] = {"type": "array", "items": value_type}
  elif column.mode == NULLABLE:
    field["type"] = ["null", value_type]
    field["default"] = None
  else:
    field["type"] = value_type
  return field


def example_layout_arrow_schema(columns: Sequence[Column]) -> pa.Schema:
  """Arrow schema of a table read back from TFRecord, scalars unwrapped.

  The flat tf.Example layout (see the module docstring) with one value per
  scalar column, booleans as booleans and strings as strings; the float16
  bytes of `sequence_embedding` read back as float32 values.
  """
  fields = []
  for column in columns:
    if column.name == TOKENS and column.type in RECORD_TYPES:
      fields.append(pa.field(TOKEN_IDS, _arrow_list(pa.int64()), False))
      fields.append(
          pa.field(SEQUENCE_EMBEDDING, _arrow_list(pa.float32()), False))
    elif column.type in RECORD_TYPES:
      raise ValueError(
          f"Column {column.name}: only the tokens record has a tf.Example "
          "layout")
    else:
      fields.append(_arrow_field(column))
  return pa.schema(fields)


# ---------------------------------------------------------------------------
# Row converters: one dict per row, in the BigQuery shape (Avro, JSON lines).


def embedding_to_row(
    e: Embedding,
    spec: EmbeddingTableSpec,
    run_id: str,
    model_fingerprint: str) -> dict:
  """An embeddings table row; vectors as lists of Python floats."""
  h = spec.hidden_size
  row = {"id": e.id}
  if spec.include_text:
    row["text"] = e.text
  row["embedding"] = _vector(e.embedding, h, e.id, "embedding").tolist()
  row["num_tokens"] = int(e.num_tokens)
  row["truncated"] = bool(e.truncated)
  row["run_id"] = run_id
  row["model_fingerprint"] = model_fingerprint
  row[CONTENT_HASH] = content_hash(e.text)
  for layer in spec.encoder_layers:
    row[encoder_layer_column(layer)] = _layer(e, layer, h).tolist()
  if spec.sequence_output:
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


def neighbour_to_row(
    neighbour: Mapping, run_id: str, model_fingerprint: str) -> dict:
  """A neighbours table row from {id, rank, neighbour_id, score}."""
  return {
      "id": neighbour["id"],
      "rank": int(neighbour["rank"]),
      "neighbour_id": neighbour["neighbour_id"],
      # Rounded as the files store it, so every format holds the same value.
      "score": float(np.float32(neighbour["score"])),
      "run_id": run_id,
      "model_fingerprint": model_fingerprint,
  }


def dead_letter_to_row(d: DeadLetter, run_id: str) -> dict:
  """An errors table row: the DeadLetter's fields and the run."""
  row = d.to_json_dict()
  row["run_id"] = run_id
  return row


def rows_to_arrow(
    rows: Sequence[Mapping], columns: Sequence[Column]) -> pa.RecordBatch:
  """BigQuery-shaped rows as an Arrow batch (small tables' Parquet path)."""
  return pa.RecordBatch.from_pylist(list(rows), schema=to_arrow_schema(columns))


def rows_to_record_batch(
    rows: Sequence[Mapping], columns: Sequence[Column]) -> pa.RecordBatch:
  """Flat BigQuery-shaped rows in the tf.Example layout (small tables).

  A NULL becomes an absent feature. For tables without RECORD columns.
  """
  arrays, names = [], []
  for column in columns:
    if column.type in RECORD_TYPES:
      raise ValueError(
          f"Column {column.name}: RECORD columns need a table-specific "
          "tf.Example layout")
    feature_type = _EXAMPLE_TYPES[column.type]
    to_feature = _EXAMPLE_VALUE[column.type]
    values = [row.get(column.name) for row in rows]
    if column.mode == REPEATED:
      lists = [[to_feature(v) for v in value or ()] for value in values]
    else:
      lists = [[] if v is None else [to_feature(v)] for v in values]
    arrays.append(pa.array(lists, pa.list_(feature_type)))
    names.append(column.name)
  return pa.RecordBatch.from_arrays(arrays, names=names)


# tf.Example holds bytes, int64 and float32 lists only.
_EXAMPLE_TYPES = {
    "STRING": pa.binary(),
    "BYTES": pa.binary(),
    "INTEGER": pa.int64(),
    "INT64": pa.int64(),
    "FLOAT": pa.float32(),
    "FLOAT64": pa.float32(),
    "BOOLEAN": pa.int64(),
    "BOOL": pa.int64(),
}
_EXAMPLE_VALUE = {
    "STRING": lambda v: v.encode("utf-8"),
    "BYTES": bytes,
    "INTEGER": int,
    "INT64": int,
    "FLOAT": float,
    "FLOAT64": float,
    "BOOLEAN": int,
    "BOOL": int,
}

# ---------------------------------------------------------------------------
# Batch converters for embeddings: numpy in bulk, one pass over the rows to
# collect their arrays, no per-value Python.


@dataclasses.dataclass(frozen=True)
class _EmbeddingArrays:
  """A batch of embeddings as whole-batch arrays."""
  ids: list
  texts: list
  vectors: np.ndarray  # float32 [N, H]
  num_tokens: np.ndarray  # int64 [N]
  truncated: np.ndarray  # bool [N]
  layers: dict  # layer -> float32 [N, H]
  token_counts: Optional[np.ndarray]  # int64 [N]
  token_ids: Optional[np.ndarray]  # int64 [sum T]
  sequence: Optional[np.ndarray]  # [sum T, H], float32 or float16


def _gather(
    batch: Sequence[Embedding], spec: EmbeddingTableSpec) -> _EmbeddingArrays:
  h = spec.hidden_size
  token_counts = token_ids = sequence = None
  if spec.sequence_output:
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
      truncated=np.array([bool(e.truncated) for e in batch], dtype=np.bool_),
      layers={
          layer: _stack([_layer(e, layer, h) for e in batch], h)
          for layer in spec.encoder_layers
      },
      token_counts=token_counts,
      token_ids=token_ids,
      sequence=sequence)


def embeddings_to_record_batch(
    batch: Sequence[Embedding],
    spec: EmbeddingTableSpec,
    run_id: str,
    model_fingerprint: str) -> pa.RecordBatch:
  """A batch of embeddings in the tf.Example layout (see module docstring).

  Feed it to tfx_bsl's `RecordBatchToExamplesEncoder`: every column is a list
  column of bytes, int64 or float32, as that encoder requires.
  """
  a = _gather(batch, spec)
  n, h = len(a.ids), spec.hidden_size
  columns = {"id": _one_value_lists(pa.array(a.ids, pa.binary()))}
  if spec.include_text:
    columns["text"] = _one_value_lists(pa.array(a.texts, pa.binary()))
  columns["embedding"] = _fixed_lists(a.vectors, h)
  columns["num_tokens"] = _one_value_lists(pa.array(a.num_tokens))
  columns["truncated"] = _one_value_lists(
      pa.array(a.truncated.astype(np.int64)))
  columns["run_id"] = _one_value_lists(_repeat(run_id.encode(), pa.binary(), n))
  columns["model_fingerprint"] = _one_value_lists(
      _repeat(model_fingerprint.encode(), pa.binary(), n))
  columns[CONTENT_HASH] = _one_value_lists(
      pa.array([content_hash(t).encode() for t in a.texts], pa.binary()))
  for layer, vectors in a.layers.items():
    columns[encoder_layer_column(layer)] = _fixed_lists(vectors, h)
  if spec.sequence_output:
    columns[TOKEN_IDS] = _list_array(a.token_ids, a.token_counts)
    if spec.sequence_dtype == "float16":
      columns[SEQUENCE_EMBEDDING] = _one_value_lists(
          _float16_bytes(a.sequence, a.token_counts * h))
    else:
      columns[SEQUENCE_EMBEDDING] = _list_array(
          a.sequence.reshape(-1), a.token_counts * h)
  return pa.RecordBatch.from_arrays(
      list(columns.values()), names=list(columns))


def embeddings_to_arrow(
    batch: Sequence[Embedding],
    spec: EmbeddingTableSpec,
    run_id: str,
    model_fingerprint: str) -> pa.RecordBatch:
  """A batch of embeddings in the BigQuery shape, typed by `to_arrow_schema`.

  The rows are those of `embedding_to_row`, built in bulk (Parquet path).
  """
  schema = to_arrow_schema(embedding_columns(spec))
  a = _gather(batch, spec)
  n, h = len(a.ids), spec.hidden_size
  vector_type = schema.field("embedding").type
  columns = {"id": pa.array(a.ids, pa.string())}
  if spec.include_text:
    columns["text"] = pa.array(a.texts, pa.string())
  columns["embedding"] = _fixed_lists(a.vectors, h, vector_type)
  columns["num_tokens"] = pa.array(a.num_tokens)
  columns["truncated"] = pa.array(a.truncated)
  columns["run_id"] = _repeat(run_id, pa.string(), n)
  columns["model_fingerprint"] = _repeat(model_fingerprint, pa.string(), n)
  columns[CONTENT_HASH] = pa.array([content_hash(t) for t in a.texts],
                                   pa.string())
  for layer, vectors in a.layers.items():
    columns[encoder_layer_column(layer)] = _fixed_lists(vectors, h, vector_type)
  if spec.sequence_output:
    tokens_type = schema.field(TOKENS).type
    token_struct = tokens_type.value_type
    positions = _concatenate(
        [np.arange(count) for count in a.token_counts], np.int64, (0,))
    token_vectors = _fixed_lists(
        a.sequence.astype(np.float32), h,
        token_struct.field("embedding").type)
    tokens = pa.StructArray.from_arrays(
        [pa.array(positions), pa.array(a.token_ids), token_vectors],
        fields=list(token_struct))
    columns[TOKENS] = _list_array(tokens, a.token_counts, tokens_type)
  return pa.RecordBatch.from_arrays(list(columns.values()), schema=schema)


# ---------------------------------------------------------------------------
# Helpers.


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


def _offsets(lengths: np.ndarray) -> pa.Array:
  offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  if offsets[-1] > np.iinfo(np.int32).max:
    raise ValueError(
        f"A batch holds {offsets[-1]} values in one column, more than an "
        "Arrow list can address; use a smaller batch_size")
  return pa.array(offsets.astype(np.int32))


def _list_array(values, lengths: np.ndarray, list_type=None) -> pa.ListArray:
  if not isinstance(values, pa.Array):
    values = pa.array(values)
  return pa.ListArray.from_arrays(_offsets(lengths), values, type=list_type)


def _fixed_lists(matrix: np.ndarray, h: int, list_type=None) -> pa.ListArray:
  lengths = np.full(len(matrix), h, dtype=np.int64)
  return _list_array(
      np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), lengths,
      list_type)


def _one_value_lists(values: pa.Array) -> pa.ListArray:
  return _list_array(values, np.ones(len(values), dtype=np.int64))


def _repeat(value, type_: pa.DataType, n: int) -> pa.Array:
  return pa.repeat(pa.scalar(value, type_), n)


def _float16_bytes(sequence: np.ndarray, value_counts: np.ndarray) -> pa.Array:
  """One bytes value per row: its [T*H] float16 values, little endian."""
  data = np.ascontiguousarray(sequence, dtype="<f2").tobytes()
  byte_offsets = np.zeros(len(value_counts) + 1, dtype=np.int64)
  np.cumsum(value_counts * 2, out=byte_offsets[1:])
  if byte_offsets[-1] > np.iinfo(np.int32).max:
    raise ValueError(
        "A batch's float16 sequence bytes exceed 2 GiB; use a smaller "
        "batch_size")
  return pa.BinaryArray.from_buffers(
      pa.binary(), len(value_counts),
      [None, pa.py_buffer(byte_offsets.astype(np.int32)), pa.py_buffer(data)])
