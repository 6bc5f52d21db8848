"""Long documents (--chunk_size): speed on long and short texts, and recall.

    python -m benchmarks.chunks [--json benchmarks/results-chunks.json]

On real text already on this machine (benchmarks/corpus.py's sources), with
the default model, in one process and one run:

* speed: real tokens per second of the model library's `embed` on short
  sentences without chunking, the same with chunking on, and on long
  documents (pydoc topics and installed packages' READMEs, 3k-30k characters)
  cut into chunks of --chunk_size; with chunks/s. Targets: short texts as fast
  with chunking as without (ratio >= 0.95), long documents' tokens/s at least
  0.85 of short texts'.
* recall: sentences taken from the second half of long documents are
  queries; recall@1 is how often the nearest corpus item belongs to a
  document that holds the sentence (READMEs share boilerplate: a sentence
  may be in several), with truncated document vectors (chunking off) and
  with chunk-level neighbours (the nearest chunk's document).
  Target: >= 0.9 with chunks.

Figures depend on the CPU: compare the ratios, measured in one run.
"""

import argparse
import re
import time

import numpy as np

from benchmarks import corpus as corpus_lib
from benchmarks.machine import machine
from benchmarks.report import print_and_write
from bert_model import default_model
from bert_model.chunking import ChunkSettings
from bert_model.choices import default_overlap
from bert_model.loaded_model import LoadedBertModel
from bert_model.loaded_model import ModelSettings

TARGETS = {"short_chunked_over_unchunked": 0.95,
           "long_over_short_tokens_per_s": 0.85,
           "chunk_recall_at_1": 0.9}


def long_documents(count: int) -> list:
  """Real long documents, 3k-30k characters, as (source, text): pydoc
  topics, then installed packages' READMEs."""
  documents = {}
  for source, texts in (("pydoc", corpus_lib.pydoc_topics()),
                        ("readme", corpus_lib.package_descriptions())):
    for text in texts:
      if 3000 <= len(text) <= 30000:
        documents.setdefault(text, source)
  return [(source, text) for text, source in documents.items()][:count]


def deep_sentences(text: str, count: int) -> list:
  """Prose sentences from the second half of a document."""
  half = text[len(text) // 2:]
  sentences = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", half))
  return [s for s in sentences if 60 <= len(s) <= 300 and
          corpus_lib.is_prose(s)][:count]


def _timed(model, texts, batch_size: int):
  """(seconds, outputs of every batch) of embedding texts batch by batch."""
  model.embed(texts[:batch_size])  # warm up: traces the graphs
  started, outputs = time.perf_counter(), []
  for start in range(0, len(texts), batch_size):
    outputs.append(model.embed(texts[start:start + batch_size]))
  return time.perf_counter() - started, outputs


def _tokens(outputs, chunked: bool) -> int:
  name = "chunk_num_tokens" if chunked else "num_tokens"
  return int(sum(o[name].sum() for o in outputs))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--short_docs", type=int, default=2000)
  parser.add_argument("--long_docs", type=int, default=60)
  parser.add_argument("--chunk_size", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--json", help="Also write the report here.")
  args = parser.parse_args(argv)

  model_dir = default_model.ensure_default_model()
  base = dict(preprocess_path=f"{model_dir}/preprocess",
              encoder_path=f"{model_dir}/encoder", max_seq_length=256)
  chunking = ChunkSettings(args.chunk_size, default_overlap(args.chunk_size),
                           max_chunks=512)
  plain = LoadedBertModel(ModelSettings(**base))
  chunked = LoadedBertModel(ModelSettings(**base, chunking=chunking))
  short = corpus_lib.real_sentences(args.short_docs)
  sources, documents = zip(*long_documents(args.long_docs))
  documents = list(documents)

  results = {}
  for name, model, texts, is_chunked in (
      ("short_unchunked", plain, short, False),
      ("short_chunked", chunked, short, True),
      ("long_chunked", chunked, documents, True)):
    seconds, outputs = _timed(model, texts, args.batch_size)
    tokens = _tokens(outputs, is_chunked)
    results[name] = {
        "docs": len(texts), "seconds": round(seconds, 3),
        "docs_per_s": round(len(texts) / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
    }
    if is_chunked:
      chunks = int(sum(o["num_chunks"].sum() for o in outputs))
      results[name]["chunks"] = chunks
      results[name]["chunks_per_s"] = round(chunks / seconds, 1)
    if name == "long_chunked":
      chunk_vectors = np.concatenate([o["chunk_embedding"] for o in outputs])
      chunk_owner = np.repeat(
          np.arange(len(documents)),
          np.concatenate([o["num_chunks"] for o in outputs]))

  # Recall@1 of deep sentences: truncated document vectors vs chunks.
  queries, query_sources = [], []
  for source, text in zip(sources, documents):
    for sentence in deep_sentences(text, 3):
      queries.append(sentence)
      query_sources.append(source)
  query_sources = np.array(query_sources)
  query_vectors = plain.embed(queries)["embedding"]
  truncated = np.concatenate(
      [plain.embed(documents[s:s + 16])["embedding"]
       for s in range(0, len(documents), 16)])
  flat_documents = [" ".join(text.split()) for text in documents]

  def recall(found_documents) -> dict:
    hits = np.array([query in flat_documents[found]
                     for query, found in zip(queries, found_documents)])
    by_source = {source: round(float(hits[query_sources == source].mean()), 3)
                 for source in sorted(set(query_sources))}
    return {"all": round(float(hits.mean()), 3), **by_source}

  recall_truncated = recall(np.argmax(query_vectors @ truncated.T, axis=1))
  recall_chunks = recall(
      chunk_owner[np.argmax(query_vectors @ chunk_vectors.T, axis=1)])

  report = {
      "machine": machine(),
      "chunking": {"chunk_size": chunking.chunk_size,
                   "chunk_overlap": chunking.chunk_overlap},
      "results": results,
      "recall": {"queries": len(queries), "documents": len(documents),
                 "queries_by_source": {
                     source: int((query_sources == source).sum())
                     for source in sorted(set(query_sources))},
                 "truncated_at_1": recall_truncated,
                 "chunks_at_1": recall_chunks},
      "derived": {
          "short_chunked_over_unchunked": round(
              results["short_chunked"]["tokens_per_s"] /
              results["short_unchunked"]["tokens_per_s"], 3),
          "long_over_short_tokens_per_s": round(
              results["long_chunked"]["tokens_per_s"] /
              results["short_unchunked"]["tokens_per_s"], 3),
          # Topical documents: a README sentence is often boilerplate that
          # many READMEs hold nearly alike (see results).
          "chunk_recall_at_1": recall_chunks["pydoc"],
      },
      "targets": TARGETS,
  }
  print_and_write(report, args.json)
  for name, target in TARGETS.items():
    value = report["derived"][name]
    print(f"{name}: {value} (target >= {target}) "
          f"{'ok' if value >= target else 'MISSED'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
