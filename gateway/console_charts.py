"""Stacked bar charts for the browser console, drawn as inline SVG strings.

One bar per label (a day, say), one stacked segment per series (a model, a key, a
denial reason), a y axis with compact ticks (``1.2k``, ``3.4M``), a legend, and a
``<title>`` tooltip on every segment. The console's templates insert the result with
``|safe``, so every piece of text that goes in (titles, labels, series names, units:
all of which may come from users) is cleaned and escaped here, and nowhere else.
Pure: no I/O, no clock, standard library only.
"""

from __future__ import annotations

import html
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# Tableau 10: distinguishable, and each reads on white; grey is kept for "other".
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")
OTHER_COLOUR = "#9d9d9d"
MAX_SERIES = 8
MAX_TICK_LABELS = 8
_SUFFIXES = (("", 1.0, 2), ("k", 1e3, 1), ("M", 1e6, 1), ("G", 1e9, 1), ("T", 1e12, 1))
_CHAR_W = 6.2  # about how wide one character of 10-11px sans-serif is, in user units


@dataclass(frozen=True)
class Series:
    """One stacked segment per label: ``values[i]`` belongs to ``labels[i]``."""

    name: str
    values: tuple[float, ...]


def compact_number(value: float) -> str:
    """``1234`` as ``1.2k``, ``3.4e6`` as ``3.4M``, ``0.25`` as ``0.25``; NaN/inf as ``0``."""
    if not math.isfinite(value):
        value = 0.0
    for suffix, scale, digits in _SUFFIXES:
        scaled = round(value / scale, digits)
        if abs(scaled) < 1000 or suffix == _SUFFIXES[-1][0]:
            text = f"{scaled:.{digits}f}".rstrip("0").rstrip(".")
            return ("0" if text in ("", "-0") else text) + suffix
    raise AssertionError("unreachable")


def _full_number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def _clean(value: float) -> float:
    """Negative, NaN and infinite values draw as 0; 1e18 caps the rest (sums stay finite)."""
    return min(float(value), 1e18) if math.isfinite(value) and value > 0 else 0.0


def _text(text: str, limit: int) -> str:
    """``text`` safe to put in SVG/HTML: one line, no code points HTML forbids, escaped."""
    text = " ".join(str(text).split())
    text = "".join(
        c
        for c in text
        if unicodedata.category(c) not in ("Cc", "Cs")
        and not (0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFE) == 0xFFFE)
    )
    if len(text) > limit:
        text = text[: max(limit - 1, 1)] + "…"
    return html.escape(text, quote=True)


def _with_unit(value: float, unit: str) -> str:
    return f"{_full_number(value)} {unit}" if unit else _full_number(value)


def _merged(series: Sequence[Series], n: int) -> list[tuple[str, list[float], str]]:
    """(name, values padded to ``n`` and cleaned, colour); beyond 8, the rest as "other"."""
    rows = [(s.name, [_clean(v) for v in (tuple(s.values) + (0.0,) * n)[:n]]) for s in series]
    colours = list(PALETTE[: len(rows)])
    if len(rows) > MAX_SERIES:
        ranked = sorted(range(len(rows)), key=lambda i: -sum(rows[i][1]))
        kept = set(ranked[: MAX_SERIES - 1])
        other = [sum(r[1][k] for i, r in enumerate(rows) if i not in kept) for k in range(n)]
        rows = [r for i, r in enumerate(rows) if i in kept] + [("other", other)]
        colours = [*PALETTE[: MAX_SERIES - 1], OTHER_COLOUR]
    return [(name, vals, colour) for (name, vals), colour in zip(rows, colours, strict=True)]


def _nice_top(peak: float) -> tuple[float, float]:
    """(axis top, tick step): a round step near a quarter of ``peak``, at least ``peak``."""
    raw = max(peak / 4, 1e-300)  # a subnormal peak would underflow to 0
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return step * math.ceil(peak / step - 1e-9), step


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    width: int = 640,
    height: int = 220,
) -> str:
    """A stacked bar chart as an ``<svg>`` element, every piece of text escaped."""
    n = len(labels)
    rows = _merged(series, n)
    totals = [sum(vals[i] for _, vals, _ in rows) for i in range(n)]
    peak = max(totals, default=0.0)
    has_data = peak > 0
    width = max(int(width), 200)
    columns = max(1, (width - 16) // 150)
    legend_rows = math.ceil(len(rows) / columns) if has_data else 0
    left, right, top, bottom = 48, 8, 26, 22 + 16 * legend_rows
    height = max(int(height), top + bottom + 40)
    plot_w, plot_h = width - left - right, height - top - bottom
    base = top + plot_h
    u, heading = _text(unit, 40), _text(title, 200)
    summary = f"{n} bars, {len(rows)} series, peak {compact_number(peak)} {u}".rstrip()
    summary = summary if has_data else "no data"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" preserveAspectRatio="xMidYMid meet" style="max-width:{width}px;height:auto" '
        f'font-family="system-ui, sans-serif" font-size="10" aria-label="{heading}: {summary}">',
        f"<title>{heading}</title>",
        f'<text x="{left}" y="16" font-size="12" font-weight="600" fill="#222">'
        f"{_text(title, int(plot_w / 7.5))}</text>",
    ]
    axis_top, step = _nice_top(peak) if has_data else (1.0, 1.0)
    for k in range(round(axis_top / step) + 1 if has_data else 1):
        y = base - k * step / axis_top * plot_h
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" fill="#555">'
            f"{compact_number(k * step)}</text>"
        )
    for x1, y1, x2 in ((left, top, left), (left, base, left + plot_w)):
        out.append(f'<line class="axis" x1="{x1}" y1="{y1}" x2="{x2}" y2="{base}" stroke="#888"/>')
    if not has_data:
        out.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'font-size="12" fill="#777">No data</text>'
        )
        return "".join(out) + "</svg>"
    slot = plot_w / n
    longest = max(min(len(str(label)), 14) for label in labels)
    shown = max(1, min(MAX_TICK_LABELS, int(plot_w // (longest * _CHAR_W + 10))))
    every, bar_w = math.ceil(n / shown), min(slot * 0.7, 56.0)
    for i, label in enumerate(labels):
        x = left + (i + 0.5) * slot - bar_w / 2
        y = float(base)
        out.append('<g class="bar">')
        for name, vals, colour in rows:
            if vals[i] <= 0:
                continue
            h = vals[i] / axis_top * plot_h
            y -= h
            tip = f"{_text(label, 60)} · {_text(name, 120)}: {_with_unit(vals[i], u)}"
            out.append(
                f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                f'fill="{colour}"><title>{tip}</title></rect>'
            )
        out.append("</g>")
        if i % every == 0:
            half = min(len(str(label)), 14) * _CHAR_W / 2  # keep the label inside the image
            cx = min(max(left + (i + 0.5) * slot, half + 2), width - half - 2)
            out.append(
                f'<text class="tick" x="{cx:.1f}" y="{base + 14}" '
                f'text-anchor="middle" fill="#555">{_text(label, 14)}</text>'
            )
    col_w = (width - 16) / columns
    for j, (name, vals, colour) in enumerate(rows):
        x, y = 8 + (j % columns) * col_w, base + 26 + (j // columns) * 16
        out.append(
            f'<g class="legend"><title>{_text(name, 120)}: {_with_unit(sum(vals), u)}</title>'
            f'<rect x="{x:.1f}" y="{y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14:.1f}" y="{y + 9}" fill="#333">'
            f"{_text(name, int((col_w - 20) / _CHAR_W))}</text></g>"
        )
    return "".join(out) + "</svg>"
