"""What a TF Hub BERT SavedModel is, read from its files: its interface (v1
or v2), its sizes, its preprocess model's vocabulary, and the checksums its
fingerprint is made of (bert_model/resolution.py says how the fingerprint is
formed, and what --model may name).

Every check raises ValueError with the fix in the message.
"""

import dataclasses
import hashlib
import json
import re
from typing import Dict, Optional

import tensorflow as tf
# Registers the ops of preprocess SavedModels, which are loaded here.
import tensorflow_text  # pylint: disable=unused-import
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import nested_structure_coder  # pylint: disable=g-direct-tensorflow-import

from bert_model import catalog
from bert_model import metadata as metadata_lib
from bert_model import v1

# The position table of a TF Hub encoder whose variables do not show it.
DEFAULT_MAX_POSITIONS = 512


def join_path(base: str, *parts: str) -> str:
  # os.path.join would mangle gs:// on Windows-like paths; plain joining
  # works for local paths and object store URLs alike.
  return "/".join([base.rstrip("/")] + list(parts))


def is_remote(path: str) -> bool:
  return "://" in path


def check_saved_model(model: str, path: str, flag: str = "--model"):
  """A cheap look at a SavedModel, so a corrupt one fails before any data is
  read rather than in every worker: the graph must parse, variables exist."""
  saved_model = _read_saved_model(model, path, flag)
  if not saved_model.meta_graphs:
    raise ValueError(f"{flag}={model}: {path}/saved_model.pb holds no graph; "
                     "export the model again.")
  if not tf.io.gfile.exists(join_path(path, "variables", "variables.index")):
    raise ValueError(f"{flag}={model}: {path} has no variables; export the "
                     "model again.")


def _read_saved_model(model: str, path: str, flag: str = "--model"):
  try:
    with tf.io.gfile.GFile(join_path(path, "saved_model.pb"), "rb") as f:
      data = f.read()
  except tf.errors.OpError as e:
    # Missing, unreadable or unreachable (a gs:// path without access): not
    # a corrupt model, and exporting it again would not help.
    raise ValueError(
        f"{flag}={model}: {path}/saved_model.pb cannot be read "
        f"({type(e).__name__}: {e.message}); check the path and that this "
        "machine may read it.") from None
  saved_model = saved_model_pb2.SavedModel()
  try:
    saved_model.ParseFromString(data)
  except Exception as e:  # pylint: disable=broad-except
    # protobuf's DecodeError, or what its C++ parser raises instead.
    raise ValueError(
        f"{flag}={model}: {path}/saved_model.pb is corrupt ({e}); export the "
        "model again with `python -m pipeline.export_model`.") from None
  return saved_model


def encoder_format_of(path: str, model: str = "", flag: str = "--model"
                     ) -> str:
  """"v2" or "v1", from the SavedModel's `__call__` signature (reads only
  saved_model.pb). Raises ValueError for a SavedModel that is no encoder."""
  saved_model = _read_saved_model(model or path, path, flag)
  graph = saved_model.meta_graphs[0].object_graph_def
  calls = [child.node_id for child in graph.nodes[0].children
           if child.local_name == "__call__"]
  kinds = set()
  if calls and graph.nodes[calls[0]].WhichOneof("kind") == "function":
    for name in graph.nodes[calls[0]].function.concrete_functions:
      args, _ = nested_structure_coder.decode_proto(
          graph.concrete_functions[name].canonicalized_input_signature)
      first = args[0] if args else None
      if isinstance(first, dict) and "input_word_ids" in first:
        kinds.add("v2")
      elif isinstance(first, (list, tuple)) and len(first) == 3:
        kinds.add("v1")
      else:
        kinds.add(type(first).__name__)
  if kinds == {"v2"} or kinds == {"v1"}:
    return kinds.pop()
  raise ValueError(
      f"{flag}={model or path}: {path} is not a BERT encoder with the TF Hub "
      "interface: its __call__ takes "
      f"{', '.join(sorted(kinds)) or 'nothing callable'}, not a dict of "
      "input_word_ids/input_mask/input_type_ids (v2) nor a list [input_word_ids, "
      "input_mask, segment_ids] (v1). (Is it a preprocess model? Pass that "
      "with --preprocessor.)")


@dataclasses.dataclass(frozen=True)
class EncoderFacts:
  hidden_size: int
  num_layers: int  # 0: unknown (a v1 encoder outside the catalogue)
  vocab_size: int  # rows of the word embedding table; 0: unknown
  max_position_embeddings: int
  has_pooler: bool
  lower_case: Optional[bool]  # v1: its do_lower_case
  vocab_path: Optional[str] = None  # v1: its vocabulary asset


def _variable_shapes(path: str) -> Dict[str, list]:
  """{variable name: shape} of a SavedModel; {} when it has no variables
  (the sizes are then unknown). A variables index that is there but cannot
  be read is a damaged model, told as such: not sizes left unknown and the
  vocabulary check skipped."""
  prefix = join_path(path, "variables", "variables")
  try:
    return dict(tf.train.list_variables(prefix))
  except tf.errors.NotFoundError:
    return {}
  except tf.errors.OpError as error:
    raise ValueError(
        f"{prefix}.index cannot be read ({type(error).__name__}: "
        f"{error.message}); the model directory is damaged: copy or export "
        "it again.") from None


def _table_rows(shapes: Dict[str, list], hidden: int, name: str,
                largest: bool = False) -> int:
  """Rows of an embedding table [rows, hidden]: the variable named like
  `name`, or (largest=True) else the largest [rows, hidden] variable."""
  tables = {k: v[0] for k, v in shapes.items()
            if len(v) == 2 and v[1] == hidden}
  named = [rows for key, rows in tables.items() if name in key]
  if named:
    return max(named)
  return max(tables.values()) if largest and tables else 0


def _count_layers(shapes: Dict[str, list]) -> int:
  indexes = set()
  for key in shapes:
    match = re.search(r"(?:transformer[_/]?layers?|layer)[_/-]?(\d+)/", key)
    if match:
      indexes.add(int(match.group(1)))
  return len(indexes) if indexes and indexes == set(range(len(indexes))) else 0


def encoder_facts(path: str, encoder_format: str,
                  entry: Optional[catalog.CatalogEntry] = None,
                  load: Optional[bool] = None, model: str = ""
                 ) -> EncoderFacts:
  """Sizes of a TF Hub encoder.

  Loads the encoder once and calls it on two tokens, unless `load` is False
  (default: False for a remote copy of a catalogue model, whose facts the
  catalogue has). Raises ValueError when the model cannot be called.
  """
  if load is None:
    load = not (is_remote(path) and entry is not None)
  if not load:
    return EncoderFacts(
        hidden_size=entry.hidden_size, num_layers=entry.num_layers,
        vocab_size=entry.vocab_size,
        max_position_embeddings=entry.max_position_embeddings,
        has_pooler=True,
        lower_case=entry.lower_case if encoder_format == "v1" else None)
  try:
    encoder = tf.saved_model.load(path)
    ids = tf.zeros([1, 2], tf.int32)
    outputs = v1.call_encoder(encoder, encoder_format, ids,
                              tf.ones_like(ids), tf.zeros_like(ids))
    hidden = int(outputs["sequence_output"].shape[-1])
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"--model={model or path}: the encoder at {path} cannot be loaded and "
        f"called as a {encoder_format} TF Hub BERT encoder: "
        f"{type(e).__name__}: {str(e)[:500]}") from None
  shapes = _variable_shapes(path)
  # The catalogue's facts only stand in for a model of the catalogue's size.
  entry = entry if entry and entry.hidden_size == hidden else None
  num_layers = len(outputs.get("encoder_outputs") or ())
  if not num_layers:
    num_layers = (entry.num_layers if entry else 0) or _count_layers(shapes)
  max_positions = (_table_rows(shapes, hidden, "position_embedding") or
                   (entry.max_position_embeddings if entry else 0) or
                   DEFAULT_MAX_POSITIONS)
  vocab_size = _table_rows(shapes, hidden, "word_embedding", largest=True)
  lower_case = vocab_path = None
  if encoder_format == "v1":
    try:
      vocab_path, vocab, lower_case = v1.v1_tokenizer_settings(
          encoder)
    except ValueError as e:
      raise ValueError(f"--model={model or path}: {e}") from None
    if vocab_size and len(vocab) != vocab_size:
      raise ValueError(
          f"--model={model or path}: its vocabulary asset has {len(vocab)} "
          f"tokens but its word embedding table {vocab_size} rows; the "
          "SavedModel is inconsistent.")
    vocab_size = vocab_size or len(vocab)
  return EncoderFacts(
      hidden_size=hidden, num_layers=num_layers, vocab_size=vocab_size,
      max_position_embeddings=max_positions,
      has_pooler=outputs.get("pooled_output") is not None,
      lower_case=lower_case, vocab_path=vocab_path)


@dataclasses.dataclass(frozen=True)
class PreprocessFacts:
  vocab_size: int
  lower_case: Optional[bool]


def preprocess_facts(path: str, value: str = "") -> PreprocessFacts:
  """Vocabulary size (and lower-case flag, when it has one) of a TF Hub
  preprocess SavedModel; loads it (small: the vocabulary and the graph)."""
  try:
    preprocess = tf.saved_model.load(path)
    special = preprocess.tokenize.get_special_tokens_dict()
    vocab_size = int(special["vocab_size"])
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"--preprocessor={value or path}: {path} is not a TF Hub BERT "
        "preprocess model (one with tokenize.get_special_tokens_dict() and "
        f"bert_pack_inputs): {type(e).__name__}: {str(e)[:300]}") from None
  lower_case = getattr(preprocess, "do_lower_case", None)
  if lower_case is not None:
    lower_case = bool(lower_case.numpy())
  return PreprocessFacts(vocab_size=vocab_size, lower_case=lower_case)


def _sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def saved_model_checksums(path: str) -> Dict[str, str]:
  """sha256 of saved_model.pb, variables/variables.index and every asset."""
  checksums = {
      "saved_model.pb": _sha256_file(join_path(path, "saved_model.pb")),
      "variables/variables.index": _sha256_file(
          join_path(path, "variables", "variables.index")),
  }
  saved_model = _read_saved_model(path, path)
  for asset in saved_model.meta_graphs[0].asset_file_def:
    asset_path = join_path(path, "assets", asset.filename)
    if tf.io.gfile.exists(asset_path):
      checksums[f"assets/{asset.filename}"] = _sha256_file(asset_path)
  return checksums


def fingerprint_of(checksums: Dict[str, str], preprocess_identity: str) -> str:
  digest = hashlib.sha256()
  digest.update(json.dumps({
      "saved_model.pb": checksums["saved_model.pb"],
      "variables.index": checksums["variables/variables.index"],
      "assets": {k: v for k, v in checksums.items()
                 if k.startswith("assets/")},
      "preprocess": preprocess_identity,
      "format_version": metadata_lib.FORMAT_VERSION,
  }, sort_keys=True).encode("utf-8"))
  return digest.hexdigest()
