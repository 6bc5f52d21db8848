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


def _check_saved_model(model: str, path: str):
  """A cheap look at a SavedModel, so a corrupt one fails before any data is
  read rather than in every worker: the graph must parse, variables exist."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  saved_model = saved_model_pb2.SavedModel()
  try:
    with tf.io.gfile.GFile(_join(path, "saved_model.pb"), "rb") as f:
      saved_model.ParseFromString(f.read())
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"--model={model}: {path}/saved_model.pb is corrupt ({e}); export the "
        "model again with `python -m pipeline.export_model`.") from None
  if not saved_model.meta_graphs:
    raise ValueError(f"--model={model}: {path}/saved_model.pb holds no graph; "
                     "export the model again.")
  if not tf.io.gfile.exists(_join(path, "variables", "variables.index")):
    raise ValueError(f"--model={model}: {path} has no variables; export the "
                     "model again.")


def resolve_model(model: Optional[str]) -> ResolvedModel:
  """Checks a model directory; raises FileNotFoundError or ValueError."""
  if model is None:
    model = default_model.ensure_default_model()
  if model.startswith("http://"):
    raise ValueError(
        f"--model={model}: refusing to load a model over plain http; use "
        "https, gs:// or a local directory.")
  if model.startswith("https://"):
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
  for part in (metadata_lib.ENCODER_DIR, metadata_lib.PREPROCESS_DIR):
    _check_saved_model(model, _join(model, part))
  return ResolvedModel(
      path=model,
      preprocess_path=_join(model, metadata_lib.PREPROCESS_DIR),
      encoder_path=_join(model, metadata_lib.ENCODER_DIR),
      metadata=metadata)
