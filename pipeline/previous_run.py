"""Planning the reuse of a previous run (--previous_run): its directory (or
the one the --latest_pointer names, read by pipeline/latest_pointer.py), its
manifest read, its files checked, and whether its vectors can be carried
over.

Part of planning (pipeline/plan.py): every failure is a ConfigError that
names the fix, raised before the pipeline is built.
"""

import logging
import os
from typing import Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import ConfigError
from pipeline.errors import one_line
from pipeline.model_plan import RECORDED_WHEN_ON
from run_directory.columns import CONTENT_HASH
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.layout import JSONL
from run_directory.layout import resolve
from run_directory.layout import TFRECORD
from run_directory.layout import VERTEX_STATE
from run_directory.manifest import embedded_text_pairs
from run_directory.manifest import is_count
from run_directory.manifest import listed_files
from run_directory.manifest import load_manifest
from run_directory.manifest import RunNotPublishedError
from run_directory.manifest import table_columns
from run_directory.manifest import table_entry
from run_directory.manifest import table_paths
from transforms.reuse import PreviousRun

_LOG = logging.getLogger(__name__)


def told_and_fixes(path: str, named_by: Optional[str] = None) -> tuple:
  """How messages name a previous run, how they say to name another, and
  what a damaged run's messages end with: (told, fix, damaged_fix).

  named_by: the --latest_pointer file that named `path` (--previous_run
  latest): the fix is then to that file, not to a flag.
  """
  told = (f"--previous_run=latest ({path}, named by --latest_pointer="
          f"{named_by})" if named_by else f"--previous_run={path}")
  fix = (f"Write the last complete run's directory into {named_by}"
         if named_by else "Point --previous_run at the last complete run "
         "directory")
  damaged_fix = (f"{fix}, or delete {named_by} to embed everything afresh."
                 if named_by else
                 f"{fix}, or leave --previous_run out to embed everything.")
  return told, fix, damaged_fix


def plan_previous_run(path: str, model_fingerprint: str, vectors: dict,
                      named_by: Optional[str] = None) -> PreviousRun:
  """What the previous run's manifest says can be carried over.

  named_by: the --latest_pointer file that named `path`, for the messages.
  """
  path = path.rstrip("/")
  told, fix, damaged_fix = told_and_fixes(path, named_by)
  try:
    manifest = load_manifest(path)
  except RunNotPublishedError:
    if not named_by and FileSystems.get_scheme(path) is None and (
        os.path.isfile(path)):
      fix = (f"If {path} is a --latest_pointer file, pass --previous_run "
             f"latest --latest_pointer {path}")
    raise ConfigError(f"{told} has no manifest.json: it is not a published "
                      f"run. {fix}.") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{told}: {one_line(e)}") from None
  try:
    _check_entries(manifest)
    embeddings = table_entry(manifest, EMBEDDINGS)
    files = tuple(table_paths(path, embeddings, EMBEDDINGS, TFRECORD))
    if not files:
      raise ValueError("outputs.embeddings.tfrecord lists no file")
    documents = manifest["counts"]["embedded"]
    chunk_files = _optional_table_paths(path, manifest, CHUNKS, TFRECORD)
    if manifest["model"].get("chunking") and not chunk_files:
      raise ValueError("the run was chunked, but lists no chunks files")
    vertex_state_files = _optional_table_paths(path, manifest, VERTEX_STATE,
                                               JSONL)
    vertex_datapoints = (_count(manifest["vertex"], "datapoints", "vertex")
                         if vertex_state_files else 0)
    hidden_size = (_count(manifest["model"], "hidden_size", "model")
                   if "hidden_size" in manifest["model"] else 0)
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise ConfigError(
        f"{told}: its manifest.json is damaged ({one_line(e)}). "
        f"{damaged_fix}") from None
  missing = [name for name in files + chunk_files + vertex_state_files
             if not FileSystems.exists(name)]
  if missing:
    raise ConfigError(
        f"{told} lists {len(missing)} shard(s) "
        f"that are gone, e.g. {missing[0]}: its files were moved or deleted. "
        f"{damaged_fix}")
  gone = _other_files_gone(path, manifest,
                           set(files + chunk_files + vertex_state_files))
  if gone:
    # Not refused: nothing of them is carried over. Told, as the run it
    # names is damaged for whoever reads it.
    _LOG.warning(
        "%s is damaged: %d other file(s) its manifest lists are gone, e.g. "
        "%s. This run carries over only its TFRecord shards, which are all "
        "there.", told, len(gone), gone[0])
  reason = (_reason_vectors_differ(manifest, model_fingerprint, vectors) or
            _reason_no_content_hashes(path, embeddings, told, damaged_fix))
  if reason:
    _LOG.warning("Not reusing embeddings of %s: %s", path, reason)
  return PreviousRun(path=path, run_id=manifest["run_id"],
                     tfrecord_files=files, reusable=not reason,
                     reason=reason, documents=documents,
                     chunk_tfrecord_files=chunk_files,
                     vertex_state_files=vertex_state_files,
                     vertex_datapoints=vertex_datapoints,
                     hidden_size=hidden_size)


def _reason_vectors_differ(manifest: dict, model_fingerprint: str,
                           vectors: dict) -> str:
  """Why the previous run's vectors are not this run's ("" if they are):
  another model, or other vector settings (model_plan.vector_settings)."""
  if manifest["model"]["fingerprint"] != model_fingerprint:
    return "the model changed (fingerprint differs)"
  # Older runs recorded some vector settings under "settings", flat.
  previous = dict(manifest["settings"])
  previous.update(manifest["model"])
  if embedded_text_pairs(manifest):
    previous["text_pairs"] = True  # older runs: only in settings.input
  # Settings recorded only when on: either side may lack them.
  changed = sorted(name for name in set(vectors) | set(RECORDED_WHEN_ON)
                   if previous.get(name) != vectors.get(name))
  return f"settings changed: {', '.join(changed)}" if changed else ""


def _reason_no_content_hashes(path: str, embeddings: dict, told: str,
                              damaged_fix: str) -> str:
  """Why an older run's rows cannot be matched to tonight's documents (""
  if they can): its embeddings table has no content hashes."""
  if CONTENT_HASH in _column_names(path, embeddings, told, damaged_fix):
    return ""
  return "the previous run has no content hashes (older layout)"


def _other_files_gone(path: str, manifest: dict, needed: set) -> list:
  """The files the manifest lists, other than `needed`, that are gone."""
  try:
    listed = [resolve(path, name)
              for name in listed_files(manifest["outputs"])]
  except (TypeError, AttributeError, ValueError):
    return []  # a damaged list: the checks above read what reuse needs
  return [name for name in listed
          if name not in needed and not FileSystems.exists(name)]


# Entries of a manifest a previous run is planned from, and their types.
_ENTRY_TYPES = (("run_id", str), ("counts", dict), ("model", dict),
                ("settings", dict))


def _check_entries(manifest: dict):
  """The entries planning reads are of the types the pipeline writes."""
  for name, kind in _ENTRY_TYPES:
    if not isinstance(manifest.get(name), kind):
      raise ValueError(f"{name} is {manifest.get(name)!r}, not a "
                       f"{'string' if kind is str else 'JSON object'}")
  _count(manifest["counts"], "embedded", "counts")
  if not isinstance(manifest["model"].get("fingerprint"), str):
    raise ValueError(f"model.fingerprint is "
                     f"{manifest['model'].get('fingerprint')!r}, not a string")


def _count(entry: dict, name: str, where: str) -> int:
  value = entry.get(name)
  if not is_count(value):
    raise ValueError(f"{where}.{name} is {value!r}, not a count")
  return value


def _column_names(run_dir: str, entry: dict, told: str, fix: str) -> set:
  """The embeddings table's column names, from its schema file."""
  try:
    return {c.name for c in table_columns(run_dir, entry, EMBEDDINGS) or ()}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(
        f"{told}: its embeddings schema ({entry.get('bigquery_schema')}) "
        f"cannot be read: {e}. {fix}") from None


def _optional_table_paths(run_dir: str, manifest: dict, table: str,
                          format_: str) -> Tuple[str, ...]:
  """The files of a table the run may not have written (chunks, ...)."""
  if table not in manifest["outputs"]:
    return ()
  return tuple(table_paths(run_dir, table_entry(manifest, table), table,
                           format_))
