"""One input file to its records: opening, decompressing, and a file that
breaks its format.

`read_file_records` is where the read stage's promise is kept: every record
of a file ends as one Document or one DeadLetter, and no exception escapes,
except a storage error a retry may cure. A file that cannot be read on (not
the format it claims, corrupt or cut-off compression, gone) ends in one
UNREADABLE_FILE dead letter, after the records read before the damage.
"""

import logging
from typing import BinaryIO, Callable, Iterable, Iterator

from google.api_core import exceptions as google_api_errors
import requests

from run_directory.records import DeadLetter
from run_directory.records import Reason
from transforms.formats.compression import compression_of
from transforms.formats.compression import open_stream
from transforms.formats.fields import Record
from transforms.formats.fields import STAGE

_LOGGER = logging.getLogger(__name__)

# Storage errors a retry may cure: they fail the bundle so that the runner
# retries it, instead of dropping a good file. (Beam's GCS client has already
# retried them a few times when they get here.) Cloud Storage's answers come
# as google.api_core errors: 5xx, 429 and a retry given up; the HTTP
# client's own as requests' (OSError subclasses, not ConnectionError).
TRANSIENT_ERRORS = (ConnectionError, TimeoutError,
                    google_api_errors.ServerError,
                    google_api_errors.TooManyRequests,
                    google_api_errors.RetryError,
                    requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout)


def display_path(path: str) -> str:
  """A file's path as records name it: valid UTF-8 whatever the file system.

  Python decodes a local file name that is not UTF-8 with surrogateescape;
  such a str cannot be encoded (by Beam's coders, or any writer), so its bad
  bytes are shown as "\\xNN" escapes.
  """
  return path.encode("utf-8", errors="surrogateescape").decode(
      "utf-8", errors="backslashreplace")


def open_for_reading(open_raw: Callable[[], BinaryIO], path: str,
                     random_access: bool = False) -> BinaryIO:
  """The file's bytes, decompressed by its suffix (see compression.py).

  random_access: for a format that seeks (Parquet reads its footer first):
    the raw file, never decompressed as a whole (its pages carry their own
    compression).
  """
  if random_access:
    return open_raw()
  return open_stream(open_raw(), compression_of(path))


def read_file_records(open_file: Callable[[], BinaryIO], source: str,
                      read_records: Callable[[BinaryIO, str], Iterable[Record]]
                     ) -> Iterator[Record]:
  """The records of one file, then a dead letter if the file breaks its format.

  The UNREADABLE_FILE dead letter's position is that of the first record not
  read: one past the last record, or -1 when nothing could be read at all.
  """
  next_position = -1
  try:
    with open_file() as stream:
      for record in read_records(stream, source):
        next_position = record.position + 1
        yield record
  except TRANSIENT_ERRORS:
    raise
  except Exception as error:  # pylint: disable=broad-except
    # Whatever a reader or a codec raises on bytes it cannot make sense of
    # (ValueError, OSError, EOFError, zlib.error, ZstdError, ArrowInvalid,
    # ...): the file is unreadable from here on; the run goes on.
    _LOGGER.warning("Unreadable file %s at record %d: %s", source,
                    next_position, error)
    yield DeadLetter(
        source=source,
        position=next_position,
        stage=STAGE,
        reason=Reason.UNREADABLE_FILE,
        detail=f"{type(error).__name__}: {error}",
        snippet="")
