"""The pipeline's flags, declared once.

`EmbeddingPipelineOptions` declares every flag of the job beside Beam's own
(`--runner`, `--direct_num_workers`, `--project`, ...), in the groups of
FLAG_GROUPS; each group is one section of the frozen config
(pipeline/config.py). `format_help` is --help: the pipeline's own flags,
grouped, each with its default; Beam's after them with --help_beam.
`reject_unknown_flags` fails on a flag nobody declared (Beam would only warn)
and names the closest known one.
"""

import argparse
import difflib
import re
from typing import Dict, List, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from bert_model.choices import DEFAULT_MAX_CHUNKS
from bert_model.choices import DEFAULT_MAX_CALL_TOKENS
from bert_model.choices import PRECISIONS
from bert_model.choices import POOLING_MODES
from pipeline.console import LOG_LEVELS
from pipeline.errors import ConfigError
from run_directory.embeddings import SEQUENCE_DTYPES
from run_directory.layout import BIGQUERY_FORMATS
from run_directory.vertex import EXPORT_MODES as VERTEX_EXPORT_MODES
from transforms.formats import INPUT_FORMATS
from transforms.formats.fields import DEFAULT_MAX_RECORD_BYTES
from transforms.guardrails import DEFAULT_MAX_BAD_FRACTION
from transforms.guardrails import DEFAULT_MAX_REMOVED_FRACTION
from transforms.neighbours import DEFAULT_BLOCK_SIZE
from transforms.neighbours import DOCUMENT as DOCUMENT_LEVEL
from transforms.neighbours import EXACT as EXACT_MODE
from transforms.neighbours import LEVELS as NEIGHBOUR_LEVELS
from transforms.neighbours import MODES as NEIGHBOUR_MODES
from transforms.visualize import DEFAULT_PROJECTOR_MAX_POINTS

# Flags of earlier versions, and what to use instead.
REMOVED_FLAGS = {
    "--min_batch_size": "batches are no longer sized by Beam's BatchElements "
                        "but cut from length-sorted documents; drop the flag "
                        "(see --max_batch_size, --max_batch_tokens and "
                        "--sort_buffer_size).",
    "--max_batch_duration_secs": "this is a batch pipeline and batches never "
                                 "wait to fill; drop the flag.",
}


DEFAULT_SEQUENCE_DTYPE = SEQUENCE_DTYPES[0]
DEFAULT_NEIGHBOURS_MODE = EXACT_MODE
DEFAULT_NEIGHBOURS_LEVEL = DOCUMENT_LEVEL

# Flags declared without a default, so that the config can tell one given
# from one left out (given without the flag it needs, it would be ignored:
# pipeline/config.py refuses it), and their defaults, which the config
# fills in.
FILLED_DEFAULTS = {
    "sequence_dtype": DEFAULT_SEQUENCE_DTYPE,
    "projector_max_points": DEFAULT_PROJECTOR_MAX_POINTS,
    "neighbours_mode": DEFAULT_NEIGHBOURS_MODE,
    "neighbours_block_size": DEFAULT_BLOCK_SIZE,
    "neighbours_level": DEFAULT_NEIGHBOURS_LEVEL,
    "max_removed_fraction": DEFAULT_MAX_REMOVED_FRACTION,
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
    ("logging", "What a run prints. Its progress, its summary, warnings and "
     "errors always; the libraries' INFO logs and TensorFlow's native "
     "notices only when asked for."),
)


class _RecordingGroup:
  """An argparse group that keeps the actions added to it (argparse's own
  list of them is private)."""

  def __init__(self, group, actions: List[argparse.Action]):
    self._group = group
    self._actions = actions

  def add_argument(self, *args, **kwargs) -> argparse.Action:
    action = self._group.add_argument(*args, **kwargs)
    self._actions.append(action)
    return action


def _declare(parser) -> Dict[str, List[argparse.Action]]:
  """Adds every flag to `parser`; returns the actions by --help group."""
  adders = {
      "input": _add_input_flags,
      "model": _add_model_flags,
      "outputs": _add_output_flags,
      "neighbours": _add_neighbour_flags,
      "nightly runs": _add_nightly_flags,
      "performance": _add_performance_flags,
      "logging": _add_logging_flags,
  }
  declared = {}
  for title, description in FLAG_GROUPS:
    declared[title] = []
    adders[title](_RecordingGroup(
        parser.add_argument_group(title, description), declared[title]))
  return declared


class EmbeddingPipelineOptions(PipelineOptions):
  """Flags of the embedding pipeline, in the groups of FLAG_GROUPS.

  Every flag's help says its default. docs/flags.md has the reference.
  """

  @classmethod
  def _add_argparse_args(cls, parser):
    _declare(parser)


def flag_actions() -> Dict[str, List[argparse.Action]]:
  """Every flag's argparse action, by --help group, in declaration order."""
  return _declare(argparse.ArgumentParser(add_help=False))


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
  group.add_argument(
      "--chunk_size", type=int,
      help="Cut documents longer than this many wordpieces ([CLS] and [SEP] "
      "included, at most --max_seq_length) into chunks on word boundaries "
      "instead of truncating them: a chunks table gets one row per chunk, "
      "and a document's vector is the token-weighted mean of its chunks'. "
      "Default: off (truncate at --max_seq_length).")
  group.add_argument(
      "--chunk_overlap", type=int,
      help="Wordpieces consecutive chunks share (whole words), less than "
      "--chunk_size / 2. Default: --chunk_size / 8.")
  group.add_argument(
      "--max_chunks", type=int,
      help="Chunks per document at most (needs --chunk_size); the rest of "
      "a longer document is left out and the document flagged truncated. "
      "Default: "
      f"{DEFAULT_MAX_CHUNKS}.")


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
      "--sequence_dtype", choices=SEQUENCE_DTYPES,
      help="Precision of per-token vectors in TFRecord (needs "
      f"--sequence_output). Default: {DEFAULT_SEQUENCE_DTYPE}.")
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
      help="Also load the embeddings into PROJECT:DATASET.TABLE, once the "
      "guardrails passed and before the run is published (needs a gs:// "
      "--temp_location). Default: none.")
  group.add_argument("--num_shards", type=int, default=0,
                     help="Shards per output file set, at most 10000; 0 "
                     "(default) picks enough that no shard overflows a "
                     "worker's memory.")
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
      "--projector_max_points", type=int,
      help="Documents in the projector export, smallest ids first (needs "
      f"--projector_export). Default: {DEFAULT_PROJECTOR_MAX_POINTS}.")
  group.add_argument(
      "--vertex_export", choices=VERTEX_EXPORT_MODES,
      help="Write vertex/, the batch layout of Vertex AI Vector Search "
      "(JSON datapoints; with --chunk_size, the chunks): full, every "
      "datapoint; delta (needs --previous_run), only new and changed ones, "
      "with the removed ids in vertex/delete/. Default: off.")
  group.add_argument(
      "--restrict_fields", default="",
      help="Input fields written as Vertex restricts, comma-separated, e.g. "
      "'lang,category': a string (or a list of them) per record. A record "
      "without one goes to the errors (missing_field). Default: none.")
  group.add_argument(
      "--numeric_restrict_fields", default="",
      help="Input fields written as Vertex numeric restricts (an integer "
      "becomes value_int, another number value_double). A record without "
      "one goes to the errors (missing_field). Default: none.")
  group.add_argument(
      "--crowding_tag_field",
      help="Input field written as each datapoint's Vertex crowding_tag. A "
      "record without one goes to the errors (missing_field). Default: "
      "none.")


def _add_neighbour_flags(group):
  group.add_argument(
      "--neighbours_k", type=int, default=10,
      help="Nearest neighbours per document by cosine (0 turns the "
      "neighbour table off; default: %(default)s).")
  group.add_argument(
      "--neighbours_mode", choices=NEIGHBOUR_MODES,
      help="exact: blocked matrix products, exactly brute force; ann: a "
      "FAISS index, with recall@K measured on a sample, kept in the run "
      "directory as ann_index/ (for the neighbour table and "
      f"--duplicate_threshold). Default: {DEFAULT_NEIGHBOURS_MODE}.")
  group.add_argument(
      "--neighbours_block_size", type=int,
      help="Documents per shard in exact mode; memory per worker grows "
      f"with its square. Default: {DEFAULT_BLOCK_SIZE}.")
  group.add_argument(
      "--neighbours_level", choices=NEIGHBOUR_LEVELS,
      help="document: neighbours of documents; chunk (needs --chunk_size): "
      "neighbours of chunks among other documents' chunks, for retrieval "
      f"of passages. Default: {DEFAULT_NEIGHBOURS_LEVEL}.")
  group.add_argument(
      "--duplicate_threshold", type=float,
      help="Also write near-duplicate groups: the connected components of "
      "all document pairs with cosine >= this, in (0, 1] (e.g. 0.95), "
      "exactly or, with --neighbours_mode ann, by FAISS range search. "
      "Works with --neighbours_k 0. Default: off.")
  group.add_argument(
      "--neighbours_of",
      help="Query corpus (file or glob, same formats as --input, read with "
      "the same --input_format): write the neighbours of these documents "
      "within the --input corpus instead of all against all. Default: none.")
  group.add_argument(
      "--query_id_field",
      help="The --neighbours_of queries' id field, column or feature. "
      "Default: --id_field's.")
  group.add_argument(
      "--query_text_field",
      help="The --neighbours_of queries' text field, column or feature, e.g. "
      "question. Default: --text_field's.")


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
      "in BigQuery load jobs; exact repeats of a kept record "
      "(duplicate_record) are not counted. Default: no count limit "
      "(--max_bad_fraction applies).")
  group.add_argument(
      "--max_bad_fraction", type=float,
      help="Largest share of the records read that may be dead-lettered "
      "(exact repeats not counted) for the run to publish, in [0, 1]. "
      "Default: "
      f"{DEFAULT_MAX_BAD_FRACTION:g}, or no limit when --max_bad_records "
      "is given alone.")
  group.add_argument(
      "--max_removed_fraction", type=float,
      help="With --previous_run: largest share of the previous run's "
      "documents that may be gone from the corpus for the run to publish "
      "(a missing input shard looks like a mass deletion), in [0, 1]. "
      f"Default: {DEFAULT_MAX_REMOVED_FRACTION:g}.")
  group.add_argument(
      "--allow_large_removal", action="store_true",
      help="With --previous_run: publish even when more than "
      "--max_removed_fraction of the previous run's documents are gone: "
      "the deletion is meant. Default: off.")


def _add_performance_flags(group):
  group.add_argument(
      "--max_batch_size", type=int, default=256,
      help="Documents per RunInference batch (default: %(default)s).")
  group.add_argument(
      "--max_batch_tokens", type=int, default=DEFAULT_MAX_CALL_TOKENS,
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


def _add_logging_flags(group):
  # pipeline/console.py reads these two before the flags can be parsed
  # (ConsoleSettings.from_argv); a test keeps its names and these in step.
  group.add_argument(
      "--verbose", action="store_true",
      help="Also print INFO logs (Beam's, TensorFlow's, the pipeline's) and "
      "TensorFlow's native notices (oneDNN, CUDA probing, absl). Default: "
      "off.")
  group.add_argument(
      "--log_level", type=str.upper, choices=LOG_LEVELS,
      help="Python logging level of every logger; DEBUG and INFO also show "
      "TensorFlow's native notices. On Dataflow it applies to the "
      "submitting process (workers: --default_sdk_harness_log_level). "
      "Default: WARNING; INFO with --verbose, or for a job on another "
      "runner (followed through its runner's log).")


class _ParserBuilt(Exception):
  """Stops `get_all_options` once it has built its parser (see below)."""


def _beam_parser() -> argparse.ArgumentParser:
  """The parser Beam builds from every options class (ours included).

  Got through `get_all_options(add_extra_args_fn=...)`, the public hook that
  hands a caller Beam's full parser, stopped before Beam parses anything
  with it (Beam would warn of unknown flags, and print its whole usage and
  exit on a bad value). A bad value raises ConfigError instead.
  """
  captured = []

  def capture(parser):
    captured.append(parser)
    raise _ParserBuilt

  try:
    PipelineOptions([]).get_all_options(add_extra_args_fn=capture)
  except _ParserBuilt:
    pass
  parser = captured[0]

  def error(message):
    raise ConfigError(f"{message}. See `python -m pipeline.main --help`.")

  parser.error = error
  return parser


def flag_names(argv: Sequence[str]) -> List[str]:
  """The --flags of an argument list, without their values."""
  return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]


# Flags that name several things in one value, and how: given twice, the
# second reads as "and this too", but argparse keeps only the last value.
# (Other flags given twice keep argparse's "the last one wins", which
# wrapper scripts rely on to override their defaults.)
_LIST_FLAGS = {
    "--input": "for several files, one glob: --input 'DIR/*.jsonl'",
    "--neighbours_of": "for several files, one glob: --neighbours_of "
                       "'DIR/*.jsonl'",
    "--restrict_fields": "a comma-separated list: --restrict_fields=a,b",
    "--numeric_restrict_fields": "a comma-separated list: "
                                 "--numeric_restrict_fields=a,b",
    "--encoder_layers": "a comma-separated list: --encoder_layers=-1,-4",
}


def _reject_repeated_flags(argv: Sequence[str]):
  """Fails on a flag of _LIST_FLAGS given twice with different values:
  `--input a.jsonl --input b.jsonl` read b.jsonl only, unsaid. The same
  value twice is harmless (a wrapper passing on a flag it was given)."""
  values = {}
  for position, arg in enumerate(argv):
    name, eq, value = arg.partition("=")
    if name not in _LIST_FLAGS:
      continue
    if not eq:
      following = argv[position + 1:position + 2]
      if not following or following[0].startswith("--"):
        continue  # no value: argparse says so
      value = following[0]
    values.setdefault(name, [])
    if value not in values[name]:
      values[name].append(value)
  for name, given in values.items():
    if len(given) > 1:
      shown = ", ".join(repr(value) for value in given)
      raise ConfigError(
          f"{name} is given {len(given)} times, with {shown}, and only the "
          f"last would be read: give it once ({_LIST_FLAGS[name]}).")


_SINGLE_DASH_FLAG = re.compile(r"^-[A-Za-z][A-Za-z0-9_-]*(=|$)")


def _closest_flag(flag: str, known: Sequence[str]):
  """The known flag `flag` is most likely a typo of, or None: written with
  one dash, in capitals or with hyphens (--Text-Field) it is that flag;
  else the closest by spelling (--textfield, --max_seq_len)."""
  normal = "--" + flag.lstrip("-").lower().replace("-", "_")
  if normal in known:
    return normal
  close = difflib.get_close_matches(normal, known, n=1)
  return close[0] if close else None


def reject_unknown_flags(argv):
  """Fails on flags no options class knows (Beam would only warn), and on
  values a flag cannot take (a number that is not one, a choice not among
  its choices), with one line that names the flag."""
  for position, arg in enumerate(argv):
    try:
      arg.encode("utf-8")
    except UnicodeEncodeError:
      # Bytes the OS gave that are not UTF-8 (surrogate-escaped): Beam
      # carries its options as UTF-8 text, and would fail on them later.
      shown = arg.encode("utf-8", "surrogateescape").decode(
          "utf-8", "backslashreplace")
      before = argv[position - 1] if position else ""
      if before.startswith("--") and "=" not in before:
        shown = f"{before}={shown}"  # "--flag VALUE": name the flag
      raise ConfigError(
          f"{shown}: holds bytes that are not UTF-8; rename the path (or "
          "pass the value) in UTF-8.") from None
  _reject_repeated_flags(argv)
  if "--" in argv:
    # argparse would take every flag after it for a stray value.
    raise ConfigError("`--` ends the flags, and the pipeline takes nothing "
                      "after them: leave it out.")
  _, unknown = _beam_parser().parse_known_args(list(argv))
  # Flags with one dash (-verbose) too: argparse leaves them, as it leaves
  # a stray value.
  flags = [arg.split("=", 1)[0] for arg in unknown
           if arg.startswith("--") or _SINGLE_DASH_FLAG.match(arg)]
  for flag in flags:
    if flag in REMOVED_FLAGS:
      raise ConfigError(f"{flag} was removed: {REMOVED_FLAGS[flag]}")
  if flags:
    known = ["--" + name for name in PipelineOptions([]).get_all_options()]
    hints = []
    for flag in flags:
      close = _closest_flag(flag, known)
      hints.append(f"{flag} (did you mean {close}?)" if close else flag)
    raise ConfigError(f"unknown flag(s): {', '.join(hints)}. See "
                      "`python -m pipeline.main --help`.")
  if unknown:
    # Beam would drop them with a warning ("Discarding unparseable args"):
    # most often the files of an --input glob the shell expanded, all but
    # the first of which would go unread.
    shown = ", ".join(repr(arg) for arg in unknown[:3])
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    raise ConfigError(
        f"unexpected argument(s) {shown}{more}: every value goes with a "
        "--flag. If the shell expanded a glob, quote it so that the pipeline "
        "reads every file: --input 'DIR/*.txt'.")


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
    "Exit status: 0 published; 1 the run failed; 2 a flag is wrong, or "
    "another run holds --output (nothing ran); 3 the run was refused by a guardrail (not published, see "
    "refused.json in its staging directory); 4 published, but the latest "
    "pointer could not be moved to it. Reference: docs/flags.md.")


def format_help(with_beam_options: bool = False) -> str:
  """--help: the pipeline's own flags, grouped; Beam's after, if asked."""
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.main", usage=_USAGE, description=_DESCRIPTION,
      epilog=_EPILOG, add_help=False)
  EmbeddingPipelineOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  text = parser.format_help()
  if with_beam_options:
    beam_parser = _beam_parser()
    # Not Beam's usage line ("usage: main.py [-h] ...", a hundred lines of
    # every option): the one above says how the pipeline is run.
    beam_parser.usage = argparse.SUPPRESS
    text += ("\nApache Beam pipeline options (every options class, the "
             "pipeline's own again among them):\n" +
             beam_parser.format_help())
  return text
