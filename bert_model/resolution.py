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
from typing import Optional, Tuple

import tensorflow as tf

from bert_model import catalog
from bert_model import default_model
from bert_model import metadata as metadata_lib
from bert_model.saved_model_facts import check_saved_model
from bert_model.saved_model_facts import encoder_facts
from bert_model.saved_model_facts import encoder_format_of
from bert_model.saved_model_facts import fingerprint_of
from bert_model.saved_model_facts import is_remote
from bert_model.saved_model_facts import join_path
from bert_model.saved_model_facts import preprocess_facts
from bert_model.saved_model_facts import PreprocessFacts
from bert_model.saved_model_facts import saved_model_checksums

_LOG = logging.getLogger(__name__)

# Defaults for TF Hub models, which carry no model_metadata.json.
TFHUB_POOLING = "pooler"
TFHUB_NORMALIZE = False
TFHUB_MAX_SEQ_LENGTH = 128  # bert_pack_inputs' default seq_length
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

  def settings_problem(self, max_seq_length: int, pooling: str,
                       chunk_size: Optional[int] = None,
                       prefix: str = "") -> Optional[str]:
    """Why this model cannot compute these settings, as "setting=value:
    reason; fix", or None. Both the pipeline's planning (prefix "--": the
    settings are its flags) and the Embedder ask: otherwise a long text
    fails deep in the encoder, or pooling 'pooler' reads weights that are
    not there."""
    limit = self.max_position_embeddings
    if (not isinstance(max_seq_length, int) or isinstance(max_seq_length, bool)
        or not 3 <= max_seq_length <= limit):
      return (f"{prefix}max_seq_length={max_seq_length!r}: must be between 3 "
              f"and the model's max_position_embeddings ({limit})")
    if pooling == "pooler" and not self.has_pooler:
      return (f"{prefix}pooling=pooler: this model has no pooler weights; use "
              f"{prefix}pooling=cls or {prefix}pooling=mean")
    if chunk_size is not None and chunk_size > max_seq_length:
      return (f"{prefix}chunk_size={chunk_size}: longer than {prefix}"
              f"max_seq_length {max_seq_length}; use at most {max_seq_length}")
    return None

  def __getattr__(self, name):
    # hidden_size, num_layers, pooling, ...: straight from the metadata.
    if name == "metadata":
      raise AttributeError(name)
    return getattr(self.metadata, name)


# -- Where a model is -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Located:
  path: str  # a directory to inspect now (local or gs://)
  load_path: str  # what the workers load
  handle: Optional[str] = None
  entry: Optional[catalog.CatalogEntry] = None


def looks_like_path(value: str) -> bool:
  """Whether --model's value is a path, rather than a catalogue name (some
  hold "/": experts/pubmed) or a handle."""
  return (is_remote(value) or os.path.isabs(value) or
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
  if looks_like_path(value):
    if not _is_directory(flag, value):
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


def _is_directory(flag: str, value: str) -> bool:
  """tf.io.gfile.isdir, its errors (a gs:// path without network or
  credentials: FailedPreconditionError, PermissionDeniedError) told as an
  OSError that names the flag."""
  try:
    return tf.io.gfile.isdir(value)
  except tf.errors.OpError as e:
    raise OSError(f"{flag}={value} cannot be read: "
                  f"{' '.join(e.message.split())}") from None


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
    if (tf.io.gfile.exists(join_path(path, "saved_model.pb")) or
        tf.io.gfile.exists(join_path(path, metadata_lib.METADATA_FILE))):
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
  inner = join_path(path, metadata_lib.PREPROCESS_DIR)
  if tf.io.gfile.exists(join_path(inner, "saved_model.pb")):
    path = load_path = inner
  check_saved_model(value, path, "--preprocessor")
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
  if tf.io.gfile.exists(join_path(located.path, "saved_model.pb")):
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
      if not tf.io.gfile.exists(join_path(path, part, "saved_model.pb"))
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
    check_saved_model(model, join_path(path, part))
  if metadata.is_outdated_export:
    _LOG.warning(
        "--model=%s was exported before exporter revision %d; re-export it "
        "(python -m pipeline.export_model --checkpoint HF_DIR --output_dir "
        "DIR --overwrite) for a faster graph of the same model: the "
        "fingerprint stays the same.", model, metadata_lib.EXPORTER_REVISION)
  preprocess_path = join_path(path, metadata_lib.PREPROCESS_DIR)
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
      encoder_path=join_path(path, metadata_lib.ENCODER_DIR),
      metadata=metadata)


def _resolve_tfhub_encoder(model: str, located: _Located,
                           preprocessor: Optional[str],
                           model_root: Optional[str]) -> ResolvedModel:
  """A TF Hub encoder SavedModel (no model_metadata.json)."""
  path, entry = located.path, located.entry
  check_saved_model(model, path)
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
      fingerprint=fingerprint_of(checksums, identity),
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
