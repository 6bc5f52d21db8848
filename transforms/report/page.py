"""report.html: the page, rendered from the manifest and the summaries.

Pure: `render_report` takes the manifest (as the publish stage built it),
the report's summaries (summaries.py), the error summary and the stage
times, and returns one HTML document. The page loads nothing: styles are
inline, pictures inline SVG, and a Content-Security-Policy forbids any
fetch, so it opens the same from a laptop, a bucket or a mail attachment.

Every value that comes from the run (texts, ids, file names, error details,
settings) is passed through `charts.escape`: a text can never add markup to
the page, whatever it holds.
"""

import datetime
import json
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from transforms.report.charts import bar_chart
from transforms.report.charts import escape
from transforms.report.charts import heatmap
from transforms.report.charts import number
from transforms.report.charts import timeline
from transforms.report.summaries import GROUP_SIZE_BINS
from transforms.report.summaries import SCORE_BINS

# Characters of a text the page shows.
_TEXT_CHARS = 160

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left;
         vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.status { padding: 0.5em 1em; border-radius: 4px; }
.ok { background: #e6f4ea; } .refused { background: #fce8e6; }
.note { color: #555; font-size: 0.9em; }
.text { max-width: 520px; overflow-wrap: anywhere; }
svg { display: block; margin: 0.5em 0; max-width: 100%; height: auto; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
"""

# Nothing may be fetched: no scripts, no remote images, styles or fonts.
_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:")

_COUNT_MEANINGS = (
    ("read", "records read, good or bad"),
    ("embedded", "documents with a vector in this run"),
    ("inferred", "of which the model ran on"),
    ("reused", "of which carried over from --previous_run"),
    ("removed", "documents of the previous run not in this one (gone from "
                "the corpus, or dead-lettered)"),
    ("dead_lettered", "records rejected (see the errors below)"),
    ("repeated", "of which exact repeats of a kept record (embedded once)"),
    ("truncated", "documents cut to --max_seq_length (or --max_chunks)"),
    ("derived_ids", "documents whose ids were derived from file name and "
                    "text (no --id_field value)"),
    ("chunks", "rows of the chunks table"),
)


def _table(header: Optional[Sequence[str]],
           rows: Sequence[Sequence[str]]) -> str:
  """An HTML table; the cells are HTML already (escaped by the caller)."""
  head = "".join(f"<th>{escape(cell)}</th>" for cell in header or ())
  body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
  return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _cell(value, numeric: bool = False, text: bool = False) -> str:
  if numeric:
    return f'<td class="n">{escape(number(value))}</td>'
  if text:
    return f'<td class="text">{escape(value, _TEXT_CHARS)}</td>'
  return f"<td>{escape(value)}</td>"


def _section(title: str, *parts: str) -> str:
  return f"<h2>{escape(title)}</h2>" + "".join(parts)


def _note(text: str) -> str:
  return f'<p class="note">{escape(text)}</p>'


def _header(manifest: Mapping, refusal: Optional[Sequence[str]],
            generated_at: float) -> str:
  run_id = manifest.get("run_id", "")
  model = manifest.get("model", {})
  when = datetime.datetime.fromtimestamp(
      generated_at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
  if refusal:
    status = ('<div class="status refused"><b>Refused: not published.</b>'
              "<ul>" + "".join(f"<li>{escape(r)}</li>" for r in refusal) +
              "</ul>refused.json beside this page says why; the staged "
              "outputs stay for inspection.</div>")
  else:
    status = ('<p class="status ok"><b>Passed the guardrails.</b> The run is '
              "published once manifest.json, which lists this page, is "
              "written.</p>")
  details = [("model", model.get("name") or model.get("path", "")),
             ("model path", model.get("path", "")),
             ("fingerprint", model.get("fingerprint", "")),
             ("hidden size", model.get("hidden_size", "")),
             ("pooling", model.get("pooling", "")),
             ("max_seq_length", model.get("max_seq_length", "")),
             ("report written", when)]
  rows = [[_cell(name), _cell(value)] for name, value in details]
  return (f"<h1>Run report: {escape(run_id)}</h1>{status}"
          + _table(None, rows))


def _counts(manifest: Mapping, embeddings: Optional[Mapping]) -> str:
  counts = manifest.get("counts", {})
  queries = counts.get("queries", {})
  header = ["count", "corpus"] + (["queries"] if queries else []) + [
      "meaning"]
  rows = []
  for name, meaning in _COUNT_MEANINGS:
    if name not in counts:
      continue
    row = [_cell(name), _cell(counts[name], numeric=True)]
    if queries:
      row.append(_cell(queries.get(name, ""), numeric=name in queries))
    rows.append(row + [_cell(meaning)])
  metrics = manifest.get("metrics", {})
  throughput = [("wall time, start to publish (s)",
                 metrics.get("wall_time_secs"))]
  throughput.append(("documents embedded per second",
                     metrics.get("docs_per_sec")))
  if embeddings and metrics.get("wall_time_secs"):
    throughput += [
        ("wordpieces of the embedded documents", embeddings["tokens"]),
        ("wordpieces per second",
         round(embeddings["tokens"] / metrics["wall_time_secs"], 1))]
  throughput_rows = [[_cell(name), _cell(value, numeric=value is not None)]
                     for name, value in throughput]
  return _section("Counts and throughput", _table(header, rows),
                  _table(None, throughput_rows))


def _stage_times(stages: Sequence[Tuple[str, Optional[float],
                                        Optional[float]]],
                 wall_time: float) -> str:
  if not stages:
    return ""
  rows = [[_cell(label),
           _cell("" if start is None else f"{start:.2f}"),
           _cell("" if end is None else f"{end:.2f}")]
          for label, start, end in stages]
  return _section(
      "Stage times",
      timeline(stages, wall_time, "When each stage's records came out"),
      _note("For each stage, when its first and its last record (for the "
            "writes: file) came out, in seconds since the run started, by "
            "the clock of the machine that made it. Beam runs stages "
            "concurrently and streams records from one into the next, so "
            "the bars overlap and do not add up to the wall time; a stage "
            "starts working before its first record comes out (the embed "
            "stage loads the model first)."),
      _table(["stage", "first (s)", "last (s)"], rows))


def _errors(top_errors: Sequence[Mapping], manifest: Mapping) -> str:
  if not top_errors:
    return _section("Errors", _note("No record was rejected."))
  rows = []
  for entry in top_errors:
    examples = "".join(
        f"<li>{escape(e.get('source'), 120)}:{escape(e.get('position'))} "
        f"({escape(e.get('stage'))}): {escape(e.get('detail'), 200)}"
        f"<br><code>{escape(e.get('snippet'), 120)}</code></li>"
        for e in entry["examples"])
    rows.append([_cell(entry["reason"]),
                 _cell(entry["count"], numeric=True),
                 f'<td class="text"><ul>{examples}</ul></td>'])
  total = manifest.get("counts", {}).get("dead_lettered")
  return _section(
      "Errors", _table(["reason", "count", "first examples"], rows),
      _note(f"{number(total or 0)} records were rejected; every one is a row "
            "of the errors table (errors/*.jsonl), with its source, "
            "position and reason. Examples are the first by place in the "
            "input."))


def _lengths(embeddings: Mapping, manifest: Mapping) -> str:
  width, limit, bins = (embeddings["bin_width"], embeddings["limit"],
                        embeddings["bins"])
  labels = [str(i * width) if width == 1 else
            f"{i * width}\u2013{i * width + width - 1}"
            for i in range(len(bins))]
  documents = embeddings["documents"]
  truncated = manifest.get("counts", {}).get("truncated", 0)
  chunked = embeddings["measure"] == "num_chunks"
  flag = "--max_chunks" if chunked else "--max_seq_length"
  what = "chunks per document" if chunked else (
      "wordpieces per document ([CLS] and [SEP] included)")
  chart = bar_chart(bins, labels, f"Documents by {what}", what, "documents",
                    marker=(limit / width, f"{flag} {limit}"))
  mean = embeddings["total"] / documents if documents else 0
  return _section(
      "Chunks per document" if chunked else "Token lengths", chart,
      _note(f"{number(documents)} documents, {mean:.1f} {what.split(' (')[0]}"
            f" on average. {number(truncated)} truncated: documents at the "
            f"dashed line ({flag} {limit}) may have been cut, and the rest "
            "of their text is not in their vectors."))


def _trimmed(bins: Sequence[int]) -> Tuple[int, int]:
  """The first and one past the last non-empty bin (0, 0 if none)."""
  filled = [i for i, count in enumerate(bins) if count]
  return (filled[0], filled[-1] + 1) if filled else (0, 0)


def _text_of(texts: Mapping, role: str, identifier: str) -> str:
  return texts.get(role, {}).get(identifier, "")


def _neighbours(summary: Mapping, manifest: Mapping, texts: Mapping) -> str:
  stats = manifest.get("neighbours", {})
  parts = []
  start, end = _trimmed(summary["bins"])
  width = 2.0 / SCORE_BINS
  if end:
    labels = [f"{-1 + i * width:.2f}" for i in range(start, end)]
    parts.append(bar_chart(summary["bins"][start:end], labels,
                           "Neighbour scores (cosine), every rank",
                           "cosine similarity (bin start)", "neighbour rows"))
  described = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())
                        if not isinstance(v, (dict, list)))
  parts.append(_note(f"{number(summary['rows'])} neighbour rows; {described}"))
  for example in summary["examples"]:
    query = example["id"]
    rows = [[_cell(row["rank"], numeric=True), _cell(f"{row['score']:.4f}"),
             _cell(row["neighbour_id"]),
             _cell(_text_of(texts, "corpus", row["neighbour_id"]),
                   text=True)]
            for row in example["neighbours"]]
    query_text = escape(_text_of(texts, "queries", query), _TEXT_CHARS)
    parts.append(f"<h3>{escape(query)}</h3>"
                 f'<p class="text">{query_text}</p>'
                 + _table(["rank", "score", "neighbour", "text"], rows))
  return _section("Neighbours", *parts)


def _duplicates(summary: Mapping, manifest: Mapping, texts: Mapping) -> str:
  stats = manifest.get("duplicates", {})
  parts = []
  _, end = _trimmed(summary["groups_by_size"])
  if end:
    labels = [str(2) if k == 0 else f"{2**k + 1}\u2013{2**(k + 1)}"
              for k in range(min(end, GROUP_SIZE_BINS))]
    parts.append(bar_chart(summary["groups_by_size"][:end], labels,
                           "Near-duplicate groups by size", "documents in "
                           "the group", "groups"))
  described = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())
                        if not isinstance(v, (dict, list)))
  parts.append(_note(f"{number(summary['rows'])} documents in groups; "
                     f"{described}"))
  rows = []
  for group in summary["largest"]:
    members = "".join(
        f"<li>{escape(m['id'])} (max score {m['max_score']:.4f}) "
        f"{escape(_text_of(texts, 'documents', m['id']), _TEXT_CHARS)}</li>"
        for m in group["members"])
    rows.append([_cell(group["group_id"]), _cell(group["size"], numeric=True),
                 f'<td class="text"><ul>{members}</ul></td>'])
  if rows:
    parts.append(_table(["group_id", "size", "first members"], rows))
  return _section("Near-duplicates", *parts)


def _heatmap(embeddings: Mapping) -> str:
  sample = embeddings["sample"]
  if len(sample) < 2:
    return _section("Similarity of a sample",
                    _note("Fewer than two documents: no heatmap."))
  vectors = np.stack([np.asarray(d["vector"], np.float64) for d in sample])
  unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1,
                                             keepdims=True), 1e-12)
  labels = [d["text"] or d["id"] for d in sample]
  chart = heatmap(unit @ unit.T, labels,
                  f"Cosine similarity of the first {len(sample)} documents "
                  "by id")
  legend = "".join(
      f"<li><b>{escape(d['id'])}</b> {escape(d['text'], _TEXT_CHARS)}</li>"
      for d in sample)
  return _section("Similarity of a sample", chart,
                  f'<ol class="text">{legend}</ol>')


def _outputs(manifest: Mapping) -> str:
  rows, files = [], []
  for table, formats in sorted(manifest.get("outputs", {}).items()):
    for file_format, listed in sorted(formats.items()):
      listed = [listed] if isinstance(listed, str) else list(listed)
      rows.append([_cell(table), _cell(file_format),
                   _cell(len(listed), numeric=True)])
      files += listed
  listing = "".join(f"<li>{escape(name)}</li>" for name in files)
  settings = json.dumps(manifest.get("settings", {}), indent=1,
                        sort_keys=True, default=str)
  return _section(
      "Outputs", _table(["table", "format", "files"], rows),
      f"<details><summary>every file</summary><ul>{listing}</ul></details>"
      f"<details><summary>settings</summary><pre>{escape_block(settings)}"
      "</pre></details>")


def escape_block(text: str) -> str:
  """Several lines, each escaped (`escape` keeps one line)."""
  return "\n".join(escape(line) for line in text.splitlines())


def render_report(manifest: Mapping, sections: Mapping,
                  top_errors: Sequence[Mapping],
                  stages: Sequence[Tuple[str, Optional[float],
                                         Optional[float]]],
                  generated_at: float,
                  refusal: Optional[Sequence[str]] = None) -> str:
  """The page, as one HTML string.

  sections: the summaries SummarizeForReport made ("embeddings", and
    "neighbours", "duplicates", "texts" when the run has them).
  top_errors: ErrorSummaryFn's output. stages: (label, first, last) in
  seconds since the run started. refusal: the guardrails' reasons, for a
  refused run.
  """
  embeddings = sections.get("embeddings")
  texts = sections.get("texts", {})
  wall_time = manifest.get("metrics", {}).get("wall_time_secs") or 0.0
  body = [_header(manifest, refusal, generated_at),
          _counts(manifest, embeddings),
          _stage_times(stages, wall_time),
          _errors(top_errors, manifest)]
  if embeddings and embeddings["documents"]:
    body.append(_lengths(embeddings, manifest))
  if "neighbours" in sections:
    body.append(_neighbours(sections["neighbours"], manifest, texts))
  if "duplicates" in sections:
    body.append(_duplicates(sections["duplicates"], manifest, texts))
  if embeddings:
    body.append(_heatmap(embeddings))
  body.append(_outputs(manifest))
  return _page(f"Run report: {manifest.get('run_id', '')}", "".join(body))


def _page(title: str, body: str) -> str:
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
          '<meta name="viewport" content="width=device-width">'
          f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
          f"<body>{body}</body></html>\n")


def fallback_page(manifest: Mapping, error: Exception) -> str:
  """The short page written when the report could not be drawn."""
  counts = json.dumps(manifest.get("counts", {}), indent=1, sort_keys=True)
  return _page(
      f"Run report: {manifest.get('run_id', '')}",
      f"<h1>Run report: {escape(manifest.get('run_id', ''))}</h1>"
      f"<p>The report could not be drawn: {escape(repr(error), 500)}. "
      "manifest.json holds the run's counts and files.</p>"
      f"<pre>{escape_block(counts)}</pre>")
