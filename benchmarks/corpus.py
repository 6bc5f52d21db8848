"""A fixed, real-text benchmark corpus built from text already on this machine.

No generated text: the sentences are the prose of

  * the docstrings of the Python standard library (module, class and function
    docstrings, read with `ast` from the source files: nothing is imported,
    so no module runs any code),
  * `pydoc_data.topics` (the language reference topics that `help()` shows),
  * the long descriptions in the METADATA / PKG-INFO files of the installed
    distributions in this interpreter's site-packages (their READMEs),
  * the docstrings of the installed packages' Python sources (TensorFlow,
    Beam, PyTorch, ...), the same way as the standard library.

Text is cut into paragraphs (code blocks, doctests, tables and reST directives
dropped), paragraphs into sentences; a sentence is kept when it reads like
prose: 20-400 characters, starts with a capital letter, ends with . ! or ?,
at least 4 words and at least 80% letters and spaces. Sentences are
deduplicated and ordered by a hash of their text (blake2b), so the first N
are the same on every machine with the same Python and the same packages,
and any prefix is a spread-out sample of every source.

    python -m benchmarks.corpus --count 100000 --output corpus.txt

`real_sentences(n)` returns the first n. The full list is cached in
benchmarks/.cache/ under a fingerprint of its sources (Python version and the
installed distributions with their versions).
"""

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import time
import warnings
from importlib import metadata as importlib_metadata
from typing import Iterable, Iterator, List, Tuple

try:
  from pydoc_data import topics as pydoc_data_topics
except ImportError:  # a Python built without pydoc's topics
  pydoc_data_topics = None

CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")
CORPUS_FORMAT_VERSION = 1

MIN_CHARS = 20
MAX_CHARS = 400
MIN_WORDS = 4
MIN_LETTER_FRACTION = 0.8

# Sentence ends: . ! ? (optionally closed by a quote or bracket), then space,
# then something that can start a sentence.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z\"'(\[])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.")
_WORD = re.compile(r"[A-Za-z]+")
# Lines that open or belong to non-prose blocks.
_NON_PROSE_LINE = re.compile(
    r"^\s*(#+\s|>>>|\.\.\.|\.\. |[-=~^*+#`]{3,}|\||\+[-=]+\+|:\w+:|@|\$ |```)")


# ---------------------------------------------------------------------------
# Sources.


def _site_packages_dirs() -> List[str]:
  return sorted({sysconfig.get_paths()["purelib"],
                 sysconfig.get_paths()["platlib"]})


def _python_files(root: str, skip_dirs: Iterable[str] = ()) -> List[str]:
  skip = set(skip_dirs)
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs
                        if d not in skip and d != "__pycache__")
    found.extend(os.path.join(directory, f) for f in sorted(files)
                 if f.endswith(".py"))
  return found


def _docstrings_of_file(path: str) -> Iterator[str]:
  try:
    with open(path, "rb") as f:
      source = f.read()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      tree = ast.parse(source, filename=path)
  except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
    return
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)):
      docstring = ast.get_docstring(node, clean=True)
      if docstring:
        yield docstring


def stdlib_docstrings() -> Iterator[str]:
  stdlib = sysconfig.get_paths()["stdlib"]
  # The base interpreter's own site-packages are not the standard library.
  for path in _python_files(stdlib, skip_dirs=("site-packages",
                                               "dist-packages")):
    yield from _docstrings_of_file(path)


def pydoc_topics() -> Iterator[str]:
  if pydoc_data_topics is None:
    return
  for name in sorted(pydoc_data_topics.topics):
    yield pydoc_data_topics.topics[name]


def _installed_distributions():
  site_dirs = _site_packages_dirs()
  dists = {}
  for dist in importlib_metadata.distributions(path=site_dirs):
    name = dist.metadata.get("Name")
    if name:
      dists.setdefault(name.lower(), dist)
  return [dists[name] for name in sorted(dists)]


def package_descriptions() -> Iterator[str]:
  for dist in _installed_distributions():
    description = dist.metadata.get_payload() or dist.metadata.get(
        "Description") or ""
    if isinstance(description, str) and description.strip():
      yield description


def package_docstrings() -> Iterator[str]:
  for site_dir in _site_packages_dirs():
    yield from (docstring for path in _python_files(site_dir)
                for docstring in _docstrings_of_file(path))


SOURCES = (
    ("stdlib_docstrings", stdlib_docstrings),
    ("pydoc_topics", pydoc_topics),
    ("package_descriptions", package_descriptions),
    ("package_docstrings", package_docstrings),
)


def sources_fingerprint() -> str:
  """Python version + installed distributions: what the corpus is built of."""
  digest = hashlib.sha256()
  digest.update(f"v{CORPUS_FORMAT_VERSION} {sys.version}\n".encode())
  for dist in _installed_distributions():
    digest.update(f"{dist.metadata['Name'].lower()}=={dist.version}\n"
                  .encode())
  return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Text to sentences.


def _paragraphs(text: str) -> Iterator[str]:
  """Prose paragraphs of a docstring / README: code and markup dropped."""
  paragraph: List[str] = []
  in_code = False
  for line in text.splitlines() + [""]:
    stripped = line.strip()
    if stripped.startswith("```"):
      in_code = not in_code
      paragraph = []
      continue
    if in_code:
      continue
    if not stripped:
      if paragraph:
        yield " ".join(paragraph)
      paragraph = []
      continue
    if _NON_PROSE_LINE.match(line) or line.startswith(("    ", "\t")):
      # Indented (code, argument descriptions) or markup: ends the paragraph
      # and is not prose itself.
      if paragraph:
        yield " ".join(paragraph)
      paragraph = []
      continue
    paragraph.append(stripped)


def _protect_abbreviations(text: str) -> str:
  for abbreviation in _ABBREVIATIONS:
    text = text.replace(abbreviation + " ", abbreviation + "\x00")
  return text


def split_sentences(text: str) -> Iterator[str]:
  for paragraph in _paragraphs(text):
    paragraph = _protect_abbreviations(" ".join(paragraph.split()))
    for sentence in _SENTENCE_BREAK.split(paragraph):
      yield sentence.replace("\x00", " ").strip()


def is_prose(sentence: str) -> bool:
  if not MIN_CHARS <= len(sentence) <= MAX_CHARS:
    return False
  if not sentence[0].isupper() or sentence[-1] not in ".!?":
    return False
  if len(_WORD.findall(sentence)) < MIN_WORDS:
    return False
  letters = sum(c.isalpha() or c == " " for c in sentence)
  if letters < MIN_LETTER_FRACTION * len(sentence):
    return False
  # Leftover markup or code.
  if any(marker in sentence for marker in ("::", "`", "http", "\\", "==",
                                            "->", "{", "}", "<", ">", "|",
                                            "__", "www.")):
    return False
  return True


def sort_key(sentence: str) -> Tuple[bytes, str]:
  return hashlib.blake2b(sentence.encode("utf-8"),
                         digest_size=8).digest(), sentence


def build_corpus(verbose: bool = False) -> Tuple[List[str], dict]:
  """Every distinct prose sentence of SOURCES, in hash order; and per-source
  counts of the sentences each source contributed first."""
  seen = set()
  counts = {}
  for name, source in SOURCES:
    started = time.time()
    before = len(seen)
    for text in source():
      for sentence in split_sentences(text):
        if is_prose(sentence):
          seen.add(sentence)
    counts[name] = len(seen) - before
    if verbose:
      print(f"  {name}: +{counts[name]} sentences "
            f"({time.time() - started:.0f} s)", file=sys.stderr)
  return sorted(seen, key=sort_key), counts


def _cache_path() -> str:
  return os.path.join(CACHE_DIR, f"corpus-{sources_fingerprint()}.json")


def all_sentences(verbose: bool = False) -> Tuple[List[str], dict]:
  """The whole corpus (cached): sentences in hash order, per-source counts."""
  path = _cache_path()
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    return cached["sentences"], cached["source_counts"]
  sentences, counts = build_corpus(verbose)
  os.makedirs(CACHE_DIR, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"sentences": sentences, "source_counts": counts}, f)
  os.replace(tmp, path)
  return sentences, counts


def real_sentences(n: int) -> List[str]:
  """The first n sentences of the corpus (fewer if fewer exist)."""
  sentences, _ = all_sentences()
  if n > len(sentences):
    print(f"warning: {n} sentences asked for, only {len(sentences)} "
          "distinct real sentences are available", file=sys.stderr)
  return sentences[:n]


def corpus_digest(sentences: List[str]) -> str:
  digest = hashlib.sha256()
  for sentence in sentences:
    digest.update(sentence.encode("utf-8"))
    digest.update(b"\n")
  return digest.hexdigest()[:16]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--count", type=int, default=100_000)
  parser.add_argument("--output", required=True,
                      help="text file, one sentence a line")
  args = parser.parse_args(argv)
  started = time.time()
  sentences, counts = all_sentences(verbose=True)
  chosen = sentences[:args.count]
  with open(args.output, "w", encoding="utf-8") as f:
    for sentence in chosen:
      f.write(sentence + "\n")
  mean_all = sum(map(len, sentences)) / max(1, len(sentences))
  mean_chosen = sum(map(len, chosen)) / max(1, len(chosen))
  print(f"available: {len(sentences)} distinct sentences "
        f"(mean {mean_all:.1f} chars); by source: {counts}")
  print(f"wrote {len(chosen)} sentences (mean {mean_chosen:.1f} chars, "
        f"digest {corpus_digest(chosen)}) to {args.output} in "
        f"{time.time() - started:.0f} s")
  if len(chosen) < args.count:
    print(f"warning: only {len(chosen)} of the {args.count} asked for exist")
  return 0


if __name__ == "__main__":
  sys.exit(main())
