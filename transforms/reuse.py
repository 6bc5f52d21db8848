"""Carry embeddings over from a previous run (--previous_run).

A nightly run over a corpus that changes a little each day embeds only what
changed. A document is carried over when its id, its text (content hash) and
the model fingerprint are the same as in the previous run, and the previous run
computed vectors the same way (max length, pooling, normalisation, precision,
sequence and layer outputs, chunk settings: `vector_settings` in
pipeline/model_plan.py lists them). Changed and new documents are embedded; documents gone
from the corpus are dropped and counted as removed. With chunking
(--chunk_size, the same chunk settings: planning checks), a document's chunks
are carried over with it, read from the previous run's chunks table. A
carried-over vector takes its input fields (--restrict_fields and the like)
from tonight's record, not from the previous run.

The previous run is read from its TFRecord shards, listed by its manifest, with
tfx-bsl's TFXIO reader (tf.Example to Arrow RecordBatches in C++). Its rows
are counted against its manifest's count before any document is split: a
shard cut after a whole record, emptied or listed twice passes TFRecord's
checksums, and would hide documents from the removed count that guards
publishing (transforms/guardrails.py).
"""

import dataclasses
import functools
import logging
from typing import Tuple

import apache_beam as beam
from tfx_bsl.public import tfxio

from run_directory.embeddings import chunks_from_examples
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.embeddings import ids_from_examples
from run_directory.embeddings import vectors_from_examples
from run_directory.layout import EMBEDDINGS
from run_directory.records import chunk_of
from run_directory.records import content_hash
from run_directory.records import Document
from run_directory.records import embedding_of
from transforms.names import counter
from transforms.names import COUNTERS
from transforms.previous_run_damage import CheckRowCount
from transforms.progress import PROGRESS

_LOG = logging.getLogger(__name__)

REUSED = "reused"
REUSED_CHUNKS = "reused_chunks"
TO_EMBED = "to_embed"
REMOVED = "removed"
_READ_BATCH_SIZE = 1024

@dataclasses.dataclass(frozen=True)
class PreviousRun:
  """What planning learnt from the previous run's manifest
  (pipeline/previous_run.py reads it).

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
  chunk_tfrecord_files: Tuple[str, ...] = ()  # its chunks table, if chunked
  # Its vertex_state table (JSON lines), if it wrote a Vertex AI export,
  # and the rows its manifest counts (vertex.datapoints).
  vertex_state_files: Tuple[str, ...] = ()
  vertex_datapoints: int = 0
  hidden_size: int = 0  # its vectors' length (0: not recorded)

  def manifest_entry(self) -> dict:
    return {"path": self.path, "run_id": self.run_id,
            "reused": self.reusable, "reason": self.reason}


class _ReadPreviousTable(beam.PTransform):
  """A table of the previous run read from its TFRecord shards with TFXIO
  (decoded tf.Examples as Arrow RecordBatches), each batch parsed by
  `parse` into elements."""

  def __init__(self, files, parse):
    super().__init__()
    self._files = list(files)
    self._parse = parse

  def expand(self, pbegin):
    source = tfxio.TFExampleRecord(
        file_pattern=self._files,
        telemetry_descriptors=["bert-batch-embeddings", "previous_run"])
    return (pbegin
            | "ReadTFRecord" >> source.BeamSource(batch_size=_READ_BATCH_SIZE)
            | "Parse" >> beam.FlatMap(self._parse))


def read_previous_embeddings(previous: PreviousRun,
                             spec: EmbeddingTableSpec) -> beam.PTransform:
  """The previous run's embeddings as (id, (content hash, Vectors,
  num_chunks)); when it is not reusable only its ids, as (id, None): they
  still tell which documents were removed."""
  parse = (functools.partial(_previous_vectors, spec=spec)
           if previous.reusable else _previous_ids)
  return _ReadPreviousTable(previous.tfrecord_files, parse)


def read_previous_chunks(previous: PreviousRun,
                         spec: EmbeddingTableSpec) -> beam.PTransform:
  """The previous run's chunks as (document id, (chunk index,
  ChunkVectors))."""
  return _ReadPreviousTable(previous.chunk_tfrecord_files,
                            functools.partial(_previous_chunks, spec=spec))


def _previous_vectors(batch, spec: EmbeddingTableSpec):
  for document_id, text_hash, vectors, num_chunks in vectors_from_examples(
      batch, spec):
    yield document_id, (text_hash, vectors, num_chunks)


def _previous_chunks(batch, spec: EmbeddingTableSpec):
  for document_id, index, chunk in chunks_from_examples(batch, spec):
    yield document_id, (index, chunk)


def _previous_ids(batch):
  """(id, None) per row: enough to count removed documents."""
  for document_id in ids_from_examples(batch):
    yield document_id, None


class _SplitByReuseFn(beam.DoFn):
  """(id, {documents, previous[, previous_chunks]}) -> a carried-over
  Embedding (and its Chunks, tagged REUSED_CHUNKS), a Document, or gone."""

  def __init__(self):
    self._reused = counter(COUNTERS.reused)
    self._removed = counter(COUNTERS.removed)
    # A carried-over document that was cut is still cut in this run: the
    # counter means what the manifest's `truncated` means.
    self._truncated = counter(COUNTERS.truncated)

  def process(self, grouped, checked_previous_rows):
    del checked_previous_rows  # only waited for (ReuseEmbeddings)
    document_id, group = grouped
    documents, previous = list(group["documents"]), list(group["previous"])
    if not documents:
      self._removed.inc()
      yield beam.pvalue.TaggedOutput(REMOVED, document_id)
      return
    document: Document = documents[0]  # ids are unique after validation
    if not previous or previous[0] is None:
      yield document
      return
    text_hash, vectors, num_chunks = previous[0]
    chunks = sorted(group.get("previous_chunks", ()), key=lambda c: c[0])
    if text_hash != content_hash(document.text) or (
        [index for index, _ in chunks] != list(range(num_chunks))):
      # Changed, or its chunks are not all there: embedded again.
      yield document
      return
    self._reused.inc()
    if vectors.truncated:
      self._truncated.inc()
    PROGRESS.add_skipped()
    yield beam.pvalue.TaggedOutput(
        REUSED, embedding_of(document, vectors, num_chunks))
    for index, chunk in chunks:
      yield beam.pvalue.TaggedOutput(
          REUSED_CHUNKS, chunk_of(document, index, chunk))


class ReuseEmbeddings(beam.PTransform):
  """Documents -> {REUSED: Embedding, REUSED_CHUNKS: Chunk, TO_EMBED:
  Document, REMOVED: id}."""

  def __init__(self, previous: PreviousRun, spec: EmbeddingTableSpec):
    super().__init__()
    self._previous = previous
    self._spec = spec

  def expand(self, documents):
    previous = documents.pipeline | "ReadPrevious" >> (
        read_previous_embeddings(self._previous, self._spec))
    keyed = documents | "KeyById" >> beam.Map(lambda d: (d.id, d))
    joined = {"documents": keyed, "previous": previous}
    if self._previous.reusable and self._spec.chunked:
      joined["previous_chunks"] = (
          documents.pipeline
          | "ReadPreviousChunks" >> read_previous_chunks(self._previous,
                                                         self._spec))
    # A side input of the split: nothing is carried over, counted removed
    # or published before the previous run's rows are known to be whole.
    checked_rows = previous | "CheckPreviousRows" >> CheckRowCount(
        EMBEDDINGS, self._previous.documents, "documents")
    split = (joined
             | "JoinOnId" >> beam.CoGroupByKey()
             | "Split" >> beam.ParDo(
                 _SplitByReuseFn(),
                 beam.pvalue.AsSingleton(checked_rows)).with_outputs(
                     REUSED, REUSED_CHUNKS, REMOVED, main=TO_EMBED))
    return {REUSED: split[REUSED], REUSED_CHUNKS: split[REUSED_CHUNKS],
            TO_EMBED: split[TO_EMBED], REMOVED: split[REMOVED]}
