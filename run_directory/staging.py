"""Staged files into the run directory: how a run is moved into place.

Every stage writes under the run's staging directory; the publish stage moves
the files the manifest lists into the run directory with the same relative
paths (`move_into_place`, safe to repeat after a retry), after removing any
file of the run's own directories (tables, exports, the index) that the new
manifest does not list (`remove_unlisted_files`): they hold only what the
manifest names, whatever an earlier run into the directory wrote. A run
starting into a directory first removes the staging directories of earlier
runs there that never published (`remove_stale_staging`). A directory is
removed with everything under it by `remove_tree`.

An object store (gs://) has no directories: a "directory" is the objects
whose names start with it, which FileSystems.exists does not see and a `*`
glob does not match (it stops at "/"), so those are listed with `**`.
"""

import glob
import logging
import os
import posixpath

from apache_beam.io.filesystems import FileSystems

from run_directory.layout import output_directories
from run_directory.layout import STAGING_PREFIX

_LOG = logging.getLogger(__name__)


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


def _matching(pattern: str) -> list:
  return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def remove_tree(directory: str):
  """Deletes a directory and everything under it, if it is there."""
  if FileSystems.get_scheme(directory) is None:
    if os.path.exists(directory):
      FileSystems.delete([directory])
    return
  objects = _matching(FileSystems.join(directory, "**"))
  if objects:
    FileSystems.delete(objects)


def _files_in(directory: str) -> list:
  """The files directly inside `directory` (none if it does not exist)."""
  if FileSystems.get_scheme(directory) is None:
    if not os.path.isdir(directory):
      return []
    return [entry.path for entry in os.scandir(directory) if entry.is_file()]
  return _matching(FileSystems.join(directory, "*"))


def remove_unlisted_files(run_dir: str, relative_paths):
  """Deletes the files of the run's own directories that it does not list.

  A publish that was killed half-way leaves shards in place; a later run
  into the same directory may have other shard counts, and `bq load
  .../avro/*` would load both. An earlier run may have written tables or an
  index this one does not (--neighbours_mode ann, then exact): its files
  would be read as this run's by whoever globs the directory. The run
  directory's own top level is left alone: it holds the lock and the staging
  directory, and may hold files of the user's.
  """
  relative_paths = list(relative_paths)
  listed = {FileSystems.join(run_dir, relative) for relative in relative_paths}
  # Compared as the manifest's relative paths: FileSystems.join may spell
  # run_dir otherwise (a local one made absolute).
  directories = {posixpath.dirname(relative) for relative in relative_paths}
  directories.update(output_directories())
  directories.discard("")
  stale = [path for directory in sorted(directories)
           for path in _files_in(FileSystems.join(run_dir, directory))
           if path not in listed]
  if stale:
    _LOG.warning("Removing files the run does not list (an earlier run's, "
                 "or an unfinished publish's): %s", stale)
    FileSystems.delete(stale)


def remove_stale_staging(run_dir: str):
  """Removes the staged files of earlier runs into this directory that
  never published.

  Called with the directory's lock held, so no live run owns them. The run
  directory holds no glob characters (checked), so the pattern matches only
  there.
  """
  pattern = FileSystems.join(run_dir, STAGING_PREFIX + "*")
  if FileSystems.get_scheme(run_dir) is None:
    # Local directories themselves do not match a glob; list them.
    paths = glob.glob(pattern)
  else:
    paths = _matching(pattern) + _matching(FileSystems.join(pattern, "**"))
  if paths:
    _LOG.info("Removing staged files of an unpublished earlier run: %s", paths)
    FileSystems.delete(paths)
