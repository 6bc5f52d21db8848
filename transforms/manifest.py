"""The last stage: publish the run, manifest.json last.

Every stage writes under a staging directory inside the run directory. This
stage takes the counts and the written file lists as side inputs, so Beam runs
it only after every write has finished; it then moves the files into place,
writes manifest.json (under a temporary name, renamed), updates the optional
`latest` pointer, and removes the staging directory. A run directory either
has a complete manifest.json or none, and one without it is not published: a
crashed or killed run never looks complete.

Every step that can fail comes before the manifest: the new latest pointer is
written under a temporary name first, and only renamed into place after.
"""

import json
import logging
import os
import time
from typing import Dict, Mapping, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsList
from apache_beam.pvalue import AsSingleton

from transforms.guardrails import REFUSAL_FILE
from transforms.guardrails import PublishLimits
from transforms.guardrails import RunRefusedError
from transforms.guardrails import SummarizeErrors
from transforms.guardrails import describe_refusal
from transforms.guardrails import refusal_reasons
from transforms.write import BIGQUERY_SCHEMA
from transforms.write import relative_to_run_dir

_LOG = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
COUNT_NAMES = ("read", "embedded", "dead_lettered", "truncated")


def _nest(flat: Mapping[str, int]) -> dict:
  """{"read": 3, "queries.read": 2} -> {"read": 3, "queries": {"read": 2}}."""
  nested = {}
  for name, value in flat.items():
    *groups, leaf = name.split(".")
    node = nested
    for group in groups:
      node = node.setdefault(group, {})
    node[leaf] = value
  return nested


def _check_counts_add_up(counts: Mapping, what: str):
  if counts["read"] != counts["embedded"] + counts["dead_lettered"]:
    # Never publish numbers that do not add up: something lost records.
    raise RuntimeError(
        f"{what} counts do not add up: read {counts['read']} != embedded "
        f"{counts['embedded']} + dead_lettered {counts['dead_lettered']}.")


def build_manifest(run_id: str, run_dir: str, model: Mapping,
                   counts: Mapping[str, int],
                   outputs: Mapping[str, Mapping[str, list]],
                   settings: Mapping,
                   wall_time_secs: float,
                   details: Mapping[str, dict] = None) -> dict:
  """The manifest as a dict (pure; see the output contract in the README).

  counts: flat names; "group.name" nests, e.g. "queries.read".
  details: extra top-level sections, e.g. {"neighbours": {...}}.
  """
  counts = _nest(counts)
  _check_counts_add_up(counts, "Record")
  if "queries" in counts:
    _check_counts_add_up(counts["queries"], "Query")
  tables = {}
  for table, formats in outputs.items():
    tables[table] = {}
    for fmt, paths in formats.items():
      relative = sorted(relative_to_run_dir(run_dir, p) for p in paths)
      # A table has one schema file; the contract names it, not a list.
      tables[table][fmt] = (relative[0] if fmt == BIGQUERY_SCHEMA else
                            relative)
  manifest = {
      "run_id": run_id,
      "model": dict(model),
      "counts": counts,
      "outputs": tables,
      "settings": dict(settings),
      "metrics": {
          "wall_time_secs": round(wall_time_secs, 3),
          "docs_per_sec": round(counts["embedded"] / wall_time_secs, 2)
                          if wall_time_secs > 0 else None,
      },
  }
  for section, value in (details or {}).items():
    manifest[section] = dict(value)
  return manifest


def _write_text(path: str, text: str):
  with FileSystems.create(path) as f:
    f.write(text.encode("utf-8"))


def _ensure_parent(path: str):
  parent = FileSystems.split(path)[0]
  if not FileSystems.exists(parent):
    try:
      FileSystems.mkdirs(parent)
    except IOError:
      pass  # made meanwhile, or an object store without directories


def move_into_place(staging_dir: str, run_dir: str, relative_paths):
  """Moves staged files to the run directory; safe to repeat after a retry."""
  for relative in relative_paths:
    source = FileSystems.join(staging_dir, relative)
    destination = FileSystems.join(run_dir, relative)
    if not FileSystems.exists(source) and FileSystems.exists(destination):
      continue  # moved by an earlier attempt of this step
    _ensure_parent(destination)
    FileSystems.rename([source], [destination])


def write_json_atomically(path: str, value: dict):
  temp_path = path + ".tmp"
  with FileSystems.create(temp_path, mime_type="application/json") as f:
    f.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
  FileSystems.rename([temp_path], [path])


class WriteManifest(beam.PTransform):
  """Publishes the run after all outputs; applied to the pipeline.

  Files listed in `outputs` are under staging_dir; they move to run_dir with
  the same relative paths, then manifest.json is written, then the
  latest_pointer file (if any) is set to the run directory's path.

  Before anything moves, the counts are checked against `limits`
  (transforms/guardrails.py): a run that breaks one writes refused.json into
  its staging directory and fails with RunRefusedError, unpublished.

  counts: name -> PCollection whose elements are counted (COUNT_NAMES).
  outputs: table -> format -> PCollection of written file paths, as the write
    transforms return them ("bigquery_schema" -> the one schema file).
  details: section name -> PCollection of one dict, e.g. neighbour stats.
  dead_letters: every rejected record, summarised by reason in the manifest
    and in a refusal.
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
               limits: PublishLimits = PublishLimits(),
               dead_letters: Optional[beam.PCollection] = None):
    super().__init__()
    self._limits = limits
    self._dead_letters = dead_letters
    self._run_dir = run_dir
    self._staging_dir = staging_dir
    self._static_details = dict(static_details or {})
    self._latest_pointer = latest_pointer
    self._run_id = run_id
    self._model = dict(model)
    self._counts = counts
    self._outputs = outputs
    self._settings = dict(settings)
    self._started_at = started_at
    self._details = dict(details or {})

  def expand(self, pbegin):
    side_inputs = {}
    for name, pcoll in self._counts.items():
      side_inputs[f"count__{name}"] = AsSingleton(
          pcoll | f"Count[{name}]" >> beam.combiners.Count.Globally())
    for table, formats in self._outputs.items():
      for fmt, paths in formats.items():
        side_inputs[f"files__{table}__{fmt}"] = AsList(paths)
    for section, pcoll in self._details.items():
      side_inputs[f"details__{section}"] = AsSingleton(pcoll)
    if self._dead_letters is not None:
      side_inputs["errors__summary"] = AsSingleton(
          self._dead_letters
          | "SummarizeErrors" >> beam.CombineGlobally(SummarizeErrors()))
    return (pbegin
            | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(self._write, **side_inputs))

  def _write(self, unused_element, **side_inputs):
    counts, outputs, details = {}, {}, {}
    for key, value in side_inputs.items():
      kind, *names = key.split("__")
      if kind == "count":
        counts[names[0]] = value
      elif kind == "details":
        details[names[0]] = value
      elif kind == "files":
        outputs.setdefault(names[0], {})[names[1]] = value
    top_errors = side_inputs.get("errors__summary", [])
    details.update(self._static_details)
    details["dead_letters"] = {
        "by_reason": {entry["reason"]: entry["count"] for entry in top_errors}
    }
    # Everything that can fail comes before manifest.json: once it exists
    # the run is published, and a published run never ends in an error.
    manifest = build_manifest(
        self._run_id, self._staging_dir, self._model, counts, outputs,
        self._settings, time.time() - self._started_at, details)
    reasons = refusal_reasons(manifest["counts"], self._limits)
    if reasons:
      self._refuse(manifest, reasons, top_errors)
    listed = _listed_files(manifest["outputs"])
    remove_unlisted_files(self._run_dir, listed)
    move_into_place(self._staging_dir, self._run_dir, listed)
    staged_pointer = None
    if self._latest_pointer:
      staged_pointer = f"{self._latest_pointer}.{self._run_id}.tmp"
      _write_text(staged_pointer, self._run_dir + "\n")
    write_json_atomically(
        FileSystems.join(self._run_dir, MANIFEST_FILE), manifest)
    # Published. What is left only tidies up, and may not fail the run.
    if staged_pointer:
      _without_failing(FileSystems.rename, [staged_pointer],
                       [self._latest_pointer])
    if FileSystems.exists(self._staging_dir):
      _without_failing(FileSystems.delete, [self._staging_dir])
    return manifest


  def _refuse(self, manifest: dict, reasons: list, top_errors: list):
    """Leaves refused.json in the staging directory, and fails the run."""
    refusal = {
        "run_id": self._run_id,
        "run_dir": self._run_dir,
        "staging_dir": self._staging_dir,
        "reasons": reasons,
        "counts": manifest["counts"],
        "limits": self._limits.to_json_dict(),
        "top_errors": top_errors,
    }
    path = FileSystems.join(self._staging_dir, REFUSAL_FILE)
    write_json_atomically(path, refusal)
    message = f"{describe_refusal(refusal)}\nDetails: {path}"
    _LOG.error("%s", message)
    raise RunRefusedError(message)


def _without_failing(step, *args):
  try:
    step(*args)
  except Exception as error:  # pylint: disable=broad-except
    _LOG.error("The run is published, but %s%s failed: %s", step.__name__,
               args, error)


def _files_in(directory: str) -> list:
  """The files directly inside `directory` (none if it does not exist)."""
  if FileSystems.get_scheme(directory) is None:
    if not os.path.isdir(directory):
      return []
    return [entry.path for entry in os.scandir(directory) if entry.is_file()]
  pattern = FileSystems.join(directory, "*")
  return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def remove_unlisted_files(run_dir: str, relative_paths):
  """Deletes files in the run's table directories that it does not list.

  A publish that was killed half-way leaves shards in place; a later run
  into the same directory may have other shard counts, and `bq load
  .../avro/*` would load both. The run directory's own top level is left
  alone: it holds the lock and the staging directory, and may hold files of
  the user's.
  """
  listed = {FileSystems.join(run_dir, relative) for relative in relative_paths}
  directories = {FileSystems.split(path)[0] for path in listed}
  directories.discard(run_dir)
  stale = [path for directory in sorted(directories)
           for path in _files_in(directory) if path not in listed]
  if stale:
    _LOG.warning("Removing files of an earlier, unfinished publish: %s", stale)
    FileSystems.delete(stale)


def _listed_files(outputs: Mapping) -> list:
  files = []
  for formats in outputs.values():
    for value in formats.values():
      files.extend([value] if isinstance(value, str) else value)
  return files
