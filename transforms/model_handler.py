"""RunInference model handler for TF Hub format BERT models.

One handler loads the preprocess and encoder SavedModels together, once per
process (or once per machine when `large_model` / `model_copies` ask Beam to
share it across processes), and turns a batch of strings into sentence
vectors in a single TensorFlow call:

  tokenize (tensorflow_text, in the graph)
    -> trim to max_seq_length, add [CLS]/[SEP], pad to the batch's longest row
    -> encoder
    -> pooling over real tokens (mean / cls / pooler / max), L2 normalisation

Two encoder interfaces are served (`EmbeddingSettings.encoder_format`):

  "v2"  today's TF Hub BERT encoders and this project's exports: a dict of
        input_word_ids / input_mask / input_type_ids in, a dict with
        pooled_output, sequence_output and encoder_outputs out; tokenized by
        the preprocess SavedModel at `preprocess_path`.
  "v1"  the first TF2 TF Hub BERT encoders (e.g. bert_en_*/1 and /2): a LIST
        [input_word_ids, input_mask, segment_ids] in, a TUPLE
        (pooled_output, sequence_output) out, no encoder_outputs, and no
        preprocess model: the vocabulary is a SavedModel asset
        (`encoder.vocab_file`) and the lower-case flag a variable
        (`encoder.do_lower_case`). With `preprocess_path=None` the worker
        builds the project's own BertPreprocessor from those two, once, when
        it loads the model.

With `text_pairs`, each element is a (text_a, text_b) pair: both are
tokenized and packed by the preprocess model's `bert_pack_inputs` into
[CLS] a [SEP] b [SEP] with input_type_ids 0 then 1, trimmed round-robin to
max_seq_length.

Beam's stock TFModelHandlerTensor cannot load TF Hub SavedModels under Keras 3,
stacks inputs with tf.stack and splits dict outputs by zipping them, which
breaks on `encoder_outputs` (a list); hence this handler. It returns one
`EncodedText` per input, with its token count and truncation flag.

A batch that fails in the model is split in halves and retried until the
failing texts are isolated; only those come back as `InferenceFailure`.
"""

import dataclasses
import logging
import os
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.ml.inference.base import PredictionResult

from transforms.records import METRICS_NAMESPACE

_LOG = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "pooler", "max")
# float32: as exported. bfloat16: TensorFlow's automatic mixed precision for
# oneDNN rewrites the encoder's matmuls to bfloat16 (AMX / AVX-512 BF16 CPUs).
# mixed_float16: automatic mixed precision to float16 (GPUs with tensor cores).
# Both keep softmax, LayerNorm and the outputs in float32.
PRECISIONS = ("float32", "bfloat16", "mixed_float16")
_MIXED_PRECISION_OPTIONS = {
    "bfloat16": "auto_mixed_precision_onednn_bfloat16",
    "mixed_float16": "auto_mixed_precision",
}
# With XLA every new (batch, length) shape compiles anew; lengths are rounded
# up to a multiple of this (padding is masked), and rows to a power of two, to
# keep the shapes few.
_JIT_LENGTH_MULTIPLE = 16
SEQUENCE_DTYPES = ("float32", "float16")
ENCODER_FORMATS = ("v2", "v1")  # dict interface / list-in, tuple-out (above)

# Tokens the reference tokenizer (Hugging Face BertTokenizerFast with its
# defaults) matches verbatim in raw text, when they are in the vocabulary.
V1_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Texts are cut to this many characters per allowed token before tokenizing,
# so a multi-megabyte line costs no more than a long sentence. Every kept
# wordpiece spans at least one character and a word over 100 characters is one
# [UNK], so only texts whose first max_seq_length tokens span more than this
# (runs of deleted control characters, say) can lose a token at the cut.
_MAX_CHARS_PER_TOKEN = 128

# When set, every model load appends "<pid>\n" to this file: the way to see how
# many copies of the model a run really loaded (tests and capacity planning).
MODEL_LOAD_LOG_ENV = "BERT_EMBEDDINGS_MODEL_LOAD_LOG"

# Padded-token budget of one encoder call unless the caller gives one.
DEFAULT_MAX_CALL_TOKENS = 16384

# The cost model of one encoder call that plan_model_calls minimises, in units
# of one padded token's time: FIXED + rows * length * (1 + length / ATTENTION).
# FIXED is TensorFlow's per-call dispatch plus the inefficiency of small
# matrices; ATTENTION the length at which attention's quadratic work equals
# the linear part. Fitted to encoder timings of the default model on a 2-core
# AVX-512 CPU by `python -m benchmarks.call_cost` (4.7 ms fixed = 66 tokens,
# 2227; 13,800 tokens/s at best; see benchmarks/README.md). Only the ratio
# matters, and it moves slowly with the model's size.
_CALL_COST_FIXED_TOKENS = 64.0
_CALL_COST_ATTENTION_LENGTH = 2048.0


@dataclasses.dataclass(frozen=True)
class EmbeddingSettings:
  """What to compute; fixed for a run.

  preprocess_path None: a v1 encoder's own vocabulary and lower-case flag
  make the tokenizer (see module doc).
  """
  preprocess_path: Optional[str]
  encoder_path: str
  max_seq_length: int
  pooling: str = "mean"
  normalize: bool = True
  sequence_output: bool = False
  sequence_dtype: str = "float32"
  encoder_layers: Tuple[int, ...] = ()  # non-negative layer indices
  precision: str = "float32"  # one of PRECISIONS
  jit_compile: bool = False  # XLA for the encoder and pooling
  encoder_format: str = "v2"  # one of ENCODER_FORMATS
  text_pairs: bool = False  # elements are (text_a, text_b) pairs


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedText:
  """The model's output for one text (see records.Embedding)."""
  embedding: np.ndarray
  num_tokens: int
  truncated: bool
  token_ids: Optional[np.ndarray] = None
  sequence_embedding: Optional[np.ndarray] = None
  layers: Dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class InferenceFailure:
  """A text the model could not embed, even in a batch of its own."""
  error: str


def _pool(sequence, mask, pooled_output, mode):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if mode == "cls":
    return sequence[:, 0, :]
  if mode == "pooler":
    return pooled_output
  weights = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
  if mode == "max":
    return tf.reduce_max(sequence + (weights - 1.0) * 1e9, axis=1)
  return tf.reduce_sum(sequence * weights, axis=1) / tf.maximum(
      tf.reduce_sum(weights, axis=1), 1.0)


class LoadedBertModel:
  """Preprocess + encoder joined into one `embed(texts)` graph call.

  `embed` takes and returns plain Python/numpy values, so the object also
  works behind Beam's multi-process model sharing proxy.
  """

  def __init__(self, settings: EmbeddingSettings):
    # tensorflow_text registers the ops the preprocess SavedModel uses; it
    # must be imported before the model is loaded.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    import tensorflow_text  # pylint: disable=g-import-not-at-top,unused-import
    if settings.encoder_format not in ENCODER_FORMATS:
      raise ValueError(f"encoder_format {settings.encoder_format!r} is not one "
                       f"of {ENCODER_FORMATS}")
    if settings.encoder_format == "v1" and settings.encoder_layers:
      raise ValueError("a v1 encoder has no encoder_outputs; encoder_layers "
                       "cannot be computed")
    self._settings = settings
    _configure_devices(settings.precision)
    self._encoder = hub.load(settings.encoder_path)
    if settings.preprocess_path:
      self._preprocess = hub.load(settings.preprocess_path)
    elif settings.encoder_format == "v1":
      self._preprocess = build_v1_preprocessor(self._encoder,
                                               settings.max_seq_length)
    else:
      raise ValueError("preprocess_path is required for a v2 encoder")
    special = self._preprocess.tokenize.get_special_tokens_dict()
    self._cls_id = int(special["start_of_sequence_id"])
    self._sep_id = int(special["end_of_segment_id"])
    # autograph=False: the graphs branch only on the fixed settings, never on
    # tensors, and converting them would add ~0.4 s to every worker's start.
    self._tokenize = tf.function(
        self._tokenize_graph,
        input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    self._tokenize_pairs = tf.function(
        self._tokenize_pairs_graph,
        input_signature=[tf.TensorSpec([None], tf.string)] * 2,
        autograph=False)
    self._encode = tf.function(
        self._encode_graph,
        input_signature=[tf.TensorSpec([None, None], tf.int32)] * 3,
        jit_compile=settings.jit_compile, autograph=False)
    _record_model_load()

  def _cut(self, texts):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.strings.substr(
        texts, 0, self._settings.max_seq_length * _MAX_CHARS_PER_TOKEN,
        unit="UTF8_CHAR")

  def _tokenize_graph(self, texts):
    """Strings -> padded word ids, mask, token counts, truncation flags."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    s = self._settings
    # tensorflow_text has no GPU kernels: tokenization stays on the CPU
    # while the encoder runs wherever TensorFlow places it.
    with tf.device("/CPU:0"):
      tokens = self._preprocess.tokenize(self._cut(texts))
      tokens = tf.cast(tokens.merge_dims(1, -1), tf.int32)  # [batch, (tokens)]
      budget = s.max_seq_length - 2  # room for [CLS] and [SEP]
      truncated = tokens.row_lengths() > budget
      tokens = tokens[:, :budget]
      batch = tokens.nrows()
      word_ids = tf.concat([
          tf.RaggedTensor.from_tensor(tf.fill([batch, 1], self._cls_id)),
          tokens,
          tf.RaggedTensor.from_tensor(tf.fill([batch, 1], self._sep_id)),
      ], axis=1)
      # Padded to this batch's longest row; embed() cuts each encoder call
      # to its own longest.
      shape = tf.stack([batch, tf.reduce_max(word_ids.row_lengths())])
      padded = word_ids.to_tensor(0, shape=shape)
      return {
          "input_word_ids": padded,
          "input_mask": tf.ones_like(word_ids).to_tensor(0, shape=shape),
          "input_type_ids": tf.zeros_like(padded),
          "num_tokens": word_ids.row_lengths(),
          "truncated": truncated,
      }

  def _tokenize_pairs_graph(self, texts_a, texts_b):
    """Pairs -> [CLS] a [SEP] b [SEP], type ids 0/1, padded to the longest.

    Packed by the preprocess model's own bert_pack_inputs (round-robin
    trimming to max_seq_length), then cut from max_seq_length to the batch's
    longest row (embed() cuts each encoder call to its own longest).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    s = self._settings
    with tf.device("/CPU:0"):
      tokens_a = self._preprocess.tokenize(self._cut(texts_a))
      tokens_b = self._preprocess.tokenize(self._cut(texts_b))
      wanted = (tokens_a.merge_dims(1, -1).row_lengths() +
                tokens_b.merge_dims(1, -1).row_lengths() + 3)
      packed = _pack_inputs(self._preprocess, [tokens_a, tokens_b],
                            s.max_seq_length)
      num_tokens = tf.reduce_sum(
          tf.cast(packed["input_mask"], tf.int64), axis=1)
      length = tf.reduce_max(num_tokens)
      return {
          "input_word_ids": tf.cast(packed["input_word_ids"][:, :length],
                                    tf.int32),
          "input_mask": tf.cast(packed["input_mask"][:, :length], tf.int32),
          "input_type_ids": tf.cast(packed["input_type_ids"][:, :length],
                                    tf.int32),
          "num_tokens": num_tokens,
          "truncated": wanted > s.max_seq_length,
      }

  def _encode_graph(self, word_ids, mask, type_ids):
    """Padded inputs -> pooled (and optional per-token / layer) outputs."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    s = self._settings
    outputs = call_encoder(self._encoder, s.encoder_format, word_ids, mask,
                           type_ids)
    sequence = outputs["sequence_output"]
    embedding = _pool(sequence, mask, outputs.get("pooled_output"),
                      s.pooling)
    if s.normalize:
      embedding = tf.math.l2_normalize(embedding, axis=-1)
    result = {"embedding": embedding}
    if s.sequence_output:
      result["sequence_output"] = sequence
    for layer in s.encoder_layers:
      layer_vector = _pool(outputs["encoder_outputs"][layer], mask,
                           outputs.get("pooled_output"),
                           "mean" if s.pooling == "pooler" else s.pooling)
      if s.normalize:
        layer_vector = tf.math.l2_normalize(layer_vector, axis=-1)
      result[f"layer_{layer}"] = layer_vector
    return result

  def embed(self, texts: Sequence,
            max_tokens: int = DEFAULT_MAX_CALL_TOKENS) -> Dict[str, np.ndarray]:
    """Strings (or (a, b) pairs with text_pairs) to batch outputs, in order.

    All texts are tokenized in one call; the encoder then runs once per
    call of `plan_model_calls` (similar real lengths, at most max_tokens
    padded tokens each).
    """
    if self._settings.text_pairs:
      inputs = self._tokenize_pairs([pair[0] for pair in texts],
                                    [pair[1] for pair in texts])
    else:
      inputs = self._tokenize(list(texts))
    inputs = {k: v.numpy() for k, v in inputs.items()}
    lengths = inputs["num_tokens"]
    width = inputs["input_word_ids"].shape[1]
    result = {}
    for call in plan_model_calls(lengths, max_tokens):
      length = int(lengths[call].max())
      rows = call
      if self._settings.jit_compile:
        # Few distinct shapes, so that XLA compiles few programs: lengths
        # rounded up to a multiple of 16, rows to a power of two (the extra
        # rows repeat the call's texts; their outputs are dropped).
        length = min(-(-length // _JIT_LENGTH_MULTIPLE) * _JIT_LENGTH_MULTIPLE,
                     max(self._settings.max_seq_length, length))
        rows = np.resize(call, 1 << (len(call) - 1).bit_length())
      outputs = self.encode_padded(
          *(_rows(inputs[name], rows, length)
            for name in ("input_word_ids", "input_mask", "input_type_ids")))
      outputs = {name: value[:len(call)] for name, value in outputs.items()}
      for name, value in outputs.items():
        if name not in result:
          shape = (len(lengths),) + (
              (width,) + value.shape[2:] if name == "sequence_output" else
              value.shape[1:])
          result[name] = np.zeros(shape, value.dtype)
        if name == "sequence_output":
          keep = min(length, width)
          result[name][call, :keep] = value[:, :keep]
        else:
          result[name][call] = value
    result["num_tokens"] = lengths
    result["truncated"] = inputs["truncated"]
    if self._settings.sequence_output:
      result["token_ids"] = inputs["input_word_ids"]
    return result

  def encode_padded(self, word_ids: np.ndarray, mask: np.ndarray,
                    type_ids: np.ndarray) -> Dict[str, np.ndarray]:
    """One encoder call on padded [rows, length] inputs (numpy)."""
    outputs = self._encode(word_ids, mask, type_ids)
    return {k: v.numpy() for k, v in outputs.items()}


def _rows(padded: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
  """padded[rows, :length], zero-padded on the right if length is wider."""
  taken = padded[rows, :length]
  if taken.shape[1] < length:
    taken = np.pad(taken, ((0, 0), (0, length - taken.shape[1])))
  return np.ascontiguousarray(taken, dtype=np.int32)


def _pack_inputs(preprocess, segments, seq_length: int):
  """preprocess.bert_pack_inputs(segments, seq_length): the restored function
  may have been traced for a tensor or for a Python int seq_length."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return preprocess.bert_pack_inputs(
        segments, seq_length=tf.constant(seq_length, tf.int32))
  except (TypeError, ValueError):
    return preprocess.bert_pack_inputs(segments, seq_length=seq_length)


def _has_training_argument(encoder) -> bool:
  """Whether a restored encoder's __call__ takes `training` (Keras-saved
  models do), checked as tensorflow_hub's KerasLayer checks it."""
  from tensorflow.python.util import tf_inspect  # pylint: disable=g-import-not-at-top
  try:
    spec = tf_inspect.getfullargspec(encoder.__call__)
  except TypeError:
    return False
  return "training" in spec.args or "training" in spec.kwonlyargs


def call_encoder(encoder, encoder_format: str, word_ids, mask, type_ids):
  """Calls a v2 or v1 encoder; returns the v2 output dict.

  A v1 encoder gives only pooled_output and sequence_output.
  """
  if encoder_format == "v2":
    return encoder({
        "input_word_ids": word_ids,
        "input_mask": mask,
        "input_type_ids": type_ids,
    })
  inputs = [word_ids, mask, type_ids]  # [input_word_ids, input_mask, segment_ids]
  if _has_training_argument(encoder):
    outputs = encoder(inputs, training=False)
  else:
    outputs = encoder(inputs)
  if isinstance(outputs, dict):
    return outputs
  pooled_output, sequence_output = outputs[0], outputs[1]
  return {"pooled_output": pooled_output, "sequence_output": sequence_output}


def read_vocab_lines(path: str) -> list:
  """A vocab.txt as a list of tokens (index = id), trailing blanks dropped."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "r") as f:
    vocab = [line.rstrip("\r\n") for line in f]
  while vocab and not vocab[-1]:
    vocab.pop()
  return vocab


def v1_tokenizer_settings(encoder) -> Tuple[str, list, bool]:
  """(vocab path, vocab, lower_case) of a loaded v1 TF Hub BERT encoder.

  Raises ValueError when the SavedModel lacks `vocab_file` (an asset) or
  `do_lower_case` (a bool variable), as the v1 TF Hub BERTs have them.
  """
  vocab_file = getattr(encoder, "vocab_file", None)
  do_lower_case = getattr(encoder, "do_lower_case", None)
  if vocab_file is None or do_lower_case is None:
    raise ValueError(
        "a v1 BERT encoder (list inputs) must carry its tokenizer settings as "
        "`vocab_file` (a SavedModel asset) and `do_lower_case` (a variable), "
        "as the TF Hub v1 BERT encoders do; this one has "
        f"{'no vocab_file' if vocab_file is None else 'a vocab_file'} and "
        f"{'no do_lower_case' if do_lower_case is None else 'do_lower_case'}."
        " Pass a matching --preprocessor instead.")
  path = vocab_file.asset_path.numpy()
  path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
  return path, read_vocab_lines(path), bool(do_lower_case.numpy())


def build_v1_preprocessor(encoder, max_seq_length: int):
  """The project's BertPreprocessor from a v1 encoder's vocab and flag.

  The same tokenizer as the project's exports (a cased model keeps case and
  accents); the special tokens matched in raw text are those the reference
  tokenizer matches by default.
  """
  from pipeline.bert.preprocess import BertPreprocessor  # pylint: disable=g-import-not-at-top
  _, vocab, lower_case = v1_tokenizer_settings(encoder)
  special = tuple(sorted(t for t in V1_SPECIAL_TOKENS if t in set(vocab)))
  return BertPreprocessor(vocab, lower_case, special, max_seq_length)


def _configure_devices(precision: str):
  """Process-wide TensorFlow settings, before the model is loaded."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for gpu in tf.config.list_physical_devices("GPU"):
    # Grow GPU memory as needed instead of taking it all up front, so that
    # several model copies (or other processes) can share one GPU.
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
      pass  # the GPU is initialised already; its setting stands
  # Process-wide and read when a function is first run: set every option, so
  # a float32 model loaded after a bfloat16 one is float32 again.
  tf.config.optimizer.set_experimental_options({
      option: name == precision
      for name, option in _MIXED_PRECISION_OPTIONS.items()
  })


def _record_model_load():
  log_path = os.environ.get(MODEL_LOAD_LOG_ENV)
  if log_path:
    with open(log_path, "a") as f:
      f.write(f"{os.getpid()}\n")


def split_outputs(outputs: Dict[str, np.ndarray],
                  settings: EmbeddingSettings) -> list:
  """Batch outputs to one EncodedText per text, real tokens only."""
  results = []
  for i, num_tokens in enumerate(outputs["num_tokens"]):
    n = int(num_tokens)
    token_ids = sequence = None
    if settings.sequence_output:
      token_ids = outputs["token_ids"][i, :n].astype(np.int32)
      sequence = outputs["sequence_output"][i, :n].astype(
          settings.sequence_dtype)
    results.append(
        EncodedText(
            embedding=outputs["embedding"][i].astype(np.float32),
            num_tokens=n,
            truncated=bool(outputs["truncated"][i]),
            token_ids=token_ids,
            sequence_embedding=sequence,
            layers={
                layer: outputs[f"layer_{layer}"][i].astype(np.float32)
                for layer in settings.encoder_layers
            }))
  return results


def _is_out_of_memory(error: Exception) -> bool:
  # By name: TensorFlow's error may arrive re-raised through the model
  # sharing proxy, and importing tensorflow here just to check is not needed.
  return isinstance(error, MemoryError) or (
      type(error).__name__ == "ResourceExhaustedError")


def call_cost(rows, length):
  """Estimated cost of one encoder call on [rows, length] padded inputs, in
  units of the time one padded token takes (see _CALL_COST_* above)."""
  return _CALL_COST_FIXED_TOKENS + rows * length * (
      1.0 + length / _CALL_COST_ATTENTION_LENGTH)


def plan_model_calls(lengths: Sequence[int], max_tokens: int) -> list:
  """Cuts texts with these real token counts into encoder calls.

  A call is padded to its longest text: it costs about `call_cost(rows,
  longest)`. The texts are sorted by length and cut into consecutive runs
  that minimise the summed cost (a dynamic programme: fewer calls save the
  fixed cost, shorter calls save pads), each call holding at most
  max_tokens padded tokens (a text longer than that gets a call of its
  own). Deterministic for given lengths. Returns arrays of indices into
  `lengths`, in ascending length order.
  """
  lengths = np.asarray(lengths, dtype=np.int64)
  n = len(lengths)
  if not n:
    return []
  order = np.argsort(lengths, kind="stable")
  ordered = lengths[order]
  best = np.zeros(n + 1)  # best[j]: least cost of the first j sorted texts
  start_of = np.zeros(n + 1, dtype=np.int64)
  for j in range(1, n + 1):
    longest = int(ordered[j - 1])
    most_rows = max(1, max_tokens // max(longest, 1))
    starts = np.arange(max(0, j - most_rows), j)
    costs = best[starts] + call_cost(j - starts, longest)
    k = int(np.argmin(costs))  # the first of equal costs: deterministic
    best[j], start_of[j] = costs[k], starts[k]
  calls, end = [], n
  while end:
    start = int(start_of[end])
    calls.append(order[start:end])
    end = start
  return calls[::-1]


class BertEmbeddingModelHandler(ModelHandler[str, PredictionResult,
                                             LoadedBertModel]):
  """Strings (or (a, b) pairs with settings.text_pairs) in; per element a
  PredictionResult whose inference is an EncodedText, or an
  InferenceFailure."""

  def __init__(self,
               settings: EmbeddingSettings,
               *,
               min_batch_size: Optional[int] = None,
               max_batch_size: Optional[int] = None,
               max_batch_duration_secs: Optional[int] = None,
               max_batch_tokens: Optional[int] = None,
               large_model: bool = False,
               model_copies: Optional[int] = None):
    """
    Args:
      settings: what to load and compute.
      min_batch_size / max_batch_size / max_batch_duration_secs: as Beam's
        BatchElements takes them, when RunInference batches; the pipeline
        batches by length itself (transforms/batching.py) and runs this
        handler `with_no_batching()`.
      max_batch_tokens: padded-token budget of one encoder call: a batch is
        tokenized, sorted by real length and cut into calls of at most this
        many (texts x longest) wordpieces (`plan_model_calls`).
      large_model: load one model per machine and share it across the SDK
        worker processes (Beam's multi-process shared model).
      model_copies: exactly this many models per machine (implies sharing).
    """
    super().__init__(
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        max_batch_duration_secs=max_batch_duration_secs,
        large_model=large_model,
        model_copies=model_copies)
    self._settings = settings
    self._max_batch_tokens = max_batch_tokens or DEFAULT_MAX_CALL_TOKENS

  def load_model(self) -> LoadedBertModel:
    _LOG.info("Loading %s and %s", self._settings.preprocess_path,
              self._settings.encoder_path)
    return LoadedBertModel(self._settings)

  def run_inference(self, batch: Sequence[str], model: LoadedBertModel,
                    inference_args=None) -> Iterable:
    batch = list(batch)
    results = self._embed_isolating_failures(batch, model)
    Metrics.counter(METRICS_NAMESPACE, "batches").inc()
    Metrics.counter(METRICS_NAMESPACE, "tokens").inc(
        sum(r.num_tokens for r in results if isinstance(r, EncodedText)))
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

  def _shrink_token_budget(self):
    """After running out of memory, this worker plans smaller model calls."""
    smaller = max(self._settings.max_seq_length, self._max_batch_tokens // 2)
    if smaller < self._max_batch_tokens:
      _LOG.warning("Out of memory: padded-token budget per model call %d -> %d",
                   self._max_batch_tokens, smaller)
      self._max_batch_tokens = smaller
      Metrics.counter(METRICS_NAMESPACE, "token_budget_halved").inc()

  def get_num_bytes(self, batch: Sequence) -> int:
    return sum(
        len(text.encode("utf-8")) if isinstance(text, str) else
        sum(len(part.encode("utf-8")) for part in text) for text in batch)

  def get_metrics_namespace(self) -> str:
    return "BertEmbedding"
