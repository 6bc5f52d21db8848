"""What a sentence-transformers directory says of its pooling.

`modules.json` lists the modules a sentence-transformers model runs after
its Transformer; `1_Pooling/config.json` says how it pools (one flag a mode
before sentence-transformers 6, `"pooling_mode"` since). The export
reproduces Transformer, Pooling (mean, cls, max) and Normalize; any other
module, or several pooling modes at once, is refused (CheckpointError)
rather than dropped, which would give other vectors.
"""

import os

from bert_model.checkpoint_files import CheckpointError
from bert_model.checkpoint_files import read_json


# sentence-transformers modules (modules.json, by class name) that the export
# reproduces: the Transformer is the encoder itself, Pooling and Normalize
# become the model's pooling and normalize settings. Any other (Dense,
# LayerNorm, ...) changes the vectors, so leaving it out would be wrong.
_REPRODUCED_MODULES = ("Transformer", "Pooling", "Normalize")
# Pooling modes the exported model computes.
_SUPPORTED_POOLING = ("mean", "cls", "max")
# The Pooling config before sentence-transformers 6: one flag a mode.
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _modules(path: str) -> list:
  """The entries of a sentence-transformers modules.json, if there is one."""
  modules_path = os.path.join(path, "modules.json")
  if not os.path.exists(modules_path):
    return []
  modules = read_json(modules_path)
  if not isinstance(modules, list) or not all(
      isinstance(module, dict) for module in modules):
    raise CheckpointError(
        f"{modules_path}: not a sentence-transformers module list (a JSON "
        "list of objects with type and path); fix or remove the file.")
  return modules


def _pooling_modes(config, config_path: str) -> list:
  """The modes a Pooling config turns on, in either file format."""
  if not isinstance(config, dict):
    raise CheckpointError(
        f"{config_path}: holds a JSON {type(config).__name__}, not a "
        "sentence-transformers Pooling config.")
  if "pooling_mode" in config:  # sentence-transformers >= 6
    modes = config["pooling_mode"]
    modes = [modes] if isinstance(modes, str) else modes
    if not isinstance(modes, list) or not all(
        isinstance(mode, str) for mode in modes):
      raise CheckpointError(
          f"{config_path}: pooling_mode is {config['pooling_mode']!r}; "
          f"expected one of {', '.join(_SUPPORTED_POOLING)}.")
    return modes
  return [_POOLING_FLAGS.get(key, key) for key, on in config.items()
          if key.startswith("pooling_mode_") and on]


def _pooling(config_path: str) -> str:
  """The one supported pooling mode of a Pooling module's config."""
  modes = _pooling_modes(read_json(config_path), config_path)
  if len(modes) > 1:
    # sentence-transformers concatenates the modes' vectors.
    raise CheckpointError(
        f"{config_path}: pools with {' + '.join(modes)} at once (the "
        "vectors concatenated), which the export does not reproduce; only a "
        f"single mode ({', '.join(_SUPPORTED_POOLING)}) converts.")
  if not modes or modes[0] not in _SUPPORTED_POOLING:
    raise CheckpointError(
        f"{config_path}: pooling mode {modes[0] if modes else 'none'} is not "
        f"supported; only {', '.join(_SUPPORTED_POOLING)} convert.")
  return modes[0]


def sentence_transformers_settings(path: str):
  """(pooling, normalize) from a sentence-transformers modules.json."""
  pooling, normalize = None, False
  for module in _modules(path):
    module_type = str(module.get("type", ""))
    kind = module_type.rpartition(".")[2]
    if kind not in _REPRODUCED_MODULES:
      raise CheckpointError(
          f"{os.path.join(path, 'modules.json')}: module {module_type} "
          f"({module.get('path') or module.get('name')}) is not reproduced "
          "by the export, and dropping it would give other vectors than "
          "sentence-transformers'; only Transformer, Pooling and Normalize "
          "modules convert.")
    if kind == "Normalize":
      normalize = True
    elif kind == "Pooling":
      pooling = _pooling(
          os.path.join(path, str(module.get("path", "")), "config.json"))
  return pooling, normalize
