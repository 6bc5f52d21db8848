"""Queries embedded exactly like an index: the Python API.

  from pipeline.embedder import Embedder
  embedder = Embedder.from_run("runs/2026-12-01")
  vectors = embedder.embed(["how do I reset my password?"])  # float32 [n, H]
  chunks = embedder.embed_chunks(long_text)  # with --chunk_size in the run

`Embedder.from_run` takes everything that changes a vector from the run's
manifest (the model, checked against its fingerprint, max length, pooling,
normalisation, precision, chunk settings), so the vectors equal the
pipeline's for the same texts, whatever the batch (up to float rounding of
the encoder's matrix shapes). `Embedder(model_dir, ...)` takes a model
directory or TF Hub encoder and the settings directly.

This is the same `LoadedBertModel.embed` the pipeline's model handler calls:
one tokenizer, one pooling, one normalisation.
"""

import dataclasses
import logging
import os
from typing import List, NamedTuple, Optional, Sequence, Union

import numpy as np

from bert_model import resolution
from bert_model.chunking import ChunkSettings
from bert_model.loaded_model import LoadedBertModel
from bert_model.loaded_model import ModelSettings
from bert_model.choices import PRECISIONS
from bert_model.preprocess import has_no_wordpieces
from bert_model.preprocess import NO_WORDPIECES
from bert_model.choices import POOLING_MODES
from run_directory.layout import CHUNKS
from run_directory.manifest import embedded_text_pairs
from run_directory.manifest import load_manifest

# What takes a path takes a str or a pathlib.Path.
_Path = Union[str, os.PathLike]
_LOG = logging.getLogger(__name__)


class EmbeddedChunk(NamedTuple):
  """One chunk of a text, as the chunks table holds it: its place (code
  point offsets, text[start:end]), its text and its vector."""
  chunk_index: int
  start: int
  end: int
  text: str
  embedding: np.ndarray
  num_tokens: int


class Embedder:
  """Texts to vectors exactly as a run (or a model with settings) makes them.

  Args:
    model: a model directory (local or gs://), a catalogue name or TF Hub
      handle, as --model takes; None: the default model.
    preprocessor, model_root: as --preprocessor and --model_root.
    max_seq_length, pooling, normalize: None: the model's own.
    precision: as --precision.
    chunking: how long texts are cut (--chunk_size ...), or None.
    fingerprint: when given, the model must have this fingerprint (a run's
      manifest records it): a changed model would quietly embed otherwise.
  """

  def __init__(self, model: Optional[_Path] = None,
               preprocessor: Optional[_Path] = None,
               model_root: Optional[_Path] = None,
               max_seq_length: Optional[int] = None,
               pooling: Optional[str] = None,
               normalize: Optional[bool] = None,
               precision: str = "float32",
               chunking: Optional[ChunkSettings] = None,
               fingerprint: Optional[str] = None,
               max_batch_tokens: Optional[int] = None):
    _check_arguments(normalize=normalize, chunking=chunking,
                     max_batch_tokens=max_batch_tokens)
    resolved = resolution.resolve_model(
        _path(model), preprocessor=_path(preprocessor),
        model_root=_path(model_root))
    if fingerprint and resolved.fingerprint != fingerprint:
      raise ValueError(
          f"The model at {resolved.path} has fingerprint "
          f"{resolved.fingerprint}, not the run's {fingerprint}: it changed "
          "since the run, so its vectors would not match the index. Put "
          "the model the run used back at that path, or embed the corpus "
          "again.")
    self.settings = ModelSettings(
        preprocess_path=resolved.preprocess_path,
        encoder_path=resolved.encoder_path,
        max_seq_length=(resolved.max_seq_length if max_seq_length is None
                        else max_seq_length),
        pooling=resolved.pooling if pooling is None else pooling,
        normalize=resolved.normalize if normalize is None else normalize,
        precision=precision,
        encoder_format=resolved.encoder_format,
        chunking=chunking)
    _check_settings(self.settings, resolved)
    self.fingerprint = resolved.fingerprint
    self.hidden_size = resolved.hidden_size
    self._max_batch_tokens = max_batch_tokens
    self._model = LoadedBertModel(self.settings)

  @classmethod
  def from_run(cls, run_dir: _Path, model: Optional[_Path] = None,
               max_batch_tokens: Optional[int] = None) -> "Embedder":
    """The embedder of a published run: its model and vector settings.

    model: where the run's model is now, when it is no longer at the path
      the manifest names (moved, or copied to another machine); it must
      have the run's fingerprint. None: the manifest's path.
    """
    run_dir = os.fspath(run_dir)
    manifest = load_manifest(run_dir)
    entry, flags = _checked_model_entry(manifest, run_dir)
    model = entry if model is None else {**entry, "path": _path(model)}
    where = f"{run_dir}/manifest.json"
    try:
      return cls(model=model["path"], preprocessor=flags.get("preprocessor"),
                 model_root=flags.get("model_root"),
                 max_seq_length=model["max_seq_length"],
                 pooling=model["pooling"], normalize=model["normalize"],
                 precision=model.get("precision", "float32"),
                 chunking=_chunk_settings(model.get("chunking")),
                 fingerprint=model["fingerprint"],
                 max_batch_tokens=max_batch_tokens)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e
    except FileNotFoundError as e:
      # Told as the run's model, not as a --model flag the caller never
      # gave; the resolver's message starts with the flag it checked.
      if str(e).startswith("--preprocessor="):
        raise FileNotFoundError(
            f"{where} names the preprocess model {flags['preprocessor']}, "
            "which is not there any more: only that preprocess model "
            "embeds queries like the run's documents. Restore it, or embed "
            "the corpus again.") from e
      if model is not entry:
        # The resolver's advice is for pipeline.main's --model.
        raise FileNotFoundError(
            f"the run's model was given as {model['path']}, which is not "
            "there" + ("" if "no such directory" in str(e) else f": {e}")
            ) from e
      raise FileNotFoundError(
          f"{where} names the model {model['path']}, which is not there any "
          "more: only that model embeds queries like the run's documents. "
          "Restore it, or give where it is now (pipeline.query and "
          "export_model --serving: --model DIR; Embedder.from_run(run, "
          "model=DIR)), or embed the corpus again.") from e
    except OSError as e:  # e.g. a gs:// model without network
      raise OSError(f"{where} names the model {model['path']}: {e}") from e

  def _embed(self, texts: Sequence[str]) -> dict:
    kwargs = {}
    if self._max_batch_tokens:
      kwargs["max_tokens"] = self._max_batch_tokens
    return self._model.embed(list(texts), **kwargs)

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), H]: each text's vector, as the embeddings table
    holds it (with chunking, the token-weighted mean of its chunks')."""
    texts = _checked_texts(texts)
    if not texts:
      return np.zeros((0, self.hidden_size), np.float32)
    return self._embed(texts)["embedding"].astype(np.float32)

  def embed_query(self, question: str) -> np.ndarray:
    """float32 [H]: one question's vector, as `embed` makes it, for
    searching an index. A question the index could hold no vector for is
    refused (ValueError): one without wordpieces, which the pipeline
    rejects as empty_text. A question that lost text (as a truncated
    document does) is searched with what is left, and a warning says so:
    the hits of its start alone could pass for the whole question's."""
    check_question(question)
    outputs = self._embed([question])
    if has_no_wordpieces(outputs["num_tokens"][0]):
      raise ValueError(f"the question {NO_WORDPIECES}")
    if outputs["truncated"][0]:
      _LOG.warning("The question lost text, as the run's documents do when "
                   "%s: only its start was searched.", self._text_lost_when())
    return outputs["embedding"][0].astype(np.float32)

  def _text_lost_when(self) -> str:
    chunking = self.settings.chunking
    if chunking is None:
      return (f"longer than {self.settings.max_seq_length} wordpieces "
              "(max_seq_length)")
    return (f"longer than {chunking.max_chunks} chunks of "
            f"{chunking.chunk_size} wordpieces (max_chunks), or holding a "
            "word longer than a chunk")

  def embed_chunks(self, text: str) -> List[EmbeddedChunk]:
    """One text's chunks and their vectors, as the chunks table holds them
    (needs chunk settings: a run with --chunk_size, or `chunking=`)."""
    if self.settings.chunking is None:
      raise ValueError("embed_chunks needs chunk settings: a run made with "
                       "--chunk_size, or Embedder(..., chunking=...)")
    if not isinstance(text, str):
      raise TypeError(f"embed_chunks takes one text (str), not "
                      f"{type(text).__name__}")
    _check_unicode(text, "the text")
    outputs = self._embed([text])
    return [
        EmbeddedChunk(chunk_index=i, start=int(start), end=int(end),
                      text=text[int(start):int(end)],
                      embedding=vector.astype(np.float32),
                      num_tokens=int(num_tokens))
        for i, (start, end, vector, num_tokens) in enumerate(zip(
            outputs["chunk_start"], outputs["chunk_end"],
            outputs["chunk_embedding"], outputs["chunk_num_tokens"]))
    ]

  def save_serving_model(self, output_dir: str):
    """A strings-to-vectors SavedModel of this embedder (see
    LoadedBertModel.save_serving_model). It cannot chunk: with chunking (a
    run with --chunk_size) it embeds a text as the run embeds one chunk,
    cut at chunk_size wordpieces, so that a text that fits gets the run's
    vector (a one-chunk document's, and its chunk's), and a longer one is
    `truncated` (`embed_chunks` chunks it) rather than embedded whole up to
    max_seq_length, which no vector of the run is."""
    model = self._model
    if self.settings.chunking is not None:
      model = LoadedBertModel(dataclasses.replace(
          self.settings, chunking=None,
          max_seq_length=self.settings.chunking.chunk_size))
    model.save_serving_model(output_dir)

  def __repr__(self):
    return (f"Embedder({dataclasses.asdict(self.settings)!r}, "
            f"fingerprint={self.fingerprint!r})")


def _check_settings(settings: ModelSettings,
                    model: resolution.ResolvedModel):
  """What the model can compute, as the pipeline's planning checks it
  (pipeline/model_plan.py): otherwise a long text would fail deep in the
  encoder, or a setting would be quietly ignored."""
  if settings.pooling not in POOLING_MODES:
    raise ValueError(f"pooling {settings.pooling!r} is not one of "
                     f"{', '.join(POOLING_MODES)}")
  if settings.precision not in PRECISIONS:
    raise ValueError(f"precision {settings.precision!r} is not one of "
                     f"{', '.join(PRECISIONS)}")
  problem = model.settings_problem(
      settings.max_seq_length, settings.pooling,
      settings.chunking.chunk_size if settings.chunking else None)
  if problem:
    raise ValueError(problem)


def _path(value: Optional[_Path]) -> Optional[str]:
  return None if value is None else os.fspath(value)


def _check_arguments(normalize, chunking, max_batch_tokens):
  """Arguments a caller could get wrong and the model would quietly misread
  (normalize="false" is true); the vector settings' values are checked as
  the pipeline checks them (_check_settings)."""
  if max_batch_tokens is not None and (
      isinstance(max_batch_tokens, bool) or
      not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
    raise ValueError("max_batch_tokens must be a positive whole number or "
                     f"None, not {max_batch_tokens!r}")
  if normalize is not None and not isinstance(normalize, bool):
    raise TypeError(f"normalize must be True, False or None (the model's "
                    f"own), not {normalize!r}")
  if chunking is not None and not isinstance(chunking, ChunkSettings):
    raise TypeError("chunking must be a bert_model.chunking.ChunkSettings or "
                    f"None, not {type(chunking).__name__}")


def check_question(question) -> None:
  """A question to search with: a str, not blank, valid Unicode; raises
  TypeError or ValueError saying which it is not."""
  if not isinstance(question, str):
    raise TypeError(f"the question is of type {type(question).__name__}, "
                    "not str")
  if not question.strip():
    raise ValueError("the question is empty: give the text to search with")
  _check_unicode(question, "the question")


def _check_unicode(text: str, name: str) -> None:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as error:
    raise ValueError(
        f"{name} is not valid Unicode: {error.reason} at character "
        f"{error.start} (a lone surrogate, as from bytes decoded with "
        "errors='surrogateescape')") from None


def _checked_texts(texts) -> list:
  """The texts as a list, each a str that is valid Unicode (TensorFlow
  would fail on anything else with a long error about binding inputs). A
  1-D numpy array (or a pandas Series, through its .to_numpy()) of str is
  taken as the list of its elements."""
  if hasattr(texts, "to_numpy") and not isinstance(texts, np.ndarray):
    texts = texts.to_numpy()
  if isinstance(texts, np.ndarray):
    if texts.ndim != 1:
      raise TypeError(f"embed takes a 1-D array of texts, not one of shape "
                      f"{texts.shape}; flatten it first (texts.ravel())")
    texts = texts.tolist()
  if not isinstance(texts, (list, tuple)):
    raise TypeError(
        f"embed takes a list of texts (str), not {type(texts).__name__}; "
        "for one text, embed([text])")
  for position, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"text {position} is of type {type(text).__name__}, "
                      "not str")
    _check_unicode(text, f"text {position}")
  return list(texts)


def _chunk_settings(chunking: Optional[dict]) -> Optional[ChunkSettings]:
  if not chunking:
    return None
  fields = {f.name for f in dataclasses.fields(ChunkSettings)}
  if set(chunking) != fields or not all(
      isinstance(v, int) and not isinstance(v, bool)
      for v in chunking.values()):
    raise ValueError(f"model.chunking is {chunking!r}, not the chunk "
                     "settings the pipeline writes: the manifest is damaged.")
  return ChunkSettings(**chunking)


_MODEL_ENTRY_TYPES = {"path": str, "max_seq_length": int, "pooling": str,
                      "normalize": bool, "fingerprint": str}


def _checked_model_entry(manifest: dict, run_dir: str):
  """(the manifest's "model" entry, its "settings"."model" flags), checked
  to be what the pipeline writes: a damaged or hand-edited manifest is
  told as such, not met as a TypeError deep in the model."""
  where = f"{run_dir}/manifest.json"
  model = manifest.get("model")
  settings = manifest.get("settings")
  flags = settings.get("model") if isinstance(settings, dict) else None
  if not isinstance(model, dict) or not isinstance(flags, dict):
    raise ValueError(f"{where} has no \"model\" entry or \"settings\" of "
                     "the model: it is damaged, or not written by this "
                     "pipeline.")
  for name in ("preprocessor", "model_root"):
    if not isinstance(flags.get(name), (str, type(None))):
      raise ValueError(f"{where}: settings.model.{name} is "
                       f"{flags[name]!r}, not a path: the manifest is "
                       "damaged.")
  for name, kind in _MODEL_ENTRY_TYPES.items():
    value = model.get(name)
    if not isinstance(value, kind) or (kind is int and
                                       isinstance(value, bool)):
      raise ValueError(f"{where}: model.{name} is {value!r}, not a "
                       f"{kind.__name__}: the manifest is damaged.")
  if model["max_seq_length"] < 3:
    raise ValueError(f"{where}: model.max_seq_length is "
                     f"{model['max_seq_length']}, less than 3: the manifest "
                     "is damaged.")
  if model["pooling"] not in POOLING_MODES:
    raise ValueError(f"{where}: model.pooling is {model['pooling']!r}, not "
                     f"one of {', '.join(POOLING_MODES)}: the manifest is "
                     "damaged.")
  if embedded_text_pairs(manifest):
    raise ValueError(f"{where}: the run embedded text pairs "
                     "(--text_pair_field); queries are single texts, whose "
                     "vectors would not be made like the run's. Find a "
                     "pair's neighbours with pipeline.main --neighbours_of "
                     "QUERIES --text_pair_field FIELD, which embeds the "
                     "queries as pairs too.")
  if CHUNKS in manifest.get("outputs", {}) and not model.get("chunking"):
    # Queries would be embedded whole, unlike the run's chunks.
    raise ValueError(f"{where}: the run has a chunks table but no "
                     "model.chunking settings: the manifest is damaged.")
  if not isinstance(model.get("chunking") or {}, dict):
    raise ValueError(f"{where}: model.chunking is {model['chunking']!r}, "
                     "not an object: the manifest is damaged.")
  return model, flags
