"""A BERT encoder as a plain tf.Module with the TF Hub BERT interface.

The exported SavedModel is called like the encoders of the TF Hub BERT
collection (bert_en_uncased_L-12_H-768_A-12/4 and friends):

  encoder = hub.load(path)
  outputs = encoder({"input_word_ids": ids, "input_mask": mask,
                     "input_type_ids": type_ids})  # int32 [batch, seq]
  outputs["pooled_output"]    # [batch, H]: tanh(dense(first token))
  outputs["sequence_output"]  # [batch, seq, H]: the last layer
  outputs["encoder_outputs"]  # list, one [batch, seq, H] per layer
  outputs["default"]          # = pooled_output

Batch size and sequence length are dynamic, so a caller pads each batch only to
its own longest row. The module is built from plain variables, not Keras
layers: it loads with `hub.load` or `tf.saved_model.load` whatever Keras
version is installed, and it has no Lambda layers.

The math follows Hugging Face's BertModel exactly (erf GELU, LayerNorm with the
checkpoint's epsilon, absolute positions 0..seq-1, additive attention mask), so
the export reproduces the PyTorch model's hidden states.
"""

import math
from typing import Dict

import numpy as np
import tensorflow as tf

from bert_model.checkpoint import BertConfig

INPUT_SIGNATURE = {
    "input_word_ids": tf.TensorSpec([None, None], tf.int32, "input_word_ids"),
    "input_mask": tf.TensorSpec([None, None], tf.int32, "input_mask"),
    "input_type_ids": tf.TensorSpec([None, None], tf.int32, "input_type_ids"),
}

# Added to attention logits of padding; exp() of it is exactly 0 in float32.
_MASK_PENALTY = -1e9


def _dense_kernel(weights, name):
  # torch.nn.Linear stores [out, in]; x @ kernel needs [in, out].
  return np.ascontiguousarray(weights[name + ".weight"].T)


def _gelu(x):
  return tf.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
  return tf.nn.gelu(x, approximate=True)


_ACTIVATIONS = {
    "gelu": _gelu, "gelu_python": _gelu, "gelu_new": _gelu_tanh,
    "relu": tf.nn.relu,
}


class _LayerNorm(tf.Module):

  def __init__(self, weights, prefix, epsilon, name):
    super().__init__(name=name)
    self.gamma = tf.Variable(weights[prefix + ".weight"], name="gamma")
    self.beta = tf.Variable(weights[prefix + ".bias"], name="beta")
    self._epsilon = epsilon

  def __call__(self, x):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + self._epsilon) * (
        self.gamma) + self.beta


class _Dense(tf.Module):

  def __init__(self, kernel, bias, name):
    super().__init__(name=name)
    self.kernel = tf.Variable(kernel, name="kernel")
    self.bias = tf.Variable(bias, name="bias")

  def __call__(self, x):
    # x is [tokens, in]: one GEMM for the whole batch. BiasAdd, not `+`:
    # Grappler's remapper fuses MatMul+BiasAdd (and a following GELU) into
    # one oneDNN kernel, which an AddV2 does not match (17% faster on CPU).
    return tf.nn.bias_add(tf.matmul(x, self.kernel), self.bias)


class _TransformerLayer(tf.Module):
  """Post-LayerNorm transformer block, as in BERT."""

  def __init__(self, config: BertConfig, weights, index):
    super().__init__(name=f"transformer_layer_{index}")
    p = f"encoder.layer.{index}."
    # Query, key and value fused into one [H, 3H] matmul.
    self.qkv = _Dense(
        np.concatenate([
            _dense_kernel(weights, p + "attention.self." + part)
            for part in ("query", "key", "value")
        ], axis=1),
        np.concatenate([
            weights[p + "attention.self." + part + ".bias"]
            for part in ("query", "key", "value")
        ]), name="qkv")
    self.attention_output = _Dense(
        _dense_kernel(weights, p + "attention.output.dense"),
        weights[p + "attention.output.dense.bias"], name="attention_output")
    self.attention_norm = _LayerNorm(
        weights, p + "attention.output.LayerNorm", config.layer_norm_eps,
        name="attention_norm")
    self.intermediate = _Dense(
        _dense_kernel(weights, p + "intermediate.dense"),
        weights[p + "intermediate.dense.bias"], name="intermediate")
    self.output_dense = _Dense(
        _dense_kernel(weights, p + "output.dense"),
        weights[p + "output.dense.bias"], name="output")
    self.output_norm = _LayerNorm(
        weights, p + "output.LayerNorm", config.layer_norm_eps,
        name="output_norm")
    self._num_heads = config.num_attention_heads
    self._head_size = config.head_size
    self._hidden_size = config.hidden_size
    self._activation = _ACTIVATIONS[config.hidden_act]

  def __call__(self, x, attention_bias, batch, seq):
    """x: [batch*seq, H]; attention_bias: [batch, 1, 1, seq]."""
    qkv = tf.reshape(self.qkv(x),
                     [batch, seq, 3, self._num_heads, self._head_size])
    # -> [3, batch, heads, seq, head_size]
    q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))
    scores = tf.matmul(q, k, transpose_b=True) * (
        1.0 / math.sqrt(self._head_size)) + attention_bias
    context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
    context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]),
                         [-1, self._hidden_size])
    x = self.attention_norm(x + self.attention_output(context))
    return self.output_norm(
        x + self.output_dense(self._activation(self.intermediate(x))))


class BertEncoder(tf.Module):
  """BERT encoder with the TF Hub BERT calling convention (see module doc)."""

  def __init__(self, config: BertConfig, weights: Dict[str, np.ndarray]):
    super().__init__(name="bert_encoder")
    self.config = config
    self.word_embeddings = tf.Variable(
        weights["embeddings.word_embeddings.weight"], name="word_embeddings")
    self.position_embeddings = tf.Variable(
        weights["embeddings.position_embeddings.weight"],
        name="position_embeddings")
    self.type_embeddings = tf.Variable(
        weights["embeddings.token_type_embeddings.weight"],
        name="type_embeddings")
    self.embedding_norm = _LayerNorm(weights, "embeddings.LayerNorm",
                                     config.layer_norm_eps, "embedding_norm")
    self.transformer_layers = [
        _TransformerLayer(config, weights, i)
        for i in range(config.num_hidden_layers)
    ]
    # Checkpoints saved without BertModel's pooler (add_pooling_layer=False)
    # pool by taking the first token, which is what the pooler's input is.
    if "pooler.dense.weight" in weights:
      self.pooler = _Dense(_dense_kernel(weights, "pooler.dense"),
                           weights["pooler.dense.bias"], name="pooler")
    else:
      self.pooler = None

  @tf.function(input_signature=[INPUT_SIGNATURE])
  def __call__(self, inputs):
    return self.encode(inputs)

  def encode(self, inputs):
    word_ids = inputs["input_word_ids"]
    batch, seq = tf.shape(word_ids)[0], tf.shape(word_ids)[1]
    hidden = self.config.hidden_size
    x = (tf.gather(self.word_embeddings, word_ids) +
         tf.gather(self.type_embeddings, inputs["input_type_ids"]) +
         self.position_embeddings[tf.newaxis, :seq, :])
    x = tf.reshape(self.embedding_norm(x), [-1, hidden])
    mask = tf.cast(inputs["input_mask"], x.dtype)
    attention_bias = ((1.0 - mask) * _MASK_PENALTY)[:, tf.newaxis,
                                                     tf.newaxis, :]
    encoder_outputs = []
    for layer in self.transformer_layers:
      x = layer(x, attention_bias, batch, seq)
      encoder_outputs.append(tf.reshape(x, [batch, seq, hidden]))
    sequence_output = encoder_outputs[-1]
    first_token = sequence_output[:, 0, :]
    if self.pooler is not None:
      pooled_output = tf.tanh(self.pooler(first_token))
    else:
      pooled_output = first_token
    return {
        "pooled_output": pooled_output,
        "sequence_output": sequence_output,
        "encoder_outputs": encoder_outputs,
        "default": pooled_output,
    }

  @tf.function(input_signature=[INPUT_SIGNATURE])
  def serving_default(self, inputs):
    """Flat outputs for TF Serving: signatures cannot return a list."""
    outputs = self.encode(inputs)
    flat = {k: v for k, v in outputs.items() if k != "encoder_outputs"}
    for i, layer_output in enumerate(outputs["encoder_outputs"]):
      flat[f"encoder_outputs_{i}"] = layer_output
    return flat
