"""A lock on a run directory: one run at a time writes into an --output.

Two runs into one directory (a rerun started by hand while the nightly job
runs, two overlapping nightly runs) would delete each other's staged files
and publish a mix of both. So the driver takes `OUTPUT/.run.lock` before it
touches anything there, and gives it back when the run ends, published or
not:

- the lock file is created exclusively (O_EXCL locally; a generation-0
  precondition on Cloud Storage), so of two runs starting together exactly
  one gets it;
- it names its holder (run id, host, pid, start time): a second run refuses
  at once with that name, before the pipeline starts;
- a lock whose holder is gone (a driver that was killed, on this host, so
  its pid no longer runs) is stale, and taken over with a warning. A holder
  on another host cannot be checked from here: the message says how to
  remove its lock by hand.
"""

import datetime
import json
import logging
import os
import socket
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from run_directory.layout import LOCK_FILE

_LOG = logging.getLogger(__name__)

# Beside the lock while a run takes a stale one over (OutputLock._take_over).
TAKEOVER_SUFFIX = ".takeover"


class OutputLockedError(Exception):
  """Another live run holds the output directory; the message names it."""


def _holder(run_id: str) -> dict:
  return {
      "run_id": run_id,
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started_at": datetime.datetime.now(
          datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def _create_exclusive(path: str, data: bytes) -> bool:
  """Creates `path` holding `data` unless it exists; whether it was created."""
  scheme = FileSystems.get_scheme(path)
  if scheme is None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True
  if scheme == "gs":
    return _create_exclusive_on_gcs(path, data)
  # Other file systems have no exclusive create in Beam's API: check, then
  # create. Two runs starting within the same moment could both pass.
  if FileSystems.exists(path):
    return False
  with FileSystems.create(path) as f:
    f.write(data)
  return True


def _create_exclusive_on_gcs(path: str, data: bytes) -> bool:
  # Beam's FileSystems has no create-if-absent; Cloud Storage has, as a
  # precondition on the object's generation (0: it must not exist yet).
  # Imported here, not at the top: only a gs:// run pays for the client.
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  bucket, _, name = path[len("gs://"):].partition("/")
  blob = storage.Client().bucket(bucket).blob(name)
  try:
    blob.upload_from_string(data, content_type="application/json",
                            if_generation_match=0)
  except exceptions.PreconditionFailed:
    return False
  return True


def _read_holder(path: str) -> dict:
  try:
    with FileSystems.open(path) as f:
      holder = json.loads(f.read().decode("utf-8"))
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _is_gone(holder: dict) -> bool:
  """Whether the holder surely no longer runs: a dead pid on this host."""
  if holder.get("host") != socket.gethostname():
    return False
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False  # alive, another user's
  return False


def _describe(holder: dict) -> str:
  return (f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} "
          f"on {holder.get('host', '?')}, since "
          f"{holder.get('started_at', '?')})")


class OutputLock:
  """The lock on one run directory; `acquire` it, then `release` it."""

  def __init__(self, output: str, run_id: str):
    self.path = FileSystems.join(output, LOCK_FILE)
    self._output = output
    self._holder = _holder(run_id)
    self._held = False

  def acquire(self) -> "OutputLock":
    """Takes the lock, or a stale one over; raises OutputLockedError."""
    data = json.dumps(self._holder, sort_keys=True).encode("utf-8")
    if _create_exclusive(self.path, data):
      self._held = True
      return self
    holder = _read_holder(self.path)
    if _is_gone(holder) and self._take_over(data):
      return self
    holder = _read_holder(self.path)
    raise OutputLockedError(
        f"--output={self._output} is being written by {_describe(holder)}: "
        "two runs must not write one run directory. Wait for that run to "
        "end, or choose another --output. If it is not running any more, "
        f"delete {self.path}.")

  def _take_over(self, data: bytes) -> bool:
    """Replaces a stale lock with this run's; whether it did.

    Under a second lock, the takeover's: two runs that both found the lock
    stale must not both delete it, the second deleting the first's new one.
    The holder is read again under it, since another run may have taken the
    lock over in between.
    """
    takeover = self.path + TAKEOVER_SUFFIX
    if not _create_exclusive(takeover, data):
      # Another run is taking it over; or one was killed doing so, and its
      # takeover file, stale too, goes the same way as a stale lock.
      if not _is_gone(_read_holder(takeover)):
        return False
      FileSystems.delete([takeover])
      if not _create_exclusive(takeover, data):
        return False
    try:
      holder = _read_holder(self.path)
      if not _is_gone(holder):
        return False
      _LOG.warning("Taking over the lock of %s on %s: %s is gone.",
                   self._output, self.path, _describe(holder))
      FileSystems.delete([self.path])
      self._held = _create_exclusive(self.path, data)
      return self._held
    finally:
      FileSystems.delete([takeover])

  def release(self):
    """Gives the lock back, if this run still holds it. Never raises."""
    if not self._held:
      return
    self._held = False
    try:
      if _read_holder(self.path) == self._holder:
        FileSystems.delete([self.path])
    except Exception as error:  # pylint: disable=broad-except
      # The run is over (it may have published): a lock left behind is
      # stale, and the next run takes it over.
      _LOG.warning("Could not remove the lock %s: %s", self.path, error)

  def __enter__(self) -> "OutputLock":
    return self.acquire()

  def __exit__(self, *unused_exc_info) -> Optional[bool]:
    self.release()
    return None
