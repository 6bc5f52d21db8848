"""Searches a run with a question: the quickest way to see an index work.

  python -m pipeline.query RUN_DIR "how do I define a function?" [--k 10]
      [--table embeddings|chunks] [--exact] [--model MODEL_DIR]

The question is embedded exactly like the run's documents
(pipeline/embedder.py: the run's model and settings from its manifest), and
scored by cosine against the run's embeddings, or its chunks when the run
has them (--chunk_size): the rows the run's FAISS index finds when the run
kept one of that table (--neighbours_mode ann), else every row (numpy,
exact). Prints rank, score, id (and the chunk's document) and the start of
the text. TensorFlow's start-up notices are kept off the screen, as in
`python -m pipeline.main` (transforms/native_logs.py).
"""

import argparse
import sys
from typing import Optional, Sequence

from pipeline.errors import CommandLineParser
from pipeline.errors import one_line
from pipeline.errors import print_error
from pipeline.errors import read_errors_of
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from transforms import native_logs

_SNIPPET_CHARS = 100
_ID_CHARS = 80


def _shortened(text: str, limit: int) -> str:
  return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _snippet(text: Optional[str]) -> str:
  if not text:
    return ""
  return _printable(_shortened(" ".join(text.split()), _SNIPPET_CHARS))


def _printable(text: str) -> str:
  """The text with what a terminal would act on or hide (newlines, carriage
  returns, NUL, direction overrides, ...) escaped as Python would."""
  return "".join(
      char if char.isprintable() else repr(char)[1:-1] for char in text)


def _shown_id(item_id: str) -> str:
  """An id as a hit line shows it: printable, and at most _ID_CHARS."""
  return _shortened(_printable(item_id), _ID_CHARS)


class _QueryParser(CommandLineParser):
  """Tells how to search with a question that starts with '-', which
  argparse reads as a flag (found in a user trial: `query RUN "-rf"` was
  told only that the question was missing)."""

  def error(self, message):
    if message.endswith("required: question"):
      message += ("; a question that starts with '-' goes after --: "
                  "python -m pipeline.query RUN_DIR -- '-rf'")
    super().error(message)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _QueryParser(
      prog="python -m pipeline.query", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run_dir", help="A published run directory.")
  parser.add_argument("question", help="The text to search with.")
  parser.add_argument("--k", type=int, default=10,
                      help="Hits to print (default: %(default)s).")
  parser.add_argument("--table", choices=(EMBEDDINGS, CHUNKS),
                      help="What to search. Default: the chunks when the "
                      "run has them, else the embeddings.")
  parser.add_argument("--exact", action="store_true",
                      help="Score every row, even when the run kept a FAISS "
                      "index (--neighbours_mode ann).")
  parser.add_argument("--model", metavar="MODEL_DIR",
                      help="Where the run's model is now, when it is no "
                      "longer at the path its manifest names (moved, or "
                      "copied to another machine); it must have the run's "
                      "fingerprint. Default: the manifest's path.")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.k < 1:
    parser.error("--k must be at least 1")
  if not args.question.strip():
    # As the pipeline rejects an empty text (empty_text): it has no vector
    # of its own, and its hits would mean nothing.
    parser.error("the question is empty: give the text to search with")
  # TensorFlow's notices (its start, the model's load) captured; a wrong
  # run directory is told after them, in one line.
  with native_logs.captured():
    native_logs.start_tensorflow()
    # Imported here, once TensorFlow has started with its notices captured:
    # the search imports the model library, and TensorFlow with it.
    from pipeline import search as search_lib  # pylint: disable=g-import-not-at-top
    try:
      hits, error = search_lib.search(args.run_dir, args.question, args.k,
                                      args.table, exact=args.exact,
                                      model=args.model), None
    except read_errors_of(args.run_dir) as e:
      hits, error = [], e
  if error is not None:
    return print_error(parser.prog, one_line(error))
  if hits and "text" not in hits[0][1]:
    # Found by a user trial: bare ids, and no word why.
    print("The run was made with --no_text: its rows hold no text, so the "
          "hits show ids only.", file=sys.stderr)
  if len(hits) < args.k:
    print(f"The run holds {len(hits)} rows to search, fewer than --k "
          f"{args.k}: all are shown.", file=sys.stderr)
  for rank, (score, row) in enumerate(hits, start=1):
    owner = (f"  ({_shown_id(row['document_id'])})"
             if "document_id" in row else "")
    print(f"{rank:>3}  {score:.4f}  {_shown_id(row['id'])}{owner}  "
          f"{_snippet(row.get('text'))}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
