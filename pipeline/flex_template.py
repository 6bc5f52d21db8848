"""The Flex Template: its metadata, made from the pipeline's own flags, and
its launcher's translation of template parameters into pipeline flags.

  flex_template_metadata()   dataflow/flex_template_metadata.json (written by
                             `python -m pipeline.dataflow_job flex-metadata`)
  launch_flex_template(argv) the template's program (dataflow/
                             flex_template_launcher.py)
"""

import logging
import sys
from typing import List, Sequence

from pipeline import main as pipeline_main
from pipeline.flags import flag_actions
from pipeline.flags import flag_names

_LOG = logging.getLogger(__name__)

# Flags that `config_from_options` requires (it raises ConfigError without
# them); everything else has a default.
REQUIRED_FLAGS = ("input", "output")


def _pipeline_flag_actions():
  """The argparse actions of the pipeline's flags, in declaration order."""
  return [action for actions in flag_actions().values() for action in actions]


def pipeline_flags() -> List[str]:
  """Every flag of the pipeline, without its dashes."""
  return [action.dest for action in _pipeline_flag_actions()]


def boolean_flags() -> List[str]:
  """Flags that take no value (argparse store_true)."""
  return [action.dest for action in _pipeline_flag_actions()
          if action.nargs == 0 and action.const is True]


def _expand_help(action) -> str:
  # As argparse's HelpFormatter._expand_help does.
  params = dict(vars(action))
  for name, value in list(params.items()):
    if hasattr(value, "__name__"):
      params[name] = value.__name__
  if params.get("choices") is not None:
    params["choices"] = ", ".join(str(c) for c in params["choices"])
  return (action.help or "") % params


def _label(dest: str) -> str:
  return dest.replace("_", " ").capitalize()


def _parameter(action) -> dict:
  name = action.dest
  help_text = " ".join(_expand_help(action).split())
  parameter = {
      "name": name,
      "label": _label(name),
      "helpText": help_text,
      "isOptional": name not in REQUIRED_FLAGS,
  }
  default = action.default
  if action.nargs == 0 and action.const is True:  # store_true
    parameter.update(paramType="BOOLEAN", regexes=["^(true|false)$"])
    default = "false"
  elif action.choices:
    parameter.update(
        paramType="ENUM",
        regexes=["^(" + "|".join(str(c) for c in action.choices) + ")$"],
        enumOptions=[{"value": str(c)} for c in action.choices])
  elif action.type is int:
    parameter.update(paramType="NUMBER", regexes=["^-?[0-9]+$"])
  else:
    parameter["paramType"] = "TEXT"
  if default not in (None, ""):
    parameter["defaultValue"] = str(default)
  if not help_text:
    parameter["helpText"] = (
        f"--{name}" + (f" (default: {default})." if default not in (None, "")
                       else "."))
  return parameter


def flex_template_metadata() -> dict:
  """The Flex Template metadata: one parameter per pipeline flag."""
  return {
      "name": "BERT batch embeddings",
      "description": (
          "Embeds a text corpus with a BERT model in TF Hub format and writes "
          "one run directory: embeddings (TFRecord and a BigQuery-loadable "
          "copy), neighbour tables, every rejected record, and "
          "manifest.json, written last. Without --model, the default model "
          "baked into the image (all-MiniLM-L6-v2) is used. Flags that take "
          "no value are passed as true/false."),
      "parameters": [_parameter(action) for action in _pipeline_flag_actions()],
  }


def flex_template_args(argv: Sequence[str]) -> List[str]:
  """Flex Template launcher arguments -> `pipeline.main` arguments.

  The launcher passes every parameter as --name=value: flags that take no
  value arrive as --flag=true / --flag=false and become --flag / nothing.
  Without --model_copies or --large_model, one model copy per worker machine
  is loaded (--model_copies=1): on a GPU worker, one model per SDK process
  would exhaust the GPU's memory.
  """
  booleans = set(boolean_flags())
  args = []
  for arg in argv:
    name, eq, value = arg.partition("=")
    if eq and name.startswith("--") and name[2:] in booleans:
      if value.lower() not in ("true", "false"):
        raise ValueError(f"{arg}: use {name}=true or {name}=false.")
      if value.lower() == "true":
        args.append(name)
      continue
    args.append(arg)
  names = flag_names(args)
  if "--model_copies" not in names and "--large_model" not in names:
    args.append("--model_copies=1")
  return args


def launch_flex_template(argv: Sequence[str]) -> int:
  """The Flex Template's program: `pipeline.main` with translated flags."""
  try:
    args = flex_template_args(argv)
  except ValueError as e:
    print(f"flex template: error: {e}", file=sys.stderr)
    return 2
  if "--sdk_container_image" not in flag_names(args):
    _LOG.warning(
        "No sdk_container_image parameter: the workers will run Beam's stock "
        "image, which has neither this project nor its model. Launch with "
        "--parameters=sdk_container_image=IMAGE (this template's image).")
  return pipeline_main.main(args)
