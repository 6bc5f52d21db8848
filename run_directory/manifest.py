"""manifest.json: what a published run holds, written last.

`build_manifest` makes it (pure: the publish stage writes it, as the last
step); `load_manifest` reads it back, and refuses a run directory without
one: such a run is incomplete or was never published, and nothing may read
its files. Every file of a run is found through the manifest, never by
listing directories, so shards of an interrupted attempt are never read.

The contract outside tools rely on (docs/outputs.md has all of it):

  {"run_id", "model": {"path", "fingerprint", "hidden_size", "pooling", ...},
   "counts": {"read", "embedded", "dead_lettered", "truncated", ...},
   "outputs": {table: {format: [relative paths], "bigquery_schema": path}},
   ...}

with read == embedded + dead_lettered in every run.
"""

import datetime
import json
import os
from typing import Mapping, Optional

from apache_beam.io.filesystems import FileSystems

from run_directory.columns import columns_from_bigquery_schema
from run_directory.layout import BIGQUERY_SCHEMA
from run_directory.layout import ERRORS
from run_directory.layout import FORMATS
from run_directory.layout import MANIFEST_FILE
from run_directory.layout import REFUSAL_FILE
from run_directory.layout import relative_to_run_dir
from run_directory.layout import resolve
from run_directory.layout import STAGING_PREFIX
from run_directory.layout import TABLES
from run_directory.tables import ERROR_COLUMNS


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
                   details: Mapping[str, dict] = None,
                   started_at: Optional[float] = None) -> dict:
  """The manifest as a dict (pure; see the output contract in the README).

  counts: flat names; "group.name" nests, e.g. "queries.read".
  details: extra top-level sections, e.g. {"neighbours": {...}}.
  started_at: when the run started (time.time()), recorded in UTC as
    metrics.started_at: which of two overlapping runs read the newer corpus.
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
  if started_at is not None:
    manifest["metrics"]["started_at"] = datetime.datetime.fromtimestamp(
        started_at, datetime.timezone.utc).isoformat()
  for section, value in (details or {}).items():
    manifest[section] = dict(value)
  return manifest


def listed_files(outputs: Mapping) -> list:
  files = []
  for formats in outputs.values():
    for value in formats.values():
      files.extend([value] if isinstance(value, str) else value)
  return files


# ---------------------------------------------------------------------------
# Reading a published run.


def read_bytes(path: str) -> bytes:
  if FileSystems.get_scheme(path) is None and os.path.exists(path) and (
      not os.path.isfile(path)):
    # Opening a FIFO in a file's place would block the reader for ever.
    raise OSError(f"{path} is not a regular file")
  with FileSystems.open(path) as f:
    return f.read()


class RunNotPublishedError(FileNotFoundError):
  """The run directory has no manifest.json: it is incomplete or unpublished."""


def refusal_paths(run_dir: str) -> list[str]:
  pattern = FileSystems.join(run_dir, STAGING_PREFIX + "*", REFUSAL_FILE)
  return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def load_refusal(run_dir: str) -> dict:
  """Why a guardrail kept the run in `run_dir` from being published.

  The refused.json the publish stage left in the run's staging directory
  (the latest one, if several runs were refused there).

  Raises:
    FileNotFoundError: if no run was refused there.
  """
  paths = refusal_paths(run_dir)
  if not paths:
    raise FileNotFoundError(f"{run_dir} holds no refused run ({REFUSAL_FILE})")
  return json.loads(read_bytes(paths[-1]))


def load_manifest(run_dir: str) -> dict:
  run_dir = os.fspath(run_dir)  # a pathlib.Path too
  path = FileSystems.join(run_dir, MANIFEST_FILE)
  if not FileSystems.exists(path):
    # Object stores have no directories to look for: local paths only.
    if FileSystems.get_scheme(run_dir) is None:
      if os.path.isfile(run_dir):
        raise RunNotPublishedError(_file_instead_of_run(run_dir))
      if not os.path.isdir(run_dir):
        raise RunNotPublishedError(f"{run_dir}: no such run directory")
    refused = refusal_paths(run_dir)
    if refused:
      raise RunNotPublishedError(
          f"{run_dir} has no {MANIFEST_FILE}: a guardrail refused to publish "
          f"the run; {refused[-1]} says why.")
    told = _inside_a_run(run_dir)
    if told:
      raise RunNotPublishedError(told)
    raise RunNotPublishedError(
        f"{run_dir} has no {MANIFEST_FILE}: the run is incomplete or was "
        "never published (the manifest is written last). Wait for the run to "
        "finish, or rerun it; do not read its files directly.")
  try:
    manifest = json.loads(read_bytes(path))
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  except RecursionError:
    raise ValueError(f"{path} is not a manifest: its JSON nests too "
                     "deep") from None
  if not isinstance(manifest, dict) or not isinstance(
      manifest.get("outputs"), dict):
    raise ValueError(f"{path} has no \"outputs\" object")
  for name in _OBJECT_ENTRIES:
    if not isinstance(manifest.get(name, {}), dict):
      raise ValueError(f"{path}: \"{name}\" is {manifest[name]!r}, not a "
                       "JSON object: the manifest is damaged")
  return manifest


def _inside_a_run(path: str) -> Optional[str]:
  """What to say of a directory inside a run given as the run (found by a
  user trial: both were told as runs "incomplete or never published"): a
  table's directory of a published run, or the staging directory a
  guardrail's refusal left, which holds refused.json."""
  refusal = FileSystems.join(path, REFUSAL_FILE)
  if FileSystems.exists(refusal):
    return (f"{path} holds the staged outputs of a run a guardrail refused "
            f"to publish (no {MANIFEST_FILE}): {refusal} says why. They are "
            "for inspection only; fix the cause and run again.")
  trimmed = path.rstrip("/")
  parent, name = FileSystems.split(trimmed) if trimmed else ("", "")
  if FileSystems.get_scheme(path) is None:  # as given, relative or not
    parent = os.path.dirname(trimmed) or "."
  if name and FileSystems.exists(FileSystems.join(parent, MANIFEST_FILE)):
    return (f"{path} is a directory inside the run {parent}: pass the run "
            "directory itself")
  return None


def _file_instead_of_run(path: str) -> str:
  """What to say of a file given as a run directory: most likely the
  --latest_pointer file, which names the run to pass instead."""
  with open(path, "rb") as f:
    head = f.read(_POINTER_BYTES)
  named = " ".join(head.decode("utf-8", "replace").split())
  if named and len(head) < _POINTER_BYTES and "\ufffd" not in named:
    return (f"{path} is a file, not a run directory; if it is a "
            f"--latest_pointer file, pass the run it names: {named}")
  return f"{path} is a file, not a run directory"


# A --latest_pointer file holds one path: longer files are something else.
_POINTER_BYTES = 4096


def read_pointer(pointer: str) -> Optional[str]:
  """The run a --latest_pointer file names ("" if emptied); None when there
  is no file. Raises what reading it raises.

  A relative path (written by hand: runs write their full path) is read
  from the pointer's own directory, as TensorFlow reads the paths in a
  `checkpoint` file: the same whichever directory reads it.
  """
  if not FileSystems.exists(pointer):
    return None
  named = read_bytes(pointer).decode("utf-8").strip()
  if not named or "://" in named or os.path.isabs(named):
    return named
  if "://" in pointer:
    return f"{pointer.rsplit('/', 1)[0]}/{named}"
  return os.path.normpath(
      os.path.join(os.path.dirname(os.path.abspath(pointer)), named))


def started_before(run_dir: str, when: float) -> bool:
  """Whether the published run in run_dir started before `when`
  (time.time()), by its manifest's metrics.started_at; False when that
  cannot be told (no such run, or one from before it was recorded)."""
  try:
    started = load_manifest(run_dir)["metrics"]["started_at"]
    return datetime.datetime.fromisoformat(started).timestamp() < when
  except Exception:  # pylint: disable=broad-except
    return False  # compared, never raised: unknown reads as "not before"


def named_by_pointer(pointer: str) -> Optional[str]:
  """`read_pointer`, or "" when the file cannot be read as one
  (pipeline/latest_pointer.py tells why)."""
  try:
    return read_pointer(pointer)
  except Exception:  # pylint: disable=broad-except
    return ""  # compared, never raised: any storage error reads as "other"


# Entries every reader may look into, objects when present.
_OBJECT_ENTRIES = ("model", "counts", "settings")


def is_count(value) -> bool:
  """Whether a manifest value is a count: a whole number (not a bool), at
  least 0."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def embedded_text_pairs(manifest: dict) -> bool:
  """Whether the run embedded (text, text_pair) pairs: its model entry says
  so (model.text_pairs), or for runs made before that was recorded, its
  settings name a --text_pair_field."""
  model = manifest.get("model")
  if isinstance(model, dict) and model.get("text_pairs"):
    return True
  settings = manifest.get("settings")
  flags = settings.get("input") if isinstance(settings, dict) else None
  return isinstance(flags, dict) and bool(flags.get("text_pair_field"))


def table_entry(manifest: dict, table: str) -> dict:
  entry = manifest["outputs"].get(table)
  if table in manifest["outputs"] and not isinstance(entry, dict):
    raise ValueError(f"manifest: outputs.{table} is {entry!r}, not a JSON "
                     "object: the manifest is damaged")
  if entry is None:
    tables = [name for name in TABLES if name in manifest["outputs"]]
    raise ValueError(f"The run has no {table!r} table; it has "
                     f"{', '.join(tables) or 'none'}")
  return entry


def choose_format(entry: dict, table: str, format_: Optional[str]) -> str:
  available = [f for f in FORMATS if f in entry]
  if format_ is None:
    if not available:
      raise ValueError(f"The {table} table lists no files")
    return available[0]  # a BigQuery-loadable one when there is one
  if format_ not in available:
    raise ValueError(
        f"The {table} table has no {format_!r} files; it has {available}")
  return format_


def table_paths(run_dir: str, entry: dict, table: str,
                format_: str) -> list[str]:
  files = entry.get(format_)
  if not isinstance(files, list):
    raise ValueError(f"manifest: outputs.{table}.{format_} is not a list")
  return [resolve(run_dir, f) for f in files]


def table_columns(run_dir: str, entry: dict, table: str):
  """The table's columns: from its schema file, else known, else inferred."""
  if BIGQUERY_SCHEMA in entry:
    path = resolve(run_dir, entry[BIGQUERY_SCHEMA])
    try:
      return columns_from_bigquery_schema(json.loads(read_bytes(path)))
    except (ValueError, TypeError, KeyError, AttributeError,
            RecursionError) as e:
      raise ValueError(f"{path} is not a BigQuery schema the run wrote "
                       f"({' '.join(str(e).split())[:200]})") from e
  if table == ERRORS:
    return ERROR_COLUMNS
  return None
