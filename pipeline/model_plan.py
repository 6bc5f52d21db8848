"""What the model computes in a run, from the flags and the resolved model:
its ModelSettings, the settings that make two runs' vectors comparable, and
the manifest's "model" entry. Planning's (pipeline/plan.py) model step.
"""

import dataclasses
import os
from typing import Tuple

from bert_model import resolution
from bert_model.chunking import ChunkSettings
from bert_model.loaded_model import ModelSettings
from pipeline import preflight
from pipeline.config import chunk_overlap
from pipeline.config import ModelConfig
from pipeline.config import RunConfig
from pipeline.errors import ConfigError


def parse_encoder_layers(value: str, num_layers: int) -> Tuple[int, ...]:
  """'-1,-4' or 'all' to sorted non-negative layer indices."""
  if not value:
    return ()
  if value == "all":
    return tuple(range(num_layers))
  layers = set()
  for part in value.split(","):
    try:
      index = int(part)
    except ValueError:
      raise ConfigError(
          f"--encoder_layers={value!r}: {part!r} is not a layer index; use "
          "comma-separated integers such as '-1,-4', or 'all'.") from None
    if not -num_layers <= index < num_layers:
      raise ConfigError(
          f"--encoder_layers={value!r}: the model has {num_layers} layers, so "
          f"indices must be in [{-num_layers}, {num_layers - 1}].")
    layers.add(index % num_layers)
  return tuple(sorted(layers))


def model_settings(config: RunConfig,
                    model: resolution.ResolvedModel) -> ModelSettings:
  """What the model computes: the flags, or the model's own defaults."""
  choice, out, perf = config.model, config.outputs, config.performance
  max_seq_length = (model.max_seq_length if choice.max_seq_length is None
                    else choice.max_seq_length)
  pooling = choice.pooling or model.pooling
  problem = model.settings_problem(max_seq_length, pooling, choice.chunk_size,
                                   prefix="--")
  if problem:
    raise ConfigError(f"{problem}.")
  if out.encoder_layers and model.encoder_format == "v1":
    raise ConfigError(
        f"--encoder_layers={out.encoder_layers!r}: --model={choice.model} is "
        "a v1 TF Hub encoder (list inputs, tuple outputs), which has no "
        "encoder_outputs. Leave --encoder_layers out, or use a version of "
        "the model with the dict interface (e.g. version 4 of the bert_en_* "
        "encoders).")
  return ModelSettings(
      preprocess_path=model.preprocess_path,
      encoder_path=model.encoder_path,
      max_seq_length=max_seq_length,
      pooling=pooling,
      normalize=(model.normalize if choice.normalize is None else
                 choice.normalize),
      sequence_output=out.sequence_output,
      sequence_dtype=out.sequence_dtype,
      encoder_layers=parse_encoder_layers(out.encoder_layers,
                                          model.num_layers),
      precision=perf.precision,
      jit_compile=perf.jit_compile,
      encoder_format=model.encoder_format,
      text_pairs=config.input.text_pair_field is not None,
      chunking=(ChunkSettings(chunk_size=choice.chunk_size,
                              chunk_overlap=chunk_overlap(choice),
                              max_chunks=choice.max_chunks)
                if choice.chunk_size is not None else None))


# Vector settings recorded only when on, so that runs made before they
# existed still compare equal (pipeline/previous_run.py compares them too).
RECORDED_WHEN_ON = ("chunking", "text_pairs")


def vector_settings(settings: ModelSettings) -> dict:
  """The settings that change what a vector is, as the manifest's "model"
  entry records them: a previous run's vectors are reused only when all of
  them match. RECORDED_WHEN_ON only when on."""
  when_on = {}
  if settings.chunking is not None:
    when_on["chunking"] = dataclasses.asdict(settings.chunking)
  if settings.text_pairs:
    when_on["text_pairs"] = True
  return {
      "max_seq_length": settings.max_seq_length,
      "pooling": settings.pooling,
      "normalize": settings.normalize,
      "sequence_output": settings.sequence_output,
      "sequence_dtype": settings.sequence_dtype,
      "encoder_layers": list(settings.encoder_layers),
      "precision": settings.precision,
      **when_on,
  }


def manifest_model(model: resolution.ResolvedModel,
                    settings: ModelSettings) -> dict:
  meta = model.metadata
  return {
      "path": model.path,
      "name": meta.name,
      "encoder_format": model.encoder_format,
      "fingerprint": meta.fingerprint,
      "hidden_size": meta.hidden_size,
      "num_layers": meta.num_layers,
      "license": meta.license,
      "source": dict(meta.source),
      **vector_settings(settings),
  }


def model_directories_absolute(model: ModelConfig) -> ModelConfig:
  """--model, --preprocessor and --model_root made absolute where they name
  local directories: the manifest records them, and a run's model is
  resolved again from them (Embedder.from_run, the query CLI, the serving
  export) from any working directory."""
  absolute = {}
  for flag in ("model", "preprocessor", "model_root"):
    value = getattr(model, flag)
    if value and os.path.isdir(value):
      absolute[flag] = preflight.absolute(value)
  return dataclasses.replace(model, **absolute)
