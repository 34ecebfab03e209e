"""Console charts: valid, escaped, accessible SVG whatever the data and the names."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import html5lib
import pytest

from gateway.console_charts import Series, bar_chart, compact_number

SVG = "{http://www.w3.org/2000/svg}"
DAYS = [f"2026-12-{d:02d}" for d in range(1, 8)]


def parse_in_html(svg: str) -> None:
    """Raises if the SVG, as the console's templates insert it, is not valid HTML5."""
    page = f"<!DOCTYPE html><html><head><title>t</title></head><body>{svg}</body></html>"
    html5lib.HTMLParser(strict=True).parse(page)


def bar_segments(svg: str) -> list[list[ET.Element]]:
    root = ET.fromstring(svg)
    return [list(g.iter(f"{SVG}rect")) for g in root.iter(f"{SVG}g") if g.get("class") == "bar"]


def texts(svg: str, cls: str | None = None) -> list[str]:
    root = ET.fromstring(svg)
    return [t.text or "" for t in root.iter(f"{SVG}text") if cls is None or t.get("class") == cls]


def legend_names(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    legends = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
    return [g.find(f"{SVG}text").text or "" for g in legends]  # type: ignore[union-attr]


HOSTILE = [
    "<script>alert(1)</script>",
    '"onload="alert(1)',
    "</svg><img src=x onerror=alert(1)>",
    "ключ ✓ 日本語 🚀 & ' <b>",
    "x" * 500,
    "tab\tnew\nline\x00nul\x1b\x7f\x85\ufdd0\uffff",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_labels_are_escaped(hostile: str):
    svg = bar_chart(hostile, [hostile, "2026-12-02"], [Series(hostile, (5.0, 7.0))], unit=hostile)
    assert "<script" not in svg
    assert "<img" not in svg
    assert svg.count("</svg>") == 1 and svg.endswith("</svg>")
    assert "\x00" not in svg and "\ufdd0" not in svg
    parse_in_html(svg)
    ET.fromstring(svg)  # well-formed XML too
    if hostile.startswith("<script"):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    if hostile.startswith("ключ"):
        assert "ключ ✓ 日本語 🚀 &amp; &#x27; &lt;b&gt;" in svg
    if hostile.startswith('"onload'):
        assert "&quot;onload=&quot;alert(1)" in svg
        assert ' onload="' not in svg


def test_long_names_are_clipped_with_an_ellipsis():
    name = "m" * 500
    svg = bar_chart(name, [name], [Series(name, (1.0,))])
    assert name not in svg
    shown = legend_names(svg)[0]
    assert shown.endswith("…") and len(shown) < 40
    assert all(len(text) < 130 for text in texts(svg))
    parse_in_html(svg)


def test_tiny_values_still_draw():
    svg = bar_chart("t", ["d"], [Series("a", (5e-324,)), Series("b", (1e-9,))])
    assert len(bar_segments(svg)[0]) == 2
    parse_in_html(svg)


def test_root_is_an_accessible_responsive_image():
    svg = bar_chart("Tokens per day", DAYS, [Series("model-x", (1234.0,) * 7)], unit="tokens")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.get("viewBox") == "0 0 640 220"
    assert root.get("width") == "100%"
    assert root.get("height") is None
    assert (root.get("aria-label") or "").startswith("Tokens per day")
    first = root[0]
    assert first.tag == f"{SVG}title" and first.text == "Tokens per day"
    parse_in_html(svg)


def test_each_segment_has_a_tooltip_with_label_series_and_value():
    svg = bar_chart(
        "Tokens",
        ["2026-12-01"],
        [Series("model-x", (1234.0,)), Series("model-y", (0.5,))],
        unit="tokens",
    )
    tips = [rect.find(f"{SVG}title").text for rect in bar_segments(svg)[0]]  # type: ignore[union-attr]
    assert tips == ["2026-12-01 · model-x: 1,234 tokens", "2026-12-01 · model-y: 0.50 tokens"]


@pytest.mark.parametrize(
    ("labels", "series"),
    [
        ([], []),
        ([], [Series("a", ())]),
        (DAYS, []),
        (DAYS, [Series("a", (0.0,) * 7), Series("b", ())]),
        (DAYS, [Series("a", (-3.0, math.nan, math.inf, -math.inf, 0.0, 0.0, 0.0))]),
    ],
)
def test_empty_chart_says_no_data(labels: list[str], series: list[Series]):
    svg = bar_chart("Usage", labels, series)
    assert "No data" in texts(svg)
    assert bar_segments(svg) == []
    assert len(list(ET.fromstring(svg).iter(f"{SVG}line"))) >= 2  # the axes are drawn
    assert "no data" in (ET.fromstring(svg).get("aria-label") or "")
    parse_in_html(svg)


def test_one_label_draws_one_bar():
    svg = bar_chart("t", ["2026-12-01"], [Series("a", (3.0,)), Series("b", (4.0,))])
    assert [len(bar) for bar in bar_segments(svg)] == [2]
    assert texts(svg, "tick") == ["2026-12-01"]
    parse_in_html(svg)


def test_stacked_totals_scale_to_the_tallest_bar():
    a = Series("a", (100.0, 300.0, 0.0, 50.0))
    b = Series("b", (100.0, 700.0, 20.0, 0.0))
    svg = bar_chart("t", ["d1", "d2", "d3", "d4"], [a, b], height=300)
    y_axis = next(
        line for line in ET.fromstring(svg).iter(f"{SVG}line") if line.get("class") == "axis"
    )
    plot_top, baseline = float(y_axis.get("y1") or 0), float(y_axis.get("y2") or 0)
    bars = bar_segments(svg)
    values = [[v for v in (a.values[i], b.values[i]) if v > 0] for i in range(4)]
    assert [len(bar) for bar in bars] == [len(v) for v in values]
    per_unit = float(bars[0][0].get("height") or 0) / 100.0
    for bar, vals in zip(bars, values, strict=True):
        bottom = baseline
        for rect, value in zip(bar, vals, strict=True):
            height = float(rect.get("height") or 0)
            assert height == pytest.approx(value * per_unit, abs=0.02)  # one scale for all
            assert float(rect.get("y") or 0) + height == pytest.approx(bottom, abs=0.02)  # stacked
            bottom -= height
    tallest = baseline - float(bars[1][-1].get("y") or 0)
    assert tallest == pytest.approx(1000 * per_unit, abs=0.05)
    # the axis top is a round number at or above the tallest total, at most 1.5x it
    assert 2 / 3 * (baseline - plot_top) <= tallest <= baseline - plot_top + 0.01


def test_many_series_merge_into_other():
    series = [Series(f"key-{i}", (float(i + 1), 1.0)) for i in range(12)]
    svg = bar_chart("Per key", ["d1", "d2"], series)
    names = legend_names(svg)
    assert len(names) == 8
    assert names[-1] == "other"
    assert set(names[:-1]) == {f"key-{i}" for i in range(5, 12)}  # the seven largest stay
    tips = [r.find(f"{SVG}title").text for r in bar_segments(svg)[0]]  # type: ignore[union-attr]
    assert "d1 · other: 15" in tips  # keys 0-4 on d1: 1+2+3+4+5
    parse_in_html(svg)


def test_colours_are_distinct_per_series():
    series = [Series(f"s{i}", (1.0,)) for i in range(8)]
    root = ET.fromstring(bar_chart("t", ["d"], series))
    fills = [r.get("fill") for r in root.iter(f"{SVG}rect")]
    assert len(set(fills)) == 8


def test_tick_labels_thin_out():
    labels = [f"2026-{m:02d}-{d:02d}" for m in (10, 11) for d in range(1, 31)]
    svg = bar_chart("60 days", labels, [Series("a", tuple(range(1, 61)))])
    shown = texts(svg, "tick")
    assert len(bar_segments(svg)) == 60
    assert 2 <= len(shown) <= 8
    assert shown[0] == labels[0]
    assert all(label in labels for label in shown)
    parse_in_html(svg)


def test_nan_and_negative_values_are_zero():
    svg = bar_chart(
        "t",
        ["d1", "d2", "d3"],
        [Series("a", (math.nan, -5.0, 10.0)), Series("b", (math.inf, 2.0, -math.inf))],
    )
    bars = bar_segments(svg)
    assert [len(bar) for bar in bars] == [0, 1, 1]
    tips = [r.find(f"{SVG}title").text for bar in bars for r in bar]  # type: ignore[union-attr]
    assert tips == ["d2 · b: 2", "d3 · a: 10"]
    assert "nan" not in svg.lower() and "inf" not in svg.lower()


def test_short_and_long_value_tuples_are_padded_and_cut():
    svg = bar_chart("t", ["d1", "d2"], [Series("a", (1.0,)), Series("b", (1.0, 2.0, 3.0))])
    assert [len(bar) for bar in bar_segments(svg)] == [2, 1]


def test_huge_values_give_compact_ticks():
    svg = bar_chart("t", ["d"], [Series("a", (3.4e9,))], unit="tokens")
    ticks = texts(svg)
    assert "0" in ticks and any(t.endswith("G") for t in ticks)
    assert "3,400,000,000 tokens" in svg
    parse_in_html(svg)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (0.25, "0.25"),
        (12.5, "12.5"),
        (999, "999"),
        (1000, "1k"),
        (1234, "1.2k"),
        (999_950, "1M"),
        (3_400_000, "3.4M"),
        (5_600_000_000, "5.6G"),
        (7.5e12, "7.5T"),
        (-1500, "-1.5k"),
        (-0.001, "0"),
        (math.nan, "0"),
        (math.inf, "0"),
    ],
)
def test_compact_numbers(value: float, text: str):
    assert compact_number(value) == text
