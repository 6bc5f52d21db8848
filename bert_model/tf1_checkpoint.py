"""Original BERT checkpoints (google-research/bert, TF1) as Hugging Face names.

The first published BERT models are TF1 checkpoints: `bert_model.ckpt.index`
and `.data-*` beside `bert_config.json` and `vocab.txt`, with variables named

  bert/embeddings/word_embeddings                      [vocab, H]
  bert/encoder/layer_0/attention/self/query/kernel     [H, H]   (in, out)
  bert/encoder/layer_0/attention/output/LayerNorm/gamma
  bert/pooler/dense/kernel                              (absent in some)
  cls/predictions/..., global_step, .../adam_m, .../adam_v (not the encoder)

`read_weights` reads them with `tf.train.load_checkpoint` (no model code, no
tf-models-official) and returns them under the Hugging Face BertModel names
that checkpoint.py and the exporter use: dense kernels transposed from TF's
[in, out] to PyTorch's [out, in], LayerNorm gamma/beta as weight/bias.
"""

import glob
import os
import re
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

CONFIG_FILE = "bert_config.json"

# TF1 name (after "bert/") -> Hugging Face BertModel name, and whether the
# value is a dense kernel to transpose.
_EMBEDDINGS = {
    "embeddings/word_embeddings": "embeddings.word_embeddings.weight",
    "embeddings/position_embeddings": "embeddings.position_embeddings.weight",
    "embeddings/token_type_embeddings":
        "embeddings.token_type_embeddings.weight",
    "embeddings/LayerNorm/gamma": "embeddings.LayerNorm.weight",
    "embeddings/LayerNorm/beta": "embeddings.LayerNorm.bias",
    "pooler/dense/kernel": "pooler.dense.weight",
    "pooler/dense/bias": "pooler.dense.bias",
}
_LAYER = re.compile(r"encoder/layer_(\d+)/(.+)")
_LAYER_PARTS = {
    "attention/self/query": "attention.self.query",
    "attention/self/key": "attention.self.key",
    "attention/self/value": "attention.self.value",
    "attention/output/dense": "attention.output.dense",
    "attention/output/LayerNorm": "attention.output.LayerNorm",
    "intermediate/dense": "intermediate.dense",
    "output/dense": "output.dense",
    "output/LayerNorm": "output.LayerNorm",
}
# TF variable leaf names -> Hugging Face (Model Garden's are the same).
LEAF_NAMES = {"kernel": "weight", "bias": "bias", "gamma": "weight",
              "beta": "bias"}
# Training state and heads that are not the encoder.
_IGNORED = re.compile(r"(^|/)(adam_m|adam_v|Adam|Adam_1)$|^global_step$|^cls/")


class Tf1CheckpointError(ValueError):
  """A TF1 checkpoint that cannot be read as a BERT encoder."""


def checkpoint_prefix(path: str) -> Optional[str]:
  """The checkpoint prefix of an original BERT directory (bert_config.json
  and one `*.ckpt.index`), or None when `path` is not one."""
  if not os.path.exists(os.path.join(path, CONFIG_FILE)):
    return None
  indexes = sorted(glob.glob(os.path.join(path, "*.ckpt.index")) +
                   glob.glob(os.path.join(path, "*.ckpt-*.index")))
  if not indexes:
    return None
  if len(indexes) > 1:
    raise Tf1CheckpointError(
        f"{path}: several checkpoints ({', '.join(map(os.path.basename, indexes))}"
        "); keep the one to convert, e.g. bert_model.ckpt.*")
  return indexes[0][:-len(".index")]


def hugging_face_name(tf1_name: str) -> Optional[str]:
  """The Hugging Face name of a TF1 encoder variable, or None if it is not
  one."""
  name = tf1_name[len("bert/"):] if tf1_name.startswith("bert/") else tf1_name
  if name in _EMBEDDINGS:
    return _EMBEDDINGS[name]
  match = _LAYER.fullmatch(name)
  if not match:
    return None
  layer, rest = match.groups()
  part, _, leaf = rest.rpartition("/")
  if part not in _LAYER_PARTS or leaf not in LEAF_NAMES:
    return None
  return f"encoder.layer.{layer}.{_LAYER_PARTS[part]}.{LEAF_NAMES[leaf]}"


def first_line(error: Exception) -> str:
  """TensorFlow's errors run to many lines; the first says what happened."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_tensor(reader, name: str, prefix: str, error_type,
                dtype=np.float32) -> np.ndarray:
  """One variable as float32 (or dtype); a missing or damaged .data file
  raises error_type naming it, not TensorFlow's traceback."""
  try:
    return np.asarray(reader.get_tensor(name), dtype=dtype)
  except (tf.errors.OpError, ValueError, IndexError) as e:
    shards = sorted(glob.glob(prefix + ".data-*"))
    raise error_type(
        f"{', '.join(shards) or prefix + '.data-*'}: cannot read {name} "
        f"({first_line(e)}); the checkpoint's data file is missing or "
        "damaged: copy it again.") from None


def read_weights(prefix: str) -> Dict[str, np.ndarray]:
  """The encoder's variables under Hugging Face names (module doc).

  Raises Tf1CheckpointError naming the variables expected and found when
  the checkpoint holds no BERT encoder, or a variable it cannot place.
  """
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise Tf1CheckpointError(
        f"{prefix}: not a readable checkpoint: {first_line(e)}") from None
  names = sorted(reader.get_variable_to_shape_map())
  weights, unplaced = {}, []
  for name in names:
    if _IGNORED.search(name):
      continue
    target = hugging_face_name(name)
    if target is None:
      unplaced.append(name)
      continue
    value = read_tensor(reader, name, prefix, Tf1CheckpointError)
    if name.endswith("/kernel"):
      value = value.T  # TF [in, out] -> PyTorch Linear [out, in]
    weights[target] = np.ascontiguousarray(value)
  if "embeddings.word_embeddings.weight" not in weights:
    raise Tf1CheckpointError(
        f"{prefix}: not an original BERT checkpoint: expected variables such "
        "as bert/embeddings/word_embeddings and "
        "bert/encoder/layer_0/attention/self/query/kernel, found "
        f"{', '.join(names[:8]) or 'none'}"
        f"{' ...' if len(names) > 8 else ''}.")
  if unplaced:
    raise Tf1CheckpointError(
        f"{prefix}: variables that are not part of a BERT encoder: "
        f"{', '.join(unplaced[:8])}{' ...' if len(unplaced) > 8 else ''}.")
  return weights
