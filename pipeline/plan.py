"""Planning a run: every read of the world before the pipeline is built.

`plan_run(config)` does all the IO a run needs before it starts, in the
order that fails fastest:

1. the paths: the input globs match files, the output is a directory without
   a published run, the latest pointer can be written (pipeline/preflight.py);
2. the input formats, from the flags or the file extensions;
3. the model: resolved (a local directory, a catalogue name, a TF Hub
   handle; the default model exported on first use), and what depends on it
   (max length, pooling, normalisation, encoder layers);
4. the previous run: its manifest read and its shards checked, to know what
   can be carried over (pipeline/previous_run.py);
5. the lock on the output directory (pipeline/output_lock.py), and the
   clean-up of an earlier unpublished run's staging files.

It returns a `RunPlan`: plain frozen settings, one per stage, which
`pipeline.build.build_pipeline` hands to the stages. Every check raises
ConfigError (exit status 2) with a message that names the fix.

What is read from outside comes through a `PlanEnvironment`, so that the
Dataflow dry run (pipeline/dataflow_job.py) can plan offline: it describes a
gs:// model from a local copy, leaves gs:// paths unchecked, and takes no lock.
"""

import dataclasses
import logging
from typing import Callable, Optional, Tuple

from transforms import native_logs
from bert_model import resolution
from pipeline import field_check
from pipeline import preflight
from pipeline.config import LATEST
from pipeline.config import RunConfig
from pipeline.config import settings_of
from pipeline.errors import ConfigError
from pipeline.model_plan import manifest_model
from pipeline.model_plan import model_directories_absolute
from pipeline.model_plan import model_settings
from pipeline.model_plan import vector_settings
from pipeline.output_lock import OutputLock
from pipeline.output_lock import OutputLockedError
from pipeline.previous_run import plan_previous_run
from pipeline.latest_pointer import read_latest_pointer
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.layout import spill_dir
from run_directory.layout import staging_dir
from run_directory.manifest import named_by_pointer
from run_directory.staging import remove_stale_staging
from run_directory.tables import embedding_table
from run_directory.vertex import DELTA as VERTEX_DELTA
from run_directory.vertex import VertexExportSpec
from transforms.batching import LengthBatching
from transforms.duplicates import DuplicateSettings
from transforms.formats import check_readable_extension
from transforms.formats import infer_input_format
from transforms.formats.carried import CarriedField
from transforms.formats.carried import CROWDING_TAG
from transforms.formats.carried import NUMERIC_RESTRICT
from transforms.formats.carried import RESTRICT
from transforms.formats.fields import RecordSpec
from transforms.guardrails import PublishLimits
from transforms.model_handler import HandlerSettings
from transforms.names import CORPUS
from transforms.names import QUERIES
from transforms.neighbours import CHUNK as CHUNK_LEVEL
from transforms.neighbours import DOCUMENT as DOCUMENT_LEVEL
from transforms.neighbours import NeighbourSettings
from transforms.read import CorpusSettings
from transforms.report import ReportSettings
from transforms.reuse import PreviousRun
from transforms.sinks import BigQuerySink
from transforms.sinks import EmbeddingSink
from transforms.vertex import VertexExport
from transforms.write import WriteSettings

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PlanEnvironment:
  """How planning reads and checks the world; replaced in the dry run."""
  resolve_model: Callable[..., resolution.ResolvedModel] = (
      resolution.resolve_model)
  check_input: Callable[[str, str], None] = preflight.check_input
  check_fields: Callable[[str, CorpusSettings], None] = (
      field_check.check_fields)
  check_output: Callable[[str], None] = preflight.check_output
  check_latest_pointer: Callable[[str], None] = preflight.check_latest_pointer
  check_cloud_credentials: Callable[[list], None] = (
      preflight.check_cloud_credentials)
  take_lock: bool = True


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """Everything a run needs, settled: each stage's own settings.

  corpus / queries: what ReadCorpus reads (queries: --neighbours_of).
  handler: the model handler's settings (model paths, what to compute,
    sharing, token budget); batching: how documents are batched for it.
  previous_run: what ReuseEmbeddings carries over, if anything.
  table: the embeddings table's columns; writing: its files; sinks: where
    else the embeddings go (--bigquery_table).
  neighbours: the neighbours stage's settings, or None for no table.
  duplicates: the near-duplicates stage's, or None.
  limits: the publish stage's guardrails.
  vertex: the Vertex AI export's settings, or None for no export.
  report: what the run report summarises.
  manifest_model / manifest_settings: what the manifest records.
  lock: the output directory's lock, held until the run ends.
  spill_dir: where groupings by key go through files (transforms/spill.py)
    on the local runner, whose GroupByKey holds its whole input in memory;
    None on a distributed runner, whose shuffle is on disk already.
  """
  run_id: str
  run_dir: str
  staging_dir: str
  corpus: CorpusSettings
  queries: Optional[CorpusSettings]
  model: resolution.ResolvedModel
  handler: HandlerSettings
  batching: LengthBatching
  previous_run: Optional[PreviousRun]
  table: EmbeddingTableSpec
  writing: WriteSettings
  sinks: Tuple[EmbeddingSink, ...]
  neighbours: Optional[NeighbourSettings]
  duplicates: Optional[DuplicateSettings]
  similarity_plot: bool
  projector_max_points: Optional[int]
  limits: PublishLimits
  report: ReportSettings
  latest_pointer: Optional[str]
  # What --latest_pointer named when the run was planned: the publish step
  # moves the pointer only if no other run has moved it since.
  latest_pointer_before: Optional[str]
  manifest_model: dict
  manifest_settings: dict
  vertex: Optional[VertexExport] = None
  spill_dir: Optional[str] = None
  lock: Optional[OutputLock] = dataclasses.field(default=None, compare=False)

  def release(self):
    """Ends the run's hold on its output directory (never raises)."""
    if self.lock is not None:
      self.lock.release()


def _carried_fields(config: RunConfig) -> Tuple[CarriedField, ...]:
  """The input fields the Vertex AI export writes with each datapoint."""
  out = config.outputs
  return (
      tuple(CarriedField(name, RESTRICT) for name in out.restrict_fields) +
      tuple(CarriedField(name, NUMERIC_RESTRICT)
            for name in out.numeric_restrict_fields) +
      ((CarriedField(out.crowding_tag_field, CROWDING_TAG),)
       if out.crowding_tag_field else ()))


def _check_query_format(flag: str, pattern: str, input_format: str):
  """--input_format applies to the queries too: refuses a query file whose
  extension names another format (a questions.csv read as plain text made
  its header a query, and no error)."""
  try:
    named = infer_input_format(pattern)
  except ValueError:
    return
  if named != input_format:
    raise ConfigError(
        f"{flag}={pattern}: its extension says {named}, but --input_format "
        f"{input_format} applies to the queries too. Give the queries in "
        f"{input_format}, or leave --input_format out when the --input "
        "files' extensions name their format (each pattern's own extension "
        "is read then).")


# Formats whose files are often named for each other: a quoted .tsv read as
# csv (docs/nightly.md), a .csv of tab-separated values.
_INTERCHANGEABLE = {frozenset(("csv", "tsv"))}
_BINARY_FORMATS = ("parquet", "tfrecord")


def _check_corpus_format(flag: str, pattern: str, input_format: str):
  """--input_format against what the --input files' extension names: a
  .csv read as text embedded its header as a document (and every row as
  one text), a .jsonl read as text its JSON, with no error; a .parquet or
  .tfrecord read as another format (or a text file as those) is rejected
  record by record only once the run is under way. A .txt may hold any
  format but a binary one, and csv and tsv each other's."""
  try:
    named = infer_input_format(pattern)
  except ValueError:
    return
  if named == input_format or (
      frozenset((named, input_format)) in _INTERCHANGEABLE) or (
          named == "text" and input_format not in _BINARY_FORMATS):
    return
  raise ConfigError(
      f"--input_format {input_format}: {flag}={pattern} names {named} files "
      f"by its extension, which the {input_format} reader would misread. "
      "Leave --input_format out (the extension tells the format), or give "
      "the files an extension of their format.")


def _corpus(flag: str, pattern: str, config: RunConfig,
            carried: Tuple[CarriedField, ...] = (),
            scope: str = CORPUS) -> CorpusSettings:
  input_config = config.input
  input_format = input_config.input_format
  try:
    check_readable_extension(pattern)
    if input_format is None:
      input_format = infer_input_format(pattern)
  except ValueError as e:
    raise ConfigError(f"{flag}: {e}") from None
  if input_config.input_format is not None and scope == QUERIES:
    _check_query_format(flag, pattern, input_format)
  elif input_config.input_format is not None:
    _check_corpus_format(flag, pattern, input_format)
  if input_config.text_pair_field is not None and input_format == "text":
    raise ConfigError(
        f"--text_pair_field: {flag} is plain text (one text per line), which "
        "has no second field; use jsonl, csv, tsv, parquet or tfrecord "
        "input.")
  if carried and input_format == "text":
    raise ConfigError(
        f"{carried[0].flag}: {flag} is plain text (one text per line), which "
        "has no other fields; use jsonl, csv, tsv, parquet or tfrecord "
        "input.")
  record = RecordSpec(id_field=input_config.id_field,
                      text_field=input_config.text_field,
                      text_pair_field=input_config.text_pair_field,
                      max_record_bytes=input_config.max_record_bytes,
                      carried=carried)
  if scope == QUERIES:
    record = _query_record(record, config.neighbours, flag, input_format)
  return CorpusSettings(pattern=pattern, input_format=input_format,
                        record=record, scope=scope)


def _query_record(record: RecordSpec, neighbours, flag: str,
                  input_format: str) -> RecordSpec:
  """The corpus's RecordSpec as the --neighbours_of queries are read: with
  their own field names when given (a questions file's text is seldom in
  the corpus's field), and error rows naming the flags that fix a query
  without touching the corpus (the queries have no pair field of their
  own: --text_pair_field is said to apply to them too)."""
  given = [f"--{name}" for name in ("query_id_field", "query_text_field")
           if getattr(neighbours, name) is not None]
  if given and input_format == "text":
    raise ConfigError(
        f"{', '.join(given)}: {flag} is plain text (one text per line), "
        "which has no fields; leave it out, or give the queries as jsonl, "
        "csv, tsv, parquet or tfrecord.")
  return dataclasses.replace(
      record, id_field=neighbours.query_id_field or record.id_field,
      text_field=neighbours.query_text_field or record.text_field,
      text_flag="--query_text_field",
      text_pair_flag=("--text_pair_field (it applies to the --neighbours_of "
                      "queries too)"))


def _resolve_model(config: RunConfig, environment: PlanEnvironment):
  choice = config.model
  kwargs = {}
  if choice.preprocessor:
    kwargs["preprocessor"] = choice.preprocessor
  if choice.model_root:
    kwargs["model_root"] = choice.model_root
  try:
    # Exporting the default model on first use, or reading a TF Hub model,
    # runs TensorFlow: its notices are captured in a quiet run.
    with native_logs.captured_if_requested():
      # Keyword arguments only when given: the dry run's stand-in takes
      # --model.
      return environment.resolve_model(choice.model, **kwargs)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(str(e)) from None


def _cloud_flags(config: RunConfig) -> list:
  """"--flag=value" of the flags that need Google Cloud credentials: those
  that write to Cloud Storage or BigQuery. (Reads need none: Beam reads a
  public bucket anonymously.)"""
  writes = {"--output": config.outputs.output,
            "--latest_pointer": config.nightly.latest_pointer}
  flags = [f"{flag}={value}" for flag, value in writes.items()
           if value and value.startswith("gs://")]
  if config.outputs.bigquery_table:
    flags.append(f"--bigquery_table={config.outputs.bigquery_table}")
  return flags


def _vertex_export(config: RunConfig, previous_run: Optional[PreviousRun],
                   chunked: bool, hidden_size: int) -> Optional[VertexExport]:
  out = config.outputs
  if out.vertex_export is None:
    return None
  previous_state, previous_datapoints = (), 0
  if out.vertex_export == VERTEX_DELTA:
    if previous_run is None:
      _LOG.warning("--vertex_export delta: no run published yet (the latest "
                   "pointer names none), so every datapoint is new.")
    elif not previous_run.vertex_state_files:
      raise ConfigError(
          f"--vertex_export delta: the previous run {previous_run.path} "
          "wrote no Vertex AI export (it has no vertex_state table), so what "
          "changed since is unknown. Run once with --vertex_export full, "
          "then delta.")
    elif previous_run.hidden_size not in (0, hidden_size):
      # An index has one dimension: an update of another fails in Vertex,
      # and this run's vertex_state would claim the index holds it.
      raise ConfigError(
          f"--vertex_export delta: the model's vectors have {hidden_size} "
          f"values, the previous run {previous_run.path}'s "
          f"{previous_run.hidden_size}, and a Vector Search index has one "
          "dimension, so no delta can update it. Run with --vertex_export "
          "full and build a new index from it, then go back to delta.")
    else:
      previous_state = previous_run.vertex_state_files
      previous_datapoints = previous_run.vertex_datapoints
  return VertexExport(
      spec=VertexExportSpec(
          mode=out.vertex_export, restrict_fields=out.restrict_fields,
          numeric_restrict_fields=out.numeric_restrict_fields,
          crowding_tag_field=out.crowding_tag_field or ""),
      level=CHUNK_LEVEL if chunked else DOCUMENT_LEVEL,
      previous_state_files=previous_state,
      previous_datapoints=previous_datapoints,
      num_shards=out.num_shards)


def _take_lock(run_dir: str, run_id: str,
               check_output: Callable[[str], None]) -> OutputLock:
  lock = OutputLock(run_dir, run_id)
  try:
    lock.acquire()
  except OutputLockedError as error:
    raise ConfigError(str(error)) from None
  try:
    # Again, now that no other run can publish here: one may have published
    # while this one resolved its model (check_output ran before that).
    check_output(run_dir)
    remove_stale_staging(run_dir)
  except BaseException:
    lock.release()
    raise
  return lock


def plan_run(config: RunConfig,
             environment: PlanEnvironment = PlanEnvironment(),
             local_runner: bool = False) -> RunPlan:
  """Reads and checks everything the run needs (see the module docstring).

  local_runner: the run is on the local runner: its groupings go through
  files (RunPlan.spill_dir).

  The returned plan holds the output directory's lock (unless the
  environment takes none): call `plan.release()` when the run ends.

  Raises:
    ConfigError: a path, the model or the previous run is wrong, or another
      run holds the output directory.
  """
  config = dataclasses.replace(
      config, model=model_directories_absolute(config.model))
  out, nightly, neighbours = config.outputs, config.nightly, config.neighbours
  # The paths first: a typo there should fail in a second, before the model
  # is resolved (which can mean exporting or downloading it).
  environment.check_cloud_credentials(_cloud_flags(config))
  environment.check_input("--input", config.input.input)
  if neighbours.neighbours_of:
    environment.check_input("--neighbours_of", neighbours.neighbours_of)
  corpus = _corpus("--input", config.input.input, config,
                   _carried_fields(config))
  queries = (_corpus("--neighbours_of", neighbours.neighbours_of, config,
                     scope=QUERIES)
             if neighbours.neighbours_of else None)
  environment.check_fields("--input", corpus)
  if queries:
    environment.check_fields("--neighbours_of", queries)
  environment.check_output(out.output)
  if nightly.latest_pointer:
    environment.check_latest_pointer(nightly.latest_pointer)

  model = _resolve_model(config, environment)
  settings = model_settings(config, model)
  previous_run = None
  previous_path, named_by = nightly.previous_run, None
  # What --latest_pointer names now, read once (strictly when it names the
  # previous run): the publish step moves it only if no run has since.
  pointer_before = None
  if previous_path == LATEST:
    previous_path = pointer_before = read_latest_pointer(
        nightly.latest_pointer)
    named_by = nightly.latest_pointer
  elif nightly.latest_pointer:
    pointer_before = named_by_pointer(nightly.latest_pointer)
  if previous_path:
    previous_run = plan_previous_run(previous_path, model.fingerprint,
                                     vector_settings(settings), named_by)

  perf = config.performance
  table = EmbeddingTableSpec(
      hidden_size=model.hidden_size, include_text=not out.no_text,
      sequence_output=settings.sequence_output,
      sequence_dtype=settings.sequence_dtype,
      encoder_layers=settings.encoder_layers,
      chunked=settings.chunking is not None)
  sinks = ()
  if out.bigquery_table:
    sinks = (BigQuerySink(
        out.bigquery_table,
        embedding_table(table, out.run_id, model.fingerprint).columns,
        out.bigquery_format),)
  # Absolute, so that the manifest's paths, the staging directory and the
  # latest pointer's content all name one directory, whatever the cwd of
  # whoever reads them later.
  run_dir = preflight.absolute(out.output)
  staging = staging_dir(run_dir, out.run_id)
  plan = RunPlan(
      run_id=out.run_id,
      run_dir=run_dir,
      staging_dir=staging,
      corpus=corpus,
      queries=queries,
      model=model,
      handler=HandlerSettings(
          model=settings, max_batch_tokens=perf.max_batch_tokens,
          large_model=perf.large_model, model_copies=perf.model_copies),
      batching=LengthBatching(
          # Batching caps its estimates here.
          max_seq_length=settings.longest_input,
          max_batch_size=perf.max_batch_size,
          max_batch_tokens=perf.max_batch_tokens,
          buffer_size=perf.sort_buffer_size),
      previous_run=previous_run,
      table=table,
      writing=WriteSettings(bigquery_format=out.bigquery_format,
                            num_shards=out.num_shards),
      sinks=sinks,
      neighbours=(NeighbourSettings(k=neighbours.neighbours_k,
                                    mode=neighbours.neighbours_mode,
                                    block_size=neighbours.neighbours_block_size,
                                    level=neighbours.neighbours_level)
                  if neighbours.neighbours_k else None),
      duplicates=(DuplicateSettings(
          threshold=neighbours.duplicate_threshold,
          mode=neighbours.neighbours_mode,
          block_size=neighbours.neighbours_block_size)
                  if neighbours.duplicate_threshold is not None else None),
      similarity_plot=out.similarity_plot,
      projector_max_points=(out.projector_max_points
                            if out.projector_export else None),
      limits=PublishLimits(
          max_bad_records=nightly.max_bad_records,
          max_bad_fraction=nightly.max_bad_fraction,
          max_removed_fraction=nightly.max_removed_fraction,
          allow_large_removal=nightly.allow_large_removal,
          previous_documents=(previous_run.documents if previous_run else
                              None)),
      report=ReportSettings(
          limit=(settings.chunking.max_chunks if settings.chunking else
                 settings.max_seq_length),
          chunked=settings.chunking is not None,
          include_text=not out.no_text),
      latest_pointer=nightly.latest_pointer,
      latest_pointer_before=pointer_before,
      manifest_model=manifest_model(model, settings),
      manifest_settings=settings_of(config),
      vertex=_vertex_export(config, previous_run, table.chunked,
                            model.hidden_size),
      spill_dir=spill_dir(staging) if local_runner else None,
      lock=None)
  # The lock last: every check above may refuse the run, and a refused run
  # leaves nothing behind (a lock left on gs:// would refuse every later
  # run until removed by hand).
  if not environment.take_lock:
    return plan
  return dataclasses.replace(
      plan, lock=_take_lock(run_dir, out.run_id, environment.check_output))
