"""Shared fixtures: the real local Apache Kafka broker, fresh topics, settings.

The broker is started once per test session with `flows.tooling.kafka.start`
(or reused when one already listens on KAFKA_BOOTSTRAP_SERVERS) and stopped at
the end only if this session started it. Every Kafka test creates its own
uniquely named topics, so tests never see each other's messages.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flows.settings import Settings, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py, streamgen.py

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
if not GOLDEN_DIR.exists():  # a clone elsewhere: the copy kept in the repo
    GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"


# What a test needs beyond Python, so `make test-fast` (-m "not kafka and not dbt and not
# browser and not airflow and not system") leaves out the broker, dbt, the browser,
# Airflow and the Debian packages. A module marks its tests with `pytestmark`, a test
# with its own decorator; here, a test is marked by the fixtures it uses.
FIXTURE_MARKS = {
    "kafka_bootstrap": "kafka",  # and every fixture built on it (new_topic, settings_for)
    "built": "dbt",  # test_report: a warehouse transformed by dbt once per module
    "compiled": "dbt",  # test_snowflake_sql: every model compiled for Snowflake
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in FIXTURE_MARKS.items():
            if fixture in item.fixturenames:
                item.add_marker(mark)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the real local broker, started once for the session."""
    from flows.tooling import kafka as kafka_local

    settings = load_settings()
    started = kafka_local.start(settings)
    try:
        yield settings.kafka_bootstrap_servers
    finally:
        if started:
            kafka_local.stop(settings)


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a uniquely named topic (and its `.dlq`) on the real broker; returns its name."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def make(prefix: str = "test", partitions: int = 4) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        # As the project creates its topics: record timestamps are the broker's (log time).
        config = {"message.timestamp.type": "LogAppendTime"}
        futures = admin.create_topics(
            [
                NewTopic(name, partitions, 1, config=config),
                NewTopic(f"{name}.dlq", 1, 1, config=config),
            ],
            operation_timeout=30,
        )
        for future in futures.values():
            future.result(timeout=30)
        return name

    return make


@pytest.fixture
def settings_for(tmp_path: Path, kafka_bootstrap: str) -> Callable[..., Settings]:
    """Settings pointing at the test broker and at folders under tmp_path, with overrides."""

    def make(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "lake_url": str(tmp_path / "lake"),
            "recovery_dir": tmp_path / "recovery",
            "warehouse": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
            "metrics_port": 0,  # no endpoint unless a test asks for one
        }
        base.update(overrides)
        return load_settings(**base)

    return make


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR
