"""Writes original BERT (google-research/bert, TF1) checkpoint directories.

From the weights of a Hugging Face checkpoint directory (a tiny random one,
or the default model's): every encoder variable under its TF1 name
(`bert/encoder/layer_0/attention/self/query/kernel`, kernels as TF's
[in, out]), saved with `tf.compat.v1.train.Saver` in a TF1 graph as the
original release did, beside `bert_config.json` and `vocab.txt`. Training
state and the pre-training heads (global_step, Adam slots, cls/...) come too,
as in the released checkpoints, so that the converter must leave them out.
"""

import json
import os
import shutil

import numpy as np
import tensorflow as tf

from bert_model import checkpoint as checkpoint_lib
from bert_model import tf1_checkpoint


def tf1_names(num_layers: int, pooler: bool = True) -> list:
  """Every encoder variable name of an original BERT checkpoint."""
  names = [f"bert/embeddings/{n}" for n in (
      "word_embeddings", "position_embeddings", "token_type_embeddings",
      "LayerNorm/gamma", "LayerNorm/beta")]
  for i in range(num_layers):
    for part in ("attention/self/query", "attention/self/key",
                 "attention/self/value", "attention/output/dense",
                 "intermediate/dense", "output/dense"):
      names += [f"bert/encoder/layer_{i}/{part}/kernel",
                f"bert/encoder/layer_{i}/{part}/bias"]
    for part in ("attention/output/LayerNorm", "output/LayerNorm"):
      names += [f"bert/encoder/layer_{i}/{part}/gamma",
                f"bert/encoder/layer_{i}/{part}/beta"]
  if pooler:
    names += ["bert/pooler/dense/kernel", "bert/pooler/dense/bias"]
  return names


def write_tf1_checkpoint(hf_dir: str, out_dir: str, pooler: bool = True,
                         extra: dict = None) -> str:
  """out_dir/{bert_config.json, vocab.txt, bert_model.ckpt.*}; returns
  out_dir. extra: more variables (name -> array) to save beside them."""
  ckpt = checkpoint_lib.read_checkpoint(hf_dir)
  os.makedirs(out_dir, exist_ok=True)
  values = {}
  for name in tf1_names(ckpt.config.num_hidden_layers, pooler):
    value = ckpt.weights[tf1_checkpoint.hugging_face_name(name)]
    values[name] = value.T if name.endswith("/kernel") else value
  values["cls/predictions/output_bias"] = np.zeros(ckpt.config.vocab_size,
                                                   np.float32)
  values["bert/embeddings/word_embeddings/adam_m"] = np.zeros_like(
      values["bert/embeddings/word_embeddings"])
  values.update(extra or {})
  graph = tf.Graph()
  with graph.as_default():
    variables = [tf.compat.v1.Variable(v, name=n) for n, v in values.items()]
    step = tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver(variables + [step])
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      saver.save(session, os.path.join(out_dir, "bert_model.ckpt"),
                 write_meta_graph=False)
  config = {key: getattr(ckpt.config, key) for key in (
      "hidden_size", "num_hidden_layers", "num_attention_heads",
      "intermediate_size", "vocab_size", "max_position_embeddings",
      "type_vocab_size", "hidden_act")}
  config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                initializer_range=0.02)
  with open(os.path.join(out_dir, tf1_checkpoint.CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2)
  shutil.copy(os.path.join(hf_dir, "vocab.txt"), out_dir)
  return out_dir
