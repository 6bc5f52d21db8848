"""The report's pictures, drawn as inline SVG: bar charts, a heatmap, a
timeline.

Hand-written SVG rather than a plotting library: a few dozen shapes per
chart, no import cost on every run, no fonts or files to fetch, and a page
that stays one file. Every label goes through `escape` (texts come from the
corpus and may hold anything, markup included).
"""

import html
import math
from typing import Optional, Sequence, Tuple

import numpy as np

from run_directory.records import printable

_FONT = 'font-family="system-ui, sans-serif" font-size="11"'
_BAR_COLOUR = "#4e79a7"
_MARKER_COLOUR = "#d62728"
# Light yellow to dark red: the YlOrRd scale of the similarity PNG.
_HEAT_STOPS = ((255, 255, 204), (254, 217, 118), (253, 141, 60),
               (227, 26, 28), (128, 0, 38))


def plain(text, limit: Optional[int] = None) -> str:
  """Any value as one line of printable text, cut to `limit` characters.

  Control, format (bidi overrides, zero-width) and separator characters
  become spaces, lone surrogates escapes: nothing in a text can reorder,
  hide or break what is around it.
  """
  text = printable(str(text))
  text = "".join(c if c.isprintable() else " " for c in text)
  text = " ".join(text.split())
  if limit is not None and len(text) > limit:
    text = text[:limit - 1] + "\u2026"
  return text


def escape(text, limit: Optional[int] = None) -> str:
  """`plain(text)`, escaped for HTML and SVG, attribute values included."""
  return html.escape(plain(text, limit), quote=True)


def number(value) -> str:
  if isinstance(value, float) and not value.is_integer():
    return f"{value:,.2f}"
  return f"{int(value):,}"


def nice_step(maximum: float, ticks: int = 4) -> float:
  """A round step (1, 2 or 5 times a power of ten) for about `ticks` ticks."""
  if maximum <= 0:
    return 1.0
  raw = maximum / ticks
  power = 10 ** math.floor(math.log10(raw))
  for mantissa in (1, 2, 5, 10):
    if mantissa * power >= raw:
      return mantissa * power
  return 10 * power


def _svg(width: int, height: int, title: str, body: list) -> str:
  # No xmlns: inline in HTML, the parser puts <svg> in the SVG namespace.
  return (f'<svg role="img" '
          f'width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" {_FONT}>'
          f'<title>{escape(title)}</title>'
          f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" '
          f'font-size="13" font-weight="bold">{escape(title)}</text>'
          + "".join(body) + "</svg>")


def bar_chart(counts: Sequence[int], labels: Sequence[str], title: str,
              x_label: str, y_label: str,
              marker: Optional[Tuple[float, str]] = None,
              width: int = 720, height: int = 260) -> str:
  """Bars of `counts`, labelled below (some labels left out when crowded).

  marker: (position in bars from the left edge, label): a vertical line,
  e.g. the truncation length.
  """
  left, right, top, bottom = 60, 16, 28, 48
  plot_w, plot_h = width - left - right, height - top - bottom
  n = max(len(counts), 1)
  bar_w = plot_w / n
  step = max(nice_step(max(counts, default=0)), 1)  # counts: whole ticks
  y_max = max(step * math.ceil(max(counts, default=0) / step), step)
  body = []
  for tick in np.arange(0, y_max + step / 2, step):
    y = top + plot_h - tick / y_max * plot_h
    body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" '
                f'y2="{y:.1f}" stroke="#ddd"/>'
                f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
                f'{number(float(tick))}</text>')
  every = max(1, math.ceil(n / 12))
  for i, (count, label) in enumerate(zip(counts, labels)):
    x = left + i * bar_w
    h = count / y_max * plot_h
    body.append(f'<rect x="{x + 0.5:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                f'fill="{_BAR_COLOUR}"><title>{escape(label)}: '
                f'{number(count)}</title></rect>')
    if i % every == 0:
      body.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" '
                  f'text-anchor="middle">{escape(label)}</text>')
  if marker is not None:
    position, label = marker
    x = left + min(max(position, 0), n) * bar_w
    body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" '
                f'y2="{top + plot_h}" stroke="{_MARKER_COLOUR}" '
                f'stroke-width="2" stroke-dasharray="5,3"/>'
                f'<text x="{x - 4:.1f}" y="{top + 12}" text-anchor="end" '
                f'fill="{_MARKER_COLOUR}">{escape(label)}</text>')
  body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
              f'y2="{top + plot_h}" stroke="#333"/>'
              f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" '
              f'text-anchor="middle">{escape(x_label)}</text>'
              f'<text transform="translate(14 {top + plot_h / 2:.1f}) '
              f'rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
  return _svg(width, height, title, body)


def heat_colour(value: float) -> str:
  """The colour of a cosine: [0, 1] on the YlOrRd scale, clamped."""
  if not value == value:  # NaN
    return "#888"
  position = min(max(value, 0.0), 1.0) * (len(_HEAT_STOPS) - 1)
  low = min(int(position), len(_HEAT_STOPS) - 2)
  fraction = position - low
  rgb = [round(a + (b - a) * fraction)
         for a, b in zip(_HEAT_STOPS[low], _HEAT_STOPS[low + 1])]
  return "#{:02x}{:02x}{:02x}".format(*rgb)


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str,
            cell: int = 18) -> str:
  """A square matrix of cosines, its rows and columns numbered 1..n; a cell's
  tooltip names the pair (labels) and the score. A colour bar on the
  right."""
  n = len(labels)
  left, top = 34, 44
  side = n * cell
  width, height = left + side + 90, top + side + 16
  body = []
  for i in range(n):
    y = top + i * cell
    body.append(f'<text x="{left - 4}" y="{y + cell / 2 + 4:.1f}" '
                f'text-anchor="end">{i + 1}</text>'
                f'<text x="{left + i * cell + cell / 2:.1f}" y="{top - 6}" '
                f'text-anchor="middle">{i + 1}</text>')
    for j in range(n):
      value = float(matrix[i, j])
      body.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell}" '
                  f'height="{cell}" fill="{heat_colour(value)}">'
                  f'<title>{i + 1} {escape(labels[i], 60)} / {j + 1} '
                  f'{escape(labels[j], 60)}: {value:.3f}</title></rect>')
  bar_x = left + side + 24
  steps = 20
  for k in range(steps):
    value = 1 - k / steps
    body.append(f'<rect x="{bar_x}" y="{top + k * side / steps:.1f}" '
                f'width="14" height="{side / steps + 0.5:.1f}" '
                f'fill="{heat_colour(value - 0.5 / steps)}"/>')
  body.append(f'<text x="{bar_x + 18}" y="{top + 8}">1.0</text>'
              f'<text x="{bar_x + 18}" y="{top + side}">\u2264 0</text>')
  return _svg(width, height, title, body)


def timeline(rows: Sequence[Tuple[str, Optional[float], Optional[float]]],
             total: float, title: str, width: int = 720) -> str:
  """One bar per row from its start to its end (seconds since the run
  started), on an axis from 0 to `total`; a row without times has no bar."""
  left, right, top, row_h = 150, 24, 28, 22
  plot_w = width - left - right
  height = top + row_h * len(rows) + 36
  total = max(total, max((end for _, _, end in rows if end is not None),
                         default=0.0), 1e-3)
  scale = plot_w / total
  body = []
  step = nice_step(total, 6)
  for tick in np.arange(0, total + step / 2, step):
    if tick > total * 1.0001:
      break
    x = left + tick * scale
    body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" '
                f'y2="{top + row_h * len(rows)}" stroke="#ddd"/>'
                f'<text x="{x:.1f}" y="{top + row_h * len(rows) + 14}" '
                f'text-anchor="middle">{number(float(tick))}</text>')
  for i, (label, start, end) in enumerate(rows):
    y = top + i * row_h
    body.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">'
                f'{escape(label)}</text>')
    if start is None or end is None:
      continue
    # Another machine's clock may be a little behind the launcher's.
    start, end = max(start, 0.0), max(end, 0.0)
    x = left + start * scale
    w = max((end - start) * scale, 2.0)
    body.append(f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" '
                f'height="{row_h - 8}" fill="{_BAR_COLOUR}"><title>'
                f'{escape(label)}: {start:.2f} s to {end:.2f} s</title>'
                '</rect>')
  body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" '
              'text-anchor="middle">seconds since the run started</text>')
  return _svg(width, height, title, body)
