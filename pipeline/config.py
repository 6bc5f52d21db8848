"""The flags, turned into a frozen config: one section per flag group.

`config_from_options` is pure: it reads the parsed flags and the clock (for
the default run id), checks every value that can be checked without touching
a file, a model or the network (Beam's own options too:
pipeline/runner_options.py; for Dataflow without --region, Beam asks
gcloud's local configuration), and returns a `RunConfig`. What needs IO
(do the paths exist, which model is it, what did the previous run write) is
planning's (pipeline/plan.py). `check_flags` is the whole check of a command
line, unknown flags first.

Each section's fields are the flags of one --help group (pipeline/flags.py),
named as the flags are: the flags are declared once, and a section is built
from them by name. A test keeps the two in step.
"""

import dataclasses
import datetime
import fnmatch
import os
import posixpath
import re
from typing import Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions

from bert_model.choices import DEFAULT_MAX_CHUNKS
from bert_model.choices import default_overlap
from pipeline.errors import ConfigError
from pipeline.flags import EmbeddingPipelineOptions
from pipeline.flags import FILLED_DEFAULTS
from pipeline.flags import reject_unknown_flags
from pipeline.runner_options import check_runner_options
from run_directory.vertex import DELTA as VERTEX_DELTA
from run_directory.vertex import MAX_FILES as VERTEX_MAX_FILES
from transforms.guardrails import DEFAULT_MAX_BAD_FRACTION
from transforms.neighbours import CHUNK as CHUNK_LEVEL

LATEST = "latest"  # --previous_run value: the run --latest_pointer names
_BIGQUERY_TABLE = re.compile(
    r"^(?:[a-z][a-z0-9-]{4,61}[a-z0-9][:.])?[A-Za-z0-9_]{1,1024}\.[\w$-]{1,1024}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# --num_shards, at most: every shard is a file in each format, written even
# when no row goes to it, so a slip of the finger would make a million files.
MAX_NUM_SHARDS = 10_000


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """The "input" flags."""
  input: str
  input_format: Optional[str]
  id_field: str
  text_field: str
  text_pair_field: Optional[str]
  max_record_bytes: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The "model" flags; None: the model's own default."""
  model: Optional[str]
  preprocessor: Optional[str]
  model_root: Optional[str]
  max_seq_length: Optional[int]
  pooling: Optional[str]
  normalize: Optional[bool]
  chunk_size: Optional[int]  # None: no chunking
  chunk_overlap: Optional[int]  # None: chunk_size // 8
  max_chunks: int


@dataclasses.dataclass(frozen=True)
class OutputConfig:
  """The "outputs" flags; output with {run_id} replaced, run_id chosen."""
  output: str
  run_id: str
  sequence_output: bool
  sequence_dtype: str
  encoder_layers: str
  no_text: bool
  bigquery_format: str
  bigquery_table: Optional[str]
  num_shards: int
  similarity_plot: bool
  projector_export: bool
  projector_max_points: int
  vertex_export: Optional[str]
  restrict_fields: Tuple[str, ...]
  numeric_restrict_fields: Tuple[str, ...]
  crowding_tag_field: Optional[str]


@dataclasses.dataclass(frozen=True)
class NeighbourConfig:
  """The "neighbours" flags."""
  neighbours_k: int
  neighbours_mode: str
  neighbours_block_size: int
  neighbours_level: str
  duplicate_threshold: Optional[float]
  neighbours_of: Optional[str]
  query_id_field: Optional[str]
  query_text_field: Optional[str]


@dataclasses.dataclass(frozen=True)
class NightlyConfig:
  """The "nightly runs" flags; max_bad_fraction with its default applied."""
  previous_run: Optional[str]
  latest_pointer: Optional[str]
  max_bad_records: Optional[int]
  max_bad_fraction: Optional[float]
  max_removed_fraction: Optional[float]
  allow_large_removal: bool


@dataclasses.dataclass(frozen=True)
class PerformanceConfig:
  """The "performance" flags."""
  max_batch_size: int
  max_batch_tokens: int
  sort_buffer_size: int
  precision: str
  jit_compile: bool
  large_model: bool
  model_copies: Optional[int]


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  """The "logging" flags: what a run prints, not what it computes (so not
  in the manifest's settings). log_level None: WARNING, INFO with verbose."""
  verbose: bool
  log_level: Optional[str]


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every flag of the pipeline, checked, by group."""
  input: InputConfig
  model: ModelConfig
  outputs: OutputConfig
  neighbours: NeighbourConfig
  nightly: NightlyConfig
  performance: PerformanceConfig
  logging: LoggingConfig


# Each --help group (pipeline/flags.py FLAG_GROUPS) and its section.
SECTIONS = {
    "input": ("input", InputConfig),
    "model": ("model", ModelConfig),
    "outputs": ("outputs", OutputConfig),
    "neighbours": ("neighbours", NeighbourConfig),
    "nightly runs": ("nightly", NightlyConfig),
    "performance": ("performance", PerformanceConfig),
    "logging": ("logging", LoggingConfig),
}
# Sections that say how a run talks, not what it computes: left out of the
# manifest's settings, so that a --verbose rerun writes the same files.
_NOT_SETTINGS = ("logging",)


def _field_names(value: str) -> Tuple[str, ...]:
  """'a, b' -> ("a", "b")."""
  return tuple(name.strip() for name in (value or "").split(",")
               if name.strip())


# Flags whose parsed value is not yet the section's (a string to convert).
_CONVERT = {
    "normalize": lambda value: None if value is None else value == "true",
    "restrict_fields": _field_names,
    "numeric_restrict_fields": _field_names,
}


def _section(cls, flags):
  values = {}
  for field in dataclasses.fields(cls):
    value = getattr(flags, field.name)
    if value is None:
      value = FILLED_DEFAULTS.get(field.name)
    values[field.name] = _CONVERT.get(field.name, lambda v: v)(value)
  return cls(**values)


# Upper bounds of the counts and sizes: past them a run would fail deep
# inside (a C long, a thread or process per unit, a histogram's bins) or
# take the machine's memory, instead of failing here.
MAXIMA = {
    "max_batch_size": 65_536,
    "max_batch_tokens": 1 << 24,
    "sort_buffer_size": 1 << 22,
    "max_record_bytes": 1 << 30,
    "max_chunks": 1_000_000,
    "model_copies": 64,
    "neighbours_k": 10_000,
    "neighbours_block_size": 1 << 20,
    "projector_max_points": 10_000_000,
}


def _positive(name, value, allow_none=False):
  if value is None and allow_none:
    return
  if value is None or value < 1:
    raise ConfigError(f"--{name} must be a positive integer, got {value}.")
  _at_most(name, value)


def _at_most(name, value):
  maximum = MAXIMA.get(name)
  if maximum is not None and value > maximum:
    raise ConfigError(f"--{name}={value}: at most {maximum:,}.")


def _check_numbers(config: RunConfig):
  perf, out = config.performance, config.outputs
  for name in ("max_batch_size", "max_batch_tokens", "sort_buffer_size"):
    _positive(name, getattr(perf, name))
  _positive("max_record_bytes", config.input.max_record_bytes)
  _positive("max_seq_length", config.model.max_seq_length, allow_none=True)
  _positive("model_copies", perf.model_copies, allow_none=True)
  if perf.sort_buffer_size < perf.max_batch_size:
    raise ConfigError(
        f"--sort_buffer_size ({perf.sort_buffer_size}) is smaller than "
        f"--max_batch_size ({perf.max_batch_size}), so no batch could fill; "
        f"use at least {perf.max_batch_size}.")
  nightly = config.nightly
  if nightly.max_bad_records is not None and nightly.max_bad_records < 0:
    raise ConfigError("--max_bad_records must be 0 or more.")
  for name, of in (("max_bad_fraction", "the records read"),
                   ("max_removed_fraction", "the previous run's documents")):
    value = getattr(nightly, name)
    if value is not None and not 0 <= value <= 1:
      raise ConfigError(
          f"--{name}={value:g}: a fraction of {of}, between 0 and 1 "
          "(e.g. 0.1 for 10%).")
  neighbours = config.neighbours
  if neighbours.neighbours_k < 0:
    raise ConfigError("--neighbours_k must be 0 (no neighbour table) or "
                      "positive.")
  _at_most("neighbours_k", neighbours.neighbours_k)
  _positive("neighbours_block_size", neighbours.neighbours_block_size)
  _positive("projector_max_points", out.projector_max_points)
  if neighbours.neighbours_of and not neighbours.neighbours_k:
    raise ConfigError("--neighbours_of needs --neighbours_k above 0.")
  threshold = neighbours.duplicate_threshold
  if threshold is not None:
    if not 0 < threshold <= 1:
      raise ConfigError(
          f"--duplicate_threshold={threshold:g}: a cosine in (0, 1], e.g. "
          "0.95 for near-duplicates or 1 for exact copies.")
    if neighbours.neighbours_of:
      raise ConfigError(
          "--duplicate_threshold groups the --input corpus with itself; it "
          "does not apply to --neighbours_of queries. Run the duplicates "
          "without --neighbours_of.")
  if out.num_shards < 0:
    raise ConfigError(
        "--num_shards must be 0 (sized to fit memory) or positive.")
  if out.num_shards > MAX_NUM_SHARDS:
    raise ConfigError(
        f"--num_shards={out.num_shards}: at most {MAX_NUM_SHARDS} (each "
        "shard is a file in every format, written even when empty); or 0, "
        "which sizes the shards to fit a worker's memory.")


def _check_latest_pointer(config: RunConfig):
  """The pointer is a file beside the runs: inside the run directory it
  would replace one of the run's files (its manifest.json, say)."""
  pointer, output = config.nightly.latest_pointer, config.outputs.output
  if config.nightly.previous_run == LATEST and not pointer:
    raise ConfigError("--previous_run=latest needs --latest_pointer, the file "
                      "each published run writes its directory into.")
  if not pointer:
    return
  for flag, pattern in (("--input", config.input.input),
                        ("--neighbours_of", config.neighbours.neighbours_of)):
    # Found by fuzzing: --latest_pointer naming the corpus file replaced it
    # with the run's path once the run was published.
    if pattern and "://" not in pointer + pattern and fnmatch.fnmatchcase(
        os.path.abspath(pointer), os.path.abspath(pattern)):
      raise ConfigError(
          f"--latest_pointer={pointer} is matched by {flag}={pattern}: "
          "publishing would replace that input file with the run's path (or "
          "the next run read the pointer as input); put the pointer beside "
          "the runs, e.g. --latest_pointer=runs/LATEST.")
  remote = "://" in output
  path = posixpath if remote else os.path
  normal = (lambda name: name.rstrip("/")) if remote else os.path.abspath
  if normal(pointer) == normal(output) or normal(pointer).startswith(
      normal(output) + "/"):
    beside = path.join(path.dirname(normal(output)), "LATEST")
    raise ConfigError(
        f"--latest_pointer={pointer} is inside the run directory "
        f"--output={output}, whose files it would replace; put it beside "
        f"the runs, e.g. --latest_pointer={beside}.")


def _check_vertex_export(config: RunConfig):
  out = config.outputs
  carried = {"--restrict_fields": out.restrict_fields,
             "--numeric_restrict_fields": out.numeric_restrict_fields,
             "--crowding_tag_field": (out.crowding_tag_field,)
                                     if out.crowding_tag_field else ()}
  if out.vertex_export is None:
    for flag, names in carried.items():
      if names:
        raise ConfigError(
            f"{flag} is written into the Vertex AI export only: add "
            "--vertex_export full (or delta), or leave the flag out.")
    return
  for flag, names in carried.items():
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
      # Each would be written as a second namespace of the same name.
      raise ConfigError(f"{flag} names {repeated} twice; name each field "
                        "once.")
  both = set(out.restrict_fields) & set(out.numeric_restrict_fields)
  if both:
    raise ConfigError(
        f"--restrict_fields and --numeric_restrict_fields both name "
        f"{sorted(both)}: a field is either a token restrict or a numeric "
        "one; name it in one flag.")
  if out.vertex_export == VERTEX_DELTA and not config.nightly.previous_run:
    raise ConfigError(
        "--vertex_export delta writes what changed since --previous_run: "
        "set --previous_run (e.g. latest with --latest_pointer), or use "
        "--vertex_export full.")
  if out.num_shards > VERTEX_MAX_FILES:
    raise ConfigError(
        f"--num_shards={out.num_shards}: Vertex AI reads at most "
        f"{VERTEX_MAX_FILES} files of a batch; use at most that, or 0.")


def _check_chunking(config: RunConfig):
  model = config.model
  _positive("max_chunks", model.max_chunks)
  if model.chunk_size is None:
    if model.chunk_overlap is not None:
      raise ConfigError("--chunk_overlap needs --chunk_size: set both, e.g. "
                        "--chunk_size 256 --chunk_overlap 32.")
    if config.neighbours.neighbours_level == CHUNK_LEVEL:
      raise ConfigError("--neighbours_level chunk needs --chunk_size: "
                        "documents are only cut into chunks when it is set "
                        "(e.g. --chunk_size 256).")
    return
  if model.chunk_size < 3:
    raise ConfigError(
        f"--chunk_size={model.chunk_size}: a chunk needs room for [CLS], "
        "[SEP] and at least one wordpiece; use 3 or more (e.g. 256).")
  overlap = chunk_overlap(model)
  if not 0 <= overlap < model.chunk_size / 2:
    raise ConfigError(
        f"--chunk_overlap={overlap}: must be 0 or more and less than half "
        f"of --chunk_size ({model.chunk_size}); the default is "
        f"{default_overlap(model.chunk_size)}.")
  if config.input.text_pair_field is not None:
    raise ConfigError(
        "--text_pair_field cannot be combined with --chunk_size: a pair is "
        "one [CLS] a [SEP] b [SEP] sequence and cannot be cut into chunks. "
        "Leave one of them out.")


def chunk_overlap(model: ModelConfig) -> int:
  """--chunk_overlap, or its default for --chunk_size."""
  if model.chunk_overlap is not None:
    return model.chunk_overlap
  return default_overlap(model.chunk_size)


def _check_names(config: RunConfig):
  out = config.outputs
  if out.bigquery_table and not _BIGQUERY_TABLE.match(out.bigquery_table):
    raise ConfigError(
        f"--bigquery_table={out.bigquery_table!r} is not a table reference; "
        "use PROJECT:DATASET.TABLE or DATASET.TABLE, where a project id is "
        "6 or more lower-case letters, digits or hyphens starting with a "
        "letter, and a dataset id letters, digits and underscores.")
  if not _RUN_ID.match(out.run_id):
    raise ConfigError(
        f"--run_id={out.run_id!r}: use letters, digits, '.', '_' and '-' "
        "only.")
  named_fields = [(flag, getattr(config.input, flag))
                  for flag in ("id_field", "text_field")]
  named_fields += [(flag, getattr(config.neighbours, flag))
                   for flag in ("query_id_field", "query_text_field")
                   if getattr(config.neighbours, flag) is not None]
  for flag, field in named_fields:
    if not field.strip():
      raise ConfigError(
          f"--{flag} is empty: name the field, column or feature that holds "
          f"the {flag.split('_')[-2]}, or leave the flag out for the default.")
  neighbours = config.neighbours
  for flag in ("query_id_field", "query_text_field"):
    if getattr(neighbours, flag) is not None and not neighbours.neighbours_of:
      raise ConfigError(
          f"--{flag} names a field of the --neighbours_of queries; set "
          "--neighbours_of, or leave it out.")
  # Found by fuzzing the flags: --id_field=text took every text as its id
  # (a changed text was then a new document, and the old one removed).
  for id_flag, text_flag in (("id_field", "text_field"),
                             ("query_id_field", "query_text_field")):
    section = config.input if id_flag == "id_field" else neighbours
    id_field = getattr(section, id_flag)
    for other in (text_flag, "text_pair_field"):
      other_section = section if other == text_flag else config.input
      if id_field is not None and id_field == getattr(other_section, other):
        raise ConfigError(
            f"--{id_flag} and --{other} both name {id_field!r}: each text "
            f"would be its own id. Set --{id_flag} to the field that holds "
            "the ids (a record without one gets an id derived from its file "
            f"and text), or --{other} to the text's.")
  pair, text = config.input.text_pair_field, config.input.text_field
  if pair is not None and (not pair or pair == text):
    raise ConfigError(
        f"--text_pair_field={pair!r}: name the field of the second text, "
        f"other than --text_field ({text!r}).")
  if pair is not None and pair == neighbours.query_text_field:
    raise ConfigError(
        f"--text_pair_field={pair!r} is --query_text_field too: the "
        "--neighbours_of queries are read with the pair field as well, so "
        "name another field for one of them.")
  if pair is not None and config.nightly.previous_run:
    raise ConfigError(
        "--text_pair_field cannot be combined with --previous_run yet: "
        "carrying embeddings over compares the first text only, so a "
        "changed second text would be missed. Embed the whole corpus.")


# Flags that name something (a path, a model, a table, a field) and whose
# absence means "none": given empty (an unset shell variable, say) they
# would be taken for left out, unsaid.
_NAMING_FLAGS = ("model", "preprocessor", "model_root", "run_id",
                 "bigquery_table", "neighbours_of", "previous_run",
                 "latest_pointer", "crowding_tag_field")


def _check_given_flags(flags: EmbeddingPipelineOptions):
  """Flags given empty, or without the flag they need: either would be
  ignored without a word."""
  for name in _NAMING_FLAGS:
    value = getattr(flags, name)
    if value is not None and not value.strip():
      raise ConfigError(
          f"--{name} is empty (an unset variable?): give it a value, or "
          "leave the flag out.")
  needs = [
      ("--sequence_dtype", flags.sequence_dtype is not None,
       "--sequence_output", flags.sequence_output,
       "it is the precision of the per-token vectors"),
      ("--projector_max_points", flags.projector_max_points is not None,
       "--projector_export", flags.projector_export,
       "it sizes the projector export"),
      ("--max_removed_fraction", flags.max_removed_fraction is not None,
       "--previous_run", flags.previous_run,
       "it limits the documents gone since the previous run"),
      ("--allow_large_removal", flags.allow_large_removal,
       "--previous_run", flags.previous_run,
       "it allows documents gone since the previous run"),
      ("--neighbours_level", flags.neighbours_level is not None,
       "--neighbours_k above 0", flags.neighbours_k,
       "it is the level of the neighbour table, which --neighbours_k 0 "
       "turns off"),
  ]
  table = flags.neighbours_k or flags.duplicate_threshold is not None
  needs += [(f"--{name}", getattr(flags, name) is not None,
             "--neighbours_k above 0 or --duplicate_threshold", table,
             "with --neighbours_k 0 no neighbours are searched")
            for name in ("neighbours_mode", "neighbours_block_size")]
  for flag, given, needed, present, why in needs:
    if given and not present:
      raise ConfigError(f"{flag} needs {needed} ({why}): add it, or leave "
                        f"{flag} out.")


def config_from_options(options: PipelineOptions,
                        now: Optional[datetime.datetime] = None) -> RunConfig:
  """Checks every flag that needs no IO; returns the frozen config.

  now: the time the default run id is made of (default: the UTC time now).

  Raises:
    ConfigError: a flag is wrong; the message names the fix.
  """
  check_runner_options(options)
  flags = options.view_as(EmbeddingPipelineOptions)
  if not flags.input:
    raise ConfigError("--input is required: a file or glob of the corpus, "
                      "e.g. --input 'data/*.jsonl'.")
  if not (flags.output or "").strip():
    raise ConfigError("--output is required: the run directory to write, "
                      "e.g. --output runs/today.")
  if not flags.output.rstrip("/") or ("://" not in flags.output and (
      os.path.abspath(flags.output) == os.path.abspath(os.sep))):
    # Stripped of its slash "/" would be "", the working directory.
    raise ConfigError(f"--output={flags.output} is the root directory; name "
                      "a run directory, e.g. --output runs/today.")
  _check_given_flags(flags)
  sections = {attribute: _section(cls, flags)
              for attribute, cls in SECTIONS.values()}
  run_id = flags.run_id or (now or datetime.datetime.now(
      datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
  sections["outputs"] = dataclasses.replace(
      sections["outputs"], run_id=run_id,
      output=flags.output.replace("{run_id}", run_id).rstrip("/"))
  sections["model"] = _with_max_chunks(sections["model"])
  nightly = sections["nightly"]
  if nightly.max_bad_fraction is None and nightly.max_bad_records is None:
    sections["nightly"] = dataclasses.replace(
        nightly, max_bad_fraction=DEFAULT_MAX_BAD_FRACTION)
  config = RunConfig(**sections)
  _check_numbers(config)
  _check_chunking(config)
  _check_vertex_export(config)
  _check_latest_pointer(config)
  _check_names(config)
  _check_bigquery_temp_location(config, options.view_as(GoogleCloudOptions))
  return config


def check_flags(argv: Sequence[str]) -> RunConfig:
  """Every check of the command line that needs no IO: a flag nobody
  declared, a value a flag cannot take (both before Beam's options parse
  the flags: Beam would warn of the one, and print its whole usage for the
  other), then `config_from_options`. Raises ConfigError; imports no
  TensorFlow, so `pipeline.main` fails a wrong flag in about 2 s."""
  reject_unknown_flags(argv)
  return config_from_options(PipelineOptions(list(argv)))


def _with_max_chunks(model: ModelConfig) -> ModelConfig:
  """--max_chunks, or its default; given without --chunk_size it would be
  ignored (documents are cut at --max_seq_length), so it is refused."""
  if model.max_chunks is None:
    return dataclasses.replace(model, max_chunks=DEFAULT_MAX_CHUNKS)
  if model.chunk_size is None:
    raise ConfigError("--max_chunks needs --chunk_size: set both, e.g. "
                      "--chunk_size 256 --max_chunks 64.")
  return model


def _check_bigquery_temp_location(config: RunConfig,
                                  cloud: GoogleCloudOptions):
  # BigQuery load jobs read their files from Cloud Storage, which Beam
  # stages under --temp_location (Beam takes --staging_location for it when
  # it is not given); without either the load fails at run time.
  locations = (cloud.temp_location or "", cloud.staging_location or "")
  if config.outputs.bigquery_table and not any(
      location.startswith("gs://") for location in locations):
    raise ConfigError(
        f"--bigquery_table={config.outputs.bigquery_table} needs "
        "--temp_location=gs://BUCKET/tmp: BigQuery loads the rows from files "
        "staged in Cloud Storage.")


def settings_of(config: RunConfig) -> dict:
  """The config as the manifest records it: {section: {flag: value}}."""
  settings = dataclasses.asdict(config)
  for section in _NOT_SETTINGS:
    del settings[section]
  return settings
