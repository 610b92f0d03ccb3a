"""The alert rules and the dashboard: valid, tested on made-up series, and about real metrics.

`promtool` (Debian's `prometheus` package; `make test` installs it) checks the
rules and the Prometheus config and runs the rules' unit tests
(infra/prometheus/alerts_test.yml). Every `stockpipe_…` metric an alert or a
dashboard panel uses must be one the code registers: a renamed metric fails
here, not silently on a dashboard.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from flows.metrics import gauges_registry

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "infra" / "prometheus"
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
# Every module that defines metrics (importing registers them).
METRIC_MODULES = (
    "flows.ingest.kafka_out",
    "flows.ingest.finnhub_ws",
    "flows.lake.retry",
    "flows.stream.kafka_source",
    "flows.stream.decode",
    "flows.stream.dataflow",
    "flows.stream.lake_sink",
)
# Modules of batch runs: their gauges (GaugeSpec) go to registries of their own, one per run.
BATCH_METRIC_MODULES = (
    ("flows.warehouse.metrics", "LOAD_GAUGES"),
    ("flows.warehouse.metrics", "OUTAGE_GAUGES"),
    ("flows.transform.metrics", "TRANSFORM_GAUGES"),
)
NAME = re.compile(r"\bstockpipe_[a-z0-9_]+")


def batch_registries() -> list[CollectorRegistry]:
    """A registry of each batch module's gauges, every one of them given a value."""
    registries = []
    for module, attribute in BATCH_METRIC_MODULES:
        specs = getattr(importlib.import_module(module), attribute)
        values = {s.name: {tuple("x" for _ in s.labels): 1.0} if s.labels else 1.0 for s in specs}
        registries.append(gauges_registry(specs, values))
    return registries


def exported() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = set()
    for family in [f for r in (REGISTRY, *batch_registries()) for f in r.collect()]:
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return {n for n in names if n.startswith("stockpipe_")}


def expressions() -> dict[str, str]:
    """Every PromQL expression of the alert rules and the dashboards, by where it is."""
    out = {}
    for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            out[f"alert {rule['alert']}"] = rule["expr"]
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out[f"{path.name}: {panel['title']} ({target['refId']})"] = target["expr"]
    return out


def test_every_metric_the_alerts_and_dashboards_use_is_one_the_code_exports():
    names = exported()
    assert {"stockpipe_consumer_lag", "stockpipe_ticks_total"} <= names  # the scan works
    assert {"stockpipe_load_files", "stockpipe_transform_nodes"} <= names  # and the batch one
    used = {where: set(NAME.findall(expr)) for where, expr in expressions().items()}
    unknown = {where: sorted(n - names) for where, n in used.items() if n - names}
    assert unknown == {}
    assert any(used.values()), "no expression names a stockpipe metric"


def test_the_dashboard_covers_what_an_operator_watches():
    text = " ".join(expressions().values())
    for metric in (
        "stockpipe_trades_received_total",
        "stockpipe_consumer_lag",
        "stockpipe_watermark_delay_seconds",
        "stockpipe_dlq_records_total",
        "stockpipe_bars_emitted_total",
        "stockpipe_bar_latency_seconds_bucket",
        "stockpipe_spool_bytes",
        "stockpipe_load_last_success_timestamp_seconds",
        "stockpipe_transform_last_success_timestamp_seconds",
    ):
        assert metric in text, metric


def test_the_batch_alerts_watch_the_last_success_of_load_and_transform():
    rules = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert "stockpipe_load_last_success_timestamp_seconds" in rules["StockpipeLoadStale"]
    assert "stockpipe_transform_last_success_timestamp_seconds" in rules["StockpipeMartsStale"]
    assert "stockpipe_transform_test_failures" in rules["StockpipeDbtTestsFailing"]
    assert "stockpipe_load_failed" in rules["StockpipeLoadFailed"]
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in scrape["scrape_configs"]}
    assert jobs["stockpipe-batch"] == ["node-exporter:9100"]  # the textfile collector


@pytest.mark.system
def test_promtool_checks_the_config_and_the_rules_and_runs_their_unit_tests():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run(
            [promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (args, done.stdout + done.stderr)
    assert "SUCCESS" in done.stdout
