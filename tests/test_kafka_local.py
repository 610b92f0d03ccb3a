"""The local Apache Kafka broker (`flows.tooling.kafka`), against real brokers: no mocks.

The session broker comes from the `kafka_bootstrap` fixture (conftest.py,
which calls `kafka_local.start`); one test starts and stops a second broker of
its own on another port and data dir.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from helpers import free_port_pair
from typer.testing import CliRunner

from flows.errors import ServiceUnavailable, StockpipeError
from flows.settings import Settings, load_settings
from flows.tooling import kafka as kafka_local

pytestmark = pytest.mark.kafka


@pytest.fixture
def own_broker_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings for a broker of this test alone; stopped afterwards whatever happens."""
    port = free_port_pair()
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_data_dir=tmp_path / "kafka"
    )
    try:
        yield settings
    finally:
        kafka_local.stop(settings)


@pytest.fixture
def no_java_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH with neither java nor mvn on it (and no JAVA_HOME)."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.delenv("JAVA_HOME", raising=False)


def _produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> list[bytes]:
    producer = Producer({"bootstrap.servers": bootstrap})
    values = []
    for partition, count in per_partition.items():
        for i in range(count):
            value = f'{{"partition":{partition},"i":{i}}}'.encode()
            producer.produce(topic, value=value, key=b"AAPL", partition=partition)
            values.append(value)
    assert producer.flush(30) == 0
    return values


def test_status_shows_end_offsets_per_partition_after_producing(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("status", partitions=3)
    _produce(kafka_bootstrap, topic, {0: 5, 1: 0, 2: 7})

    info = kafka_local.status(load_settings(kafka_bootstrap_servers=kafka_bootstrap))

    assert info["running"] is True
    assert info["bootstrap"] == kafka_bootstrap
    assert info["kafka_version"] == kafka_local.kafka_version() == "4.1.1"
    assert info["topics"][topic] == {0: 5, 1: 0, 2: 7}
    assert info["topics"][f"{topic}.dlq"] == {0: 0}
    assert not any(name.startswith("__") for name in info["topics"])
    # the command's --json prints the same, as one JSON document
    done = CliRunner().invoke(
        kafka_local.kafka_app,
        ["status", "--json"],
        env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
    )
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    assert doc["running"] is True and doc["topics"][topic] == {"0": 5, "1": 0, "2": 7}


def test_start_is_a_noop_when_a_broker_already_answers(kafka_bootstrap: str) -> None:
    settings = load_settings(kafka_bootstrap_servers=kafka_bootstrap)

    assert kafka_local.broker_reachable(kafka_bootstrap) is True
    assert kafka_local.start(settings) is False
    assert kafka_local.broker_reachable(kafka_bootstrap) is True


def test_produced_messages_come_back_in_order_per_partition(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("roundtrip", partitions=2)
    sent = _produce(kafka_bootstrap, topic, {0: 10, 1: 10})

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"roundtrip-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: dict[int, list[bytes]] = {0: [], 1: []}
    try:
        for _ in range(60):
            for msg in consumer.consume(num_messages=100, timeout=0.5):
                assert msg.error() is None
                assert msg.key() == b"AAPL"
                received[msg.partition()].append(msg.value())
            if sum(map(len, received.values())) >= len(sent):
                break
    finally:
        consumer.close()

    assert received[0] == sent[:10]
    assert received[1] == sent[10:]


def test_missing_java_names_java_and_how_to_use_an_existing_broker(
    tmp_path: Path, no_java_path: None
) -> None:
    port = free_port_pair()
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_data_dir=tmp_path / "kafka"
    )

    with pytest.raises(StockpipeError) as excinfo:
        kafka_local.start(settings, timeout=5)

    message = str(excinfo.value)
    assert "Java 17+" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert not kafka_local.broker_reachable(f"127.0.0.1:{port}")


def test_missing_maven_on_first_fetch_names_maven(tmp_path: Path, no_java_path: None) -> None:
    settings = load_settings(kafka_cache_dir=tmp_path / "empty-cache")

    with pytest.raises(StockpipeError) as excinfo:
        kafka_local.fetch(settings)

    assert "Maven" in str(excinfo.value)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(excinfo.value)
    assert list((tmp_path / "empty-cache").glob("*/libs")) == []


@pytest.mark.slow
def test_fetch_fills_an_empty_cache_once_then_needs_no_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(kafka_cache_dir=tmp_path / "cache")

    libs = kafka_local.fetch(settings)

    assert libs == tmp_path / "cache" / "4.1.1" / "libs"
    assert (libs / "kafka_2.13-4.1.1.jar").is_file()
    assert list(libs.glob("log4j-core-*.jar")) and list(libs.glob("slf4j-api-*.jar"))
    assert list(libs.parent.glob(".libs-*")) == []  # the temporary download folder is gone
    # Cached now: a second fetch does not even need Maven.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert kafka_local.fetch(settings) == libs


def test_port_taken_by_something_else_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = load_settings(
            kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_data_dir=tmp_path / "kafka"
        )

        assert kafka_local.broker_reachable(f"127.0.0.1:{port}", timeout=1.0) is False
        with pytest.raises(StockpipeError, match=f"port {port} .* not a Kafka broker"):
            kafka_local.start(settings, timeout=5)
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_stale_pid_file_is_cleared(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (data_dir / "broker.pid").write_text(f"{gone.pid}\n")
    settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_data_dir=data_dir)

    assert kafka_local.status(settings)["pid"] is None
    assert kafka_local.stop(settings) is False
    assert not (data_dir / "broker.pid").exists()


def test_pid_file_of_an_unrelated_live_process_is_not_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    (data_dir / "broker.pid").write_text(f"{os.getpid()}\n")  # this very pytest process
    settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_data_dir=data_dir)

    assert kafka_local.stop(settings) is False
    assert not (data_dir / "broker.pid").exists()


@pytest.mark.slow
def test_second_broker_starts_serves_and_stops(own_broker_settings: Settings) -> None:
    settings = own_broker_settings
    bootstrap = settings.kafka_bootstrap_servers
    data_dir = settings.kafka_data_dir
    port = int(bootstrap.rsplit(":", 1)[1])

    assert kafka_local.start(settings, timeout=40) is True

    info = kafka_local.status(settings)
    assert info["running"] is True
    assert info["pid"] == int((data_dir / "broker.pid").read_text())
    assert (data_dir / "controller.port").read_text().strip() == str(port + 1)
    assert (data_dir / "data" / "meta.properties").is_file()
    assert "Kafka Server started" in (data_dir / "logs" / "server.log").read_text()
    assert kafka_local.start(settings) is False  # already serving: no second process

    _produce(bootstrap, "second.broker", {0: 3})  # auto-created with the settings' partitions
    info = kafka_local.status(settings)
    assert sum(info["topics"]["second.broker"].values()) == 3
    assert len(info["topics"]["second.broker"]) == settings.topic_partitions

    assert kafka_local.stop(settings) is True
    assert kafka_local.broker_reachable(bootstrap) is False
    assert not kafka_local._port_open("127.0.0.1", port)
    assert not (data_dir / "broker.pid").exists()
    assert kafka_local.stop(settings) is False
    assert kafka_local.status(settings) | {"topics": None} == {
        "running": False,
        "pid": None,
        "bootstrap": bootstrap,
        "data_dir": str(data_dir.resolve()),
        "kafka_version": "4.1.1",
        "topics": None,
    }


def test_cli_status_prints_the_topic_and_its_end_offsets(
    kafka_bootstrap: str, new_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = new_topic("cli", partitions=2)
    _produce(kafka_bootstrap, topic, {0: 4, 1: 2})
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)

    result = CliRunner().invoke(kafka_local.kafka_app, ["status"], terminal_width=250)

    assert result.exit_code == 0, result.output
    assert f"Kafka at {kafka_bootstrap}: running" in result.output
    row = next(line for line in result.output.splitlines() if f"{topic} " in line)
    assert "0:4 1:2" in row
    assert row.rstrip(" │|").endswith("6")


@pytest.mark.slow
def test_broker_not_ready_in_time_is_stopped_and_the_error_shows_its_log(
    own_broker_settings: Settings,
) -> None:
    settings = own_broker_settings
    data_dir = settings.kafka_data_dir

    with pytest.raises(ServiceUnavailable) as excinfo:
        kafka_local.start(settings, timeout=1.0)

    message = str(excinfo.value)
    assert "not ready in 1 s" in message
    assert f"{data_dir.resolve() / 'logs' / 'server.log'} (last lines)" in message
    assert not (data_dir / "broker.pid").exists()
    assert kafka_local.broker_reachable(settings.kafka_bootstrap_servers) is False
    assert kafka_local.status(settings)["pid"] is None


def test_a_port_a_connection_holds_is_not_free_and_own_brokers_get_ports_no_connection_takes():
    """What made a broker of a test fail with "Address already in use": a connect test
    says the local port of another connection is free, and the OS gives ports of its
    ephemeral range (free_port) to outgoing connections too."""
    from flows.net import _ephemeral_range, free_ports, port_free

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        listening = server.getsockname()[1]
        assert not port_free("127.0.0.1", listening)
        with socket.create_connection(("127.0.0.1", listening)) as client:
            held = client.getsockname()[1]  # nothing listens on it: a connect is refused
            assert not kafka_local._port_open("127.0.0.1", held, timeout=0.2)
            assert not port_free("127.0.0.1", held)  # but a broker could not bind it
    low, high = _ephemeral_range()
    for _ in range(20):
        first = free_ports(3)
        assert first >= 1024 and (first + 2 < low or first > high)
        assert all(port_free("127.0.0.1", first + k) for k in range(3))


@pytest.mark.parametrize(
    ("ephemeral", "inside"), [((1024, 40000), (40001, 65535)), ((1024, 65000), (1024, 65535))]
)
def test_free_ports_goes_above_the_ephemeral_range_or_falls_back_to_the_os(
    monkeypatch: pytest.MonkeyPatch, ephemeral: tuple[int, int], inside: tuple[int, int]
) -> None:
    from flows import net

    monkeypatch.setattr(net, "_ephemeral_range", lambda: ephemeral)
    for _ in range(10):
        first = net.free_ports(2)
        assert inside[0] <= first and first + 1 <= inside[1]
        assert net.port_free("127.0.0.1", first) and net.port_free("127.0.0.1", first + 1)
