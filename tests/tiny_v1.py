"""Builds tiny TF Hub BERT encoders in the older "v1" SavedModel format.

The first TF2 versions of the TF Hub BERT encoders (e.g.
`tensorflow/bert_en_uncased_L-12_H-768_A-12/1` and `/2`) differ from today's
interface:

  encoder = hub.load(handle)
  pooled_output, sequence_output = encoder(
      [input_word_ids, input_mask, segment_ids])   # a LIST in, a TUPLE out
  encoder.vocab_file.asset_path   # the wordpiece vocabulary, a SavedModel asset
  encoder.do_lower_case           # a bool tf.Variable

and they come without a preprocess model: users built the tokenizer from those
two attributes (`FullTokenizer(vocab_file, do_lower_case)`). No
`encoder_outputs`.

`write_tiny_v1_encoder` writes such a SavedModel from the tiny random BERT
weights of bert_model/tiny_checkpoint.py, computed by the project's own BertEncoder, so
the pipeline's v1 path can be checked against calling the SavedModel directly.
"""

import hashlib
import os
import shutil
import tempfile
from urllib.parse import urlparse

import tensorflow as tf

from bert_model import checkpoint as checkpoint_lib
from bert_model.encoder import BertEncoder
from bert_model import tiny_checkpoint as tiny_bert

_INPUTS = [
    tf.TensorSpec([None, None], tf.int32, name="input_word_ids"),
    tf.TensorSpec([None, None], tf.int32, name="input_mask"),
    tf.TensorSpec([None, None], tf.int32, name="segment_ids"),
]


class TinyV1Bert(tf.Module):
  """Root object of a v1 TF Hub BERT SavedModel (see module doc)."""

  def __init__(self, encoder: BertEncoder, vocab_path: str, lower_case: bool):
    super().__init__(name="bert_model")
    self.bert = encoder
    self.vocab_file = tf.saved_model.Asset(vocab_path)
    self.do_lower_case = tf.Variable(lower_case, trainable=False,
                                     name="do_lower_case")

  def _outputs(self, inputs):
    word_ids, mask, segment_ids = inputs
    outputs = self.bert.encode({
        "input_word_ids": word_ids,
        "input_mask": mask,
        "input_type_ids": segment_ids,
    })
    return outputs["pooled_output"], outputs["sequence_output"]


class _PlainCall(TinyV1Bert):

  @tf.function(input_signature=[_INPUTS])
  def __call__(self, inputs):
    return self._outputs(inputs)


class _KerasStyleCall(TinyV1Bert):
  """Like a restored Keras layer: `__call__(inputs, training=...)`."""

  @tf.function
  def __call__(self, inputs, training=False):
    del training  # no dropout in an inference graph
    return self._outputs(inputs)


def write_tiny_v1_encoder(path: str, cased: bool = False, seed: int = 0,
                          layers: int = 1, training_argument: bool = False
                         ) -> str:
  """Writes a tiny v1-format BERT SavedModel to `path`; returns `path`.

  cased=True uses the cased tiny vocabulary and do_lower_case=False.
  training_argument=True gives `__call__` a `training` argument, as the
  Keras-saved TF Hub encoders have.
  """
  with tempfile.TemporaryDirectory() as scratch:
    ckpt_dir = tiny_bert.write_tiny_checkpoint(
        os.path.join(scratch, "ckpt"), cased=cased, seed=seed, layers=layers)
    ckpt = checkpoint_lib.read_checkpoint(ckpt_dir)
    encoder = BertEncoder(ckpt.config, ckpt.weights)
    vocab_path = os.path.join(scratch, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
      f.write("\n".join(ckpt.vocab) + "\n")
    if training_argument:
      module = _KerasStyleCall(encoder, vocab_path, not cased)
      for training in (False, True):
        module.__call__.get_concrete_function(_INPUTS, training=training)
    else:
      module = _PlainCall(encoder, vocab_path, not cased)
    tf.saved_model.save(module, path)  # copies the vocab into assets/
  return path


# -- Placing models where TF Hub handles are looked up -----------------------


def install_in_cache(cache_dir: str, handle: str, saved_model_dir: str) -> str:
  """Copies a SavedModel where tensorflow_hub caches `handle` (the
  TFHUB_CACHE_DIR layout: a directory named by the SHA-1 of the handle)."""
  target = os.path.join(cache_dir,
                        hashlib.sha1(handle.encode("utf8")).hexdigest())
  shutil.copytree(saved_model_dir, target)
  return target


def install_in_mirror(model_root: str, handle: str,
                      saved_model_dir: str) -> str:
  """Copies a SavedModel into a --model_root mirror: the handle's URL path
  under the root."""
  target = os.path.join(model_root, urlparse(handle).path.strip("/"))
  shutil.copytree(saved_model_dir, target)
  return target
