"""The small metadata file that sits beside an exported model's SavedModels.

A model directory is:

  MODEL_DIR/
    encoder/               SavedModel, TF Hub BERT encoder interface
    preprocess/            SavedModel, TF Hub BERT preprocess interface
    vocab.txt              the wordpiece vocabulary, for people and tools
    model_metadata.json    this file

The metadata records the facts the pipeline needs to pick the right defaults
(pooling, normalisation, max length) and the facts a run must publish about the
model it used (source, licence, checksums, fingerprint).
"""

import dataclasses
import json
import os
from typing import Dict, Optional

import tensorflow as tf

METADATA_FILE = "model_metadata.json"
ENCODER_DIR = "encoder"
PREPROCESS_DIR = "preprocess"
VOCAB_FILE = "vocab.txt"
# Bumped when the exported graph computes anything differently.
FORMAT_VERSION = 1
# Bumped when the exported graph computes the same thing faster (same
# fingerprint, so earlier vectors stay reusable). Exports from before this
# field was written are revision 1.
# 2: dense layers use BiasAdd, which TensorFlow fuses with their MatMul.
EXPORTER_REVISION = 2


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
  name: str
  source: Dict[str, str]  # where the weights came from
  license: str
  fingerprint: str  # sha256 of the weights, tokenizer settings, format version
  checksums: Dict[str, str]  # source file -> sha256
  pooling: str  # one of POOLING_MODES: the model's intended sentence vector
  normalize: bool  # L2-normalise the sentence vector
  lower_case: bool
  max_seq_length: int  # the length the model is meant to be run at
  max_position_embeddings: int
  hidden_size: int
  num_layers: int
  num_attention_heads: int
  vocab_size: int
  has_pooler: bool
  format_version: int = FORMAT_VERSION
  # Missing from exports older than the field: those are revision 1.
  exporter_revision: int = 1

  @property
  def is_outdated_export(self) -> bool:
    """True when re-exporting would give a faster graph of the same model."""
    return self.exporter_revision < EXPORTER_REVISION

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict) -> "ModelMetadata":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in fields})


def metadata_path(model_dir: str) -> str:
  return os.path.join(model_dir, METADATA_FILE)


def read_metadata(model_dir: str) -> Optional[ModelMetadata]:
  """The model's metadata, or None for a model directory without any."""
  path = metadata_path(model_dir)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return ModelMetadata.from_dict(json.loads(f.read()))
  except (ValueError, TypeError, AttributeError) as e:  # JSON's and UTF-8's
    raise ValueError(
        f"{path} is damaged ({' '.join(str(e).split())[:200]}); export the "
        "model again (python -m pipeline.export_model)") from e


def write_metadata(model_dir: str, metadata: ModelMetadata):
  with tf.io.gfile.GFile(metadata_path(model_dir), "w") as f:
    f.write(metadata.to_json() + "\n")
