"""The Vertex AI export stage (--vertex_export): the run's vectors in the
batch layout Vector Search builds and updates an index from.

  items (Embeddings, or Chunks with --chunk_size)
    -> datapoints (run_directory/vertex.py) -> vertex/*.json
    -> their state (id, datapoint_hash)     -> the vertex_state table

full writes every datapoint. delta writes only the datapoints that are new
or differ from the previous run's state (vector, restricts or crowding tag),
and lists the ids the previous state holds and this run does not in
vertex/delete/*.txt; an id is never in both. The state compared with is the
previous run's vertex_state table (written by full and delta runs alike), so
a chain of delta runs stays exact.
"""

import dataclasses
import json
from typing import Optional, Tuple

import apache_beam as beam
from apache_beam import coders

from run_directory.layout import VERTEX
from run_directory.layout import VERTEX_DELETE
from run_directory.layout import VERTEX_JSON
from run_directory.layout import VERTEX_STATE
from run_directory.shards import ShardWriter
from run_directory.vertex import datapoint
from run_directory.vertex import datapoint_prefixes
from run_directory.vertex import DATAPOINT_TABLE
from run_directory.vertex import DELETED_TABLE
from run_directory.vertex import deleted_prefixes
from run_directory.vertex import DELTA
from run_directory.vertex import MAX_FILES
from run_directory.vertex import state_row
from run_directory.vertex import STATE_TABLE
from run_directory.vertex import VertexExportSpec
from transforms.previous_run_damage import CheckRowCount
from transforms.previous_run_damage import previous_table_damaged
from transforms.write import WriteShards
from transforms.write import WriteTable

STATS = "stats"
_DELETED = "deleted"


@dataclasses.dataclass(frozen=True)
class VertexExport:
  """The export stage's settings.

  spec: the mode and the carried fields (run_directory/vertex.py).
  level: "document" or "chunk": what the datapoints are.
  previous_state_files: the previous run's vertex_state JSON lines (delta).
  previous_datapoints: their rows, as the previous manifest counts them.
  num_shards: data files, 0 for one per DATAPOINT_ROWS_PER_SHARD rows; at
    most MAX_FILES either way.
  """
  spec: VertexExportSpec
  level: str
  previous_state_files: Tuple[str, ...] = ()
  previous_datapoints: int = 0  # the rows its manifest counts
  num_shards: int = 0


def _state_of(file_and_line: Tuple[str, bytes]) -> tuple:
  """A previous vertex_state row as (id, datapoint_hash); a damaged one
  fails the run, told by file (a guessed state would delete or keep the
  wrong datapoints in the index)."""
  name, line = file_and_line
  try:
    row = json.loads(line.decode("utf-8"))
    state = row["id"], row["datapoint_hash"]
  except (ValueError, TypeError, KeyError, RecursionError):
    state = None
  if not state or not all(isinstance(value, str) for value in state):
    raise previous_table_damaged(
        VERTEX_STATE, f"has a line that is not an id and datapoint_hash in "
        f"{name}: {line[:80]!r}")
  return state


class _DiffFn(beam.DoFn):
  """(id, {current: [row], hash: [its hash], previous: [hash]}) -> the row
  when new or changed; the id, tagged _DELETED, when it is gone."""

  def process(self, grouped, checked_previous_rows):
    del checked_previous_rows  # only waited for (ExportToVertex)
    datapoint_id, group = grouped
    current, previous = list(group["current"]), list(group["previous"])
    if not current:
      yield beam.pvalue.TaggedOutput(_DELETED, datapoint_id)
      return
    if previous != list(group["hash"]):
      yield current[0]


def _stats(counts, settings: VertexExport) -> dict:
  datapoints, written, deleted = counts
  return {"mode": settings.spec.mode, "level": settings.level,
          "datapoints": datapoints, "written": written, "deleted": deleted,
          "restrict_fields": list(settings.spec.restrict_fields),
          "numeric_restrict_fields": list(
              settings.spec.numeric_restrict_fields),
          "crowding_tag_field": settings.spec.crowding_tag_field or None}


def _count(pcoll, label: str):
  return pcoll | label >> beam.combiners.Count.Globally()


class ExportToVertex(beam.PTransform):
  """items -> {VERTEX: {json: paths[, delete: paths]}, VERTEX_STATE: {jsonl:
  paths}, STATS: one dict for the manifest's "vertex" section}."""

  def __init__(self, output_dir: str, settings: VertexExport,
               spill_dir: Optional[str] = None):
    super().__init__()
    self._output_dir = output_dir
    self._settings = settings
    self._spill_dir = spill_dir  # see WriteShards

  def expand(self, items):
    settings, output_dir = self._settings, self._output_dir
    rows = items | "ToDatapoints" >> beam.Map(datapoint)
    states = rows | "ToState" >> beam.Map(state_row)
    state_files = states | "WriteState" >> WriteTable(
        output_dir, STATE_TABLE, bigquery_format=None,
        num_shards=settings.num_shards, spill_dir=self._spill_dir)
    written, deleted = rows, None
    if settings.spec.mode == DELTA:
      previous = (
          items.pipeline
          | "PreviousStateFiles" >> beam.Create(
              list(settings.previous_state_files))
          | "ReadPreviousState" >> beam.io.ReadAllFromText(
              coder=coders.BytesCoder(), with_filename=True)
          | "ParsePreviousState" >> beam.Map(_state_of))
      # A side input of the diff: nothing is written or deleted before the
      # previous state is known to be whole.
      checked_rows = previous | "CheckPreviousState" >> CheckRowCount(
          VERTEX_STATE, settings.previous_datapoints, "datapoints")
      # Each datapoint's hash as the state table has it: computed once.
      current = rows | "KeyById" >> beam.Map(lambda row: (row["id"], row))
      hashes = states | "HashById" >> beam.Map(
          lambda state: (state["id"], state["datapoint_hash"]))
      diff = ({"current": current, "hash": hashes, "previous": previous}
              | "JoinOnId" >> beam.CoGroupByKey()
              | "Diff" >> beam.ParDo(
                  _DiffFn(), beam.pvalue.AsSingleton(checked_rows)).with_outputs(
                  _DELETED, main="written"))
      written, deleted = diff["written"], diff[_DELETED]
    files = {VERTEX_JSON: (written | "WriteDatapoints" >> WriteShards(
        ShardWriter(DATAPOINT_TABLE, datapoint_prefixes(output_dir)),
        settings.num_shards, max_num_shards=MAX_FILES,
        spill_dir=self._spill_dir))[VERTEX_JSON]}
    counts = [_count(rows, "CountDatapoints"), _count(written, "CountWritten")]
    if deleted is not None:
      files[VERTEX_DELETE] = (deleted | "WriteDeleted" >> WriteShards(
          ShardWriter(DELETED_TABLE, deleted_prefixes(output_dir)),
          settings.num_shards, max_num_shards=MAX_FILES,
          spill_dir=self._spill_dir))[VERTEX_DELETE]
      counts.append(_count(deleted, "CountDeleted"))
    else:
      counts.append(items.pipeline | "NoneDeleted" >> beam.Create([0]))
    stats = (
        items.pipeline
        | "Once" >> beam.Create([None])
        | "Stats" >> beam.Map(
            lambda _, datapoints, written_count, deleted_count: _stats(
                (datapoints, written_count, deleted_count), settings),
            *[beam.pvalue.AsSingleton(count) for count in counts]))
    return {VERTEX: files, VERTEX_STATE: state_files, STATS: stats}
