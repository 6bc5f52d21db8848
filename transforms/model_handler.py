"""RunInference model handler for TF Hub format BERT models.

The handler loads the model (bert_model.LoadedBertModel: preprocess and
encoder SavedModels together) once per process, or once per machine when
`large_model` / `model_copies` ask Beam to share it across processes, and
returns one `Vectors` per input (run_directory/records.py: what a row of the
embeddings table stores), with its token count and truncation flag; with
chunking (--chunk_size) one `ChunkedVectors`, the document's and its chunks'.

Beam's stock TFModelHandlerTensor cannot load TF Hub SavedModels under Keras
3, stacks inputs with tf.stack and splits dict outputs by zipping them, which
breaks on `encoder_outputs` (a list); hence this handler.

A batch that fails in the model is split in halves and retried until the
failing texts are isolated; only those come back as `InferenceFailure`.
Running out of memory also halves this worker's padded-token budget per
encoder call from then on.

With `model_copies` N > 1, each copy Beam loads on a machine claims the next
copy index there (transforms/model_copies.py) and goes on the GPU of that
index (bert_model/devices.py). The model's batch outputs become records in
transforms/model_outputs.py.
"""

import dataclasses
import logging
import uuid
from typing import Iterable, Optional, Sequence


from transforms import native_logs
from bert_model.choices import DEFAULT_MAX_CALL_TOKENS
from bert_model.loaded_model import LoadedBertModel
from bert_model.loaded_model import ModelSettings
from run_directory.records import ChunkedVectors
from run_directory.records import Vectors
from transforms.batching import estimate_tokens
from transforms.model_copies import claim_copy_index
from transforms.model_outputs import split_outputs
from transforms.names import counter
from transforms.names import COUNTERS
from transforms.names import METRICS_NAMESPACE
from transforms.progress import PROGRESS
from transforms.run_inference import ModelHandler
from transforms.run_inference import PredictionResult

_LOG = logging.getLogger(__name__)

# Batches in a row in which every text failed, each on its own too, after
# which the model is taken for broken (_fail_if_the_model_is_broken).
BROKEN_MODEL_BATCHES = 3


@dataclasses.dataclass(frozen=True)
class InferenceFailure:
  """A text the model could not embed, even in a batch of its own."""
  error: str


def _tokens_of(result) -> int:
  """Wordpieces the model ran on for one result (0 for a failure)."""
  if isinstance(result, ChunkedVectors):
    return result.vectors.num_tokens
  return result.num_tokens if isinstance(result, Vectors) else 0


def _is_out_of_memory(error: Exception) -> bool:
  # By name: TensorFlow's error may arrive re-raised through the model
  # sharing proxy, and importing tensorflow here just to check is not needed.
  return isinstance(error, MemoryError) or (
      type(error).__name__ == "ResourceExhaustedError")


@dataclasses.dataclass(frozen=True)
class HandlerSettings:
  """What the handler loads and computes, and how it shares the model.

  model: the model's paths and what to compute (bert_model.ModelSettings).
  max_batch_tokens: padded-token budget of one encoder call: a batch is
    tokenized, sorted by real length and cut into calls of at most this many
    (texts x longest) wordpieces (bert_model.call_plan).
  large_model: load one model per machine and share it across the SDK
    worker processes (Beam's multi-process shared model).
  model_copies: exactly this many models per machine (implies sharing);
    with more than one, one per `copy_device_type` device (module doc).
  copy_device_type: "GPU"; a test on a CPU-only machine passes "CPU" after
    splitting the CPU into logical devices.
  """
  model: ModelSettings
  max_batch_tokens: int = DEFAULT_MAX_CALL_TOKENS
  large_model: bool = False
  model_copies: Optional[int] = None
  copy_device_type: str = "GPU"


class BertEmbeddingModelHandler(ModelHandler[str, PredictionResult,
                                             LoadedBertModel]):
  """Strings (or (a, b) pairs with settings.text_pairs) in; per element a
  PredictionResult whose inference is a Vectors (with chunking a
  ChunkedVectors), or an InferenceFailure.

  The pipeline batches documents by length itself (transforms/batching.py)
  and runs this handler `with_no_batching()`.
  """

  def __init__(self, settings: HandlerSettings):
    super().__init__(large_model=settings.large_model,
                     model_copies=settings.model_copies)
    self._settings = settings.model
    self._max_batch_tokens = settings.max_batch_tokens
    self._copy_device_type = settings.copy_device_type
    # Made where the pipeline is built, so the same in every worker process:
    # the copies of this run claim their indices under it.
    self._run_token = f"bert-embeddings-{uuid.uuid4().hex}"
    self._failed_batches_in_a_row = 0

  def load_model(self) -> LoadedBertModel:
    _LOG.info("Loading %s and %s", self._settings.preprocess_path,
              self._settings.encoder_path)
    with native_logs.captured_if_requested():
      model = self._load()
      # Not with XLA: a first call compiles a shape the run may never use.
      if native_logs.quiet_requested() and not self._settings.jit_compile:
        model.embed([("warm-up", "warm-up")] if self._settings.text_pairs
                    else ["warm-up"])
    return model

  def _load(self) -> LoadedBertModel:
    if self.model_copies() > 1:
      copy_index = claim_copy_index(self._run_token)
      model = LoadedBertModel(self._settings, copy_index=copy_index,
                              copy_device_type=self._copy_device_type)
      _LOG.info("Model copy %d of %d on %s", copy_index, self.model_copies(),
                model.device or "the default device")
      return model
    return LoadedBertModel(self._settings)

  def run_inference(self, batch: Sequence[str], model: LoadedBertModel,
                    inference_args=None) -> Iterable:
    batch = list(batch)
    results = self._embed_isolating_failures(batch, model)
    self._fail_if_the_model_is_broken(results)
    counter(COUNTERS.batches).inc()
    # Estimated as the batching stage queued them: the ETA's measure.
    PROGRESS.add_batch(len(batch), sum(
        estimate_tokens(text, self._settings.longest_input) for text in batch))
    counter(COUNTERS.tokens).inc(
        sum(_tokens_of(result) for result in results))
    return [PredictionResult(text, result)
            for text, result in zip(batch, results)]

  def _embed_isolating_failures(self, texts, model) -> list:
    try:
      return split_outputs(
          model.embed(texts, max_tokens=self._max_batch_tokens),
          self._settings)
    except Exception as e:  # pylint: disable=broad-except
      if _is_out_of_memory(e):
        self._shrink_token_budget()
      if len(texts) == 1:
        _LOG.warning("Text failed in the model: %s", e)
        return [InferenceFailure(f"{type(e).__name__}: {e}"[:1000])]
      middle = len(texts) // 2
      return (self._embed_isolating_failures(texts[:middle], model) +
              self._embed_isolating_failures(texts[middle:], model))

  def _fail_if_the_model_is_broken(self, results: list):
    """Raises once every text of BROKEN_MODEL_BATCHES batches in a row has
    failed on its own: that is a broken model or device, not bad input, and
    each such batch costs 2n - 1 model calls. The bundle fails (the runner
    retries it, or the run fails) instead of dead-lettering the corpus."""
    failures = [r for r in results if isinstance(r, InferenceFailure)]
    if len(failures) < len(results):
      self._failed_batches_in_a_row = 0
      return
    if len(results) < 2:
      return  # one text that failed costs one call: it counts neither way
    self._failed_batches_in_a_row += 1
    if self._failed_batches_in_a_row >= BROKEN_MODEL_BATCHES:
      raise RuntimeError(
          f"The model failed on every text of {BROKEN_MODEL_BATCHES} "
          "batches in a row, each text on its own too: a broken model or "
          f"device, not bad input. Last error: {failures[-1].error}")

  def _shrink_token_budget(self):
    """After running out of memory, this worker plans smaller model calls."""
    smaller = max(self._settings.max_seq_length, self._max_batch_tokens // 2)
    if smaller < self._max_batch_tokens:
      _LOG.warning("Out of memory: padded-token budget per model call %d -> %d",
                   self._max_batch_tokens, smaller)
      self._max_batch_tokens = smaller
      counter(COUNTERS.token_budget_halved).inc()

  def get_num_bytes(self, batch: Sequence) -> int:
    return sum(
        len(text.encode("utf-8")) if isinstance(text, str) else
        sum(len(part.encode("utf-8")) for part in text) for text in batch)

  def get_metrics_namespace(self) -> str:
    # RunInference's own counters (inferences, latencies) sit beside the
    # pipeline's.
    return METRICS_NAMESPACE
