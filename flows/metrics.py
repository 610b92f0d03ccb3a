"""Prometheus metrics of each process: `/metrics` and `/healthz`, and a textfile at exit.

Every stage defines its metrics where they happen (names by Prometheus
convention: `stockpipe_` prefix, base units, `_total` counters, labels with a
bounded set of values: topic, partition, source, reason, kind, never a
symbol). A long-running process (producer, stream worker) serves them with
`serve(port, health)`:

- `GET /metrics`: the text exposition of every metric of the process;
- `GET /healthz`: 200 when the process makes progress, 503 when it does not,
  with one JSON object `{"ok": …, "detail": "…"}` that says why.

Ports come from `STOCKPIPE_METRICS_PORT` (0 turns the endpoint off): the
producer serves on it, stream worker process *i* on it + 1 + *i*, so the
processes of one host never collide. A port already taken is logged and
skipped: observability never stops the pipeline. A short-lived command writes
its metrics once at exit to `STOCKPIPE_METRICS_TEXTFILE` (node_exporter's
textfile collector format) when that is set.

Batch runs (the load, the transform, their Airflow tasks) follow Prometheus's
convention for batch jobs: gauges of the last run, written after each run to a
file of their own in `STOCKPIPE_METRICS_DIR` (`write_gauges`), each from a
registry holding only that stage's gauges, so two files never carry the same
series (the textfile collector rejects that) and no process_* collector comes
along. The stages declare their gauges (`GaugeSpec`) where they measure them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
    write_to_textfile,
)
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, str]]


def always_ok() -> tuple[bool, str]:
    return True, "running"


def serve(
    port: int, health: Health = always_ok, host: str = "0.0.0.0"
) -> ThreadingHTTPServer | None:  # noqa: S104
    """Serve `/metrics` and `/healthz` on `port` from a daemon thread; None when off or taken."""
    if port <= 0:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, status, kind = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST
            elif path == "/healthz":
                try:
                    ok, detail = health()
                except Exception as exc:  # noqa: BLE001 - a broken check is an unhealthy process
                    ok, detail = False, f"health check failed: {exc}"
                body = json.dumps({"ok": ok, "detail": detail}).encode()
                status, kind = (200 if ok else 503), "application/json"
            else:
                body, status, kind = b"not found: try /metrics or /healthz\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes every few seconds: not news
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        log.warning("metrics not served: port %d is not free (%s)", port, exc)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
    return server


def write_textfile(path: Path | None) -> None:
    """The process's metrics, written atomically to `path` (nothing when None)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(os.fspath(path), REGISTRY)
    except OSError as exc:
        log.warning("metrics not written to %s: %s", path, exc)


@dataclass(frozen=True)
class GaugeSpec:
    """One gauge of a batch run: its name, help text and label names."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


# A gauge's value: a number, or (for a labelled gauge) a number per tuple of label values.
GaugeValue = float | Mapping[tuple[str, ...], float]


def gauges_registry(
    specs: Sequence[GaugeSpec], values: Mapping[str, GaugeValue | None]
) -> CollectorRegistry:
    """A registry of its own holding the gauges of `specs` that `values` gives a value
    (a gauge without one, None, is left out rather than written as 0)."""
    registry = CollectorRegistry(auto_describe=True)
    for spec in specs:
        value = values.get(spec.name)
        if value is None:
            continue
        gauge = Gauge(spec.name, spec.help, spec.labels, registry=registry)
        if isinstance(value, Mapping):
            for labels, number in value.items():
                gauge.labels(*labels).set(number)
        else:
            gauge.set(value)
    return registry


def write_gauges(directory: Path | None, name: str, registry: CollectorRegistry) -> Path | None:
    """`registry` written atomically to `directory/name`; None when off (no directory) or
    when it cannot be written (logged: metrics never fail the run they measure)."""
    if directory is None:
        return None
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_to_textfile(os.fspath(path), registry)
    except OSError as exc:
        log.warning("metrics not written to %s: %s", path, exc)
        return None
    return path


def read_gauge(directory: Path | None, name: str, metric: str) -> float | None:
    """The value of the unlabelled `metric` in the file `directory/name` a previous run
    wrote, or None (no directory, no file, no such sample, unreadable)."""
    if directory is None:
        return None
    try:
        text = (directory / name).read_text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric and not sample.labels:
                    return float(sample.value)
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s from %s: %s", metric, directory / name, exc)
    return None
