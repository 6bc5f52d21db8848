"""Embeds a text corpus with a BERT model and writes a run directory.

  python -m pipeline.main --input 'corpus/*.jsonl' --output runs/today \\
      [--model MODEL_DIR] [Beam pipeline options]

Read corpus -> validate + ids -> embed (RunInference) -> write embeddings;
every rejected record -> errors; manifest.json last. See README.md for the
flags and the output schemas.
"""

import glob
import json
import logging
import sys
import time
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions

from pipeline import local_runner
from pipeline.errors import ConfigError
from pipeline.options import PipelineConfig
from pipeline.options import config_from_options
from pipeline.options import format_help
from pipeline.options import reject_unknown_flags
from pipeline.output_lock import OutputLock
from pipeline.output_lock import OutputLockedError
from transforms import incremental
from transforms.batching import LengthBatching
from transforms.embed import EmbedDocuments
from transforms.guardrails import REFUSAL_FILE
from transforms.guardrails import RunRefusedError
from transforms.guardrails import describe_refusal
from transforms.manifest import MANIFEST_FILE
from transforms.manifest import WriteManifest
from transforms.model_handler import BertEmbeddingModelHandler
from transforms.model_handler import EmbeddingSettings
from transforms.neighbours import NEIGHBOURS
from transforms.neighbours import STATS
from transforms.neighbours import NearestNeighbours
from transforms.read import ReadCorpus
from transforms.records import DEAD_LETTER
from transforms.records import DOCUMENTS
from transforms.schemas import EmbeddingTableSpec
from transforms.validate import ValidateDocuments
from transforms.visualize import WriteProjectorFiles
from transforms.visualize import WriteSimilarityPlot
from transforms.write import WriteDeadLetters
from transforms.write import WriteEmbeddings
from transforms.write import WriteNeighbours

_LOG = logging.getLogger(__name__)


def make_model_handler(config: PipelineConfig) -> BertEmbeddingModelHandler:
  return BertEmbeddingModelHandler(
      EmbeddingSettings(
          preprocess_path=config.model.preprocess_path,
          encoder_path=config.model.encoder_path,
          max_seq_length=config.max_seq_length,
          pooling=config.pooling,
          normalize=config.normalize,
          sequence_output=config.sequence_output,
          sequence_dtype=config.sequence_dtype,
          encoder_layers=config.encoder_layers,
          precision=config.precision,
          jit_compile=config.jit_compile,
          encoder_format=config.model.encoder_format,
          text_pairs=config.text_pair_field is not None),
      max_batch_tokens=config.max_batch_tokens,
      large_model=config.large_model,
      model_copies=config.model_copies)


def length_batching(config: PipelineConfig) -> LengthBatching:
  return LengthBatching(max_seq_length=config.max_seq_length,
                        max_batch_size=config.max_batch_size,
                        max_batch_tokens=config.max_batch_tokens,
                        buffer_size=config.sort_buffer_size)


def manifest_model_entry(config: PipelineConfig) -> dict:
  meta = config.model.metadata
  return {
      "path": config.model.path,
      "name": meta.name,
      "encoder_format": config.model.encoder_format,
      "fingerprint": meta.fingerprint,
      "hidden_size": meta.hidden_size,
      "num_layers": meta.num_layers,
      "pooling": config.pooling,
      "normalize": config.normalize,
      "max_seq_length": config.max_seq_length,
      "license": meta.license,
      "source": dict(meta.source),
  }


def manifest_settings(config: PipelineConfig) -> dict:
  return {
      "input": config.input,
      "input_format": config.input_format,
      "id_field": config.id_field,
      "text_field": config.text_field,
      "text_pair_field": config.text_pair_field,
      "sequence_output": config.sequence_output,
      "sequence_dtype": config.sequence_dtype,
      "encoder_layers": list(config.encoder_layers),
      "include_text": config.include_text,
      "bigquery_format": config.bigquery_format,
      "precision": config.precision,
      "jit_compile": config.jit_compile,
      "neighbours_k": config.neighbours_k,
      "neighbours_mode": config.neighbours_mode,
      "neighbours_of": config.neighbours_of,
      "previous_run": config.previous_run.path if config.previous_run else None,
  }


def embedding_table_spec(config: PipelineConfig) -> EmbeddingTableSpec:
  return EmbeddingTableSpec(
      hidden_size=config.model.hidden_size,
      include_text=config.include_text,
      sequence_output=config.sequence_output,
      sequence_dtype=config.sequence_dtype,
      encoder_layers=config.encoder_layers)


class EmbedCorpus(beam.PTransform):
  """Read + validate (+ carry over) + embed one corpus.

  Returns {"embeddings", "dead_letters", "read", "documents_read", "reused",
  "removed"} PCollections: "read" holds every record read (documents and read
  errors), "documents_read" the documents among them (at least one per
  embedding) and "reused" the embeddings carried over from `previous`.
  """

  def __init__(self, file_pattern: str, config: PipelineConfig,
               previous: Optional[incremental.PreviousRun] = None):
    super().__init__()
    self._file_pattern = file_pattern
    self._config = config
    self._previous = previous

  def expand(self, pbegin):
    config = self._config
    read = pbegin | "Read" >> ReadCorpus(
        self._file_pattern, input_format=config.input_format,
        id_field=config.id_field, text_field=config.text_field,
        text_pair_field=config.text_pair_field)
    valid = read[DOCUMENTS] | "Validate" >> ValidateDocuments()
    to_embed = valid[DOCUMENTS]
    if self._previous:
      reuse = to_embed | "Reuse" >> incremental.ReuseEmbeddings(
          self._previous, embedding_table_spec(config))
      to_embed, reused, removed = (reuse[incremental.TO_EMBED],
                                   reuse[incremental.REUSED],
                                   reuse[incremental.REMOVED])
    else:
      reused = pbegin | "NoneReused" >> beam.Create([])
      removed = pbegin | "NoneRemoved" >> beam.Create([])
    embedded = to_embed | "Embed" >> EmbedDocuments(
        make_model_handler(config), length_batching(config))
    embeddings = embedded[DOCUMENTS]
    if self._previous:
      # Only then: a Flatten costs the local runner one more pass over every
      # embedding, and without a previous run nothing is reused.
      embeddings = (embeddings, reused) | "NewAndReused" >> beam.Flatten()
    return {
        "embeddings": embeddings,
        "dead_letters": (read[DEAD_LETTER], valid[DEAD_LETTER],
                         embedded[DEAD_LETTER])
                        | "AllDeadLetters" >> beam.Flatten(),
        "read": (read[DOCUMENTS], read[DEAD_LETTER])
                | "AllRecordsRead" >> beam.Flatten(),
        "documents_read": read[DOCUMENTS],
        "reused": reused,
        "removed": removed,
    }


def build_pipeline(pipeline: beam.Pipeline, config: PipelineConfig,
                   started_at: float) -> dict:
  """Adds the whole job to `pipeline`; returns its main PCollections."""
  corpus = pipeline | "EmbedCorpus" >> EmbedCorpus(
      config.input, config, config.previous_run)
  embeddings = corpus["embeddings"]
  counts = {
      "read": corpus["read"],
      "embedded": embeddings,
      "dead_lettered": corpus["dead_letters"],
      "truncated": embeddings | "Truncated" >> beam.Filter(
          lambda e: e.truncated),
      "reused": corpus["reused"],
      "removed": corpus["removed"],
  }
  all_dead_letters = [corpus["dead_letters"]]
  queries = None
  if config.neighbours_of:
    query_corpus = pipeline | "EmbedQueries" >> EmbedCorpus(
        config.neighbours_of, config)
    queries = query_corpus["embeddings"]
    counts.update({
        "queries.read": query_corpus["read"],
        "queries.embedded": queries,
        "queries.dead_lettered": query_corpus["dead_letters"],
    })
    all_dead_letters.append(query_corpus["dead_letters"])
  dead_letters = all_dead_letters | "AllDeadLetters" >> beam.Flatten()

  spec = embedding_table_spec(config)
  staging = config.staging_dir
  embedding_files = embeddings | "WriteEmbeddings" >> WriteEmbeddings(
      staging, spec, run_id=config.run_id,
      model_fingerprint=config.model.fingerprint,
      bigquery_format=config.bigquery_format, num_shards=config.num_shards,
      # Known before embedding ends, unlike the number of embeddings: the
      # shard of each embedding is then chosen as it is made, not in another
      # pass over all of them.
      count=corpus["documents_read"])
  error_files = dead_letters | "WriteDeadLetters" >> WriteDeadLetters(
      staging, run_id=config.run_id, num_shards=config.num_shards)
  if config.bigquery_table:
    _write_to_bigquery(embeddings, spec, config)
  outputs = {
      "embeddings": embedding_files,
      "errors": {"jsonl": error_files},
  }
  details = {}

  if config.neighbours_k:
    neighbours = embeddings | "NearestNeighbours" >> NearestNeighbours(
        config.neighbours_k, mode=config.neighbours_mode,
        block_size=config.neighbours_block_size, queries=queries)
    outputs["neighbours"] = neighbours[NEIGHBOURS] | (
        "WriteNeighbours" >> WriteNeighbours(
            staging, run_id=config.run_id,
            model_fingerprint=config.model.fingerprint,
            bigquery_format=config.bigquery_format,
            num_shards=config.num_shards))
    details["neighbours"] = neighbours[STATS]
  if config.similarity_plot:
    outputs["similarity_plot"] = {
        "png": embeddings | "WriteSimilarityPlot" >> WriteSimilarityPlot(
            staging)
    }
  if config.projector_export:
    outputs["projector"] = {
        "tsv": embeddings | "WriteProjectorFiles" >> WriteProjectorFiles(
            staging, config.projector_max_points)
    }

  static_details = {}
  if config.previous_run:
    static_details["previous_run"] = config.previous_run.manifest_entry()
  pipeline | "PublishRun" >> WriteManifest(
      config.output, staging, config.run_id, manifest_model_entry(config),
      counts=counts, outputs=outputs, settings=manifest_settings(config),
      started_at=started_at, details=details, static_details=static_details,
      latest_pointer=config.latest_pointer, limits=config.publish_limits,
      dead_letters=dead_letters)
  return {"embeddings": embeddings, "dead_letters": dead_letters}


def _write_to_bigquery(embeddings, spec, config: PipelineConfig):
  """Loads the embedding rows straight into --bigquery_table (on GCP)."""
  from apache_beam.io.gcp.bigquery import BigQueryDisposition  # pylint: disable=g-import-not-at-top
  from apache_beam.io.gcp.bigquery import WriteToBigQuery  # pylint: disable=g-import-not-at-top
  from transforms import schemas  # pylint: disable=g-import-not-at-top
  _ = (embeddings
       | "ToBigQueryRows" >> beam.Map(
           schemas.embedding_to_row, spec=spec, run_id=config.run_id,
           model_fingerprint=config.model.fingerprint)
       | "WriteToBigQuery" >> WriteToBigQuery(
           config.bigquery_table,
           schema={"fields": schemas.to_bigquery_schema(
               schemas.embedding_columns(spec))},
           method=WriteToBigQuery.Method.FILE_LOADS,
           create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
           write_disposition=BigQueryDisposition.WRITE_APPEND))


def _remove_stale_staging(output: str):
  """Staged files of earlier runs into this directory that never published.

  Called with the directory's lock held, so no live run owns them. --output
  holds no glob characters (checked), so the pattern matches only here.
  """
  pattern = FileSystems.join(output, ".staging-*")
  paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
  if FileSystems.get_scheme(output) is None:
    # Local directories themselves do not match a glob; list them.
    paths = glob.glob(pattern)
  if paths:
    _LOG.info("Removing staged files of an unpublished earlier run: %s", paths)
    FileSystems.delete(paths)


def _raise_if_refused(staging_dir: str):
  path = FileSystems.join(staging_dir, REFUSAL_FILE)
  if FileSystems.exists(path):
    with FileSystems.open(path) as f:
      refusal = json.loads(f.read().decode("utf-8"))
    raise RunRefusedError(
        f"{describe_refusal(refusal)}\nThe staged outputs stay in "
        f"{staging_dir} for inspection; details: {path}") from None


def run(argv=None, save_main_session=True):
  """Runs the job to completion; returns the PipelineResult.

  Raises ConfigError, before anything runs, when a flag is wrong or another
  run holds --output; RunRefusedError when a guardrail kept the run from
  being published.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  reject_unknown_flags(argv)
  options = PipelineOptions(argv)
  options.view_as(SetupOptions).save_main_session = save_main_session
  config = config_from_options(options)
  lock = OutputLock(config.output, config.run_id)
  try:
    lock.acquire()
  except OutputLockedError as error:
    raise ConfigError(str(error)) from None
  try:
    _remove_stale_staging(config.output)
    runner = None
    if local_runner.is_local_runner(options):
      # DirectRunner would first try to download the Prism runner.
      runner = local_runner.LocalRunner()
    started_at = time.time()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, config, started_at)
    try:
      result = pipeline.run()
      result.wait_until_finish()
    except Exception:  # pylint: disable=broad-except
      # The runner wraps the publish stage's RunRefusedError in its own
      # error; refused.json tells the two apart.
      _raise_if_refused(config.staging_dir)
      raise
  finally:
    lock.release()
  _LOG.info("Run %s written to %s (manifest: %s)", config.run_id,
            config.output, FileSystems.join(config.output, MANIFEST_FILE))
  return result


# Exit statuses a scheduler (cron, Cloud Scheduler, Airflow) can alert on.
EXIT_PUBLISHED = 0
EXIT_WRONG_FLAG = 2
EXIT_REFUSED = 3


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "-h" in argv or "--help" in argv or "--help_beam" in argv:
    print(format_help(with_beam_options="--help_beam" in argv))
    return EXIT_PUBLISHED
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s")
  try:
    run(argv)
  except ConfigError as e:
    print(f"pipeline.main: error: {e}", file=sys.stderr)
    return EXIT_WRONG_FLAG
  except RunRefusedError as e:
    print(f"pipeline.main: refused to publish: {e}", file=sys.stderr)
    return EXIT_REFUSED
  return EXIT_PUBLISHED


if __name__ == "__main__":
  sys.exit(main())
