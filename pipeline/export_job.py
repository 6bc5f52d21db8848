"""The work of `python -m pipeline.export_model` (pipeline/export_model.py):
its flags, and the export of a checkpoint or of a serving SavedModel.

Imports TensorFlow: the entry point imports this module once TensorFlow has
started with its notices captured.
"""

import argparse
import logging
import os
from typing import Optional, Sequence

import tensorflow as tf

from bert_model import catalog
from bert_model import checkpoint
from bert_model import default_model
from bert_model import export
from bert_model import resolution
from bert_model.choices import POOLING_MODES
from bert_model.metadata import ENCODER_DIR
from bert_model.metadata import METADATA_FILE
from pipeline.embedder import Embedder
from pipeline.errors import CommandLineParser
from pipeline.errors import one_line
from pipeline.errors import print_error
from pipeline.errors import read_errors_of
from run_directory.layout import LOCK_FILE
from run_directory.layout import MANIFEST_FILE
from run_directory.layout import REFUSAL_FILE
from run_directory.layout import REPORT_FILE
from run_directory.layout import STAGING_PREFIX
from run_directory.layout import TABLES
from run_directory.manifest import refusal_paths

PROG = "python -m pipeline.export_model"


def _bool(value: str) -> bool:
  if value.lower() in ("true", "1", "yes"):
    return True
  if value.lower() in ("false", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(argv, description: str):
  parser = CommandLineParser(
      prog=PROG, description=description,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
      "--checkpoint", help="BERT checkpoint directory: Hugging Face "
      "(config.json, vocab.txt, model.safetensors or pytorch_model.bin) or "
      "original BERT (bert_config.json, vocab.txt, bert_model.ckpt.*) or "
      "TF Model Garden BertEncoder (params.yaml or encoder_config.json, "
      "vocab.txt, ckpt-N.*). "
      f"Default: the packaged {default_model.DEFAULT_MODEL_NAME}.")
  parser.add_argument(
      "--output_dir",
      help="Model directory to write (default: "
      f"{default_model.DEFAULT_MODEL_DIR}; required with --serving).")
  parser.add_argument("--name", help="Model name recorded in the metadata.")
  parser.add_argument("--license", help="Licence recorded in the metadata "
                      "(default: from the model card, else 'unknown').")
  parser.add_argument("--pooling", choices=POOLING_MODES,
                      help="Intended sentence pooling (default: from "
                      "sentence-transformers config, else 'pooler').")
  parser.add_argument("--normalize", type=_bool, help="L2-normalise sentence "
                      "vectors by default (true/false).")
  parser.add_argument("--max_seq_length", type=int,
                      help="Default input length (default: the model's own).")
  parser.add_argument("--lower_case", type=_bool,
                      help="Whether the tokenizer lower-cases (true for "
                      "uncased models), when the checkpoint cannot tell. "
                      "Default: its tokenizer files, else whether its "
                      "vocabulary holds capitalised words.")
  parser.add_argument("--overwrite", action="store_true",
                      help="Replace --output_dir if it exists.")
  parser.add_argument(
      "--serving", metavar="RUN_DIR_OR_MODEL",
      help="Write a serving SavedModel (text in, embedding out) of this run "
      "directory (its model and settings) or model, instead of exporting a "
      "checkpoint.")
  parser.add_argument(
      "--preprocessor", help="With --serving of a TF Hub encoder: its "
      "preprocess model (catalogue name, handle or directory), as "
      "pipeline.main's --preprocessor. Default: the one the catalogue "
      "pairs with it.")
  parser.add_argument(
      "--model_root", help="With --serving of a catalogue name or handle: "
      "the local or gs:// mirror of TF Hub models to load it from, as "
      "pipeline.main's --model_root.")
  parser.add_argument(
      "--model", metavar="MODEL_DIR", help="With --serving of a run "
      "directory: where the run's model is now, when it is no longer at the "
      "path its manifest names (moved, or copied to another machine); it "
      "must have the run's fingerprint.")
  args = parser.parse_args(argv)
  serving_only = [f"--{name}" for name in _SERVING_ONLY
                  if getattr(args, name) is not None]
  if serving_only and not args.serving:
    parser.error(f"{', '.join(serving_only)}: for --serving only; a "
                 "checkpoint's export has no use for them")
  if args.output_dir is None:
    if args.serving:
      parser.error("--serving needs --output_dir: the SavedModel directory "
                   "to write")
    args.output_dir = default_model.DEFAULT_MODEL_DIR
  if args.serving:
    ignored = [f"--{name}" for name in _CHECKPOINT_ONLY
               if getattr(args, name) is not None]
    if ignored:
      parser.error(f"{', '.join(ignored)}: for exporting a checkpoint; "
                   "leave out with --serving")
    missing = _missing_serving_source(args.serving)
    if missing:
      parser.error(missing)
    try:
      # Looked up once (a glob of its staging): _export_serving reads it.
      args.serving_is_run = _is_run_directory(args.serving)
    except read_errors_of(args.serving) as e:
      parser.error(f"--serving={args.serving}: {one_line(e)}")
    if args.model is not None and not args.serving_is_run:
      parser.error(f"--model: for --serving of a run directory whose model "
                   f"moved; {args.serving} is not a run directory (give the "
                   "model to serve as --serving)")
    if args.serving_is_run:
      ignored = [f"--{name}" for name in _MODEL_SETTINGS
                 if getattr(args, name) is not None]
      if ignored:
        parser.error(
            f"{', '.join(ignored)}: {args.serving} is a run directory, whose "
            "queries must be embedded with the run's own settings (its "
            "manifest's); leave them out, or give the run's model directory "
            "to serve other settings")
  return args


# Flags of a checkpoint's export that --serving has no use for.
_CHECKPOINT_ONLY = ("checkpoint", "name", "license", "lower_case")
# Flags that set a served model's vectors; a run directory has its own.
_MODEL_SETTINGS = ("pooling", "normalize", "max_seq_length", "preprocessor",
                   "model_root")
# Flags for finding the model to serve.
_SERVING_ONLY = ("preprocessor", "model_root", "model")


def _missing_serving_source(value: str) -> Optional[str]:
  """Why --serving names nothing, if it does not: a local path (as the
  resolver tells paths from catalogue names and handles) to nothing, or a
  name that is no directory and not in the catalogue. Told here, where the
  flag is --serving, rather than as a wrong --model by the resolver."""
  if "://" in value or catalog.is_handle(value):
    return None
  if resolution.looks_like_path(value):
    if tf.io.gfile.exists(value):
      return None
    return (f"--serving={value}: no such directory. Pass a run directory "
            "(manifest.json at its top), or a model the way --model of "
            "pipeline.main takes it: a model directory, a catalogue name "
            "(`python -m pipeline.catalog`) or a TF Hub handle")
  try:
    catalog.lookup_name(value)
  except catalog.UnknownModelError as e:
    return f"--serving={value}: no such run or model directory, and {e}"
  return None


def _is_run_directory(path: str) -> bool:
  """A published run (its manifest), or what Embedder.from_run tells as a
  run that is not one (yet): a run a guardrail refused to publish, one
  under way or killed (its lock or staging), a refused run's staging
  directory, a run's tables without their manifest, a directory inside a
  run, a --latest_pointer file; rather than a model directory."""
  if catalog.is_handle(path):  # no file system to look in
    return False
  path = path.rstrip("/")
  if tf.io.gfile.exists(f"{path}/{MANIFEST_FILE}") or refusal_paths(path):
    return True
  if not tf.io.gfile.isdir(path):
    return tf.io.gfile.exists(path)  # a file
  names = {name.rstrip("/") for name in tf.io.gfile.listdir(path)}
  if names & _MODEL_FILES:
    return False
  return bool(names & _RUN_FILES) or any(
      name.startswith((STAGING_PREFIX, LOCK_FILE)) for name in names) or (
          tf.io.gfile.exists(
              f"{os.path.dirname(path) or '.'}/{MANIFEST_FILE}"))


# What only a model directory (ours, or a TF Hub SavedModel) holds at its
# top, and what only a run directory (or its staging) does.
_MODEL_FILES = {"saved_model.pb", METADATA_FILE, ENCODER_DIR}
_RUN_FILES = {*TABLES, REFUSAL_FILE, REPORT_FILE}


def _overwrite_refusal(output_dir: str,
                       sources: Sequence[str]) -> Optional[str]:
  """Why --overwrite must not replace output_dir (None: it may): only an
  earlier serving SavedModel is replaced; never a directory that holds, or
  lies inside, what the SavedModel is made from (the run or model given,
  the model's encoder and preprocess SavedModels), nor other files."""
  output = os.path.realpath(output_dir)
  for source in sources:
    if "://" in source or not os.path.exists(source):
      continue  # a handle, a catalogue name: nothing here to harm
    source = os.path.realpath(source)
    if os.path.commonpath([output, source]) in (output, source):
      return (f"{output_dir} overlaps {source}, which the SavedModel is "
              "made from; name another directory")
  if not tf.io.gfile.exists(os.path.join(output_dir, "saved_model.pb")):
    return (f"{output_dir} is not an earlier serving SavedModel (no "
            "saved_model.pb), and --overwrite replaces only one; name a new "
            "directory")
  return None


def _export_serving(args) -> int:
  if tf.io.gfile.exists(args.output_dir):
    if not tf.io.gfile.isdir(args.output_dir):
      return print_error(PROG, f"{args.output_dir} is a file; name a new "
                         "directory for the serving SavedModel")
    if tf.io.gfile.listdir(args.output_dir) and not args.overwrite:
      return print_error(PROG, f"{args.output_dir} is not empty; pass "
                         "--overwrite to replace it")
  try:
    if args.serving_is_run:
      embedder = Embedder.from_run(args.serving, model=args.model)
    else:
      embedder = Embedder(args.serving, preprocessor=args.preprocessor,
                          model_root=args.model_root,
                          max_seq_length=args.max_seq_length,
                          pooling=args.pooling, normalize=args.normalize)
  except read_errors_of(args.serving) as e:
    # The resolver names the flag it checked, pipeline.main's --model.
    return print_error(PROG, one_line(e).replace(
        f"--model={args.serving}", f"--serving={args.serving}", 1))
  if args.overwrite and tf.io.gfile.exists(args.output_dir):
    if tf.io.gfile.listdir(args.output_dir):
      refusal = _overwrite_refusal(args.output_dir, (
          args.serving, embedder.settings.encoder_path,
          embedder.settings.preprocess_path))
      if refusal:
        return print_error(PROG, refusal)
    tf.io.gfile.rmtree(args.output_dir)
  embedder.save_serving_model(args.output_dir)
  print(f"Wrote the serving SavedModel of {args.serving} to {args.output_dir} "
        f"(signature serving_default: text -> embedding [{embedder.hidden_size}]"
        f", num_tokens, truncated; fingerprint {embedder.fingerprint[:12]})")
  if embedder.settings.chunking is not None:
    size = embedder.settings.chunking.chunk_size
    print(f"The run cut documents into chunks of {size} wordpieces: the "
          f"SavedModel embeds a text as one chunk, up to {size} wordpieces; "
          "a longer one is cut there (truncated: true), where the run would "
          "have chunked it (Embedder.embed_chunks does).")
  return 0


def main(argv, description: str) -> int:
  args = parse_args(argv, description)
  # The export's own steps (bert_model's loggers) at INFO; TensorFlow's
  # (saving a SavedModel: "Assets written to ...") only from WARNING.
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("bert_model").setLevel(logging.INFO)
  if args.serving:
    return _export_serving(args)
  try:
    if args.checkpoint is None:
      metadata = default_model.export_default_model(
          args.output_dir, overwrite=args.overwrite)
    else:
      metadata = export.export_checkpoint(
          args.checkpoint, args.output_dir, name=args.name,
          license_name=args.license, pooling=args.pooling,
          normalize=args.normalize, max_seq_length=args.max_seq_length,
          overwrite=args.overwrite, lower_case=args.lower_case)
  except (checkpoint.CheckpointError, FileExistsError, FileNotFoundError,
          ValueError) as e:
    return print_error(PROG, str(e))
  print(f"Exported {metadata.name} to {args.output_dir} "
        f"(hidden {metadata.hidden_size}, {metadata.num_layers} layers, "
        f"pooling {metadata.pooling}, fingerprint {metadata.fingerprint[:12]})")
  return 0

