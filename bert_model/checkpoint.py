"""Reads a BERT checkpoint directory into numpy, under Hugging Face names.

A checkpoint directory holds `config.json`, `vocab.txt` and the weights as
`model.safetensors` or `pytorch_model.bin`; sentence-transformers directories add
`modules.json`, `1_Pooling/config.json` and `sentence_bert_config.json`, which
say how the model is meant to be pooled and how long its inputs may be.

Weights are read without torch (checkpoint_files.py); what a
sentence-transformers directory says of its pooling, by
sentence_transformers_files.py.

An original BERT directory (google-research/bert: `bert_config.json`,
`vocab.txt`, `bert_model.ckpt.*`) is read by tf1_checkpoint.py, and a TF
Model Garden one (`params.yaml`, `vocab.txt`, a TF2 BertEncoder checkpoint)
by model_garden.py, into the same names; then all go the same way.
"""

import dataclasses
import glob
import os
from typing import Dict, Optional

import numpy as np

from bert_model import model_garden
from bert_model import tf1_checkpoint
from bert_model.checkpoint_files import CheckpointError
from bert_model.checkpoint_files import optional_json_object
from bert_model.checkpoint_files import read_json
from bert_model.checkpoint_files import read_safetensors
from bert_model.checkpoint_files import read_torch_bin
from bert_model.checkpoint_files import sha256_file
from bert_model.preprocess import read_vocab_lines
from bert_model.sentence_transformers_files import (
    sentence_transformers_settings)


# Config keys without which the encoder cannot be built.
_REQUIRED_CONFIG_KEYS = ("hidden_size", "num_hidden_layers",
                         "num_attention_heads", "intermediate_size",
                         "vocab_size", "max_position_embeddings")
_SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_python", "relu")
# Wordpieces the exported tokenizer and packer look up by name.
_REQUIRED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  vocab_size: int
  max_position_embeddings: int
  type_vocab_size: int = 2
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12

  @property
  def head_size(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, config: dict, where: str) -> "BertConfig":
    if not isinstance(config, dict):
      raise CheckpointError(
          f"{where}: holds a JSON {type(config).__name__}, not an object of "
          "config keys.")
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
      raise CheckpointError(
          f"{where}: model_type is {model_type!r}; only BERT checkpoints "
          "(model_type 'bert') can be exported to the TF Hub BERT format.")
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and architectures and not any(
        str(name).startswith("Bert") for name in architectures):
      # A RoBERTa (say) labelled model_type bert: other embeddings and
      # tokenizer, so BERT's would give wrong vectors.
      raise CheckpointError(
          f"{where}: architectures {', '.join(map(str, architectures))} is "
          "not a BERT model, though model_type says bert; only BERT "
          "checkpoints (BertModel, BertFor...) can be exported.")
    missing = [k for k in _REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
      raise CheckpointError(
          f"{where}: not a BERT config, missing {', '.join(missing)}.")
    sizes = {k: config[k] for k in _REQUIRED_CONFIG_KEYS}
    if "type_vocab_size" in config:
      sizes["type_vocab_size"] = config["type_vocab_size"]
    for key, value in sizes.items():
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(
            f"{where}: {key} is {value!r}; it must be a whole number, at "
            "least 1.")
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (
        0 < eps < 1):
      raise CheckpointError(
          f"{where}: layer_norm_eps is {eps!r}; it must be a small positive "
          "number such as 1e-12.")
    if config.get("position_embedding_type", "absolute") != "absolute":
      raise CheckpointError(
          f"{where}: position_embedding_type "
          f"{config['position_embedding_type']!r} is not supported; only "
          "'absolute' position embeddings are.")
    activation = config.get("hidden_act", "gelu")
    if activation not in _SUPPORTED_ACTIVATIONS:
      raise CheckpointError(
          f"{where}: hidden_act {activation!r} is not supported; expected one "
          f"of {', '.join(_SUPPORTED_ACTIVATIONS)}.")
    if config["hidden_size"] % config["num_attention_heads"]:
      raise CheckpointError(
          f"{where}: hidden_size {config['hidden_size']} is not a multiple of "
          f"num_attention_heads {config['num_attention_heads']}.")
    return cls(
        hidden_size=int(config["hidden_size"]),
        num_hidden_layers=int(config["num_hidden_layers"]),
        num_attention_heads=int(config["num_attention_heads"]),
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        max_position_embeddings=int(config["max_position_embeddings"]),
        type_vocab_size=int(config.get("type_vocab_size", 2)),
        hidden_act=activation,
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)))


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """Everything the exporter needs from a checkpoint directory."""
  path: str
  config: BertConfig
  weights: Dict[str, np.ndarray]  # Hugging Face names, "bert." prefix removed
  vocab: list  # wordpieces, index = token id
  lower_case: bool
  strip_accents: bool  # mostly == lower_case (BERT's default); see preprocess
  special_tokens: tuple  # literal tokens matched in raw text, e.g. "[CLS]"
  pooling: Optional[str]  # "mean" / "cls" / "max" from sentence-transformers
  normalize: bool  # sentence-transformers Normalize module present
  max_seq_length: int
  checksums: Dict[str, str]  # file name -> sha256 of the files read

  @property
  def has_pooler(self) -> bool:
    return "pooler.dense.weight" in self.weights


# --- the directory -------------------------------------------------------------


def _strip_prefix(weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Maps BertModel / BertFor* names to BertModel names, old names to new."""
  renamed = {}
  for name, value in weights.items():
    if name.startswith("bert."):
      name = name[len("bert."):]
    elif not name.startswith(("embeddings.", "encoder.", "pooler.")):
      continue  # heads of BertFor* models: not part of the encoder
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
    name = name.replace("LayerNorm.beta", "LayerNorm.bias")
    renamed[name] = value
  return renamed


def _sentence_bert_config(path: str) -> dict:
  """sentence_bert_config.json (max_seq_length, do_lower_case), if any."""
  config = optional_json_object(
      path, "sentence_bert_config.json",
      "an object such as {\"max_seq_length\": 256}") or {}
  config_path = os.path.join(path, "sentence_bert_config.json")
  length = config.get("max_seq_length")
  if length is not None and _as_length(length) is None:
    raise CheckpointError(
        f"{config_path}: max_seq_length is {length!r}; it must be a whole "
        "number, at least 1.")
  return config


def _as_length(value) -> Optional[int]:
  """A whole number of at least 1 (512 or 512.0) as an int, else None."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  if isinstance(value, float) and not value.is_integer():
    return None
  return int(value) if value >= 1 else None


def _bert_normalizer(path: str) -> Optional[dict]:
  """tokenizer.json's BertNormalizer, what the fast tokenizer runs, if any."""
  tokenizer = optional_json_object(path, "tokenizer.json",
                                    "a Hugging Face tokenizer")
  if tokenizer is None:
    return None
  normalizer = tokenizer.get("normalizer") or {}
  return normalizer if normalizer.get("type") == "BertNormalizer" else None


def _tokenizer_config(path: str) -> dict:
  """tokenizer_config.json, or {} when there is none."""
  return optional_json_object(path, "tokenizer_config.json",
                               "an object of tokenizer settings") or {}


def _tokenizer_lower_case(path: str, vocab: list) -> bool:
  """Whether the tokenizer lower-cases, from its config or else its vocab."""
  normalizer = _bert_normalizer(path)
  if normalizer is not None:
    return bool(normalizer.get("lowercase", True))
  config = _tokenizer_config(path)
  if "do_lower_case" in config:
    return bool(config["do_lower_case"])
  # A cased vocabulary holds capitalised words; an uncased one holds none.
  return not any(w[:1].isupper() for w in vocab if not w.startswith("["))


def _strip_accents(path: str, tokenizer_lower_case: bool) -> bool:
  """Whether the tokenizer strips accents: its strip_accents, which when
  unset (null) follows its own lower-casing."""
  normalizer = _bert_normalizer(path)
  if normalizer is not None:
    strip_accents = normalizer.get("strip_accents")
  else:
    strip_accents = _tokenizer_config(path).get("strip_accents")
  return tokenizer_lower_case if strip_accents is None else bool(
      strip_accents)


def _text_normalization(path: str, vocab: list, sentence_bert_config: dict,
                        lower_case: Optional[bool]):
  """(lower_case, strip_accents) of the text, as the model's own
  tokenization does it; lower_case: the caller's word for the tokenizer's."""
  if lower_case is not None:
    return lower_case, _strip_accents(path, lower_case)
  tokenizer_lower_case = _tokenizer_lower_case(path, vocab)
  # sentence-transformers (do_lower_case) lower-cases the text itself,
  # before its tokenizer: which then strips accents only if it would anyway.
  return (tokenizer_lower_case or bool(
      sentence_bert_config.get("do_lower_case")),
          _strip_accents(path, tokenizer_lower_case))


def _max_seq_length(path: str, sentence_bert_config: dict,
                    config: BertConfig) -> int:
  """The model's own input length: sentence-transformers', else its
  tokenizer's, at most its position embeddings."""
  length = _as_length(sentence_bert_config.get("max_seq_length"))
  if length is None:
    # Often a huge placeholder (1e30) when the tokenizer sets no limit.
    length = _as_length(_tokenizer_config(path).get("model_max_length"))
  if length is None or length > config.max_position_embeddings:
    return config.max_position_embeddings
  return length


def _special_tokens(path: str, vocab: list) -> tuple:
  """Tokens the reference tokenizer matches verbatim in raw text."""
  tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
  tokenizer_json = os.path.join(path, "tokenizer.json")
  if os.path.exists(tokenizer_json):
    for added in read_json(tokenizer_json).get("added_tokens", []):
      tokens.add(added["content"])
  special_map = os.path.join(path, "special_tokens_map.json")
  if os.path.exists(special_map):
    for value in read_json(special_map).values():
      value = value.get("content") if isinstance(value, dict) else value
      if isinstance(value, str):
        tokens.add(value)
  in_vocab = set(vocab)
  return tuple(sorted(t for t in tokens if t in in_vocab))


def _check_shapes(weights: Dict[str, np.ndarray], config: BertConfig,
                  vocab: list, where: str):
  word_embeddings = weights.get("embeddings.word_embeddings.weight")
  if word_embeddings is None:
    raise CheckpointError(
        f"{where}: no embeddings.word_embeddings.weight; not a BERT model.")
  if word_embeddings.shape != (config.vocab_size, config.hidden_size):
    raise CheckpointError(
        f"{where}: word embedding table is {word_embeddings.shape}, config "
        f"says ({config.vocab_size}, {config.hidden_size}).")
  if len(vocab) != config.vocab_size:
    raise CheckpointError(
        f"{where}: vocab.txt has {len(vocab)} entries but the embedding table "
        f"has {config.vocab_size} rows; the vocabulary does not belong to "
        "these weights.")
  for i in range(config.num_hidden_layers):
    name = f"encoder.layer.{i}.attention.self.query.weight"
    if name not in weights:
      raise CheckpointError(
          f"{where}: missing {name}; config says {config.num_hidden_layers} "
          "layers.")
  extra = (f"encoder.layer.{config.num_hidden_layers}.attention.self.query."
           "weight")
  if extra in weights:
    raise CheckpointError(
        f"{where}: {extra} is there, but the config says num_hidden_layers "
        f"{config.num_hidden_layers}; the config does not belong to these "
        "weights.")
  # What else the config says that the variables show ([out, in] matrices):
  # a mismatch would export, then fail (or quietly cut) at embedding time.
  expected = {
      "embeddings.position_embeddings.weight": (
          "max_position_embeddings", config.max_position_embeddings),
      "embeddings.token_type_embeddings.weight": (
          "type_vocab_size", config.type_vocab_size),
      "encoder.layer.0.intermediate.dense.weight": (
          "intermediate_size", config.intermediate_size),
  }
  for name, (key, rows) in expected.items():
    value = weights.get(name)
    if value is not None and value.shape[0] != rows:
      raise CheckpointError(
          f"{where}: {name} has {value.shape[0]} rows, the config says "
          f"{key} {rows}; the config does not belong to these weights.")
  for name, shape in _encoder_shapes(config, weights).items():
    if name not in weights:
      raise CheckpointError(
          f"{where}: missing {name}, which the encoder needs; the checkpoint "
          "is incomplete (download or convert it again).")
    if tuple(weights[name].shape) != shape:
      raise CheckpointError(
          f"{where}: {name} is {tuple(weights[name].shape)}, the config "
          f"says {shape}; the config does not belong to these weights.")


def _encoder_shapes(config: BertConfig, weights: Dict[str, np.ndarray]
                   ) -> Dict[str, tuple]:
  """Every tensor the encoder uses, with the shape the config gives it
  (matrices [out, in]); the pooler's when the weights have one."""
  h, i = config.hidden_size, config.intermediate_size
  shapes = {
      "embeddings.word_embeddings.weight": (config.vocab_size, h),
      "embeddings.position_embeddings.weight": (
          config.max_position_embeddings, h),
      "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
      "embeddings.LayerNorm.weight": (h,),
      "embeddings.LayerNorm.bias": (h,),
  }
  for layer in range(config.num_hidden_layers):
    prefix = f"encoder.layer.{layer}."
    for dense, (outputs, inputs) in {
        "attention.self.query": (h, h), "attention.self.key": (h, h),
        "attention.self.value": (h, h), "attention.output.dense": (h, h),
        "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
      shapes[prefix + dense + ".weight"] = (outputs, inputs)
      shapes[prefix + dense + ".bias"] = (outputs,)
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
      shapes[prefix + norm + ".weight"] = (h,)
      shapes[prefix + norm + ".bias"] = (h,)
  if "pooler.dense.weight" in weights:
    shapes["pooler.dense.weight"] = (h, h)
    shapes["pooler.dense.bias"] = (h,)
  return shapes


def _check_finite(weights: Dict[str, np.ndarray], where: str):
  """NaN or infinite weights (a diverged training run) export without a
  word, and then every vector is NaN."""
  for name in sorted(weights):
    if not np.isfinite(weights[name]).all():
      raise CheckpointError(
          f"{where}: {name} holds NaN or infinite values (a diverged "
          "training run?), which would make every vector NaN; export an "
          "earlier checkpoint.")


# Checkpoint layouts (`layout_of`), as the exported metadata records them.
HUGGING_FACE = "huggingface"
BERT_TF1 = "bert_tf1"
MODEL_GARDEN = "model_garden"
_LAYOUT_FILES = (
    "config.json, vocab.txt and model.safetensors or pytorch_model.bin "
    "(Hugging Face); bert_config.json, vocab.txt and bert_model.ckpt.* "
    "(original BERT); or params.yaml (or encoder_config.json), vocab.txt "
    "and a TF2 checkpoint (TF Model Garden)")


def layout_of(path: str) -> str:
  """Which layout a checkpoint directory is in, by its files."""
  try:
    if tf1_checkpoint.checkpoint_prefix(path):
      return BERT_TF1
  except tf1_checkpoint.Tf1CheckpointError as e:
    raise CheckpointError(str(e)) from None
  if model_garden.checkpoint_prefix(path):
    return MODEL_GARDEN
  if not os.path.exists(os.path.join(path, "config.json")):
    _refuse_incomplete_tf_layout(path)
  return HUGGING_FACE


def _refuse_incomplete_tf_layout(path: str):
  """A directory without config.json that has a TF1 or Model Garden
  layout's files, but not all of them: says which are missing, rather than
  calling it a Hugging Face directory without config.json."""
  indexes = sorted(os.path.basename(f)
                   for f in glob.glob(os.path.join(path, "*.index")))
  if os.path.exists(os.path.join(path, tf1_checkpoint.CONFIG_FILE)):
    raise CheckpointError(
        f"{path}: {tf1_checkpoint.CONFIG_FILE} but no bert_model.ckpt.index; "
        "an original BERT checkpoint needs bert_model.ckpt.index and "
        ".data-* beside it (copy them again).")
  config_names = (model_garden.PARAMS_FILE, model_garden.ENCODER_CONFIG_FILE)
  if any(os.path.exists(os.path.join(path, n)) for n in config_names):
    if indexes:
      raise CheckpointError(
          f"{path}: several checkpoints ({', '.join(indexes)}) and no "
          "`checkpoint` file naming the latest; keep the one to convert.")
    raise CheckpointError(
        f"{path}: no TF2 checkpoint (ckpt-N.index and .data-*) beside "
        f"{' or '.join(config_names)}.")
  if indexes:
    raise CheckpointError(
        f"{path}: a TF checkpoint ({', '.join(indexes)}) without its config: "
        f"{tf1_checkpoint.CONFIG_FILE} for an original BERT, "
        f"{' or '.join(config_names)} for a TF Model Garden one.")


def _config_and_weights(path: str, layout: str):
  """(config file, BertConfig, weights under Hugging Face names, the file
  the weights came from) of a checkpoint directory in `layout`."""
  try:
    if layout == BERT_TF1:
      config_path = os.path.join(path, tf1_checkpoint.CONFIG_FILE)
      prefix = tf1_checkpoint.checkpoint_prefix(path)
      config = BertConfig.from_dict(read_json(config_path), config_path)
      weights = tf1_checkpoint.read_weights(prefix)
    elif layout == MODEL_GARDEN:
      prefix = model_garden.checkpoint_prefix(path)
      config_path, config_dict = model_garden.read_config(path)
      config = BertConfig.from_dict(config_dict, config_path)
      weights = model_garden.read_weights(prefix, config_dict)
  except (tf1_checkpoint.Tf1CheckpointError,
          model_garden.ModelGardenError) as e:
    raise CheckpointError(str(e)) from None
  if layout != HUGGING_FACE:
    return config_path, config, weights, sorted(glob.glob(
        prefix + ".data-*"))[0]
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise CheckpointError(
        f"{path}: missing config.json; a BERT checkpoint directory needs "
        f"{_LAYOUT_FILES}.")
  config = BertConfig.from_dict(read_json(config_path), config_path)
  safetensors_path = os.path.join(path, "model.safetensors")
  bin_path = os.path.join(path, "pytorch_model.bin")
  if os.path.exists(safetensors_path):
    return (config_path, config, read_safetensors(safetensors_path),
            safetensors_path)
  if os.path.exists(bin_path):
    return config_path, config, read_torch_bin(bin_path), bin_path
  shards = sorted(os.path.basename(f) for f in glob.glob(
      os.path.join(path, "model-*-of-*.safetensors")) + glob.glob(
          os.path.join(path, "pytorch_model-*-of-*.bin")))
  if shards:
    raise CheckpointError(
        f"{path}: the weights are sharded ({', '.join(shards)}); the export "
        "reads one model.safetensors or pytorch_model.bin: save the model "
        "again in one file (save_pretrained with a larger max_shard_size).")
  raise CheckpointError(
      f"{path}: no model.safetensors or pytorch_model.bin found.")


def read_checkpoint(path: str, lower_case: Optional[bool] = None
                   ) -> Checkpoint:
  """Reads and checks a checkpoint directory; raises CheckpointError.

  Three layouts (`layout_of`): a Hugging Face directory, an original BERT
  TF1 one (tf1_checkpoint.py), a TF Model Garden one (model_garden.py).
  lower_case: whether the tokenizer lower-cases, when the checkpoint cannot
  tell (None: from its tokenizer files, else its vocabulary).
  """
  if not os.path.isdir(path):
    raise CheckpointError(f"{path} is not a directory.")
  vocab_path = os.path.join(path, "vocab.txt")
  if not os.path.exists(vocab_path):
    raise CheckpointError(
        f"{path}: missing vocab.txt; a BERT checkpoint directory needs "
        f"{_LAYOUT_FILES}.")
  config_path, config, weights, weights_path = _config_and_weights(
      path, layout_of(path))
  weights = _strip_prefix(weights)
  try:
    vocab = read_vocab_lines(vocab_path)
  except UnicodeDecodeError as error:
    raise CheckpointError(
        f"{vocab_path} is not UTF-8 text ({error.reason} at byte "
        f"{error.start}): a vocabulary has one wordpiece a line.") from None
  missing = [token for token in _REQUIRED_TOKENS if token not in vocab]
  if missing:
    raise CheckpointError(
        f"{vocab_path} lacks {', '.join(missing)}: BERT's tokenizer needs "
        f"{', '.join(_REQUIRED_TOKENS)} in its vocabulary.")
  _check_shapes(weights, config, vocab, path)

  pooling, normalize = sentence_transformers_settings(path)
  sentence_bert_config = _sentence_bert_config(path)
  lower_case, strip_accents = _text_normalization(
      path, vocab, sentence_bert_config, lower_case)
  max_seq_length = _max_seq_length(path, sentence_bert_config, config)

  weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
  _check_finite(weights, path)

  checksummed = [config_path, vocab_path, weights_path]
  return Checkpoint(
      path=os.path.abspath(path),
      config=config,
      weights=weights,
      vocab=vocab,
      lower_case=lower_case,
      strip_accents=strip_accents,
      special_tokens=_special_tokens(path, vocab),
      pooling=pooling,
      normalize=normalize,
      max_seq_length=max_seq_length,
      checksums={os.path.basename(p): sha256_file(p) for p in checksummed})
