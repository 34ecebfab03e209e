"""The deployment files in deploy/: metric names, dashboard shape, launchd and systemd units."""

from __future__ import annotations

import json
import plistlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bgateway_[a-z_]+")
SUFFIX = re.compile(r"_(bucket|sum|count)$")


def documented_metrics() -> dict[str, str]:
    """``name -> type`` from the table in docs/metrics.md."""
    text = (REPO / "docs" / "metrics.md").read_text()
    rows = re.findall(r"^\| `(gateway_[a-z_]+)` \| (\w+) \|", text, re.MULTILINE)
    assert len(rows) > 10, "the metrics table in docs/metrics.md did not parse"
    return dict(rows)


def unknown_metrics(expr: str) -> set[str]:
    known = documented_metrics()
    unknown = set()
    for name in METRIC.findall(expr):
        base = SUFFIX.sub("", name)
        if name in known and known[name] != "histogram":
            continue
        if base != name and known.get(base) == "histogram":
            continue
        unknown.add(name)
    return unknown


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "mlx-gateway.json").read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p.get("type") != "row"]


def test_metric_name_check_catches_unknown_names():
    assert unknown_metrics("rate(gateway_requests_total[5m])") == set()
    assert unknown_metrics("rate(gateway_request_duration_seconds_bucket[5m])") == set()
    assert unknown_metrics("gateway_requests_total_bucket") == {"gateway_requests_total_bucket"}
    assert unknown_metrics("gateway_request_duration_seconds") == {
        "gateway_request_duration_seconds"
    }
    assert unknown_metrics("rate(gateway_no_such_metric[1m])") == {"gateway_no_such_metric"}


def test_alert_rules_use_only_documented_metrics():
    rules = alert_rules()
    assert len(rules) >= 6
    for rule in rules:
        assert unknown_metrics(rule["expr"]) == set(), rule["alert"]
        assert METRIC.search(rule["expr"]), rule["alert"]


def test_alert_rules_have_severity_and_annotations():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_a_promtool_unit_test():
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    tested = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert tested == {rule["alert"] for rule in alert_rules()}


def test_prometheus_config_scrapes_the_gateway():
    doc = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "mlx-gateway"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "mlx-gateway-metrics-token",
    }  # /metrics needs a credential by default
    assert "metrics_token" in text


def test_dashboard_is_valid_json_with_queries_over_documented_metrics():
    dash = dashboard()
    assert dash["schemaVersion"] >= 36
    assert any(i["name"] == "DS_PROMETHEUS" for i in dash["__inputs"])
    panels = dashboard_panels()
    assert len(panels) >= 9
    used = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert unknown_metrics(target["expr"]) == set(), (panel["title"], target["expr"])
            used |= {SUFFIX.sub("", m) for m in METRIC.findall(target["expr"])}
    for variable in dash["templating"]["list"]:
        assert unknown_metrics(variable["definition"]) == set(), variable["name"]
    # The dashboard shows the metrics an operator needs first.
    for name in (
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_time_to_first_token_seconds",
        "gateway_prompt_tokens_total",
        "gateway_completion_tokens_total",
        "gateway_policy_denials_total",
        "gateway_models_loaded",
        "gateway_memory_used_bytes",
        "gateway_memory_budget_bytes",
        "gateway_model_swaps_total",
        "gateway_model_load_duration_seconds",
        "gateway_download_bytes_total",
        "gateway_disk_used_bytes",
        "gateway_disk_budget_bytes",
        "gateway_queue_depth",
        "gateway_in_flight_requests",
    ):
        assert name in used, name


def test_dashboard_panels_do_not_overlap():
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine


def test_launchd_plist_parses_and_keeps_the_gateway_running():
    with (DEPLOY / "com.mlx-gateway.plist").open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "com.mlx-gateway"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"]
    assert plist["StandardOutPath"]
    assert "GATEWAY_CONFIG" in plist["EnvironmentVariables"]
    assert plist["ProgramArguments"][-1] == "serve"


# mlx-lm calls setrlimit(RLIMIT_NOFILE, (2048, 4096)) in every worker, which fails below.
MIN_OPEN_FILES = 4096


def test_launchd_plist_raises_the_open_files_limit():
    with (DEPLOY / "com.mlx-gateway.plist").open("rb") as f:
        plist = plistlib.load(f)
    soft = plist["SoftResourceLimits"]["NumberOfFiles"]
    hard = plist["HardResourceLimits"]["NumberOfFiles"]
    assert MIN_OPEN_FILES <= soft <= hard
    assert hard <= 10240  # within macOS's default kern.maxfilesperproc


def test_systemd_unit_raises_the_open_files_limit():
    text = (DEPLOY / "mlx-gateway.service").read_text()
    service = text.partition("[Service]")[2].partition("\n[")[0]
    (value,) = re.findall(r"^LimitNOFILE=(\d+)(?::(\d+))?$", service, re.MULTILINE)
    soft, hard = int(value[0]), int(value[1] or value[0])
    assert MIN_OPEN_FILES <= soft <= hard


def test_systemd_unit_verifies():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed; cannot verify deploy/mlx-gateway.service")
    result = subprocess.run(
        [tool, "verify", str(DEPLOY / "mlx-gateway.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # ExecStart names the installed venv, which this machine does not have.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip()
        and "/opt/mlx-gateway/.venv/bin/gateway" not in line
        and "mlx-gateway.service: Failed to" not in line
    ]
    assert not problems, result.stdout + result.stderr


def test_nginx_server_block_keeps_streams_and_the_body_limit():
    text = (DEPLOY / "nginx" / "mlx-gateway.conf").read_text()
    for directive in (
        "proxy_pass http://mlx_gateway;",
        "server 127.0.0.1:8080;",
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_read_timeout 3600s;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "client_max_body_size 4m;",
        "proxy_set_header Authorization $http_authorization;",
        "proxy_set_header x-api-key $http_x_api_key;",
    ):
        assert directive in text, directive
