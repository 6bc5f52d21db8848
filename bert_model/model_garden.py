"""TF Model Garden BertEncoder training checkpoints as Hugging Face names.

What training with the Model Garden (`official.nlp`) leaves behind: an
object-based TF2 checkpoint of `tf.train.Checkpoint(encoder=BertEncoder)`
(`ckpt-N.index` + `.data-*`, or `bert_model.ckpt.*`), and the experiment's
`params.yaml` whose `task.model.encoder` is the encoder config (type `bert`).
A JSON of the same `bert` section (`encoder_config.json`) is taken too.

The checkpoint is read with `tf.train.load_checkpoint`, never with
tf-models-official. Its names come from Keras' object tracking,

  encoder/layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE   [V, H]
  encoder/layer_with_weights-4/_attention_layer/_query_dense/kernel/...
                                                  [H, heads, head] (einsum)
  encoder/layer_with_weights-6/kernel/...         the pooler, [H, H]

so the mapping is built from the checkpoint's own variable list (what else a
training checkpoint holds, the optimizer's slots and step, the task's heads
under `model/`, `masked_lm/`, ..., is passed over): the
tracked layers in order are the word, position and type embeddings, the
embedding LayerNorm, one transformer block per layer, and the pooler.

Those names are the encoder's only when it is saved alone. A checkpoint
names each variable once, by its shortest path from the root, so in the
trainer's (`global_step`, `model`, `optimizer`, `encoder`, `masked_lm`,
...) the word embeddings, which the masked-LM head shares, are saved as
`masked_lm/embedding_table/...`. The encoder's variables are therefore
found through the checkpoint's object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`):
its paths below the root's `encoder`, walked breadth-first as TensorFlow
names them, each with the key its value is stored under. The
einsum kernels are reshaped to [in, out] matrices and transposed to
PyTorch's [out, in]. Model Garden's "gelu" is the tanh approximation
(Hugging Face's "gelu_new").
"""

import collections
import json
import os
import re
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
import yaml
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import trackable_object_graph_pb2

from bert_model.tf1_checkpoint import LEAF_NAMES
from bert_model.tf1_checkpoint import first_line
from bert_model.tf1_checkpoint import read_tensor

PARAMS_FILE = "params.yaml"
ENCODER_CONFIG_FILE = "encoder_config.json"
# Model Garden activation names -> Hugging Face hidden_act.
_ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu"}
_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# The object graph a TF2 checkpoint stores beside the values (module doc).
_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_ENCODER = "encoder"
# An optimizer's per-variable state (Adam's m and v) in a training
# checkpoint: encoder/layer_with_weights-0/embeddings/.OPTIMIZER_SLOT/...
_OPTIMIZER_SLOT = "/.OPTIMIZER_SLOT/"
_TRACKED = re.compile(r"encoder/layer_with_weights-(\d+)/(.+)")
_BLOCK_PARTS = {
    "_attention_layer/_query_dense": "attention.self.query",
    "_attention_layer/_key_dense": "attention.self.key",
    "_attention_layer/_value_dense": "attention.self.value",
    "_attention_layer/_output_dense": "attention.output.dense",
    "_attention_layer_norm": "attention.output.LayerNorm",
    "_intermediate_dense": "intermediate.dense",
    "_output_dense": "output.dense",
    "_output_layer_norm": "output.LayerNorm",
}


class ModelGardenError(ValueError):
  """A Model Garden checkpoint that cannot be read as a BERT encoder."""


def _config_file(path: str) -> Optional[str]:
  for name in (PARAMS_FILE, ENCODER_CONFIG_FILE):
    if os.path.exists(os.path.join(path, name)):
      return os.path.join(path, name)
  return None


def checkpoint_prefix(path: str) -> Optional[str]:
  """The checkpoint of a Model Garden directory (params.yaml or
  encoder_config.json, and a TF2 checkpoint), or None if it is not one."""
  if _config_file(path) is None:
    return None
  prefix = tf.train.latest_checkpoint(path)
  if prefix is None:
    indexes = sorted(f for f in os.listdir(path) if f.endswith(".index"))
    if len(indexes) != 1:
      return None
    prefix = os.path.join(path, indexes[0][:-len(".index")])
  return prefix


def read_config(path: str) -> Tuple[str, dict]:
  """(config file, a Hugging Face style config dict) of the encoder."""
  config_path = _config_file(path)
  try:
    with open(config_path, encoding="utf-8") as f:
      raw = (yaml.safe_load(f) if config_path.endswith(".yaml") else
             json.load(f))
  except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
    kind = "YAML" if config_path.endswith(".yaml") else "JSON"
    raise ModelGardenError(
        f"{config_path} is not valid {kind}: {' '.join(str(e).split())}"
    ) from None
  encoder = raw
  for key in ("task", "model", "encoder"):
    if isinstance(encoder, dict) and key in encoder:
      encoder = encoder[key]
  if isinstance(encoder, dict) and encoder.get("type", "bert") != "bert":
    raise ModelGardenError(
        f"{config_path}: encoder type {encoder.get('type')!r}; only 'bert' "
        "(BertEncoder) checkpoints convert.")
  bert = encoder.get("bert", encoder) if isinstance(encoder, dict) else None
  if not isinstance(bert, dict) or "hidden_size" not in bert:
    raise ModelGardenError(
        f"{config_path}: no BertEncoder config (task.model.encoder.bert with "
        "hidden_size, num_layers, ...).")
  unsupported = [
      f"{key}={bert[key]!r}" for key, ok in (
          ("norm_first", False), ("output_range", None))
      if bert.get(key, ok) != ok]
  if bert.get("embedding_size") not in (None, bert["hidden_size"]):
    unsupported.append(f"embedding_size={bert['embedding_size']}")
  activation = bert.get("hidden_activation", "gelu")
  if activation not in _ACTIVATIONS:
    unsupported.append(f"hidden_activation={activation!r}")
  if unsupported:
    raise ModelGardenError(
        f"{config_path}: not a plain BERT encoder ({', '.join(unsupported)}); "
        "these variants do not convert to the TF Hub BERT format.")
  try:
    return config_path, {
        "model_type": "bert",
        "hidden_size": bert["hidden_size"],
        "num_hidden_layers": bert["num_layers"],
        "num_attention_heads": bert["num_attention_heads"],
        "intermediate_size": bert["intermediate_size"],
        "vocab_size": bert["vocab_size"],
        "max_position_embeddings": bert["max_position_embeddings"],
        "type_vocab_size": bert.get("type_vocab_size", 2),
        "hidden_act": _ACTIVATIONS[activation],
        "layer_norm_eps": 1e-12,
    }
  except KeyError as e:
    raise ModelGardenError(f"{config_path}: the encoder config lacks {e}.")


def _escape(local_name: str) -> str:
  """A tracked object's name as it appears in a checkpoint key."""
  return local_name.replace(".", "..").replace("/", ".S")


def _encoder_keys(reader, names, prefix: str) -> Dict[str, str]:
  """{the name a variable of the encoder has when the encoder is saved
  alone: the key its value is stored under in this checkpoint} (module
  doc). A checkpoint without an object graph (written by name) maps each
  name to itself."""
  if _OBJECT_GRAPH not in names:
    return {name: name for name in names}
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  try:
    graph.ParseFromString(read_tensor(reader, _OBJECT_GRAPH, prefix,
                                      ModelGardenError, dtype=object).item())
  except DecodeError as e:
    raise ModelGardenError(
        f"{prefix}: the checkpoint's object graph is damaged "
        f"({first_line(e)}); copy the "
        "checkpoint again.") from None
  roots = [child.node_id for child in graph.nodes[0].children
           if child.local_name == _ENCODER] if graph.nodes else []
  if not roots:
    return {}
  paths = {roots[0]: _ENCODER}
  queue = collections.deque(roots[:1])
  while queue:  # breadth-first, in the order the checkpoint lists children
    node = queue.popleft()
    for child in graph.nodes[node].children:
      if child.node_id not in paths:
        paths[child.node_id] = f"{paths[node]}/{_escape(child.local_name)}"
        queue.append(child.node_id)
  return {f"{path}/.ATTRIBUTES/{attribute.name}": attribute.checkpoint_key
          for node, path in paths.items()
          for attribute in graph.nodes[node].attributes}


def _tracked_layers(keys: Dict[str, str]) -> Dict[int, Dict[str, str]]:
  """layer_with_weights index -> {sub-path: checkpoint key}, from
  _encoder_keys."""
  layers: Dict[int, Dict[str, str]] = {}
  for name, key in keys.items():
    if _OPTIMIZER_SLOT in name:
      continue
    match = _TRACKED.fullmatch(name[:-len(_SUFFIX)]) if name.endswith(
        _SUFFIX) else None
    if match:
      layers.setdefault(int(match.group(1)), {})[match.group(2)] = key
  return layers


def _matrix(value: np.ndarray, outputs_last: bool) -> np.ndarray:
  """An einsum or dense kernel as a PyTorch [out, in] matrix."""
  if value.ndim == 3:  # [H, heads, head] or [heads, head, H]
    value = (value.reshape(value.shape[0], -1) if outputs_last else
             value.reshape(-1, value.shape[-1]))
  return np.ascontiguousarray(value.T)


def read_weights(prefix: str, config: dict) -> Dict[str, np.ndarray]:
  """The encoder's variables under Hugging Face names (module doc)."""
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ModelGardenError(
        f"{prefix}: not a readable checkpoint: {first_line(e)}") from None
  names = sorted(reader.get_variable_to_shape_map())
  layers = _tracked_layers(_encoder_keys(reader, names, prefix))
  blocks = [i for i in sorted(layers)
            if "_attention_layer/_query_dense/kernel" in layers[i]]
  embeddings = [i for i in sorted(layers) if set(layers[i]) == {"embeddings"}]
  norms = [i for i in sorted(layers) if set(layers[i]) == {"gamma", "beta"}]
  denses = [i for i in sorted(layers) if set(layers[i]) == {"kernel", "bias"}]
  if len(embeddings) != 3 or len(blocks) != config["num_hidden_layers"] or (
      not norms):
    raise ModelGardenError(
        f"{prefix}: not a Model Garden BertEncoder checkpoint of "
        f"{config['num_hidden_layers']} layers: expected "
        "encoder/layer_with_weights-N/... variables (3 embedding tables, a "
        f"LayerNorm, {config['num_hidden_layers']} transformer blocks), found "
        f"{len(embeddings)} embedding tables and {len(blocks)} blocks among "
        f"{', '.join(names[:6])}{' ...' if len(names) > 6 else ''}.")
  if any(i < blocks[0] for i in denses):
    raise ModelGardenError(
        f"{prefix}: a dense layer before the transformer blocks (an embedding "
        "projection); it does not convert to the TF Hub BERT format.")

  def get(name):
    return read_tensor(reader, name, prefix, ModelGardenError)

  weights = {}
  for target, i in zip(("word_embeddings", "position_embeddings",
                        "token_type_embeddings"), embeddings):
    weights[f"embeddings.{target}.weight"] = get(layers[i]["embeddings"])
  weights["embeddings.LayerNorm.weight"] = get(layers[norms[0]]["gamma"])
  weights["embeddings.LayerNorm.bias"] = get(layers[norms[0]]["beta"])
  for layer, i in enumerate(blocks):
    for sub, name in layers[i].items():
      part, _, leaf = sub.rpartition("/")
      if part not in _BLOCK_PARTS or leaf not in LEAF_NAMES:
        raise ModelGardenError(
            f"{prefix}: {name} is not part of a BERT transformer block.")
      value = get(name)
      if (part == "_attention_layer/_query_dense" and leaf == "kernel" and
          value.ndim == 3 and value.shape[1] != config["num_attention_heads"]):
        raise ModelGardenError(
            f"{prefix}: the attention kernels have {value.shape[1]} heads, "
            f"the config says num_attention_heads "
            f"{config['num_attention_heads']}; the config does not belong to "
            "this checkpoint.")
      if leaf == "kernel":
        value = _matrix(value, outputs_last=part != (
            "_attention_layer/_output_dense"))
      else:
        value = value.reshape(-1)
      weights[f"encoder.layer.{layer}.{_BLOCK_PARTS[part]}."
              f"{LEAF_NAMES[leaf]}"] = value
  poolers = [i for i in denses if i > blocks[-1]]
  if poolers:
    weights["pooler.dense.weight"] = _matrix(get(layers[poolers[0]]["kernel"]),
                                             outputs_last=True)
    weights["pooler.dense.bias"] = get(layers[poolers[0]]["bias"])
  return weights
