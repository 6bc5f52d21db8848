"""The Embed stage: documents to embeddings through RunInference."""

import functools

import apache_beam as beam

from bert_model.preprocess import has_no_wordpieces
from bert_model.preprocess import NO_WORDPIECES

from run_directory.records import chunk_of
from run_directory.records import ChunkedVectors
from run_directory.records import dead_letter_of
from run_directory.records import Document
from run_directory.records import embedding_of
from run_directory.records import Reason
from run_directory.records import Vectors
from transforms.batching import estimate_tokens
from transforms.batching import LengthBatching
from transforms.batching import SortAndBatchByLength
from transforms.model_handler import BertEmbeddingModelHandler
from transforms.names import CHUNKS
from transforms.names import CORPUS
from transforms.names import counter
from transforms.names import COUNTERS
from transforms.names import DEAD_LETTERS
from transforms.names import EMBEDDINGS
from transforms.progress import PROGRESS
from transforms.run_inference import KeyedModelHandler
from transforms.run_inference import RunInference

STAGE = "embed"


def model_input(document: Document):
  """What the model handler embeds: the text, or the (text, text_pair) pair."""
  if document.text_pair is None:
    return document.text
  return (document.text, document.text_pair)


class _SplitInferenceResultsFn(beam.DoFn):
  """(Document, PredictionResult) to an Embedding (and its Chunks, tagged
  CHUNKS), or a dead letter."""

  def __init__(self, scope: str):
    self._inferred = counter(COUNTERS.inferred, scope)
    self._truncated = counter(COUNTERS.truncated, scope)
    self._dead_lettered = counter(COUNTERS.dead_lettered, scope)

  def process(self, keyed_result):
    document, result = keyed_result
    vectors, chunks = result.inference, ()
    if isinstance(vectors, ChunkedVectors):
      vectors, chunks = vectors
    if not isinstance(vectors, Vectors):  # an InferenceFailure
      yield self._dead_letter(document, Reason.MODEL_ERROR, vectors.error)
    elif has_no_wordpieces(vectors.num_tokens,
                           text_pair=document.text_pair is not None):
      yield self._dead_letter(document, Reason.EMPTY_TEXT,
                              f"the text {NO_WORDPIECES}")
    else:
      self._inferred.inc()
      if vectors.truncated:
        self._truncated.inc()
      yield embedding_of(document, vectors, num_chunks=len(chunks))
      for index, chunk in enumerate(chunks):
        yield beam.pvalue.TaggedOutput(
            CHUNKS, chunk_of(document, index, chunk))

  def _dead_letter(self, document: Document, reason: str, detail: str):
    self._dead_lettered.inc()
    PROGRESS.add_rejected()
    return beam.pvalue.TaggedOutput(
        DEAD_LETTERS, dead_letter_of(document, STAGE, reason, detail))


def _estimated_tokens(max_seq_length: int, keyed) -> int:
  return estimate_tokens(keyed[1], max_seq_length)


class EmbedDocuments(beam.PTransform):
  """Documents to Embeddings; texts that fail in the model to the dead letter.

  Documents are batched by length (transforms/batching.py) before
  RunInference, which runs the handler on those batches as they are.
  Returns {EMBEDDINGS: PCollection[Embedding], CHUNKS: PCollection[Chunk]
  (empty without chunking), DEAD_LETTERS: PCollection[DeadLetter]}.
  """

  def __init__(self, model_handler: BertEmbeddingModelHandler,
               batching: LengthBatching, scope: str = CORPUS):
    super().__init__()
    self._model_handler = model_handler
    self._batching = batching
    self._scope = scope

  def expand(self, documents):
    b = self._batching
    results = (
        documents
        | "KeyByDocument" >> beam.Map(lambda doc: (doc, model_input(doc)))
        | "SortAndBatchByLength" >> SortAndBatchByLength(
            functools.partial(_estimated_tokens, b.max_seq_length),
            buffer_size=b.buffer_size, max_batch_size=b.max_batch_size,
            max_batch_tokens=b.max_batch_tokens)
        | "RunInference" >> RunInference(KeyedModelHandler(
            self._model_handler).with_no_batching())
        | "SplitResults" >> beam.ParDo(
            _SplitInferenceResultsFn(self._scope)).with_outputs(
            DEAD_LETTERS, CHUNKS, main=EMBEDDINGS))
    return {EMBEDDINGS: results[EMBEDDINGS], CHUNKS: results[CHUNKS],
            DEAD_LETTERS: results[DEAD_LETTERS]}
