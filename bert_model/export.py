"""Exports a Hugging Face BERT checkpoint as a TF Hub format model directory.

The directory holds two SavedModels, loadable with `tensorflow_hub.load` (import
`tensorflow_text` before loading `preprocess/`):

- `encoder/`: called with a dict of int32 [batch, seq] tensors
  `input_word_ids`, `input_mask`, `input_type_ids`; returns a dict with
  `pooled_output` [batch, H], `sequence_output` [batch, seq, H],
  `encoder_outputs` (a list, one [batch, seq, H] per layer) and `default`
  (= pooled_output). Batch and sequence length are dynamic. Its
  `serving_default` signature returns the same with the list flattened to
  `encoder_outputs_0` ... `encoder_outputs_{L-1}`.
- `preprocess/`: called with a string [batch] tensor; returns the encoder's
  three inputs, padded to the longest row (at most `max_seq_length`). Has the
  sub-objects `tokenize` (strings to int32 RaggedTensor [batch, words, pieces])
  and `bert_pack_inputs(segments, seq_length=None)` (one or two segments), as
  `bert_en_uncased_preprocess` has.

plus `vocab.txt` and `model_metadata.json` (see metadata.py). The directory is
written under a temporary name and renamed into place at the end, so a model
directory that exists is complete.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Optional

import numpy as np
import tensorflow as tf

from bert_model import checkpoint as checkpoint_lib
from bert_model import metadata as metadata_lib
from bert_model.choices import POOLING_MODES
from bert_model.encoder import BertEncoder
from bert_model.preprocess import BertPreprocessor

_LOG = logging.getLogger(__name__)

# Sentences the exporter runs through the model before and after saving: the
# reloaded SavedModels must give what the in-memory modules gave.
_SELF_CHECK_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Ünïcödé"]


def _fingerprint(ckpt: checkpoint_lib.Checkpoint) -> str:
  """Identifies what the model computes: weights, tokenizer, graph version."""
  facts = {
      "checksums": ckpt.checksums,
      "lower_case": ckpt.lower_case,
      "special_tokens": list(ckpt.special_tokens),
      "format_version": metadata_lib.FORMAT_VERSION,
  }
  if ckpt.strip_accents != ckpt.lower_case:
    # Only then: the fingerprints of models exported before it was read
    # stay the same.
    facts["strip_accents"] = ckpt.strip_accents
  digest = hashlib.sha256()
  digest.update(json.dumps(facts, sort_keys=True).encode("utf-8"))
  return digest.hexdigest()


def _license_from_model_card(path: str) -> str:
  """The `license:` of a Hugging Face model card's front matter, if any."""
  card = os.path.join(path, "README.md")
  if os.path.exists(card):
    with open(card, encoding="utf-8", errors="replace") as f:
      head = f.read(4096)
    match = re.search(r"^license:\s*(\S+)", head, re.MULTILINE)
    if match:
      return match.group(1)
  return "unknown"


def build_metadata(ckpt: checkpoint_lib.Checkpoint, name: str,
                   source: dict, license_name: Optional[str] = None,
                   pooling: Optional[str] = None,
                   normalize: Optional[bool] = None,
                   max_seq_length: Optional[int] = None
                  ) -> metadata_lib.ModelMetadata:
  """Metadata from the checkpoint, with the caller's overrides."""
  if pooling is None:
    # sentence-transformers says how it pools; a bare BERT is meant to be
    # used through its pooler (or its first token when it has none).
    pooling = ckpt.pooling or ("pooler" if ckpt.has_pooler else "cls")
  if pooling not in POOLING_MODES:
    raise ValueError(f"pooling {pooling!r} is not one of "
                     f"{', '.join(POOLING_MODES)}.")
  if pooling == "pooler" and not ckpt.has_pooler:
    raise ValueError(
        f"pooling 'pooler' needs a pooler, and {ckpt.path} has no pooler "
        "weights (pooler.dense); use --pooling mean or cls.")
  if max_seq_length is not None and not (
      2 < max_seq_length <= ckpt.config.max_position_embeddings):
    raise ValueError(
        f"max_seq_length {max_seq_length} must be between 3 and the model's "
        f"max_position_embeddings ({ckpt.config.max_position_embeddings}).")
  return metadata_lib.ModelMetadata(
      name=name,
      source=source,
      license=license_name or _license_from_model_card(ckpt.path),
      fingerprint=_fingerprint(ckpt),
      checksums=dict(ckpt.checksums),
      pooling=pooling,
      normalize=ckpt.normalize if normalize is None else normalize,
      lower_case=ckpt.lower_case,
      max_seq_length=max_seq_length or ckpt.max_seq_length,
      max_position_embeddings=ckpt.config.max_position_embeddings,
      hidden_size=ckpt.config.hidden_size,
      num_layers=ckpt.config.num_hidden_layers,
      num_attention_heads=ckpt.config.num_attention_heads,
      vocab_size=ckpt.config.vocab_size,
      has_pooler=ckpt.has_pooler,
      exporter_revision=metadata_lib.EXPORTER_REVISION)


def _self_check(preprocess, encoder, model_dir: str):
  """The saved models must compute what the in-memory ones do."""
  texts = tf.constant(_SELF_CHECK_TEXTS)
  expected = encoder(preprocess(texts))["sequence_output"].numpy()
  reloaded_preprocess = tf.saved_model.load(
      os.path.join(model_dir, metadata_lib.PREPROCESS_DIR))
  reloaded_encoder = tf.saved_model.load(
      os.path.join(model_dir, metadata_lib.ENCODER_DIR))
  actual = reloaded_encoder(reloaded_preprocess(texts))["sequence_output"]
  np.testing.assert_allclose(actual.numpy(), expected, atol=1e-5)


def _check_output_dir(output_dir: str, overwrite: bool,
                      checkpoint_dir: str):
  """Before the (slow) conversion: where the model directory cannot go."""
  output = os.path.realpath(output_dir)
  if os.path.commonpath([output, os.path.realpath(checkpoint_dir)]) == output:
    # Replacing it (--overwrite) would delete the checkpoint.
    raise ValueError(
        f"{output_dir} is or holds the checkpoint {checkpoint_dir}; name "
        "another directory for the model.")
  if os.path.isfile(output_dir):
    raise FileExistsError(
        f"{output_dir} is a file; name a new directory for the model.")
  if os.path.exists(output_dir) and not overwrite:
    raise FileExistsError(
        f"{output_dir} exists; pass --overwrite to replace it.")
  ancestor = os.path.dirname(os.path.abspath(output_dir))
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise FileExistsError(
        f"{output_dir} cannot be created: {ancestor} is a file. Name a "
        "directory elsewhere for the model.")


def export_checkpoint(checkpoint_dir: str, output_dir: str,
                      name: Optional[str] = None,
                      source: Optional[dict] = None,
                      license_name: Optional[str] = None,
                      pooling: Optional[str] = None,
                      normalize: Optional[bool] = None,
                      max_seq_length: Optional[int] = None,
                      overwrite: bool = False,
                      lower_case: Optional[bool] = None
                     ) -> metadata_lib.ModelMetadata:
  """Converts `checkpoint_dir` into a model directory at `output_dir`.

  Raises CheckpointError (a ValueError) before writing anything if the
  checkpoint is not a convertible BERT, and FileExistsError if `output_dir`
  exists and `overwrite` is False.
  """
  _check_output_dir(output_dir, overwrite, checkpoint_dir)
  ckpt = checkpoint_lib.read_checkpoint(checkpoint_dir, lower_case=lower_case)
  kind = checkpoint_lib.layout_of(checkpoint_dir)
  metadata = build_metadata(
      ckpt, name=name or os.path.basename(os.path.normpath(checkpoint_dir)),
      source=source or {"kind": kind, "path": ckpt.path},
      license_name=license_name, pooling=pooling, normalize=normalize,
      max_seq_length=max_seq_length)

  encoder = BertEncoder(ckpt.config, ckpt.weights)
  preprocess = BertPreprocessor(ckpt.vocab, ckpt.lower_case,
                                ckpt.special_tokens,
                                metadata.max_seq_length,
                                strip_accents=ckpt.strip_accents)
  preprocess.trace_for_export()

  parent = os.path.dirname(os.path.abspath(output_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
  os.chmod(staging, 0o755)  # mkdtemp makes it private
  try:
    tf.saved_model.save(
        encoder, os.path.join(staging, metadata_lib.ENCODER_DIR),
        signatures={"serving_default": encoder.serving_default})
    tf.saved_model.save(
        preprocess, os.path.join(staging, metadata_lib.PREPROCESS_DIR),
        signatures={"serving_default": preprocess.__call__})
    with open(os.path.join(staging, metadata_lib.VOCAB_FILE), "w",
              encoding="utf-8") as f:
      f.write("\n".join(ckpt.vocab) + "\n")
    metadata_lib.write_metadata(staging, metadata)
    _self_check(preprocess, encoder, staging)
    if os.path.exists(output_dir):
      shutil.rmtree(output_dir)
    os.rename(staging, output_dir)
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging)
  # DEBUG: the command that exports (pipeline.export_model) tells it itself.
  _LOG.debug("Exported %s to %s (fingerprint %s)", checkpoint_dir, output_dir,
             metadata.fingerprint[:12])
  return metadata
