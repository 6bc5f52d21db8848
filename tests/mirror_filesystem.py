"""A Beam file system for tests of code that must work on gs:// without a
local path: `mirror://x/y` is the file $MIRROR_FILESYSTEM_ROOT/x/y.

Like an object store it has no directories: `os.path` and `test -f` do not
see its paths, only Beam's FileSystems do. Importing this module registers
the scheme (Beam finds every FileSystem subclass by its scheme); a test puts
`make_sitecustomize`'s directory on PYTHONPATH so that a subprocess (a
shell script's python) registers it too.
"""

import os

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "mirror"
PREFIX = SCHEME + "://"
ROOT_VARIABLE = "MIRROR_FILESYSTEM_ROOT"


def _local(path: str) -> str:
  return os.path.join(os.environ[ROOT_VARIABLE], path[len(PREFIX):])


def _mirrored(local_path: str) -> str:
  return PREFIX + os.path.relpath(local_path, os.environ[ROOT_VARIABLE])


class MirrorFileSystem(LocalFileSystem):
  """LocalFileSystem under mirror:// paths, without directories."""

  @classmethod
  def scheme(cls):
    return SCHEME

  def join(self, basepath, *paths):
    return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

  def split(self, path):
    head, _, tail = path.rstrip("/").rpartition("/")
    return head, tail

  def has_dirs(self):
    return False

  def mkdirs(self, path):
    pass  # an object store makes none

  def _list(self, dir_or_prefix):
    # Every file whose path starts with the prefix, as an object store lists.
    local_prefix = _local(dir_or_prefix)
    for root, _, files in os.walk(os.path.dirname(local_prefix)):
      for name in files:
        path = os.path.join(root, name)
        if path.startswith(local_prefix):
          yield FileMetadata(_mirrored(path), os.path.getsize(path),
                             os.path.getmtime(path))

  def create(self, path, *args, **kwargs):
    os.makedirs(os.path.dirname(_local(path)), exist_ok=True)
    return super().create(_local(path), *args, **kwargs)

  def open(self, path, *args, **kwargs):
    return super().open(_local(path), *args, **kwargs)

  def copy(self, source_file_names, destination_file_names):
    super().copy([_local(p) for p in source_file_names],
                 [_local(p) for p in destination_file_names])

  def rename(self, source_file_names, destination_file_names):
    for path in destination_file_names:
      os.makedirs(os.path.dirname(_local(path)), exist_ok=True)
    super().rename([_local(p) for p in source_file_names],
                   [_local(p) for p in destination_file_names])

  def exists(self, path):
    return os.path.isfile(_local(path))  # no directories

  def size(self, path):
    return os.path.getsize(_local(path))

  def last_updated(self, path):
    return os.path.getmtime(_local(path))

  def checksum(self, path):
    return str(self.size(path))

  def metadata(self, path):
    return FileMetadata(path, self.size(path), self.last_updated(path))

  def delete(self, paths):
    for path in paths:  # a file, or every file under a "directory" prefix
      if self.exists(path):
        os.remove(_local(path))
      else:
        for metadata in self._list(path.rstrip("/") + "/"):
          os.remove(_local(metadata.path))


def make_sitecustomize(directory: str) -> str:
  """Writes a sitecustomize.py into `directory` that registers the scheme in
  every Python started with `directory` on its PYTHONPATH; returns it."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "sitecustomize.py"), "w") as f:
    f.write("import tests.mirror_filesystem  # registers mirror://\n")
  return directory
