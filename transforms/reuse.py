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
import logging
from typing import Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from tfx_bsl.public import tfxio

from run_directory.embeddings import EmbeddingTableSpec
from run_directory.embeddings import ids_from_examples
from run_directory.embeddings import vectors_from_examples
from run_directory.records import content_hash
from run_directory.records import Document
from run_directory.records import Embedding
from transforms.names import COUNTERS
from transforms.names import METRICS_NAMESPACE

_LOG = logging.getLogger(__name__)

REUSED = "reused"
TO_EMBED = "to_embed"
REMOVED = "removed"
_READ_BATCH_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class PreviousRun:
  """What planning learnt from the previous run's manifest
  (pipeline/plan.py reads it).

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


class ReadPreviousEmbeddings(beam.PTransform):
  """The previous run's embeddings as (id, (content hash, Vectors)).

  When the previous run is not reusable only its ids are read, as
  (id, None): they still tell which documents were removed.
  """

  def __init__(self, previous: PreviousRun, spec: EmbeddingTableSpec):
    super().__init__()
    self._previous = previous
    self._spec = spec

  def expand(self, pbegin):
    source = tfxio.TFExampleRecord(
        file_pattern=list(self._previous.tfrecord_files),
        telemetry_descriptors=["bert-batch-embeddings", "previous_run"])
    return (pbegin
            | "ReadTFRecord" >> source.BeamSource(batch_size=_READ_BATCH_SIZE)
            | "ToPrevious" >> (
                beam.FlatMap(_previous_vectors, spec=self._spec)
                if self._previous.reusable else
                beam.FlatMap(_previous_ids)))


def _previous_vectors(batch, spec: EmbeddingTableSpec):
  for document_id, text_hash, vectors in vectors_from_examples(batch, spec):
    yield document_id, (text_hash, vectors)


def _previous_ids(batch):
  """(id, None) per row: enough to count removed documents."""
  for document_id in ids_from_examples(batch):
    yield document_id, None


class _SplitByReuseFn(beam.DoFn):
  """(id, {docs, previous}) -> a carried-over Embedding, a Document, or gone."""

  def __init__(self):
    self._reused = Metrics.counter(METRICS_NAMESPACE, COUNTERS.reused)
    self._removed = Metrics.counter(METRICS_NAMESPACE, COUNTERS.removed)

  def process(self, grouped):
    document_id, group = grouped
    documents, previous = list(group["documents"]), list(group["previous"])
    if not documents:
      self._removed.inc()
      yield beam.pvalue.TaggedOutput(REMOVED, document_id)
      return
    document: Document = documents[0]  # ids are unique after validation
    if previous and previous[0] is not None and (
        previous[0][0] == content_hash(document.text)):
      self._reused.inc()
      _, vectors = previous[0]
      yield beam.pvalue.TaggedOutput(
          REUSED,
          Embedding(id=document.id, text=document.text, source=document.source,
                    vectors=vectors))
    else:
      yield document


class ReuseEmbeddings(beam.PTransform):
  """Documents -> {REUSED: Embedding, TO_EMBED: Document, REMOVED: id}."""

  def __init__(self, previous: PreviousRun, spec: EmbeddingTableSpec):
    super().__init__()
    self._previous = previous
    self._spec = spec

  def expand(self, documents):
    previous = documents.pipeline | "ReadPrevious" >> ReadPreviousEmbeddings(
        self._previous, self._spec)
    keyed = documents | "KeyById" >> beam.Map(lambda d: (d.id, d))
    split = ({"documents": keyed, "previous": previous}
             | "JoinOnId" >> beam.CoGroupByKey()
             | "Split" >> beam.ParDo(_SplitByReuseFn()).with_outputs(
                 REUSED, REMOVED, main=TO_EMBED))
    return {REUSED: split[REUSED], TO_EMBED: split[TO_EMBED],
            REMOVED: split[REMOVED]}
