"""Carry embeddings over from a previous run (--previous_run).

A nightly run over a corpus that changes a little each day embeds only what
changed. A document is carried over when its id, its text (content hash) and
the model fingerprint are the same as in the previous run, and the previous run
computed vectors the same way (max length, pooling, normalisation, sequence
and layer outputs). Changed and new documents are embedded; documents gone
from the corpus are dropped and counted as removed.

The previous run is read from its TFRecord shards, listed by its manifest, with
tfx-bsl's TFXIO reader (tf.Example to Arrow RecordBatches in C++).
"""

import dataclasses
import json
import logging
from typing import Dict, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import schemas
from transforms.records import Document
from transforms.records import Embedding
from transforms.records import METRICS_NAMESPACE
from transforms.records import content_hash

_LOG = logging.getLogger(__name__)

REUSED = "reused"
TO_EMBED = "to_embed"
REMOVED = "removed"
MANIFEST_FILE = "manifest.json"
_READ_BATCH_SIZE = 1024


class PreviousRunError(ValueError):
  """--previous_run does not name a published run; the message says why."""


@dataclasses.dataclass(frozen=True)
class PreviousRun:
  """What the driver learnt from the previous run's manifest.

  reusable is False (with the reason) when the previous run's vectors cannot
  stand for this run's: another model, other settings, or an older layout.
  Then nothing is carried over and every document is embedded.
  """
  path: str
  run_id: str
  tfrecord_files: Tuple[str, ...]
  reusable: bool
  reason: str = ""
  documents: int = 0  # in its embeddings table

  def manifest_entry(self) -> dict:
    return {"path": self.path, "run_id": self.run_id,
            "reused": self.reusable, "reason": self.reason}


def _read_json(path: str) -> dict:
  with FileSystems.open(path) as f:
    return json.loads(f.read().decode("utf-8"))


def plan_previous_run(path: str, model_fingerprint: str,
                      vector_settings: Dict) -> PreviousRun:
  """Reads the previous run's manifest; raises PreviousRunError.

  vector_settings: the settings that change what a vector is (max_seq_length,
  pooling, normalize, sequence_output, sequence_dtype, encoder_layers), as
  this run's manifest records them under "model" and "settings".
  """
  path = path.rstrip("/")
  manifest_path = FileSystems.join(path, MANIFEST_FILE)
  if not FileSystems.exists(manifest_path):
    raise PreviousRunError(
        f"--previous_run={path} has no manifest.json: it is not a published "
        "run. Point --previous_run at the last complete run directory.")
  manifest = _read_json(manifest_path)
  embeddings = manifest["outputs"]["embeddings"]
  files = tuple(
      FileSystems.join(path, name) for name in embeddings["tfrecord"])
  missing = [name for name in files if not FileSystems.exists(name)]
  if missing:
    raise PreviousRunError(
        f"--previous_run={path} lists {len(missing)} embedding shard(s) that "
        f"are gone, e.g. {missing[0]}: its files were moved or deleted. Point "
        "--previous_run at a complete run, or leave it out to embed "
        "everything.")
  previous_settings = dict(manifest.get("settings", {}))
  previous_settings.update(manifest["model"])

  reason = ""
  if manifest["model"]["fingerprint"] != model_fingerprint:
    reason = "the model changed (fingerprint differs)"
  else:
    changed = sorted(
        name for name, value in vector_settings.items()
        if previous_settings.get(name) != value)
    if changed:
      reason = f"settings changed: {', '.join(changed)}"
  if not reason:
    schema = _read_json(FileSystems.join(path, embeddings["bigquery_schema"]))
    if schemas.CONTENT_HASH not in {field["name"] for field in schema}:
      reason = "the previous run has no content hashes (older layout)"
  if reason:
    _LOG.warning("Not reusing embeddings of %s: %s", path, reason)
  return PreviousRun(path=path, run_id=manifest["run_id"],
                     tfrecord_files=files, reusable=not reason,
                     reason=reason,
                     documents=int(manifest["counts"]["embedded"]))


class PreviousEmbedding(NamedTuple):
  """A previous run's row, without the text (the current document has it)."""
  content_hash: str
  embedding: np.ndarray
  num_tokens: int
  truncated: bool
  token_ids: Optional[np.ndarray]
  sequence_embedding: Optional[np.ndarray]
  layers: Dict[int, np.ndarray]


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


def record_batch_to_ids(batch: pa.RecordBatch):
  """(id, None) per row: enough to count removed documents."""
  for document_id in _ids(batch):
    yield document_id, None


def record_batch_to_previous(batch: pa.RecordBatch,
                             spec: schemas.EmbeddingTableSpec):
  """Decoded tf.Examples of an embeddings table -> (id, PreviousEmbedding)."""
  h = spec.hidden_size
  ids = _ids(batch)
  hashes = [v.decode("ascii") for v in _scalars(batch, schemas.CONTENT_HASH)]
  vectors = _matrix(batch, "embedding", h)
  num_tokens = _scalars(batch, "num_tokens")
  truncated = _scalars(batch, "truncated")
  layers = {
      layer: _matrix(batch, schemas.encoder_layer_column(layer), h)
      for layer in spec.encoder_layers
  }
  token_ids = sequences = None
  if spec.sequence_output:
    token_ids = _ragged(batch, schemas.TOKEN_IDS)
    sequences = _ragged(batch, schemas.SEQUENCE_EMBEDDING)
  for i, document_id in enumerate(ids):
    sequence = None
    if sequences is not None:
      sequence = sequences[i].reshape(-1, h).astype(spec.sequence_dtype)
    yield document_id, PreviousEmbedding(
        content_hash=hashes[i],
        embedding=vectors[i],
        num_tokens=int(num_tokens[i]),
        truncated=bool(truncated[i]),
        token_ids=(token_ids[i].astype(np.int32)
                   if token_ids is not None else None),
        sequence_embedding=sequence,
        layers={layer: matrix[i] for layer, matrix in layers.items()})


class ReadPreviousEmbeddings(beam.PTransform):
  """The previous run's embeddings as (id, PreviousEmbedding).

  When the previous run is not reusable only its ids are read, as
  (id, None): they still tell which documents were removed.
  """

  def __init__(self, previous: PreviousRun, spec: schemas.EmbeddingTableSpec):
    super().__init__()
    self._previous = previous
    self._spec = spec

  def expand(self, pbegin):
    from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top
    source = tfxio.TFExampleRecord(
        file_pattern=list(self._previous.tfrecord_files),
        telemetry_descriptors=["bert-batch-embeddings", "previous_run"])
    return (pbegin
            | "ReadTFRecord" >> source.BeamSource(batch_size=_READ_BATCH_SIZE)
            | "ToPrevious" >> (
                beam.FlatMap(record_batch_to_previous, spec=self._spec)
                if self._previous.reusable else
                beam.FlatMap(record_batch_to_ids)))


class _SplitByReuse(beam.DoFn):
  """(id, {docs, previous}) -> a carried-over Embedding, a Document, or gone."""

  def __init__(self):
    self._reused = Metrics.counter(METRICS_NAMESPACE, "reused")
    self._removed = Metrics.counter(METRICS_NAMESPACE, "removed")

  def process(self, grouped):
    document_id, group = grouped
    documents, previous = list(group["documents"]), list(group["previous"])
    if not documents:
      self._removed.inc()
      yield beam.pvalue.TaggedOutput(REMOVED, document_id)
      return
    document: Document = documents[0]  # ids are unique after validation
    if previous and previous[0] is not None and (
        previous[0].content_hash == content_hash(document.text)):
      self._reused.inc()
      carried = previous[0]
      yield beam.pvalue.TaggedOutput(
          REUSED,
          Embedding(
              id=document.id, text=document.text, source=document.source,
              embedding=carried.embedding, num_tokens=carried.num_tokens,
              truncated=carried.truncated, token_ids=carried.token_ids,
              sequence_embedding=carried.sequence_embedding,
              layers=carried.layers))
    else:
      yield document


class ReuseEmbeddings(beam.PTransform):
  """Documents -> {REUSED: Embedding, TO_EMBED: Document, REMOVED: id}."""

  def __init__(self, previous: PreviousRun, spec: schemas.EmbeddingTableSpec):
    super().__init__()
    self._previous = previous
    self._spec = spec

  def expand(self, documents):
    previous = documents.pipeline | "ReadPrevious" >> ReadPreviousEmbeddings(
        self._previous, self._spec)
    keyed = documents | "KeyById" >> beam.Map(lambda d: (d.id, d))
    split = ({"documents": keyed, "previous": previous}
             | "JoinOnId" >> beam.CoGroupByKey()
             | "Split" >> beam.ParDo(_SplitByReuse()).with_outputs(
                 REUSED, REMOVED, main=TO_EMBED))
    return {REUSED: split[REUSED], TO_EMBED: split[TO_EMBED],
            REMOVED: split[REMOVED]}
