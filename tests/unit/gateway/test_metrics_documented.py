"""Every metric is documented in docs/metrics.md, and every documented one exists."""

from __future__ import annotations

import re
from pathlib import Path

import prometheus_client

from gateway import metrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def defined() -> dict[str, str]:
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, prometheus_client.Counter | prometheus_client.Gauge):
            kind = "counter" if isinstance(value, prometheus_client.Counter) else "gauge"
            found[value._name + ("_total" if kind == "counter" else "")] = kind
        elif isinstance(value, prometheus_client.Histogram):
            found[value._name] = "histogram"
    return found


def documented() -> dict[str, str]:
    rows = re.findall(r"^\| `(gateway_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.MULTILINE)
    return dict(rows)


def test_every_metric_is_documented_with_its_type_and_nothing_more():
    assert documented() == defined()


def test_metric_names_carry_the_prefix_and_units():
    for name, kind in defined().items():
        assert name.startswith("gateway_")
        if kind == "histogram":
            assert name.endswith("_seconds")
