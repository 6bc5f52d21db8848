"""Similarity heatmap and Embedding Projector export."""

import os

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from pipeline.local_runner import LocalRunner
from run_directory.records import Embedding
from run_directory.records import Vectors
from transforms import visualize


def _embeddings(n, h=8, seed=0):
  rng = np.random.default_rng(seed)
  return [
      Embedding(id=f"doc{i:03d}", text=f"text\tnumber {i}\nsecond line",
                source="s", vectors=Vectors(
                    embedding=rng.normal(size=h).astype(np.float32),
                    num_tokens=3, truncated=False)) for i in range(n)
  ]


def test_cosine_matrix_is_cosine():
  vectors = np.array([[1, 0], [1, 1], [0, 2]], np.float32)
  expected = np.array([[1, 0.70710677, 0], [0.70710677, 1, 0.70710677],
                       [0, 0.70710677, 1]], np.float32)
  np.testing.assert_allclose(visualize.cosine_matrix(vectors), expected,
                             atol=1e-6)


def test_heatmap_is_a_png_that_grows_with_the_labels():
  small = visualize.similarity_heatmap_png(
      ["a", "b"], np.eye(2, dtype=np.float32), "t")
  large = visualize.similarity_heatmap_png(
      [f"sentence {i}" for i in range(40)],
      np.random.default_rng(0).normal(size=(40, 8)), "t")
  assert small.startswith(b"\x89PNG\r\n\x1a\n")
  assert len(large) > len(small)


def test_projector_files_keep_one_row_per_document():
  embeddings = _embeddings(3, h=4)
  vectors, metadata = visualize.projector_tsv(embeddings)
  rows = [line.split("\t") for line in vectors.splitlines()]
  assert len(rows) == 3 and all(len(r) == 4 for r in rows)
  np.testing.assert_allclose(np.array(rows, float), np.stack(
      [e.embedding for e in embeddings]), rtol=1e-5)
  lines = metadata.splitlines()
  assert lines[0] == "id\ttext"
  # Tabs and newlines in texts would break the projector's parsing.
  assert lines[1] == "doc000\ttext number 0 second line"
  assert len(lines) == 4


def test_transforms_write_the_smallest_ids(tmp_path):
  run_dir = str(tmp_path)
  embeddings = _embeddings(12)
  with TestPipeline(runner=LocalRunner()) as p:
    pcoll = p | beam.Create(list(reversed(embeddings)))
    plot = pcoll | "Plot" >> visualize.WriteSimilarityPlot(run_dir, 5)
    projector = pcoll | "Projector" >> visualize.WriteProjectorFiles(
        run_dir, 4)
    assert_that(plot, equal_to([os.path.join(run_dir, "similarity.png")]),
                label="PlotPath")
    assert_that(projector, equal_to([
        os.path.join(run_dir, "projector", "vectors.tsv"),
        os.path.join(run_dir, "projector", "metadata.tsv")
    ]), label="ProjectorPaths")
  with open(os.path.join(run_dir, "projector", "metadata.tsv")) as f:
    ids = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
  assert ids == ["doc000", "doc001", "doc002", "doc003"]
  with open(os.path.join(run_dir, "similarity.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_documents_no_plot(tmp_path):
  with TestPipeline(runner=LocalRunner()) as p:
    plot = (p | beam.Create([], reshuffle=False).with_output_types(Embedding)
            | visualize.WriteSimilarityPlot(str(tmp_path)))
    assert_that(plot, equal_to([]))
  assert not os.path.exists(tmp_path / "similarity.png")
