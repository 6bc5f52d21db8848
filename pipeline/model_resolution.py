"""Turns --model into the paths and facts the pipeline needs, before it runs.

A model directory (local or gs://) holds `encoder/` and `preprocess/`
SavedModels and `model_metadata.json` (see pipeline/bert/metadata.py). Without
--model the default model is used, exported first if it is missing. Checking
here means a wrong --model fails at once, not an hour into a run.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from pipeline.bert import default_model
from pipeline.bert import metadata as metadata_lib


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
  path: str  # the model directory as given (or the default's)
  preprocess_path: str
  encoder_path: str
  metadata: metadata_lib.ModelMetadata

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


def resolve_model(model: Optional[str]) -> ResolvedModel:
  """Checks a model directory; raises FileNotFoundError or ValueError."""
  if model is None:
    model = default_model.ensure_default_model()
  if model.startswith(("http://", "https://")):
    raise ValueError(
        f"--model={model}: model hub handles are not supported yet; download "
        "or export the model to a directory and pass its path.")
  if not tf.io.gfile.isdir(model):
    raise FileNotFoundError(
        f"--model={model}: no such directory. Pass a model directory written "
        "by `python -m pipeline.export_model`, or leave --model out to use "
        "the default model.")
  metadata = metadata_lib.read_metadata(model)
  missing = [
      part for part in (metadata_lib.ENCODER_DIR, metadata_lib.PREPROCESS_DIR)
      if not tf.io.gfile.exists(_join(model, part, "saved_model.pb"))
  ]
  if metadata is None:
    missing.append(metadata_lib.METADATA_FILE)
  if missing:
    raise FileNotFoundError(
        f"--model={model} is not a complete model directory: missing "
        f"{', '.join(missing)}. Export one with `python -m "
        "pipeline.export_model --checkpoint HF_DIR --output_dir DIR`.")
  return ResolvedModel(
      path=model,
      preprocess_path=_join(model, metadata_lib.PREPROCESS_DIR),
      encoder_path=_join(model, metadata_lib.ENCODER_DIR),
      metadata=metadata)
