"""Read stage: turns the files of a corpus into Documents and dead letters.

    file patterns ──MatchFiles──> files ──DropRepeatedFiles──> one reader per
        file ──> Document (good record)  |  DeadLetter (bad record or bad file)

Every record of every matched file ends up as exactly one Document or one
DeadLetter; bad input never fails the run. A file that is not the format it
claims becomes one DeadLetter(UNREADABLE_FILE) and keeps the records read
before the damage.

Each file is read whole by one worker, from start to end: positions are record
indexes (a line number, a row number), which only a sequential read can count.
Parallelism comes from having many files; files are spread over workers by the
shuffle that also drops files matched by more than one pattern.

The per-format readers live in `transforms.formats`, one module per format.
Files are opened through Beam's filesystem layer, so `gs://` globs work, and
decompressed by their suffix (.gz, .bz2, .zst, ...) by
`transforms.formats.compression`, which notices a file cut short.
"""

import dataclasses
import functools
from typing import Iterator, List, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from run_directory.records import DeadLetter
from transforms.formats import RANDOM_ACCESS_FORMATS
from transforms.formats import READERS
from transforms.formats import resolve_input_format
from transforms.formats.fields import Record
from transforms.formats.fields import RecordSpec
from transforms.formats.files import display_path
from transforms.formats.files import open_for_reading
from transforms.formats.files import read_file_records
from transforms.names import CORPUS
from transforms.names import counter
from transforms.names import COUNTERS
from transforms.names import DEAD_LETTERS
from transforms.names import DOCUMENTS
from transforms.names import QUERIES
from transforms.progress import PROGRESS


@dataclasses.dataclass(frozen=True)
class CorpusSettings:
  """What the read stage reads: files, their format, and the record spec.

  scope: what the corpus's counters and manifest counts are named in:
    names.CORPUS, or names.QUERIES for the --neighbours_of queries.
  """
  pattern: str
  input_format: str
  record: RecordSpec = RecordSpec()
  scope: str = CORPUS


def _path_key(path: str) -> bytes:
  """A matched path as bytes: a local file name that is not UTF-8 holds lone
  surrogates, which Beam's coders cannot encode as str."""
  return path.encode("utf-8", errors="surrogateescape")


def _match_files(pattern: str):
  """The non-empty files a pattern matches, as path keys.

  A 0-byte file holds no records (and would be an invalid Parquet file). A
  pattern that matches nothing reads nothing here; the driver has already
  refused one before the run started.
  """
  for metadata in FileSystems.match([pattern])[0].metadata_list:
    if metadata.size_in_bytes > 0:
      yield _path_key(metadata.path)


def matched_paths(pattern: str) -> List[str]:
  """The non-empty files a pattern matches, in path order (each a str, as
  read_path takes it)."""
  return sorted(path_key.decode("utf-8", errors="surrogateescape")
                for path_key in _match_files(pattern))


def read_path(path: str, input_format: str,
              record: RecordSpec) -> Iterator[Record]:
  """Every record of one matched file, as a Document or a DeadLetter (see
  transforms.formats.files.read_file_records)."""
  open_raw = functools.partial(
      FileSystems.open, path, mime_type="application/octet-stream",
      compression_type=CompressionTypes.UNCOMPRESSED)
  open_file = functools.partial(open_for_reading, open_raw, path,
                                input_format in RANDOM_ACCESS_FORMATS)
  return read_file_records(
      open_file, display_path(path),
      functools.partial(READERS[input_format], spec=record))


class _ReadFileFn(beam.DoFn):
  """Reads one matched file; bad records go to the DEAD_LETTERS output."""

  def __init__(self, input_format: str, record: RecordSpec, scope: str):
    self._input_format = input_format
    self._record = record
    self._queries = scope == QUERIES
    self._read = counter(COUNTERS.read, scope)
    self._dead_lettered = counter(COUNTERS.dead_lettered, scope)

  def process(self, path_key: bytes):
    path = path_key.decode("utf-8", errors="surrogateescape")
    for record in read_path(path, self._input_format, self._record):
      self._read.inc()
      if isinstance(record, DeadLetter):
        self._dead_lettered.inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTERS, record)
      else:
        PROGRESS.add_read(queries=self._queries)
        yield record


class _DistinctFiles(beam.PTransform):
  """Each path once, however many patterns matched it.

  Overlapping patterns would otherwise read a file twice and dead-letter all
  its records as duplicate ids. The shuffle also spreads the files over
  workers (the Create above is a single bundle).
  """

  def expand(self, files):
    return (files
            | "KeyByPath" >> beam.Map(lambda path: (path, None))
            | "GroupByPath" >> beam.GroupByKey()
            | "PathOfEach" >> beam.Keys())


class ReadCorpus(beam.PTransform):
  """Reads a corpus into {DOCUMENTS: Document, DEAD_LETTERS: DeadLetter}.

  Args:
    file_pattern: a local path or glob, a gs:// glob, or a list of them. A
      pattern that matches nothing reads nothing (the driver refuses one
      before the run starts).
    input_format: one of INPUT_FORMATS; None infers it from the patterns'
      extension (ValueError if it cannot, raised here, at construction).
    record: where a record's id and text are (and its pair text, for pair
      tasks: not for "text" input, ValueError), and how large it may be.
    scope: the counters' scope (CorpusSettings.scope).
  """

  def __init__(self,
               file_pattern: Union[str, Sequence[str]],
               input_format: Optional[str] = None,
               record: RecordSpec = RecordSpec(),
               scope: str = CORPUS):
    super().__init__()
    self._scope = scope
    patterns = ([file_pattern]
                if isinstance(file_pattern, str) else list(file_pattern))
    if not patterns:
      raise ValueError("No input file pattern given.")
    self._patterns = patterns
    self._input_format = resolve_input_format(patterns, input_format)
    if record.text_pair_field is not None and self._input_format == "text":
      raise ValueError(
          "Text files hold one text per line; pair input (--text_pair_field) "
          "needs jsonl, csv, tsv, parquet or tfrecord.")
    self._record = record

  @classmethod
  def of(cls, settings: CorpusSettings) -> "ReadCorpus":
    return cls(settings.pattern, settings.input_format, settings.record,
               settings.scope)

  @property
  def input_format(self) -> str:
    return self._input_format

  def expand(self, pbegin):
    read = (
        pbegin
        | "FilePatterns" >> beam.Create(self._patterns)
        | "MatchFiles" >> beam.FlatMap(_match_files)
        | "DropRepeatedFiles" >> _DistinctFiles()
        | "ReadRecords" >> beam.ParDo(
            _ReadFileFn(self._input_format, self._record,
                        self._scope)).with_outputs(
                DEAD_LETTERS, main=DOCUMENTS))
    return {DOCUMENTS: read[DOCUMENTS], DEAD_LETTERS: read[DEAD_LETTERS]}
