"""The run report: report.html, drawn in headless Chromium.

- The summaries (transforms/report/summaries.py) are the same however the
  records are bundled and merged, and hold what they claim.
- SummarizeForReport finds the texts of the examples in the right records
  (queries apart from the corpus), and none with --no_text.
- The page escapes everything: hostile ids and texts never add markup.
- A real run writes report.html, lists it in the manifest, and Debian's
  `chromium` (installed by run_tests.sh) draws its title, counts and pictures
  (checked with --dump-dom and --screenshot), with a proxy that counts
  every request Chromium makes: none to the addresses the corpus's texts
  hold (Chromium's own update and account services are contacted on every
  start, whatever the page; a control page with one <img> shows the proxy
  sees a page's requests).
"""

import collections
import html.parser
import io
import json
import os
import random
import shutil
import socket
import subprocess
import threading

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from PIL import Image  # Pillow: installed with matplotlib

from pipeline import main
from pipeline import read_outputs
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.records import Embedding
from run_directory.records import Vectors
from tests.run_fixtures import make_embeddings
from tests.run_fixtures import make_neighbours
from transforms.report import render_report
from transforms.report import draw_report
from transforms.report import ReportSettings
from transforms.report import SummarizeForReport
from transforms.report.summaries import DuplicateSummaryFn
from transforms.report.summaries import EmbeddingSummaryFn
from transforms.report.summaries import NeighbourSummaryFn

# Markup, and addresses a leaking page would fetch (.invalid: never a real
# host).
HOSTILE = ('<script src="http://bait.invalid/s.js">alert("x")</script></svg>'
           '<img src=https://bait.invalid/i.png onerror=alert(1)>')
BAIT = "bait.invalid"
RUN_ID = "report-test"


class Page(html.parser.HTMLParser):
  """What a page holds: tags, attributes, table rows, text, the title."""

  def __init__(self, text: str):
    super().__init__(convert_charrefs=True)
    self.tags = collections.Counter()
    self.attributes = set()
    self.rows, self.text, self.title = [], [], None
    self._cell = None
    self._in_title = False
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    self.tags[tag] += 1
    self.attributes.update(name for name, _ in attrs)
    if tag == "tr":
      self.rows.append([])
    elif tag in ("td", "th"):
      self._cell = []
    elif tag == "title" and self.title is None:
      self._in_title = True

  def handle_endtag(self, tag):
    if tag in ("td", "th") and self._cell is not None:
      self.rows[-1].append("".join(self._cell).strip())
      self._cell = None
    elif tag == "title":
      self._in_title = False

  def handle_data(self, data):
    self.text.append(data)
    if self._cell is not None:
      self._cell.append(data)
    if self._in_title:
      self.title = (self.title or "") + data

  def row(self, first_cell: str) -> list:
    matches = [r for r in self.rows if r and r[0] == first_cell]
    assert matches, f"no row {first_cell!r}"
    return matches[0]


def assert_no_markup_from_the_run(page: Page):
  # The page's own vocabulary only: nothing a text could have added.
  assert set(page.tags) <= {
      "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3",
      "p", "div", "b", "ul", "ol", "li", "table", "tbody", "tr", "th", "td",
      "br", "code", "details", "summary", "pre", "svg", "text", "rect",
      "line"}
  assert not {a for a in page.attributes if a.startswith("on")}
  assert not page.attributes & {"src", "href", "xlink:href", "srcset"}


# ---------------------------------------------------------------------------
# The summaries.


def _fold(combine_fn, records, seed):
  """combine_fn over `records` cut into random bundles, merged in order."""
  records = list(records)
  random.Random(seed).shuffle(records)
  cuts = sorted(random.Random(seed + 1).sample(range(1, len(records)), 3))
  accumulators = []
  for part in np.split(np.array(records, dtype=object), cuts):
    accumulator = combine_fn.create_accumulator()
    for record in part:
      accumulator = combine_fn.add_input(accumulator, record)
    accumulators.append(accumulator)
  random.Random(seed + 2).shuffle(accumulators)
  merged = combine_fn.merge_accumulators(
      [combine_fn.merge_accumulators(accumulators[:2]),
       combine_fn.merge_accumulators(accumulators[2:])])
  output = combine_fn.extract_output(merged)
  output.pop("first", None), output.pop("last", None)  # times of the call
  return output


def _duplicate_rows():
  sizes = {"g-a": 7, "g-b": 2, "g-c": 7, "g-d": 3, "g-e": 40}
  return [{"id": f"{group}-{i:02d}", "group_id": f"{group}-00",
           "group_size": size, "representative": i == 0,
           "max_score": 0.9 + i / 1000}
          for group, size in sizes.items() for i in range(size)]


def test_summaries_are_the_same_however_records_are_bundled():
  spec = EmbeddingTableSpec(hidden_size=6)
  embeddings = make_embeddings(60, spec)
  summary = EmbeddingSummaryFn(limit=5, chunked=False, sample_size=8)
  outputs = [_fold(summary, embeddings, seed) for seed in range(3)]
  for output in outputs[1:]:
    assert {k: v for k, v in output.items() if k != "sample"} == {
        k: v for k, v in outputs[0].items() if k != "sample"}
    assert [d["id"] for d in output["sample"]] == [
        d["id"] for d in outputs[0]["sample"]]
  output = outputs[0]
  lengths = [e.num_tokens for e in embeddings]
  assert output["bin_width"] == 1 and output["bins"] == [
      lengths.count(n) for n in range(6)]
  assert output["documents"] == 60 and output["tokens"] == sum(lengths)
  smallest = sorted(embeddings, key=lambda e: e.id)[:8]
  assert [d["id"] for d in output["sample"]] == [e.id for e in smallest]
  np.testing.assert_array_equal(output["sample"][3]["vector"],
                                smallest[3].embedding)
  assert output["sample"][0]["text"] == smallest[0].text

  neighbours = NeighbourSummaryFn(shown_queries=4, shown_neighbours=3)
  outputs = [_fold(neighbours, make_neighbours(40, k=7), seed)
             for seed in range(3)]
  assert outputs[1] == outputs[0] == outputs[2]
  assert outputs[0]["rows"] == 280 == sum(outputs[0]["bins"])
  assert [e["id"] for e in outputs[0]["examples"]] == [
      f"doc-{i:03d}" for i in range(4)]
  first = outputs[0]["examples"][0]["neighbours"]
  assert [(r["rank"], r["neighbour_id"]) for r in first] == [
      (1, "doc-001"), (2, "doc-002"), (3, "doc-003")]
  assert first[0]["score"] == pytest.approx(0.5)

  duplicates = DuplicateSummaryFn(shown_groups=3, shown_members=2)
  outputs = [_fold(duplicates, _duplicate_rows(), seed) for seed in range(3)]
  assert outputs[1] == outputs[0] == outputs[2]
  # Groups of 2 | 3-4 | 5-8 | 9-16 | 17-32 | 33-64 members.
  assert outputs[0]["groups_by_size"][:6] == [1, 1, 2, 0, 0, 1]
  assert [(g["group_id"], g["size"]) for g in outputs[0]["largest"]] == [
      ("g-e-00", 40), ("g-a-00", 7), ("g-c-00", 7)]
  assert [m["id"] for m in outputs[0]["largest"][1]["members"]] == [
      "g-a-00", "g-a-01"]


def _embedding(identifier, text, vector):
  return Embedding(id=identifier, text=text, source="s",
                   vectors=Vectors(embedding=np.asarray(vector, np.float32),
                                   num_tokens=len(text.split()) + 2,
                                   truncated=False))


def test_the_examples_texts_come_from_their_own_records():
  corpus = [_embedding("a", "corpus a", [1, 0]),
            _embedding("b", "corpus b", [0, 1]),
            _embedding("q", "a corpus document named q", [1, 1])]
  queries = [_embedding("q", "the query q", [1, 0.5])]
  neighbours = [("q", [(0.9, "a"), (0.4, "b")])]
  duplicate_rows = [
      {"id": i, "group_id": "a", "group_size": 2, "representative": i == "a",
       "max_score": 1.0} for i in ("a", "b")]
  with TestPipeline() as p:
    documents = p | "Corpus" >> beam.Create(corpus)
    arguments = dict(
        neighbour_lists=p | "Neighbours" >> beam.Create(neighbours),
        neighbour_items=documents,
        query_items=p | "Queries" >> beam.Create(queries),
        duplicate_rows=p | "Duplicates" >> beam.Create(duplicate_rows))
    with_text = p | "WithText" >> SummarizeForReport(
        ReportSettings(limit=8), documents, **arguments)
    without = p | "NoText" >> SummarizeForReport(
        ReportSettings(limit=8, include_text=False), documents, **arguments)
    assert_that(with_text["texts"], lambda texts: _check_texts(texts[0]),
                label="Texts")
    assert "texts" not in without
    assert_that(without["embeddings"],
                lambda s: _check_no_text(s[0]), label="NoTexts")


def _check_texts(texts):
  assert texts == {"queries": {"q": "the query q"},
                   "corpus": {"a": "corpus a", "b": "corpus b"},
                   "documents": {"a": "corpus a", "b": "corpus b"}}


def _check_no_text(summary):
  assert [d["id"] for d in summary["sample"]] == ["a", "b", "q"]
  assert all(d["text"] == "" for d in summary["sample"])


# ---------------------------------------------------------------------------
# The page.


def _manifest(run_id=RUN_ID, **sections):
  return {"run_id": run_id,
          "model": {"path": "/m", "fingerprint": "f", "max_seq_length": 8},
          "counts": {"read": 3, "embedded": 2, "dead_lettered": 1,
                     "truncated": 1},
          "outputs": {"report": {"html": ["report.html"]}},
          "settings": {"input": {"input": HOSTILE}},
          "metrics": {"wall_time_secs": 2.0, "docs_per_sec": 1.0},
          **sections}


def _sections(text, chunked=False):
  limit = 4 if chunked else 8
  return {
      "embeddings": {
          "measure": "num_chunks" if chunked else "num_tokens",
          "limit": limit, "bin_width": 1, "bins": [0] * limit + [2],
          "documents": 2, "total": 2 * limit, "tokens": 16,
          "sample": [{"id": f"{text}-{i}", "text": text,
                      "vector": np.array([1.0, i])} for i in range(2)]},
      "neighbours": {
          "rows": 2, "bins": [0] * 90 + [2] + [0] * 9, "first": 1.0,
          "last": 1.5,
          "examples": [{"id": text, "neighbours": [
              {"id": text, "rank": 1, "neighbour_id": text, "score": 0.8}]}]},
      "texts": {"queries": {text: text}, "corpus": {text: text}},
  }


def test_hostile_texts_ids_and_errors_are_shown_as_text():
  errors = [{"reason": "malformed_record", "count": 1, "examples": [
      {"source": HOSTILE, "position": 0, "stage": "read", "detail": HOSTILE,
       "snippet": "\ud800" + HOSTILE, "id": None}]}]
  text = HOSTILE + " \u202e reversed \u200b hidden \x00"
  page_html = render_report(_manifest(run_id=HOSTILE), _sections(text), errors,
                            [(HOSTILE, 0.0, 1.0)], generated_at=0.0)
  page = Page(page_html)
  assert_no_markup_from_the_run(page)
  assert page.title == f"Run report: {HOSTILE}"
  shown = "".join(page.text)
  assert HOSTILE in shown  # as text, in full
  assert "\u202e" not in page_html and "\u200b" not in page_html
  assert "\\ud800" in shown  # a lone surrogate, escaped
  assert page.tags["svg"] == 4  # stages, lengths, neighbour scores, heatmap


def test_chunked_runs_show_chunks_per_document():
  page = render_report(_manifest(), _sections("x", chunked=True), [], [],
                       generated_at=0.0)
  assert "Chunks per document" in page and "--max_chunks 4" in page
  assert "--max_seq_length 8" not in page


def test_a_report_that_cannot_be_drawn_is_a_short_page(caplog):
  sections = _sections("x")
  del sections["embeddings"]["bins"]
  page = draw_report(_manifest(), sections, [], started_at=0.0, now=1.0,
                     count_spans={}, written={})
  assert "The report could not be drawn" in page and "KeyError" in page
  assert "Drawing the run report failed" in caplog.text
  assert_no_markup_from_the_run(Page(page))


# ---------------------------------------------------------------------------
# A real run, drawn in Chromium.


def _corpus_lines():
  good = [
      {"id": "a-script", "text": f"the quick brown fox {HOSTILE}"},
      {"id": '"><b>an id</b>', "text": f"see https://{BAIT}/pic.png"},
      {"id": "bidi", "text": "\u202egnp.exe the cat sat on the mat"},
      {"id": "dup-1", "text": "a copy of the same sentence"},
      {"id": "dup-2", "text": "a copy of the same sentence"},
      {"id": "long", "text": " ".join(["word"] * 100)},
      {"id": "entity", "text": "fish &amp; chips {{7*7}} $x$"},
  ] + [{"id": f"plain-{i}", "text": f"a plain sentence number {i}"}
       for i in range(8)]
  lines = [json.dumps(record) for record in good]
  lines += ['{"id": "<script>broken"', json.dumps({"id": "x", "body": "b"}),
            json.dumps({"id": "empty", "text": ""})]
  return len(good), lines


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
  directory = tmp_path_factory.mktemp("report")
  good, lines = _corpus_lines()
  corpus = directory / "corpus.jsonl"
  corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
  output = str(directory / "run")
  code = main.main([
      f"--input={corpus}", f"--output={output}", f"--model={tiny_model_dir}",
      "--runner=DirectRunner", f"--run_id={RUN_ID}", "--neighbours_k=3",
      "--duplicate_threshold=0.99999", "--max_bad_fraction=1"])
  assert code == 0
  manifest = read_outputs.load_manifest(output)
  assert manifest["counts"]["embedded"] == good
  return output


class _RecordingProxy:
  """A proxy on loopback that records each request's first line and
  answers none."""

  def __init__(self):
    self._server = socket.create_server(("127.0.0.1", 0))
    self.port = self._server.getsockname()[1]
    self.requests = []
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self):
    while True:
      try:
        connection, _ = self._server.accept()
      except OSError:
        return
      with connection:
        connection.settimeout(5)
        try:
          self.requests.append(connection.recv(4096).split(b"\r\n")[0])
        except OSError:
          self.requests.append(b"")

  def asked_for(self, host: str) -> list:
    return [r for r in self.requests if host.encode() in r]

  def close(self):
    self._server.close()


def _chromium(tmp_path, proxy, *arguments) -> subprocess.CompletedProcess:
  binary = shutil.which("chromium")
  assert binary, ("Debian's chromium is needed to draw the report: "
                  "apt-get install chromium (run_tests.sh installs it)")
  command = [
      binary, "--headless", "--no-sandbox", "--disable-gpu",
      "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
      "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-default-browser-check",
      f"--user-data-dir={tmp_path / 'profile'}",
      f"--proxy-server=127.0.0.1:{proxy.port}",
      "--proxy-bypass-list=<-loopback>", *arguments]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_the_run_report_renders_in_chromium(run_dir, tmp_path):
  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["outputs"]["report"] == {"html": ["report.html"]}
  path = os.path.join(run_dir, "report.html")
  with open(path, encoding="utf-8") as f:
    written = f.read()
  assert_no_markup_from_the_run(Page(written))
  assert written.count(BAIT) >= 2  # in the texts, as text
  url = f"file://{path}"
  control = tmp_path / "control.html"
  control.write_text(f'<img src="http://{BAIT}/control.png">')
  proxy = _RecordingProxy()
  try:
    screenshot = tmp_path / "report.png"
    dom = Page(_chromium(tmp_path, proxy, "--dump-dom",
                         f"--screenshot={screenshot}",
                         "--window-size=1000,2400", "--hide-scrollbars",
                         url).stdout)
    assert not proxy.asked_for(BAIT), proxy.requests  # the page fetched none
    _chromium(tmp_path, proxy, "--dump-dom", f"file://{control}")
  finally:
    proxy.close()
  assert proxy.asked_for(BAIT), proxy.requests  # the control page did

  # The title, the counts, the error reasons and the pictures are drawn.
  assert dom.title == f"Run report: {RUN_ID}"
  counts = manifest["counts"]
  for name in ("read", "embedded", "dead_lettered", "truncated"):
    assert dom.row(name)[1] == f"{counts[name]:,}", name
  assert counts["truncated"] >= 1 and counts["dead_lettered"] == 3
  for reason in ("malformed_record", "missing_field", "empty_text"):
    assert dom.row(reason)[1] == "1"
  # Stage times, token lengths, neighbour scores, duplicate groups, heatmap.
  assert dom.tags["svg"] == 5 and dom.tags["rect"] > 5 * 5
  shown = "".join(dom.text)
  assert "--max_seq_length" in shown
  assert HOSTILE in shown and '"><b>an id</b>' in shown
  assert dom.row("dup-1")[1] == "2"  # the duplicate group, and its size
  assert "fish &amp; chips" in shown  # the text as it is, not decoded
  assert "\u202e" not in written
  assert_no_markup_from_the_run(dom)

  with open(screenshot, "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(png) > 50_000  # a page of text and pictures, not a blank one
  image = Image.open(io.BytesIO(png)).convert("RGB")
  assert image.size == (1000, 2400)
  colours = image.getcolors(maxcolors=1 << 20)
  assert len(colours) > 100  # text, bars and heatmap cells in many colours
  # The title at the top: dark pixels in the first band of the page.
  top = image.crop((0, 0, 1000, 80)).convert("L")
  assert top.getextrema()[0] < 80
