"""A field flag that names no field of the input fails before the run.

`--text_field body` on a corpus whose records hold their text under "text"
would otherwise be found at the end of the run: every record read, none
embedded, the run refused (transforms/guardrails.py). On Dataflow that is a
job's workers started and the whole corpus read for nothing; for the
--neighbours_of queries it is the whole corpus embedded for nothing (they
are read after it).

So planning reads the first records of the first files with the read
stage's own readers. When every one of them is dead-lettered for a missing
field, the flag that names it is wrong: the run stops there, with the
record's own error ("no 'body' field (fields: id, text); set --text_field").
Any other outcome (one good record, one other error, no record at all) is
left to the run and its guardrails. A CSV, TSV or Parquet file's fields are
its header's, so one record tells; a JSONL or TFRecord file's may vary from
record to record, hence a sample of up to a thousand records a file: a
corpus that starts with a few records of another kind is not refused (the
guardrails count them), one whose sampled records all lack the field is.
"""

import contextlib
import itertools
import logging

from pipeline.errors import ConfigError
from run_directory.records import DeadLetter
from run_directory.records import Reason
from transforms.formats.files import TRANSIENT_ERRORS
from transforms.read import CorpusSettings
from transforms.read import matched_paths
from transforms.read import read_path

_LOG = logging.getLogger(__name__)

# A sample that costs well under a second locally, and a few small reads
# from Cloud Storage (reading stops at the first record that has the
# fields): enough that records all lacking a field are not chance.
_SAMPLE_FILES = 4
_SAMPLE_RECORDS_PER_FILE = 1000


def check_fields(flag: str, corpus: CorpusSettings):
  """Raises ConfigError when the sampled records of `corpus` all lack a field
  that the flags name (the text, its pair, a carried field such as a
  --restrict_fields one; not the id: a record without one gets a derived
  id)."""
  missing = []
  try:
    for path in matched_paths(corpus.pattern)[:_SAMPLE_FILES]:
      with contextlib.closing(
          read_path(path, corpus.input_format, corpus.record)) as records:
        for record in itertools.islice(records, _SAMPLE_RECORDS_PER_FILE):
          if not (isinstance(record, DeadLetter) and
                  record.reason == Reason.MISSING_FIELD):
            return
          missing.append(record)
  except TRANSIENT_ERRORS as error:
    # A storage error a retry may cure: the run's own reads retry it; a
    # sample is not worth failing the run for.
    _LOG.warning("%s=%s: its first records could not be read before the "
                 "run (%s); its fields are checked as the run reads them.",
                 flag, corpus.pattern, error)
    return
  if missing:
    first = missing[0]
    files = len({record.source for record in missing})
    raise ConfigError(
        f"{flag}={corpus.pattern}: {first.detail}. (Each of the "
        f"{len(missing)} records read from its first {files} file(s) before "
        f"the run lacks a field the flags name; the first is "
        f"{first.source}, record {first.position}.)")
