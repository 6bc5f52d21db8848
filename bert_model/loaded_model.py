"""The loaded model: preprocess + encoder joined into one `embed(texts)` call.

`LoadedBertModel` loads the preprocess and encoder SavedModels once
(`tensorflow_text` imported first, as the preprocess ops need) and turns a
batch of strings into batch outputs (numpy):

  tokenize (tensorflow_text, in the graph, on the CPU)
    -> trim to max_seq_length, add [CLS]/[SEP], pad to the batch's longest row
    -> encoder calls planned on the real token counts (call_plan.py)
    -> pooling over real tokens (mean / cls / pooler / max), L2 normalisation

Two encoder interfaces are served (`ModelSettings.encoder_format`): "v2",
today's TF Hub BERT encoders and this project's exports (dict in, dict out);
"v1", the first TF2 TF Hub BERT encoders (v1.py), tokenized by the project's
own BertPreprocessor built from the encoder's vocabulary when no preprocess
model is given.

With `text_pairs`, each element is a (text_a, text_b) pair: both are
tokenized and packed by the preprocess model's `bert_pack_inputs` into
[CLS] a [SEP] b [SEP] with input_type_ids 0 then 1, trimmed round-robin to
max_seq_length.

With `chunking`, a text longer than one chunk is not truncated but cut into
chunks on word boundaries (chunking.py); every chunk is encoded as
[CLS] + its wordpieces + [SEP], and a document's vectors are the
num_tokens-weighted mean of its chunks' (one chunk: its vector exactly).

`embed` takes and returns plain Python/numpy values, so the object also works
behind Beam's multi-process model sharing proxy. Beam's RunInference side of
it is transforms/model_handler.py.
"""

import contextlib
import dataclasses
import logging
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
# Registers the ops the preprocess SavedModels use: it must be imported before
# one is loaded.
import tensorflow_text  # pylint: disable=unused-import

from bert_model.call_plan import plan_model_calls
from bert_model.choices import DEFAULT_MAX_CALL_TOKENS
from bert_model.chunking import ChunkSettings
from bert_model.chunking import DocumentChunker
from bert_model.chunking import MAX_CHARS_PER_TOKEN
from bert_model.chunking import pack_chunks
from bert_model.chunking import pool_chunks
from bert_model.devices import copy_device
from bert_model.devices import logical_devices
from bert_model.graph_functions import traced_once
from bert_model.saved_models import load_parts
from bert_model.saved_models import load_saved_model
from bert_model.v1 import build_v1_preprocessor
from bert_model.v1 import call_encoder

_MIXED_PRECISION_OPTIONS = {
    "bfloat16": "auto_mixed_precision_onednn_bfloat16",
    "mixed_float16": "auto_mixed_precision",
}
# With XLA every new (batch, length) shape compiles anew; lengths are rounded
# up to a multiple of this (padding is masked), and rows to a power of two, to
# keep the shapes few.
_JIT_LENGTH_MULTIPLE = 16
ENCODER_FORMATS = ("v2", "v1")  # dict interface / list-in, tuple-out (above)

# When set, every model load appends "<pid>\n" to this file: the way to see how
# many copies of the model a run really loaded (tests and capacity planning).
MODEL_LOAD_LOG_ENV = "BERT_EMBEDDINGS_MODEL_LOAD_LOG"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
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
  # Long documents cut into chunks instead of truncated (chunking.py).
  chunking: Optional[ChunkSettings] = None

  @property
  def longest_input(self) -> int:
    """Most wordpieces the model gets of one document (or pair)."""
    if self.chunking is None:
      return self.max_seq_length
    return self.chunking.chunk_size * self.chunking.max_chunks


def _pool(sequence, mask, pooled_output, mode):
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

  copy_index: which of several copies of the model on this machine this is
  (Beam's model_copies): the encoder's variables and computation go on
  device copy_index mod n of the n `copy_device_type` devices TensorFlow
  lists (devices.py: one copy per GPU). None, or no such device: where
  TensorFlow places them. Tokenization runs on the CPU either way.
  """

  def __init__(self, settings: ModelSettings,
               copy_index: Optional[int] = None,
               copy_device_type: str = "GPU"):
    if settings.encoder_format not in ENCODER_FORMATS:
      raise ValueError(f"encoder_format {settings.encoder_format!r} is not one "
                       f"of {ENCODER_FORMATS}")
    if settings.encoder_format == "v1" and settings.encoder_layers:
      raise ValueError("a v1 encoder has no encoder_outputs; encoder_layers "
                       "cannot be computed")
    if settings.chunking is not None and (
        settings.text_pairs or
        settings.chunking.chunk_size > settings.max_seq_length):
      raise ValueError(
          "chunking needs single texts and chunk_size <= max_seq_length "
          f"({settings.max_seq_length}), not {settings.chunking}")
    self._settings = settings
    _configure_devices(settings.precision)
    self.device = None
    if copy_index is not None:
      self.device = copy_device(copy_index, logical_devices(copy_device_type))
    with self._on_device():
      self._encoder = load_saved_model(settings.encoder_path)
    if settings.preprocess_path:
      self._preprocess = _load_preprocess(settings.preprocess_path,
                                          settings.text_pairs)
    elif settings.encoder_format == "v1":
      self._preprocess = build_v1_preprocessor(self._encoder,
                                               settings.max_seq_length)
    else:
      raise ValueError("preprocess_path is required for a v2 encoder")
    special = self._preprocess.tokenize.get_special_tokens_dict()
    self._cls_id = int(special["start_of_sequence_id"])
    self._sep_id = int(special["end_of_segment_id"])
    self._tokenize = traced_once(
        self._tokenize_graph,
        input_signature=[tf.TensorSpec([None], tf.string)])
    self._tokenize_pairs = traced_once(
        self._tokenize_pairs_graph,
        input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    self._encode = traced_once(
        self._encode_graph,
        input_signature=[tf.TensorSpec([None, None], tf.int32)] * 3,
        jit_compile=settings.jit_compile)
    self._chunker = None
    if settings.chunking is not None:
      self._chunker = DocumentChunker(self._preprocess.tokenize,
                                      settings.chunking)
    _record_model_load()

  def _on_device(self):
    """The copy's device scope, if it has a device of its own."""
    return tf.device(self.device) if self.device else contextlib.nullcontext()

  def _cut(self, texts):
    """(texts cut to what max_seq_length tokens could span, whether a cut
    dropped anything the tokenizer would keep).

    Runs of BERT's whitespace become one space first (the same wordpieces:
    whitespace only separates words), so that 5,000 spaces before a text
    cannot push its words past the cut. What is still cut (a word of
    thousands of characters, runs of control characters) makes the text
    `truncated`, unless the rest holds nothing the tokenizer keeps.
    """
    texts = tf.strings.regex_replace(texts, r"[ \t\n\r]+", " ")
    lengths = tf.strings.length(texts, unit="UTF8_CHAR")
    limit = tf.minimum(
        lengths, self._settings.max_seq_length * MAX_CHARS_PER_TOKEN)
    rest = tf.strings.substr(texts, limit, lengths - limit, unit="UTF8_CHAR")
    cut_off = tf.logical_not(
        tf.strings.regex_full_match(rest, r"[\s\p{Z}\p{Cc}\p{Cf}]*"))
    return tf.strings.substr(texts, tf.zeros_like(limit), limit,
                             unit="UTF8_CHAR"), cut_off

  def _tokenize_graph(self, texts):
    """Strings -> padded word ids, mask, token counts, truncation flags."""
    s = self._settings
    # tensorflow_text has no GPU kernels: tokenization stays on the CPU
    # while the encoder runs wherever TensorFlow places it.
    with tf.device("/CPU:0"):
      texts, cut_off = self._cut(texts)
      tokens = self._preprocess.tokenize(texts)
      tokens = tf.cast(tokens.merge_dims(1, -1), tf.int32)  # [batch, (tokens)]
      budget = s.max_seq_length - 2  # room for [CLS] and [SEP]
      truncated = (tokens.row_lengths() > budget) | cut_off
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
    s = self._settings
    with tf.device("/CPU:0"):
      texts_a, cut_off_a = self._cut(texts_a)
      texts_b, cut_off_b = self._cut(texts_b)
      tokens_a = self._preprocess.tokenize(texts_a)
      tokens_b = self._preprocess.tokenize(texts_b)
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
          "truncated": (wanted > s.max_seq_length) | cut_off_a | cut_off_b,
      }

  def _encode_graph(self, word_ids, mask, type_ids):
    """Padded inputs -> pooled (and optional per-token / layer) outputs."""
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
    padded tokens each). With chunking, see `_embed_chunks`.
    """
    if self._chunker is not None:
      return self._embed_chunks(texts, max_tokens)
    if self._settings.text_pairs:
      inputs = self._tokenize_pairs([pair[0] for pair in texts],
                                    [pair[1] for pair in texts])
    else:
      inputs = self._tokenize(list(texts))
    inputs = {k: v.numpy() for k, v in inputs.items()}
    result = self._encode_inputs(inputs, max_tokens)
    result["num_tokens"] = inputs["num_tokens"]
    result["truncated"] = inputs["truncated"]
    if self._settings.sequence_output:
      result["token_ids"] = inputs["input_word_ids"]
    return result

  def _embed_chunks(self, texts: Sequence[str],
                    max_tokens: int) -> Dict[str, np.ndarray]:
    """Texts cut into chunks (chunking.py), every chunk encoded, and each
    document's vectors pooled from its chunks'.

    Per document: "embedding", "layer_<k>", "num_tokens" (over its
    chunks), "truncated", "num_chunks". Per chunk, all documents' in order:
    "chunk_embedding", "chunk_num_tokens", "chunk_start", "chunk_end" (code
    point offsets), and with sequence output "chunk_token_ids" and
    "chunk_sequence_output" (padded to the longest chunk).
    """
    chunked = self._chunker.chunk(texts)
    inputs = pack_chunks(chunked.pieces, self._cls_id, self._sep_id)
    outputs = self._encode_inputs(inputs, max_tokens)
    normalize = self._settings.normalize
    result = {
        "chunk_embedding": outputs["embedding"],
        "chunk_num_tokens": inputs["num_tokens"],
        "chunk_start": chunked.starts,
        "chunk_end": chunked.ends,
        "num_chunks": chunked.num_chunks,
        "truncated": chunked.truncated,
        "num_tokens": np.add.reduceat(
            inputs["num_tokens"],
            np.concatenate([[0], np.cumsum(chunked.num_chunks)[:-1]])),
    }
    for name, value in outputs.items():
      if name == "sequence_output":
        result["chunk_sequence_output"] = value
        result["chunk_token_ids"] = inputs["input_word_ids"]
      else:
        result[name] = pool_chunks(value, inputs["num_tokens"],
                                   chunked.num_chunks, normalize)
    return result

  def _encode_inputs(self, inputs: Dict[str, np.ndarray],
                     max_tokens: int) -> Dict[str, np.ndarray]:
    """The encoder's outputs for padded inputs, in the inputs' row order:
    one call per `plan_model_calls` call (similar real lengths)."""
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
    return result

  def save_serving_model(self, output_dir: str):
    """Writes one SavedModel that serves this model's vectors from strings.

    Its `serving_default` signature takes `text` (tf.string [batch]) and
    returns {"embedding": float32 [batch, H], "num_tokens": int64 [batch],
    "truncated": bool [batch]}: tokenization, the encoder, pooling and
    normalisation all in the graph, as `embed` computes them (one encoder
    call per request, padded to its longest text; texts are truncated at
    max_seq_length, never chunked). Loading it needs the tensorflow_text
    ops (`import tensorflow_text`; TF Serving links them in).
    """
    module = tf.Module()
    # Tracked, so that the saved graph holds their variables and tables.
    module.preprocess = self._preprocess
    module.encoder = self._encoder

    def outputs_of(text):
      inputs = self._tokenize_graph(text)
      outputs = self._encode_graph(inputs["input_word_ids"],
                                   inputs["input_mask"],
                                   inputs["input_type_ids"])
      return {"embedding": outputs["embedding"],
              "num_tokens": inputs["num_tokens"],
              "truncated": inputs["truncated"]}

    def serve(text):
      # An empty request gets empty outputs: tokenizing no texts at all
      # fails (a ragged batch of no rows has no width), so one empty text's
      # outputs are cut to none.
      return tf.cond(
          tf.size(text) > 0, lambda: outputs_of(text),
          lambda: {name: value[:0] for name, value in outputs_of(
              tf.constant([""])).items()})

    module.serve = tf.function(
        serve, input_signature=[tf.TensorSpec([None], tf.string, name="text")],
        autograph=False)
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addFilter(_renamed_captures_notice)
    try:
      tf.saved_model.save(module, output_dir,
                          signatures={"serving_default": module.serve})
    finally:
      tf_logger.removeFilter(_renamed_captures_notice)

  def encode_padded(self, word_ids: np.ndarray, mask: np.ndarray,
                    type_ids: np.ndarray) -> Dict[str, np.ndarray]:
    """One encoder call on padded [rows, length] inputs (numpy)."""
    outputs = self.encode_on_device(word_ids, mask, type_ids)
    return {k: v.numpy() for k, v in outputs.items()}

  def encode_on_device(self, word_ids, mask, type_ids) -> Dict[str, tf.Tensor]:
    """The encoder call, run on the copy's device (its outputs there)."""
    with self._on_device():
      return self._encode(word_ids, mask, type_ids)


def _renamed_captures_notice(record: logging.LogRecord) -> bool:
  """Drops TensorFlow's warning, on saving the serving function, that its
  captured inputs (the two models' variables and tables, named by number)
  are renamed in the SavedModel: they are internal; the signature's input
  keeps its name, `text`."""
  return "with unsupported characters which will be renamed" not in (
      record.getMessage())


def _rows(padded: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
  """padded[rows, :length], zero-padded on the right if length is wider."""
  taken = padded[rows, :length]
  if taken.shape[1] < length:
    taken = np.pad(taken, ((0, 0), (0, length - taken.shape[1])))
  return np.ascontiguousarray(taken, dtype=np.int32)


def _pack_inputs(preprocess, segments, seq_length: int):
  """preprocess.bert_pack_inputs(segments, seq_length): the restored function
  may have been traced for a tensor or for a Python int seq_length."""
  try:
    return preprocess.bert_pack_inputs(
        segments, seq_length=tf.constant(seq_length, tf.int32))
  except (TypeError, ValueError):
    return preprocess.bert_pack_inputs(segments, seq_length=seq_length)


def _load_preprocess(path: str, text_pairs: bool) -> tf.Module:
  """The preprocess model's parts that embed calls: `tokenize`, and
  `bert_pack_inputs` for pairs, loaded with only their functions
  (saved_models.load_parts: a third of the load for tokenize alone)."""
  preprocess = tf.Module(name="preprocess")
  names = ["tokenize"] + (["bert_pack_inputs"] if text_pairs else [])
  for name, part in load_parts(path, names).items():
    setattr(preprocess, name, part)
  return preprocess


def _configure_devices(precision: str):
  """Process-wide TensorFlow settings, before the model is loaded."""
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
