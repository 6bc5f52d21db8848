"""The pipeline's flags, declared once, and the frozen config made from them.

`EmbeddingPipelineOptions` declares every flag of the job beside Beam's own
(`--runner`, `--direct_num_workers`, `--project`, ...). `config_from_options`
checks them all before anything runs and turns them into a plain frozen
`PipelineConfig`; transforms take typed values from it, never options. A wrong
flag raises `ConfigError` with a message that names the fix.
"""

import argparse
import dataclasses
import difflib
import datetime
import re
from typing import Optional, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import model_resolution
from pipeline import preflight
from pipeline.errors import ConfigError
from transforms import incremental
from transforms.model_handler import POOLING_MODES
from transforms.model_handler import PRECISIONS
from transforms.model_handler import SEQUENCE_DTYPES
from transforms.formats import INPUT_FORMATS
from transforms.formats import infer_input_format
from transforms.formats.fields import DEFAULT_MAX_RECORD_BYTES
from transforms.guardrails import DEFAULT_MAX_BAD_FRACTION
from transforms.guardrails import DEFAULT_MAX_REMOVED_FRACTION
from transforms.guardrails import PublishLimits

BIGQUERY_FORMATS = ("avro", "parquet", "jsonl")
NEIGHBOUR_MODES = ("exact", "ann")
LATEST = "latest"  # --previous_run value: the run --latest_pointer names
_BIGQUERY_TABLE = re.compile(
    r"^(?:[a-z][a-z0-9-]{4,61}[a-z0-9][:.])?[A-Za-z0-9_]{1,1024}\.[\w$-]{1,1024}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# Flags of earlier versions, and what to use instead.
REMOVED_FLAGS = {
    "--min_batch_size": "batches are no longer sized by Beam's BatchElements "
                        "but cut from length-sorted documents; drop the flag "
                        "(see --max_batch_size, --max_batch_tokens and "
                        "--sort_buffer_size).",
    "--max_batch_duration_secs": "this is a batch pipeline and batches never "
                                 "wait to fill; drop the flag.",
}


# The groups of --help, in order: (title, description).
FLAG_GROUPS = (
    ("input", "What to read."),
    ("model", "Which model, and how its vectors are made."),
    ("outputs", "What the run directory holds."),
    ("neighbours", "The nearest-neighbour table."),
    ("nightly runs", "Incremental runs, publishing and the guardrails that "
     "keep a bad run from becoming the index."),
    ("performance", "Batching, precision and model sharing."),
)


class EmbeddingPipelineOptions(PipelineOptions):
  """Flags of the embedding pipeline, in the groups of FLAG_GROUPS.

  Every flag's help says its default. docs/flags.md has the reference.
  """

  @classmethod
  def _add_argparse_args(cls, parser):
    groups = {title: parser.add_argument_group(title, description)
              for title, description in FLAG_GROUPS}
    _add_input_flags(groups["input"])
    _add_model_flags(groups["model"])
    _add_output_flags(groups["outputs"])
    _add_neighbour_flags(groups["neighbours"])
    _add_nightly_flags(groups["nightly runs"])
    _add_performance_flags(groups["performance"])


def _add_input_flags(group):
  group.add_argument(
      "--input", help="Input file or glob, local or gs:// (required).")
  group.add_argument(
      "--input_format", choices=INPUT_FORMATS,
      help="Input format. Default: from the file extension.")
  group.add_argument("--id_field", default="id",
                     help="Id field/column/feature (default: %(default)s); "
                     "records without one get an id derived from source "
                     "and text.")
  group.add_argument("--text_field", default="text",
                     help="Text field/column/feature (default: "
                     "%(default)s).")
  group.add_argument(
      "--text_pair_field",
      help="For pair tasks: the field/column/feature of the second text. "
      "Each record is packed as [CLS] text [SEP] pair [SEP] (type ids 0 "
      "then 1, trimmed round-robin to --max_seq_length); a record without "
      "it goes to the errors (missing_field). Not for plain text input. "
      "Default: none.")
  group.add_argument(
      "--max_record_bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES,
      help="Longest record read (a line, a CSV row, a cell, a TFRecord "
      "record), in bytes; a longer one goes to the errors as "
      "record_too_large and is never held in memory whole (default: "
      "%(default)s).")


def _add_model_flags(group):
  group.add_argument(
      "--model", help="Model directory (encoder/ + preprocess/), local or "
      "gs://; or a TF Hub BERT encoder: a catalogue name (e.g. "
      "experts/pubmed, bert_en_cased_L-24_H-1024_A-16; list them with "
      "`python -m pipeline.catalog`), a handle (https://tfhub.dev/...) or "
      "a SavedModel directory. Default: the converted all-MiniLM-L6-v2, "
      "exported on first use.")
  group.add_argument(
      "--preprocessor",
      help="Preprocess model for a TF Hub encoder (catalogue name, handle "
      "or directory). Default: the one the catalogue pairs with --model; a "
      "v1 encoder's own vocabulary.")
  group.add_argument(
      "--model_root",
      help="Local or gs:// mirror of TF Hub models laid out by handle path "
      "(MODEL_ROOT/tensorflow/bert_en_uncased_L-12_H-768_A-12/4/): handles "
      "and catalogue names are loaded from it instead of the TF Hub cache, "
      "never downloaded. Default: none.")
  group.add_argument(
      "--max_seq_length", type=int,
      help="Wordpieces per text, [CLS] and [SEP] included; longer texts are "
      "truncated and flagged. Default: the model's own (256 for the "
      "default model).")
  group.add_argument(
      "--pooling", choices=POOLING_MODES,
      help="Sentence vector: masked mean of sequence_output, first token, "
      "the encoder's pooled_output, or masked max. Default: the model's "
      "metadata (mean for the default model).")
  group.add_argument(
      "--normalize", choices=("true", "false"),
      help="L2-normalise vectors. Default: the model's metadata (true for "
      "the default model).")


def _add_output_flags(group):
  group.add_argument(
      "--output", help="Run directory to write, local or gs:// (required); "
      "'{run_id}' in it is replaced by the run id.")
  group.add_argument(
      "--run_id", help="Identifier of this run, written in every row and "
      "the manifest. Default: the UTC start time, e.g. 20261201T020000Z.")
  group.add_argument(
      "--sequence_output", action="store_true",
      help="Also write per-token vectors (real tokens only) and token ids. "
      "Default: off.")
  group.add_argument(
      "--sequence_dtype", choices=SEQUENCE_DTYPES, default="float32",
      help="Precision of per-token vectors in TFRecord (default: "
      "%(default)s).")
  group.add_argument(
      "--encoder_layers", default="",
      help="Also write these encoder layers pooled, e.g. '-1,-4' or 'all'. "
      "Default: none.")
  group.add_argument(
      "--no_text", action="store_true",
      help="Leave the input text out of the embedding rows. Default: the "
      "text is written.")
  group.add_argument(
      "--bigquery_format", choices=BIGQUERY_FORMATS, default="avro",
      help="BigQuery-loadable copy of each table (default: %(default)s).")
  group.add_argument(
      "--bigquery_table",
      help="Also load embeddings straight into PROJECT:DATASET.TABLE. "
      "Default: none.")
  group.add_argument("--num_shards", type=int, default=0,
                     help="Shards per output file set; 0 (default) picks "
                     "enough that no shard overflows a worker's memory.")
  group.add_argument(
      "--similarity_plot", action="store_true",
      help="Write similarity.png, a heatmap of pairwise cosine similarity "
      "of the first 50 documents by id, labelled with their texts. "
      "Default: off.")
  group.add_argument(
      "--projector_export", action="store_true",
      help="Write projector/vectors.tsv and metadata.tsv for the Embedding "
      "Projector. Default: off.")
  group.add_argument(
      "--projector_max_points", type=int, default=10000,
      help="Documents in the projector export, smallest ids first "
      "(default: %(default)s).")


def _add_neighbour_flags(group):
  group.add_argument(
      "--neighbours_k", type=int, default=10,
      help="Nearest neighbours per document by cosine (0 turns the "
      "neighbour table off; default: %(default)s).")
  group.add_argument(
      "--neighbours_mode", choices=NEIGHBOUR_MODES, default="exact",
      help="exact: blocked matrix products, exactly brute force; ann: a "
      "FAISS index, with recall@K measured on a sample (default: "
      "%(default)s).")
  group.add_argument(
      "--neighbours_block_size", type=int, default=4096,
      help="Documents per shard in exact mode; memory per worker grows "
      "with its square (default: %(default)s).")
  group.add_argument(
      "--neighbours_of",
      help="Query corpus (file or glob, same formats as --input): write the "
      "neighbours of these documents within the --input corpus instead of "
      "all against all. Default: none.")


def _add_nightly_flags(group):
  group.add_argument(
      "--previous_run",
      help="A published run directory of the same corpus: documents whose "
      "id, text and model are unchanged are carried over, not re-embedded. "
      "'latest' means the run named by --latest_pointer, if there is one "
      "yet (for scheduled jobs). Default: none, embed everything.")
  group.add_argument(
      "--latest_pointer",
      help="File to write this run's directory into once it is published, "
      "e.g. gs://bucket/runs/LATEST; a nightly job reads it for "
      "--previous_run. Default: none.")
  group.add_argument(
      "--max_bad_records", type=int,
      help="Most dead-lettered records a run may have and still publish, as "
      "in BigQuery load jobs. Default: no count limit (--max_bad_fraction "
      "applies).")
  group.add_argument(
      "--max_bad_fraction", type=float,
      help="Largest share of the records read that may be dead-lettered "
      "for the run to publish, in [0, 1]. Default: "
      f"{DEFAULT_MAX_BAD_FRACTION:g}, or no limit when --max_bad_records "
      "is given alone.")
  group.add_argument(
      "--max_removed_fraction", type=float,
      default=DEFAULT_MAX_REMOVED_FRACTION,
      help="With --previous_run: largest share of the previous run's "
      "documents that may be gone from the corpus for the run to publish "
      "(a missing input shard looks like a mass deletion), in [0, 1] "
      "(default: %(default)s).")
  group.add_argument(
      "--allow_large_removal", action="store_true",
      help="Publish even when more than --max_removed_fraction of the "
      "previous run's documents are gone: the deletion is meant. Default: "
      "off.")


def _add_performance_flags(group):
  group.add_argument(
      "--max_batch_size", type=int, default=256,
      help="Documents per RunInference batch (default: %(default)s).")
  group.add_argument(
      "--max_batch_tokens", type=int, default=16384,
      help="Padded wordpieces per batch and per encoder call (default: "
      "%(default)s); raise it on a GPU, lower it if the model runs out of "
      "memory.")
  group.add_argument(
      "--sort_buffer_size", type=int, default=4096,
      help="Documents each worker holds and sorts by length before cutting "
      "them into batches, so that a batch pads little (default: "
      "%(default)s; at least --max_batch_size, which sorts each batch "
      "only within itself).")
  group.add_argument(
      "--precision", choices=PRECISIONS, default="float32",
      help="Encoder arithmetic: bfloat16 uses TensorFlow's automatic mixed "
      "precision on CPUs with AMX/AVX-512 BF16, mixed_float16 on GPUs "
      "(default: %(default)s).")
  group.add_argument(
      "--jit_compile", action="store_true",
      help="Compile the encoder with XLA (lengths rounded up to a multiple "
      "of 16 and rows to a power of two, to limit recompilation; slower "
      "on CPU, for GPUs). Default: off.")
  group.add_argument(
      "--large_model", action="store_true",
      help="Load one model per worker machine and share it across its SDK "
      "processes. Default: off, one model per process.")
  group.add_argument(
      "--model_copies", type=int,
      help="Exactly this many model copies per worker machine (implies "
      "sharing; e.g. one per GPU). Default: none.")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  input: str
  input_format: Optional[str]
  id_field: str
  text_field: str
  output: str
  run_id: str
  model: model_resolution.ResolvedModel
  max_seq_length: int
  pooling: str
  normalize: bool
  sequence_output: bool
  sequence_dtype: str
  encoder_layers: Tuple[int, ...]
  include_text: bool
  bigquery_format: str
  bigquery_table: Optional[str]
  num_shards: int
  max_batch_size: int
  max_batch_tokens: int
  sort_buffer_size: int
  large_model: bool
  model_copies: Optional[int]
  precision: str
  jit_compile: bool
  neighbours_k: int
  neighbours_mode: str
  neighbours_block_size: int
  neighbours_of: Optional[str]
  similarity_plot: bool
  projector_export: bool
  projector_max_points: int
  previous_run: Optional[incremental.PreviousRun]
  latest_pointer: Optional[str]
  text_pair_field: Optional[str] = None
  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
  publish_limits: PublishLimits = PublishLimits()

  @property
  def staging_dir(self) -> str:
    """Where every stage writes until the run is published."""
    return f"{self.output}/.staging-{self.run_id}"


def vector_settings(max_seq_length, pooling, normalize, sequence_output,
                    sequence_dtype, encoder_layers, precision) -> dict:
  """The settings that change what a vector is, named as the manifest names
  them under "model" and "settings": a previous run's vectors are reused
  only when all of them match (see transforms/incremental.py)."""
  return {
      "max_seq_length": max_seq_length,
      "pooling": pooling,
      "normalize": normalize,
      "sequence_output": sequence_output,
      "sequence_dtype": sequence_dtype,
      "encoder_layers": list(encoder_layers),
      "precision": precision,
  }


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


def _positive(name, value, allow_none=False):
  if value is None and allow_none:
    return
  if value is None or value < 1:
    raise ConfigError(f"--{name} must be a positive integer, got {value}.")


def _check_input_format(flag: str, pattern: str, input_format):
  if input_format is None:
    try:
      infer_input_format(pattern)
    except ValueError as e:
      raise ConfigError(f"{flag}: {e}") from None


def _read_latest_pointer(pointer: Optional[str]) -> Optional[str]:
  """The run directory a --latest_pointer file names; None before the first."""
  if not pointer:
    raise ConfigError("--previous_run=latest needs --latest_pointer, the file "
                      "each published run writes its directory into.")
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  if not FileSystems.exists(pointer):
    return None  # the first scheduled run: nothing to carry over
  with FileSystems.open(pointer) as f:
    return f.read().decode("utf-8").strip() or None


def _check_text_pair_field(flags):
  pair = flags.text_pair_field
  if pair is None:
    return
  if not pair or pair == flags.text_field:
    raise ConfigError(
        f"--text_pair_field={pair!r}: name the field of the second text, "
        f"other than --text_field ({flags.text_field!r}).")
  for flag, pattern in (("--input", flags.input),
                        ("--neighbours_of", flags.neighbours_of)):
    if pattern and (flags.input_format or infer_input_format(pattern)) == "text":
      raise ConfigError(
          f"--text_pair_field: {flag} is plain text (one text per line), "
          "which has no second field; use jsonl, csv, tsv, parquet or "
          "tfrecord input.")
  if flags.previous_run:
    raise ConfigError(
        "--text_pair_field cannot be combined with --previous_run yet: "
        "carrying embeddings over compares the first text only, so a "
        "changed second text would be missed. Embed the whole corpus.")


def config_from_options(options: PipelineOptions) -> PipelineConfig:
  """Checks every flag and returns the frozen config; raises ConfigError."""
  flags = options.view_as(EmbeddingPipelineOptions)
  if not flags.input:
    raise ConfigError("--input is required: a file or glob of the corpus, "
                      "e.g. --input 'data/*.jsonl'.")
  if not flags.output:
    raise ConfigError("--output is required: the run directory to write, "
                      "e.g. --output runs/today.")
  # The paths first: a typo there should fail in a second, before anything
  # else is checked or the model is resolved (which can mean exporting or
  # downloading it).
  preflight.check_input("--input", flags.input)
  if flags.neighbours_of:
    preflight.check_input("--neighbours_of", flags.neighbours_of)
  _check_input_format("--input", flags.input, flags.input_format)
  for name in ("max_batch_size", "max_batch_tokens", "sort_buffer_size",
               "max_record_bytes"):
    _positive(name, getattr(flags, name))
  _positive("max_seq_length", flags.max_seq_length, allow_none=True)
  _positive("model_copies", flags.model_copies, allow_none=True)
  if flags.sort_buffer_size < flags.max_batch_size:
    raise ConfigError(
        f"--sort_buffer_size ({flags.sort_buffer_size}) is smaller than "
        f"--max_batch_size ({flags.max_batch_size}), so no batch could fill; "
        f"use at least {flags.max_batch_size}.")
  if flags.max_bad_records is not None and flags.max_bad_records < 0:
    raise ConfigError("--max_bad_records must be 0 or more.")
  for name in ("max_bad_fraction", "max_removed_fraction"):
    value = getattr(flags, name)
    if value is not None and not 0 <= value <= 1:
      raise ConfigError(
          f"--{name}={value:g}: a fraction of the records, between 0 and 1 "
          "(e.g. 0.1 for 10%).")
  if flags.neighbours_k < 0:
    raise ConfigError("--neighbours_k must be 0 (no neighbour table) or "
                      "positive.")
  _positive("neighbours_block_size", flags.neighbours_block_size)
  _positive("projector_max_points", flags.projector_max_points)
  if flags.neighbours_of and not flags.neighbours_k:
    raise ConfigError("--neighbours_of needs --neighbours_k above 0.")
  if flags.neighbours_of:
    _check_input_format("--neighbours_of", flags.neighbours_of,
                        flags.input_format)
  if flags.num_shards < 0:
    raise ConfigError(
        "--num_shards must be 0 (sized to fit memory) or positive.")
  if flags.bigquery_table and not _BIGQUERY_TABLE.match(flags.bigquery_table):
    raise ConfigError(
        f"--bigquery_table={flags.bigquery_table!r} is not a table reference; "
        "use PROJECT:DATASET.TABLE or DATASET.TABLE.")
  run_id = flags.run_id or datetime.datetime.now(
      datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  if not _RUN_ID.match(run_id):
    raise ConfigError(
        f"--run_id={run_id!r}: use letters, digits, '.', '_' and '-' only.")

  _check_text_pair_field(flags)
  output = flags.output.replace("{run_id}", run_id).rstrip("/")
  preflight.check_output(output)
  if flags.latest_pointer:
    preflight.check_latest_pointer(flags.latest_pointer)
  model_kwargs = {}
  if flags.preprocessor:
    model_kwargs["preprocessor"] = flags.preprocessor
  if flags.model_root:
    model_kwargs["model_root"] = flags.model_root
  try:
    # Keyword arguments only when given: the dry run's stand-in takes --model.
    model = model_resolution.resolve_model(flags.model, **model_kwargs)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(str(e)) from None
  max_seq_length = (model.max_seq_length if flags.max_seq_length is None else
                    flags.max_seq_length)
  if not 3 <= max_seq_length <= model.max_position_embeddings:
    raise ConfigError(
        f"--max_seq_length={max_seq_length}: must be between 3 and the "
        f"model's max_position_embeddings ({model.max_position_embeddings}).")
  pooling = flags.pooling or model.pooling
  if pooling == "pooler" and not model.has_pooler:
    raise ConfigError(
        "--pooling=pooler: this model has no pooler weights; use "
        "--pooling=cls or --pooling=mean.")
  normalize = (model.normalize if flags.normalize is None else
               flags.normalize == "true")
  if flags.encoder_layers and model.encoder_format == "v1":
    raise ConfigError(
        f"--encoder_layers={flags.encoder_layers!r}: --model={flags.model} is "
        "a v1 TF Hub encoder (list inputs, tuple outputs), which has no "
        "encoder_outputs. Leave --encoder_layers out, or use a version of "
        "the model with the dict interface (e.g. version 4 of the bert_en_* "
        "encoders).")
  encoder_layers = parse_encoder_layers(flags.encoder_layers, model.num_layers)
  previous_run = None
  previous_path = flags.previous_run
  if previous_path == LATEST:
    previous_path = _read_latest_pointer(flags.latest_pointer)
  if previous_path:
    try:
      previous_run = incremental.plan_previous_run(
          previous_path, model.fingerprint,
          vector_settings(max_seq_length, pooling, normalize,
                          flags.sequence_output, flags.sequence_dtype,
                          encoder_layers, flags.precision))
    except (incremental.PreviousRunError, KeyError, ValueError) as e:
      raise ConfigError(f"--previous_run: {e}") from None

  max_bad_fraction = flags.max_bad_fraction
  if max_bad_fraction is None and flags.max_bad_records is None:
    max_bad_fraction = DEFAULT_MAX_BAD_FRACTION
  publish_limits = PublishLimits(
      max_bad_records=flags.max_bad_records,
      max_bad_fraction=max_bad_fraction,
      max_removed_fraction=flags.max_removed_fraction,
      allow_large_removal=flags.allow_large_removal,
      previous_documents=previous_run.documents if previous_run else None)

  return PipelineConfig(
      input=flags.input,
      input_format=flags.input_format,
      id_field=flags.id_field,
      text_field=flags.text_field,
      output=output,
      run_id=run_id,
      model=model,
      max_seq_length=max_seq_length,
      pooling=pooling,
      normalize=normalize,
      sequence_output=flags.sequence_output,
      sequence_dtype=flags.sequence_dtype,
      encoder_layers=encoder_layers,
      include_text=not flags.no_text,
      bigquery_format=flags.bigquery_format,
      bigquery_table=flags.bigquery_table,
      num_shards=flags.num_shards,
      max_batch_size=flags.max_batch_size,
      max_batch_tokens=flags.max_batch_tokens,
      sort_buffer_size=flags.sort_buffer_size,
      large_model=flags.large_model,
      model_copies=flags.model_copies,
      precision=flags.precision,
      jit_compile=flags.jit_compile,
      neighbours_k=flags.neighbours_k,
      neighbours_mode=flags.neighbours_mode,
      neighbours_block_size=flags.neighbours_block_size,
      neighbours_of=flags.neighbours_of,
      similarity_plot=flags.similarity_plot,
      projector_export=flags.projector_export,
      projector_max_points=flags.projector_max_points,
      previous_run=previous_run,
      latest_pointer=flags.latest_pointer,
      text_pair_field=flags.text_pair_field,
      max_record_bytes=flags.max_record_bytes,
      publish_limits=publish_limits)


def reject_unknown_flags(argv):
  """Fails on flags no options class knows (Beam would only warn)."""
  # pylint: disable=protected-access
  from apache_beam.options.pipeline_options import _BeamArgumentParser  # pylint: disable=g-import-not-at-top
  parser = _BeamArgumentParser(allow_abbrev=False)
  seen = {}
  for cls in PipelineOptions.__subclasses__():
    seen.setdefault(str(cls), cls)
  for cls in seen.values():
    cls._add_argparse_args(parser)
  _, unknown = parser.parse_known_args(argv)
  flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("--")]
  for flag in flags:
    if flag in REMOVED_FLAGS:
      raise ConfigError(f"{flag} was removed: {REMOVED_FLAGS[flag]}")
  if flags:
    known = [opt for action in parser._actions for opt in action.option_strings]
    hints = []
    for flag in flags:
      close = difflib.get_close_matches(flag, known, n=1)
      hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
    raise ConfigError(f"unknown flag(s): {', '.join(hints)}. See "
                      "`python -m pipeline.main --help`.")


_USAGE = ("python -m pipeline.main --input PATTERN --output DIR [flags] "
          "[Beam pipeline options]")
_DESCRIPTION = (
    "Embeds a text corpus with a BERT model (TF Hub format) and writes a run "
    "directory: embeddings and nearest-neighbour tables in TFRecord and a "
    "BigQuery-loadable format, the rejected records with their reasons, and "
    "manifest.json, written last.")
_EPILOG = (
    "Beam's own pipeline options (--runner, --project, --region, "
    "--temp_location, --direct_num_workers, ...) are listed by --help_beam. "
    "Exit status: 0 published; 1 the run failed; 2 a flag is wrong (nothing "
    "ran); 3 the run was refused by a guardrail (not published, see "
    "refused.json in its staging directory). Reference: docs/flags.md.")


def _beam_option_classes() -> list:
  """Beam's options classes (and any a library registered), ours excluded."""
  seen = {}
  for cls in PipelineOptions.__subclasses__():
    if cls is not EmbeddingPipelineOptions:
      seen.setdefault(str(cls), cls)
  return list(seen.values())


def format_help(with_beam_options: bool = False) -> str:
  """--help: the pipeline's own flags, grouped; Beam's after, if asked."""
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.main", usage=_USAGE, description=_DESCRIPTION,
      epilog=_EPILOG, add_help=False)
  EmbeddingPipelineOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  text = parser.format_help()
  if with_beam_options:
    beam_parser = argparse.ArgumentParser(
        prog="python -m pipeline.main", usage=argparse.SUPPRESS,
        add_help=False)
    for cls in _beam_option_classes():
      cls._add_argparse_args(beam_parser)  # pylint: disable=protected-access
    text += "\nApache Beam pipeline options:\n" + beam_parser.format_help()
  return text
