"""The FAISS index of a --neighbours_mode ann run, kept in its run directory.

  ann_index/index.faiss   what faiss.write_index writes: the index the run
                          found its neighbours with (its settings included)
  ann_index/ids.jsonl     the id of each row of the index, in row order, one
                          JSON string a line (ids may hold any character)

The manifest lists them as outputs.ann_index.faiss and outputs.ann_index.ids.
The index holds the items the neighbours were found among: the documents
(the embeddings table), or with --neighbours_level chunk the chunks. This
module moves the files; FAISS itself (seconds of start-up) stays with its
callers, which hand over or take the index's bytes as a stream.
"""

import json
import re
from typing import BinaryIO, Callable, Dict, List, Sequence, Tuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from run_directory.atomic import write_atomically
from run_directory.layout import ANN_INDEX
from run_directory.layout import ANN_INDEX_FAISS
from run_directory.layout import ANN_INDEX_FILES
from run_directory.layout import ANN_INDEX_IDS
from run_directory.layout import resolve


def write_ann_index(output_dir: str, write_index: Callable[[BinaryIO], None],
                    ids: Sequence[str]) -> Dict[str, str]:
  """Writes the index (through `write_index(file)`) and its ids under
  `output_dir`/ann_index/; returns {"faiss": path, "ids": path}."""
  paths = {key: FileSystems.join(output_dir, ANN_INDEX, name)
           for key, name in ANN_INDEX_FILES.items()}
  write_atomically(paths[ANN_INDEX_FAISS], write_index)
  write_atomically(paths[ANN_INDEX_IDS], lambda f: f.writelines(
      (json.dumps(item_id) + "\n").encode("ascii") for item_id in ids))
  return paths


def has_ann_index(manifest: dict) -> bool:
  """Whether the run kept an index (ann mode, and something to index)."""
  files = manifest.get("outputs", {}).get(ANN_INDEX)
  return isinstance(files, dict) and bool(files.get(ANN_INDEX_FAISS))


def read_ann_index(run_dir: str, manifest: dict,
                   read_index: Callable[[Callable[[int], bytes]], object]
                   ) -> Tuple[object, List[str]]:
  """The run's index, as `read_index(read)` makes it from a stream's read
  function, and the id of each of its rows (unique).

  Raises FileNotFoundError for a listed file that is gone, ValueError for one
  that is not what it should be.
  """
  files = manifest["outputs"][ANN_INDEX]
  paths = {}
  for key in ANN_INDEX_FILES:
    listed = files.get(key)
    if not isinstance(listed, list) or len(listed) != 1:
      raise ValueError(
          f"manifest: outputs.{ANN_INDEX}.{key} must list one file")
    paths[key] = resolve(run_dir, listed[0])
    if not FileSystems.exists(paths[key]):
      raise FileNotFoundError(
          f"The run lists {paths[key]}, which is gone: the run's index is "
          "damaged. Restore the file, or search without the index (every "
          "row scored: pipeline.query --exact).")
  with _open(paths[ANN_INDEX_FAISS]) as f:
    try:
      index = read_index(f.read)
    except RuntimeError as e:  # what FAISS raises for bytes it cannot read
      # Its message names its own C++ source first: "Error in ... at
      # .../index_read.cpp:276: <what>".
      what = re.split(r"\.cpp:\d+: ", str(e).splitlines()[0])[-1]
      raise ValueError(f"{paths[ANN_INDEX_FAISS]} is not a readable FAISS "
                       f"index: {what}") from None
  ids = _read_ids(paths[ANN_INDEX_IDS])
  if len(set(ids)) != len(ids):
    raise ValueError(f"{paths[ANN_INDEX_IDS]} lists an id twice")
  if len(ids) != index.ntotal:
    raise ValueError(
        f"{paths[ANN_INDEX_IDS]} lists {len(ids)} ids for an index of "
        f"{index.ntotal} rows")
  return index, ids


def _read_ids(path: str) -> List[str]:
  """The JSON strings of an ids file, one a line (written as ASCII; read as
  UTF-8, which holds it)."""
  ids = []
  with _open(path) as f:
    lines = f.read().split(b"\n")
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      item_id = json.loads(line.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError is one too
      raise ValueError(f"{path}, line {number}: not a JSON string "
                       f"({e})") from None
    if not isinstance(item_id, str):
      raise ValueError(f"{path}, line {number}: not an id (a JSON string)")
    ids.append(item_id)
  return ids


def _open(path: str):
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
