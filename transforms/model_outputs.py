"""The model's batch outputs as the records the pipeline carries.

`LoadedBertModel.embed` returns a dict of batch arrays (bert_model); the
embed stage carries one `Vectors` per text (run_directory/records.py), with
chunking one `ChunkedVectors`. The two libraries know nothing of each other:
this is where one's output becomes the other's record.
"""

from typing import Dict

import numpy as np

from bert_model.loaded_model import ModelSettings
from run_directory.records import ChunkedVectors
from run_directory.records import ChunkVectors
from run_directory.records import Vectors


def split_outputs(outputs: Dict[str, np.ndarray],
                  settings: ModelSettings) -> list:
  """Batch outputs to one Vectors per text, real tokens only; with chunking
  one ChunkedVectors per text (its chunks' Vectors beside its own)."""
  if settings.chunking is not None:
    return _split_chunked_outputs(outputs, settings)
  return [_vectors(outputs, i, settings) for i in range(len(
      outputs["num_tokens"]))]


def _vectors(outputs: Dict[str, np.ndarray], i: int, settings: ModelSettings,
             prefix: str = "") -> Vectors:
  """Row i of the outputs named `prefix` + name as one Vectors."""
  n = int(outputs[prefix + "num_tokens"][i])
  token_ids = sequence = None
  if settings.sequence_output and prefix + "token_ids" in outputs:
    token_ids = outputs[prefix + "token_ids"][i, :n].astype(np.int32)
    sequence = outputs[prefix + "sequence_output"][i, :n].astype(
        settings.sequence_dtype)
  return Vectors(
      embedding=outputs[prefix + "embedding"][i].astype(np.float32),
      num_tokens=n,
      truncated=bool(outputs["truncated"][i]) if not prefix else False,
      token_ids=token_ids,
      sequence_embedding=sequence,
      layers={} if prefix else {
          layer: outputs[f"layer_{layer}"][i].astype(np.float32)
          for layer in settings.encoder_layers
      })


def _split_chunked_outputs(outputs: Dict[str, np.ndarray],
                           settings: ModelSettings) -> list:
  first_chunks = np.concatenate([[0], np.cumsum(outputs["num_chunks"])])
  starts, ends = outputs["chunk_start"], outputs["chunk_end"]
  results = []
  for i in range(len(outputs["num_chunks"])):
    chunks = tuple(
        ChunkVectors(start=int(starts[c]), end=int(ends[c]),
                     vectors=_vectors(outputs, c, settings, prefix="chunk_"))
        for c in range(first_chunks[i], first_chunks[i + 1]))
    results.append(ChunkedVectors(_vectors(outputs, i, settings), chunks))
  return results
