"""The publish stage: the run moves into place, manifest.json last.

Every stage writes under a staging directory inside the run directory. This
stage takes the counts and the written file lists as side inputs, so Beam runs
it only after every write has finished. It then:

1. builds the manifest, which checks that the counts add up;
2. checks the guardrails (transforms/guardrails.py) and draws the run
   report (transforms/report/, with the guardrails' verdict) into the
   staging directory as report.html, which the manifest lists;
3. a run that breaks a guardrail then writes refused.json beside its report
   and fails with RunRefusedError, unpublished;
4. the sinks (transforms/sinks.py: --bigquery_table) get the embeddings
   table's staged BigQuery-loadable files only now, and the steps below
   wait for them: a refused run reaches no sink, and a sink that fails does
   so before anything is published;
5. writes the run's BigQuery scripts (bigquery/load.sh, vector_search.sql,
   run_directory/bigquery_scripts.py) from the manifest's file lists into
   the staging directory, and lists them in the manifest;
6. removes files of the table directories the manifest does not list, moves
   the staged files into place (run_directory/staging.py), and writes the new
   latest pointer under a temporary name;
7. writes manifest.json (atomically): the run is published;
8. renames the pointer into place and removes the staging directory: steps
   that only tidy up, and log an error if they fail instead of failing a
   published run.

A run directory either has a complete manifest.json or none, and one without
it is not published: a crashed or killed run never looks complete.
"""

import dataclasses
import logging
import time
from typing import Dict, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsList
from apache_beam.pvalue import AsSingleton

from run_directory.atomic import commit_staged
from run_directory.atomic import stage_text
from run_directory.atomic import write_atomically
from run_directory.atomic import write_json_atomically
from run_directory.bigquery_scripts import write_bigquery_scripts
from run_directory.layout import BIGQUERY
from run_directory.layout import BIGQUERY_SCHEMA
from run_directory.layout import MANIFEST_FILE
from run_directory.layout import REFUSAL_FILE
from run_directory.layout import REPORT
from run_directory.layout import REPORT_FILE
from run_directory.layout import spill_dir
from run_directory.manifest import build_manifest
from run_directory.manifest import listed_files
from run_directory.manifest import named_by_pointer
from run_directory.manifest import started_before
from run_directory.staging import move_into_place
from run_directory.staging import remove_tree
from run_directory.staging import remove_unlisted_files
from transforms.guardrails import describe_refusal
from transforms.guardrails import PublishLimits
from transforms.guardrails import refusal_reasons
from transforms.guardrails import RunRefusedError
from transforms.guardrails import ErrorSummaryFn
from transforms.report import draw_report
from transforms.report.summaries import CountWithSpanFn
from transforms.sinks import EmbeddingSink

_LOG = logging.getLogger(__name__)


class PublishRun(beam.PTransform):
  """Publishes the run after all outputs; applied to the pipeline.

  Files listed in `outputs` are under staging_dir; they move to run_dir with
  the same relative paths, then manifest.json is written, then the
  latest_pointer file (if any) is set to the run directory's path, unless
  another run moved it since `latest_pointer_before` was read
  (`_RunPublisher._move_pointer`).

  Before anything moves, the counts are checked against `limits`
  (transforms/guardrails.py): a run that breaks one writes refused.json into
  its staging directory and fails with RunRefusedError, unpublished.

  counts: name -> PCollection whose elements are counted (manifest.json
    "counts": read, embedded, dead_lettered, ...).
  outputs: table -> format -> PCollection of written file paths, as the write
    transforms return them ("bigquery_schema" -> the one schema file).
  details: section name -> PCollection of one dict, e.g. neighbour stats.
  dead_letters: every rejected record, summarised by reason in the manifest
    and in a refusal.
  report_sections: the run report's summaries (SummarizeForReport), each a
    PCollection of one element.
  sinks: (paths, sink) pairs: `sink.create_write_transform()` is applied
    to the paths (of the embeddings table's BigQuery-loadable files) once
    the guardrails passed, and the run is published once its output
    (complete when the write is done) is.
  """

  def __init__(self, run_dir: str, staging_dir: str, run_id: str,
               model: Mapping,
               counts: Dict[str, beam.PCollection],
               outputs: Dict[str, Dict[str, beam.PCollection]],
               settings: Mapping,
               started_at: float,
               details: Dict[str, beam.PCollection] = None,
               static_details: Mapping[str, dict] = None,
               latest_pointer: str = None,
               latest_pointer_before: Optional[str] = None,
               limits: PublishLimits = PublishLimits(),
               dead_letters: Optional[beam.PCollection] = None,
               report_sections: Dict[str, beam.PCollection] = None,
               sinks: Sequence[Tuple[beam.PCollection, EmbeddingSink]] = ()):
    super().__init__()
    self._publisher = _RunPublisher(
        run_dir=run_dir, staging_dir=staging_dir, run_id=run_id,
        model=dict(model), settings=dict(settings), started_at=started_at,
        static_details=dict(static_details or {}),
        latest_pointer=latest_pointer,
        latest_pointer_before=latest_pointer_before, limits=limits)
    self._sinks = tuple(sinks)
    self._report_sections = dict(report_sections or {})
    self._dead_letters = dead_letters
    self._counts = counts
    self._outputs = outputs
    self._details = dict(details or {})

  def expand(self, pbegin):
    side_inputs = {}
    for name, pcoll in self._counts.items():
      # Counted with the times of the first and last record (the report's
      # stage times), and without a combine's default for an empty input,
      # which is most of what it costs Beam to build and start (an empty
      # list counts 0).
      side_inputs[f"count__{name}"] = AsList(
          pcoll | f"Count[{name}]" >> beam.CombineGlobally(
              CountWithSpanFn()).without_defaults())
    for table, formats in self._outputs.items():
      for fmt, paths in formats.items():
        side_inputs[f"files__{table}__{fmt}"] = AsList(
            paths | f"WhenWritten[{table}.{fmt}]" >> beam.Map(
                lambda path: (path, time.time())))
    for section, pcoll in self._details.items():
      side_inputs[f"details__{section}"] = AsSingleton(pcoll)
    for section, pcoll in self._report_sections.items():
      side_inputs[f"report__{section}"] = AsSingleton(pcoll)
    if self._dead_letters is not None:
      side_inputs["errors__summary"] = AsSingleton(
          self._dead_letters
          | "SummarizeErrors" >> beam.CombineGlobally(ErrorSummaryFn()))
    checked = (pbegin
               | "Once" >> beam.Create([None])
               | "Check" >> beam.Map(self._publisher.check, **side_inputs))
    sinks_written = [
        AsList(paths
               | f"AfterChecks[{sink.name}]" >> beam.Map(
                   _after_checks, AsSingleton(checked))
               | f"WriteTo{sink.name}" >> sink.create_write_transform())
        for paths, sink in self._sinks]
    return checked | "Write" >> beam.Map(self._publisher.publish,
                                         *sinks_written)


@dataclasses.dataclass(frozen=True)
class _RunPublisher:
  """PublishRun's steps, with only what they need: Beam pickles them, and
  the transform itself holds the pipeline's PCollections."""
  run_dir: str
  staging_dir: str
  run_id: str
  model: Mapping
  settings: Mapping
  started_at: float
  static_details: Mapping
  latest_pointer: Optional[str]
  # What the pointer named when the run was planned (`named_by_pointer`).
  latest_pointer_before: Optional[str]
  limits: PublishLimits

  def check(self, unused_element, **side_inputs) -> dict:
    """The manifest, checked and with its report drawn; raises
    RunRefusedError (after writing refused.json) if a guardrail breaks."""
    counts, outputs, details = {}, {}, {}
    spans, written, sections = {}, {}, {}
    for key, value in side_inputs.items():
      kind, *names = key.split("__")
      if kind == "count":
        span = value[0] if value else CountWithSpanFn().extract_output(
            CountWithSpanFn().create_accumulator())
        counts[names[0]] = span["count"]
        spans[names[0]] = span
      elif kind == "details":
        details[names[0]] = value
      elif kind == "files":
        outputs.setdefault(names[0], {})[names[1]] = [p for p, _ in value]
        if names[1] != BIGQUERY_SCHEMA:  # written first, not when done
          written.setdefault(names[0], []).extend(t for _, t in value)
      elif kind == "report":
        sections[names[0]] = value
    report_path = FileSystems.join(self.staging_dir, REPORT_FILE)
    outputs[REPORT] = {"html": [report_path]}
    top_errors = side_inputs.get("errors__summary", [])
    details.update(self.static_details)
    details["dead_letters"] = {
        "by_reason": {entry["reason"]: entry["count"] for entry in top_errors}
    }
    # Everything that can fail comes before manifest.json: once it exists
    # the run is published, and a published run never ends in an error.
    manifest = build_manifest(
        self.run_id, self.staging_dir, self.model, counts, outputs,
        self.settings, time.time() - self.started_at, details,
        started_at=self.started_at)
    reasons = refusal_reasons(
        manifest["counts"], self.limits,
        id_field=self.settings.get("input", {}).get("id_field") or "id")
    page = draw_report(manifest, sections, top_errors, self.started_at,
                       time.time(), spans, written, refusal=reasons)
    write_atomically(report_path,
                     lambda f: f.write(page.encode("utf-8", "replace")))
    if reasons:
      self._refuse(manifest, reasons, top_errors)
    return manifest

  def publish(self, manifest: dict, *unused_sinks_written) -> dict:
    """Moves the checked run into place; manifest.json last."""
    # A copy: Beam's elements are not to be changed in place.
    manifest = {**manifest, "outputs": dict(manifest["outputs"])}
    # Rendered from the manifest's lists: they name exactly its files.
    manifest["outputs"][BIGQUERY] = write_bigquery_scripts(
        self.staging_dir, manifest)
    listed = listed_files(manifest["outputs"])
    remove_unlisted_files(self.run_dir, listed)
    move_into_place(self.staging_dir, self.run_dir, listed)
    staged_pointer = None
    if self.latest_pointer:
      staged_pointer = stage_text(self.latest_pointer, self.run_dir + "\n",
                                  tag=self.run_id)
    write_json_atomically(
        FileSystems.join(self.run_dir, MANIFEST_FILE), manifest)
    # Published. What is left only tidies up, and may not fail the run.
    if staged_pointer:
      _without_failing(f"moving {self.latest_pointer} into place",
                       self._move_pointer, staged_pointer)
    _without_failing(f"removing {self.staging_dir}", remove_tree,
                     self.staging_dir)
    return manifest

  def _move_pointer(self, staged_pointer: str):
    """Renames the staged pointer into place. When another run moved the
    pointer while this one ran (overlapping nights that share it), the
    pointer goes to the newer corpus, the run that started last, rather
    than to whichever finishes last: it is moved from a run that started
    before this one, and left on one that started after it (or whose start
    is unknown)."""
    named = named_by_pointer(self.latest_pointer)
    if named not in (self.latest_pointer_before, self.run_dir):
      before = self.latest_pointer_before or "nothing"
      if named and started_before(named, self.started_at):
        _LOG.warning(
            "--latest_pointer=%s named %s, published while this run ran (it "
            "named %s when the run started), but that run started before "
            "this one: this run read the newer corpus, and the pointer now "
            "names it.", self.latest_pointer, named, before)
        commit_staged(staged_pointer, self.latest_pointer)
        return
      _LOG.warning(
          "--latest_pointer=%s names %s, published while this run ran (it "
          "named %s when the run started), by a run that started after this "
          "one (or not known to have started before it), so read a newer "
          "corpus: left as it is.", self.latest_pointer,
          named or "nothing readable", before)
      _remove_if_there(staged_pointer)
      return
    commit_staged(staged_pointer, self.latest_pointer)

  def _refuse(self, manifest: dict, reasons: list, top_errors: list):
    """Leaves refused.json in the staging directory, and fails the run."""
    refusal = {
        "run_id": self.run_id,
        "run_dir": self.run_dir,
        "staging_dir": self.staging_dir,
        "reasons": reasons,
        "counts": manifest["counts"],
        "limits": self.limits.to_json_dict(),
        "top_errors": top_errors,
    }
    path = FileSystems.join(self.staging_dir, REFUSAL_FILE)
    write_json_atomically(path, refusal)
    # The outputs stay for inspection; the local runner's spill files
    # (pickled copies of the records it grouped on disk) are scratch, as
    # large as the corpus, and of no use to anyone once the run is over.
    scratch = spill_dir(self.staging_dir)
    try:
      remove_tree(scratch)
    except Exception as error:  # pylint: disable=broad-except
      _LOG.warning("Could not remove %s: %s", scratch, error)
    # Raised, not logged: whoever runs the job tells it (pipeline.main
    # prints it once; on Dataflow it is the failed job's error).
    raise RunRefusedError(f"{describe_refusal(refusal)}\nDetails: {path}")


def _after_checks(path, unused_checked_manifest):
  return path


def _remove_if_there(path: str):
  if FileSystems.exists(path):
    FileSystems.delete([path])


def _without_failing(what: str, step, *args):
  try:
    step(*args)
  except Exception as error:  # pylint: disable=broad-except
    _LOG.error("The run is published, but %s failed: %s", what, error)
