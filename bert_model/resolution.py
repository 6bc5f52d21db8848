"""Turns --model (with --preprocessor, --model_root) into the paths and facts
the pipeline needs, before it runs.

`--model` is one of:

- a model directory written by this project (local or gs://): `encoder/` and
  `preprocess/` SavedModels and `model_metadata.json` (bert_model/
  metadata.py). Without --model the default model is used, exported first if
  it is missing.
- a TF Hub BERT encoder: a short name of the catalogue (`experts/pubmed`,
  `bert_en_cased_L-24_H-1024_A-16/2`), a full handle
  (`https://tfhub.dev/google/experts/bert/pubmed/2`), or a directory holding
  the extracted SavedModel (`saved_model.pb` at its top). Handles are found in
  a `--model_root` mirror or the TF Hub cache, else downloaded by
  tensorflow_hub (bert_model/catalog.py says where exactly).

A TF Hub encoder comes with the interface it was published with, detected
from its SavedModel: "v2" (dict in, dict out, with encoder_outputs) needs a
preprocess model: the catalogue's match for it, or `--preprocessor`; "v1"
(list in, tuple out) carries its vocabulary and lower-case flag, from which
the workers build the tokenizer (`--preprocessor` may still override it).

TF Hub models have no model_metadata.json; their metadata is made here:
pooling `pooler` (their pooled_output), normalize false, max_seq_length 128
(the TF Hub preprocess default; at most the position table), hidden size and
layer count from calling the encoder once on a two-token input (or, for a
remote copy of a catalogue model, from the catalogue, so the weights are not
read at submission), licence from the catalogue. Its fingerprint is

  sha256(json({"saved_model.pb": sha256, "variables.index": sha256,
               "assets": {name: sha256}, "preprocess": identity,
               "format_version": N}))

where the variables index holds a CRC32C of every variable's bytes (so it
changes with the weights), and the preprocess identity is its handle, or for
a preprocess directory given as a path the same digests of that SavedModel,
or for a v1 encoder's built-in tokenizer "builtin-v1" (its vocabulary is one
of the hashed assets).

Checking here means a wrong --model fails at once, not an hour into a run:
unknown names and handles, a hub that cannot be reached, corrupt SavedModels,
a v2 encoder without a preprocess model, and a preprocess model whose
vocabulary size is not the encoder's (a mismatched preprocess produces
garbage, or ids past the embedding table).
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Dict, Optional, Tuple

import tensorflow as tf
# Registers the ops of preprocess SavedModels, which are loaded here.
import tensorflow_text  # pylint: disable=unused-import
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import nested_structure_coder  # pylint: disable=g-direct-tensorflow-import

from bert_model import catalog
from bert_model import default_model
from bert_model import metadata as metadata_lib
from bert_model import v1

_LOG = logging.getLogger(__name__)

# Defaults for TF Hub models, which carry no model_metadata.json.
TFHUB_POOLING = "pooler"
TFHUB_NORMALIZE = False
TFHUB_MAX_SEQ_LENGTH = 128  # bert_pack_inputs' default seq_length
_DEFAULT_MAX_POSITIONS = 512
BUILTIN_V1_PREPROCESS = "builtin-v1"


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
  """What the workers load, and the model's metadata.

  path: the model as the manifest names it: the directory, or the handle.
  preprocess_path / encoder_path: what the workers pass to hub.load (a local
    or gs:// directory, or a handle found in the TF Hub cache).
    preprocess_path is None for a v1 encoder's built-in tokenizer.
  encoder_format: "v2" or "v1" (see bert_model/v1.py).
  """
  path: str
  preprocess_path: Optional[str]
  encoder_path: str
  metadata: metadata_lib.ModelMetadata
  encoder_format: str = "v2"

  @property
  def fingerprint(self) -> str:
    return self.metadata.fingerprint

  def __getattr__(self, name):
    # hidden_size, num_layers, pooling, ...: straight from the metadata.
    if name == "metadata":
      raise AttributeError(name)
    return getattr(self.metadata, name)


def _join(base: str, *parts: str) -> str:
  # os.path.join would mangle gs:// on Windows-like paths; plain joining
  # works for local paths and object store URLs alike.
  return "/".join([base.rstrip("/")] + list(parts))


def _is_remote(path: str) -> bool:
  return "://" in path


def _check_saved_model(model: str, path: str, flag: str = "--model"):
  """A cheap look at a SavedModel, so a corrupt one fails before any data is
  read rather than in every worker: the graph must parse, variables exist."""
  saved_model = _read_saved_model(model, path, flag)
  if not saved_model.meta_graphs:
    raise ValueError(f"{flag}={model}: {path}/saved_model.pb holds no graph; "
                     "export the model again.")
  if not tf.io.gfile.exists(_join(path, "variables", "variables.index")):
    raise ValueError(f"{flag}={model}: {path} has no variables; export the "
                     "model again.")


def _read_saved_model(model: str, path: str, flag: str = "--model"):
  saved_model = saved_model_pb2.SavedModel()
  try:
    with tf.io.gfile.GFile(_join(path, "saved_model.pb"), "rb") as f:
      saved_model.ParseFromString(f.read())
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"{flag}={model}: {path}/saved_model.pb is corrupt ({e}); export the "
        "model again with `python -m pipeline.export_model`.") from None
  return saved_model


# -- Where a model is -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Located:
  path: str  # a directory to inspect now (local or gs://)
  load_path: str  # what the workers load
  handle: Optional[str] = None
  entry: Optional[catalog.CatalogEntry] = None


def _looks_like_path(value: str) -> bool:
  return (_is_remote(value) or os.path.isabs(value) or
          value.startswith((".", "~")) or tf.io.gfile.isdir(value))


def _locate(value: str, model_root: Optional[str], flag: str,
            kind: str) -> _Located:
  """A --model / --preprocessor value to a directory; raises
  FileNotFoundError or ValueError."""
  if value.startswith("http://"):
    raise ValueError(
        f"{flag}={value}: refusing to load a model over plain http; use "
        "https, gs:// or a local directory.")
  if catalog.is_handle(value):
    handle = catalog.normalize_handle(value)
    entry = catalog.lookup_handle(handle)
    _check_kind(flag, value, entry, kind)
    path, load_path = _fetch(value, handle, model_root, flag)
    return _Located(path, load_path, handle, entry)
  if _looks_like_path(value):
    if not tf.io.gfile.isdir(value):
      raise FileNotFoundError(
          f"{flag}={value}: no such directory. Pass a model directory written "
          "by `python -m pipeline.export_model`, a TF Hub SavedModel "
          "directory, a catalogue name (`python -m pipeline.catalog`) or a "
          "handle; or leave --model out to use the default model.")
    return _Located(value, value)
  try:
    entry = catalog.lookup_name(value)
  except catalog.UnknownModelError as e:
    raise FileNotFoundError(f"{flag}={value}: no such directory, and {e}") from None
  _check_kind(flag, value, entry, kind)
  path, load_path = _fetch(value, entry.handle, model_root, flag)
  return _Located(path, load_path, entry.handle, entry)


def _check_kind(flag, value, entry, kind):
  if entry is not None and entry.kind != kind:
    other = "--preprocessor" if entry.kind == "preprocess" else "--model"
    raise ValueError(f"{flag}={value} is a {entry.kind} model; pass it with "
                     f"{other}.")


def _fetch(value: str, handle: str, model_root: Optional[str],
           flag: str) -> Tuple[str, str]:
  """(directory to inspect, what workers load) for a handle.

  --model_root first (no download), else the TF Hub cache, else a download
  by tensorflow_hub into that cache.
  """
  if model_root:
    path = catalog.mirror_path(model_root, handle)
    if (tf.io.gfile.exists(_join(path, "saved_model.pb")) or
        tf.io.gfile.exists(_join(path, metadata_lib.METADATA_FILE))):
      return path, path
    raise FileNotFoundError(
        f"{flag}={value}: {handle} is not in the --model_root mirror: "
        f"expected its extracted SavedModel (saved_model.pb, variables/) in "
        f"{path}/. Copy it there, or leave --model_root out to use the TF "
        "Hub cache.")
  cached = catalog.cache_path(handle)
  if tf.io.gfile.isdir(cached) and tf.io.gfile.listdir(cached):
    # Workers load the handle: tensorflow_hub finds it in their cache (this
    # one, for local runs) or downloads it once per worker.
    return cached, handle
  try:
    _LOG.info("Downloading %s into the TF Hub cache", handle)
    # Imported here: tensorflow_hub imports Keras (seconds of every start),
    # and only a handle that is not in the cache needs it.
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    path = hub.resolve(handle)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"{flag}={value}: {handle} is not in the TF Hub cache ({cached}) and "
        f"could not be downloaded ({type(e).__name__}: {e}). Check the "
        "handle; without network access, extract the model into that "
        "directory (TFHUB_CACHE_DIR layout: one directory per handle, named "
        "by the SHA-1 of the handle) or mirror it under --model_root."
    ) from None
  return path, handle


# -- What a TF Hub SavedModel is ----------------------------------------------


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
  try:
    return dict(tf.train.list_variables(_join(path, "variables", "variables")))
  except Exception:  # pylint: disable=broad-except
    return {}


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
    load = not (_is_remote(path) and entry is not None)
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
                   _DEFAULT_MAX_POSITIONS)
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
      "saved_model.pb": _sha256_file(_join(path, "saved_model.pb")),
      "variables/variables.index": _sha256_file(
          _join(path, "variables", "variables.index")),
  }
  saved_model = _read_saved_model(path, path)
  for asset in saved_model.meta_graphs[0].asset_file_def:
    asset_path = _join(path, "assets", asset.filename)
    if tf.io.gfile.exists(asset_path):
      checksums[f"assets/{asset.filename}"] = _sha256_file(asset_path)
  return checksums


def _fingerprint(checksums: Dict[str, str], preprocess_identity: str) -> str:
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


# -- Preprocess models ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Preprocess:
  load_path: str
  identity: str  # what the fingerprint covers: a handle or content digests
  facts: PreprocessFacts


def _resolve_preprocess(value: str, model_root: Optional[str]) -> _Preprocess:
  located = _locate(value, model_root, "--preprocessor", "preprocess")
  path, load_path = located.path, located.load_path
  # A model directory of this project: its preprocess/ part.
  inner = _join(path, metadata_lib.PREPROCESS_DIR)
  if tf.io.gfile.exists(_join(inner, "saved_model.pb")):
    path = load_path = inner
  _check_saved_model(value, path, "--preprocessor")
  facts = preprocess_facts(path, value)
  if located.handle:
    identity = located.handle
  else:
    checksums = saved_model_checksums(path)
    identity = "sha256:" + hashlib.sha256(json.dumps(
        checksums, sort_keys=True).encode("utf-8")).hexdigest()
  return _Preprocess(load_path=load_path, identity=identity, facts=facts)


def _check_vocab_sizes(model: str, preprocessor: str, encoder_vocab: int,
                       preprocess_vocab: int):
  if encoder_vocab and preprocess_vocab != encoder_vocab:
    raise ValueError(
        f"--preprocessor={preprocessor} does not match --model={model}: the "
        f"preprocess model's vocabulary has {preprocess_vocab} tokens, the "
        f"encoder's word embeddings {encoder_vocab} rows. Preprocessing must "
        "match the model: pass the preprocess model the encoder was trained "
        "with (`python -m pipeline.catalog` lists the pairs), or leave "
        "--preprocessor out for catalogue models.")


# -- Resolution -----------------------------------------------------------------


def resolve_model(model: Optional[str],
                  preprocessor: Optional[str] = None,
                  model_root: Optional[str] = None) -> ResolvedModel:
  """Checks --model (and --preprocessor, --model_root); raises
  FileNotFoundError or ValueError with the fix in the message."""
  if model is None:
    model = default_model.ensure_default_model()
  located = _locate(model, model_root, "--model", "encoder")
  if tf.io.gfile.exists(_join(located.path, "saved_model.pb")):
    return _resolve_tfhub_encoder(model, located, preprocessor, model_root)
  return _resolve_model_directory(model, located.path, preprocessor,
                                  model_root)


def _resolve_model_directory(model: str, path: str,
                             preprocessor: Optional[str],
                             model_root: Optional[str]) -> ResolvedModel:
  """A model directory written by this project."""
  metadata = metadata_lib.read_metadata(path)
  missing = [
      part for part in (metadata_lib.ENCODER_DIR, metadata_lib.PREPROCESS_DIR)
      if not tf.io.gfile.exists(_join(path, part, "saved_model.pb"))
  ]
  if metadata is None:
    missing.append(metadata_lib.METADATA_FILE)
  if missing:
    raise FileNotFoundError(
        f"--model={model} is not a complete model directory: missing "
        f"{', '.join(missing)}. Export one with `python -m "
        "pipeline.export_model --checkpoint HF_DIR --output_dir DIR`, or pass "
        "a TF Hub SavedModel directory (saved_model.pb at its top).")
  for part in (metadata_lib.ENCODER_DIR, metadata_lib.PREPROCESS_DIR):
    _check_saved_model(model, _join(path, part))
  if metadata.is_outdated_export:
    _LOG.warning(
        "--model=%s was exported before exporter revision %d; re-export it "
        "(python -m pipeline.export_model --checkpoint HF_DIR --output_dir "
        "DIR --overwrite) for a faster graph of the same model: the "
        "fingerprint stays the same.", model, metadata_lib.EXPORTER_REVISION)
  preprocess_path = _join(path, metadata_lib.PREPROCESS_DIR)
  if preprocessor:
    preprocess = _resolve_preprocess(preprocessor, model_root)
    _check_vocab_sizes(model, preprocessor, metadata.vocab_size,
                       preprocess.facts.vocab_size)
    preprocess_path = preprocess.load_path
    metadata = dataclasses.replace(
        metadata,
        fingerprint=hashlib.sha256(
            f"{metadata.fingerprint}\0{preprocess.identity}".encode(
                "utf-8")).hexdigest(),
        source={**metadata.source, "preprocess": preprocess.identity})
  return ResolvedModel(
      path=model,
      preprocess_path=preprocess_path,
      encoder_path=_join(path, metadata_lib.ENCODER_DIR),
      metadata=metadata)


def _resolve_tfhub_encoder(model: str, located: _Located,
                           preprocessor: Optional[str],
                           model_root: Optional[str]) -> ResolvedModel:
  """A TF Hub encoder SavedModel (no model_metadata.json)."""
  path, entry = located.path, located.entry
  _check_saved_model(model, path)
  encoder_format = encoder_format_of(path, model)
  facts = encoder_facts(path, encoder_format, entry, model=model)

  preprocess_value = preprocessor
  if preprocess_value is None and encoder_format == "v2":
    preprocess_value = entry.preprocess if entry else None
    if preprocess_value is None:
      raise ValueError(
          f"--model={model} is a TF Hub encoder with the dict (v2) interface "
          "and no known preprocess model: pass the one it was trained with "
          "as --preprocessor (a catalogue name such as "
          "bert_en_uncased_preprocess for uncased English BERT vocabularies, "
          "a handle, or a directory).")
  if preprocess_value is not None:
    preprocess = _resolve_preprocess(preprocess_value, model_root)
    _check_vocab_sizes(model, preprocess_value, facts.vocab_size,
                       preprocess.facts.vocab_size)
    preprocess_path, identity = preprocess.load_path, preprocess.identity
    lower_case = preprocess.facts.lower_case
    preprocess_entry = (catalog.lookup_handle(identity)
                        if catalog.is_handle(identity) else None)
    if lower_case is None and preprocess_entry is not None:
      lower_case = preprocess_entry.lower_case
  else:  # v1: the tokenizer is built from the encoder's own vocabulary
    preprocess_path, identity = None, BUILTIN_V1_PREPROCESS
    lower_case = facts.lower_case
  if lower_case is None:
    lower_case = entry.lower_case if entry else False

  checksums = saved_model_checksums(path)
  source = {"kind": "tfhub", "encoder": located.handle or path,
            "encoder_format": encoder_format, "preprocess": identity}
  if located.handle and path != located.load_path:
    source["resolved_path"] = path
  metadata = metadata_lib.ModelMetadata(
      name=entry.name if entry else os.path.basename(path.rstrip("/")),
      source=source,
      license=entry.license if entry else "unknown",
      fingerprint=_fingerprint(checksums, identity),
      checksums=checksums,
      pooling=TFHUB_POOLING if facts.has_pooler else "cls",
      normalize=TFHUB_NORMALIZE,
      lower_case=bool(lower_case),
      max_seq_length=min(TFHUB_MAX_SEQ_LENGTH, facts.max_position_embeddings),
      max_position_embeddings=facts.max_position_embeddings,
      hidden_size=facts.hidden_size,
      num_layers=facts.num_layers,
      num_attention_heads=(entry.num_attention_heads if entry and
                           entry.hidden_size == facts.hidden_size else 0),
      vocab_size=facts.vocab_size,
      has_pooler=facts.has_pooler)
  return ResolvedModel(
      path=located.handle or model,
      preprocess_path=preprocess_path,
      encoder_path=located.load_path,
      metadata=metadata,
      encoder_format=encoder_format)
