"""Pictures of a run: a similarity heatmap and an Embedding Projector export.

- `similarity.png`: pairwise cosine similarity of a small set of documents
  (up to ~50), labelled with their texts, like the semantic similarity plot
  of TensorFlow's BERT experts tutorial.
- `projector/vectors.tsv` + `projector/metadata.tsv`: load both into
  https://projector.tensorflow.org ("Load") to browse a larger set.

Both take a deterministic subset (the documents with the smallest ids), so
re-running gives the same files. Without the texts (--no_text, `with_text`
False) both show ids instead: a run that leaves texts out of its tables
leaves them out of its pictures too.
"""

import io
import warnings
from typing import List, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from run_directory.atomic import write_atomically
from run_directory.layout import PROJECTOR
from run_directory.layout import SIMILARITY_PLOT_FILE
from run_directory.records import Embedding

_LABEL_CHARS = 40
# Documents in the projector export by default (--projector_max_points): the
# Embedding Projector stays responsive in a browser up to about this many.
DEFAULT_PROJECTOR_MAX_POINTS = 10_000


def _label(text: str) -> str:
  # Control and format characters have no glyph: shown as spaces.
  text = "".join(c if c.isprintable() else " " for c in text)
  text = " ".join(text.split())
  return text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 1] + "…"


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  unit = vectors / np.maximum(norms, 1e-12)
  return unit @ unit.T


def similarity_heatmap_png(labels: Sequence[str], vectors: np.ndarray,
                           title: str) -> bytes:
  """A PNG heatmap of pairwise cosine similarity, both axes labelled."""
  # Imported here, not at the top: matplotlib costs a second of start-up,
  # and only runs with --similarity_plot draw.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  similarity = cosine_matrix(vectors)
  size = max(6.0, 0.28 * len(labels) + 3.0)
  # The object API, not pyplot: no global figure state, no display backend.
  figure = Figure(figsize=(size + 2, size))
  FigureCanvasAgg(figure)
  axes = figure.subplots()
  image = axes.imshow(similarity, cmap="YlOrRd", vmin=0.0, vmax=1.0)
  ticks = list(range(len(labels)))
  short = [_label(t) for t in labels]
  # Labels are documents' texts: plain text, never mathtext ("$x$") or TeX,
  # which would fail on, or render, whatever the corpus holds.
  axes.set_xticks(ticks, short, rotation=90, fontsize=7, parse_math=False,
                  usetex=False)
  axes.set_yticks(ticks, short, fontsize=7, parse_math=False, usetex=False)
  axes.set_title(title, parse_math=False, usetex=False)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04,
                  label="cosine similarity")
  buffer = io.BytesIO()
  with warnings.catch_warnings():
    # Scripts the bundled font lacks (CJK, say) show as boxes; say so once
    # in the docs rather than once per glyph in the logs. Text is laid out
    # (and the glyphs looked up) by tight_layout as well as by savefig.
    warnings.simplefilter("ignore", UserWarning)
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
  return buffer.getvalue()


def _tsv_cell(text: str) -> str:
  # The projector splits on tabs and lines: keep each cell on one line.
  return " ".join(text.replace("\t", " ").split())


def projector_tsv(embeddings: Sequence[Embedding], with_text: bool = True):
  """(vectors.tsv, metadata.tsv) contents for the Embedding Projector.
  Without the texts the metadata is the ids alone, one a line: the
  Projector's format for one column (no header)."""
  vectors = "".join(
      "\t".join(f"{v:.6g}" for v in e.embedding) + "\n" for e in embeddings)
  if not with_text:
    return vectors, "".join(f"{_tsv_cell(e.id)}\n" for e in embeddings)
  metadata = "id\ttext\n" + "".join(
      f"{_tsv_cell(e.id)}\t{_tsv_cell(e.text)}\n" for e in embeddings)
  return vectors, metadata


def _write_file(path: str, content: bytes) -> str:
  return write_atomically(path, lambda f: f.write(content))


def _smallest_ids(embeddings: List[Embedding], limit: int) -> List[Embedding]:
  return sorted(embeddings, key=lambda e: e.id)[:limit]


class _SmallestIds(beam.PTransform):
  """The `limit` embeddings with the smallest ids, as one list."""

  def __init__(self, limit: int):
    super().__init__()
    self._limit = limit

  def expand(self, embeddings):
    return (embeddings
            | "Smallest" >> beam.combiners.Top.Of(
                self._limit, key=lambda e: e.id, reverse=True))


class WriteSimilarityPlot(beam.PTransform):
  """Embeddings -> OUTPUT_DIR/similarity.png (the first `max_documents` by
  id). In a run, OUTPUT_DIR is the staging directory (the publish stage
  moves the file into place).

  Returns a PCollection holding the written path (empty if no documents).
  """

  def __init__(self, output_dir: str, max_documents: int = 50,
               with_text: bool = True):
    super().__init__()
    self._path = FileSystems.join(output_dir, SIMILARITY_PLOT_FILE)
    self._max_documents = max_documents
    self._with_text = with_text

  def expand(self, embeddings):
    count = embeddings | "Count" >> beam.combiners.Count.Globally()
    return (embeddings
            | "Select" >> _SmallestIds(self._max_documents)
            | "Plot" >> beam.FlatMap(self._plot,
                                     total=beam.pvalue.AsSingleton(count)))

  def _plot(self, chosen, total):
    chosen = _smallest_ids(chosen, self._max_documents)
    title = "Cosine similarity"
    if total > len(chosen):
      title += f" (first {len(chosen)} of {total} documents by id)"
    if not chosen:
      return []  # nothing was embedded: no picture
    png = similarity_heatmap_png([e.text if self._with_text else e.id
                                  for e in chosen],
                                 np.stack([e.embedding for e in chosen]), title)
    return [_write_file(self._path, png)]


class WriteProjectorFiles(beam.PTransform):
  """Embeddings -> OUTPUT_DIR/projector/{vectors,metadata}.tsv (as
  WriteSimilarityPlot, the staging directory in a run).

  Returns a PCollection of the two written paths.
  """

  def __init__(self, output_dir: str,
               max_points: int = DEFAULT_PROJECTOR_MAX_POINTS,
               with_text: bool = True):
    super().__init__()
    self._dir = FileSystems.join(output_dir, PROJECTOR)
    self._max_points = max_points
    self._with_text = with_text

  def expand(self, embeddings):
    return (embeddings
            | "Select" >> _SmallestIds(self._max_points)
            | "Write" >> beam.FlatMap(self._write))

  def _write(self, chosen):
    vectors, metadata = projector_tsv(_smallest_ids(chosen, self._max_points),
                                      self._with_text)
    return [
        _write_file(FileSystems.join(self._dir, "vectors.tsv"),
                    vectors.encode("utf-8")),
        _write_file(FileSystems.join(self._dir, "metadata.tsv"),
                    metadata.encode("utf-8")),
    ]
