"""Every client on a secured Kafka: SASL_SSL (SCRAM, a generated CA) on the real local broker.

The launcher runs a broker of this module's own whose client listener speaks
SASL_SSL; the producer, the stream (source, flush markers, DLQ sink), status
and a bench runner go through it with the settings' credentials, and a wrong
password or an untrusted CA stops each with a message that says which.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from helpers import (
    assert_bars_equal,
    batch_bars,
    final_bars,
    free_port_pair,
    read_lake_bars,
    read_records,
    run_stockpipe,
)
from pydantic import SecretStr

from flows.ingest.kafka_out import HEARTBEAT_HEADER, TickWriter
from flows.ingest.ticks import Tick
from flows.settings import Settings, load_settings
from flows.tooling import kafka as kafka_local

pytestmark = pytest.mark.kafka

PASSWORD = "s3cret-Pa55word-for-alice"
T0 = 1_741_100_400_000


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a SASL_SSL broker for this module alone, with its CA trusted."""
    data = tmp_path_factory.mktemp("sasl-kafka")
    plain = {
        "kafka_bootstrap_servers": f"127.0.0.1:{free_port_pair()}",
        "kafka_data_dir": data,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "alice",
        "kafka_sasl_password": PASSWORD,
    }
    kafka_local.start(load_settings(**plain), timeout=120)  # generates the CA on first start
    settings = load_settings(**plain, kafka_ssl_ca_location=data / "tls" / "ca.pem")
    try:
        yield settings
    finally:
        kafka_local.stop(settings)


def with_(settings: Settings, tmp_path: Path, **overrides: object) -> Settings:
    base = {
        "lake_url": str(tmp_path / "lake"),
        "recovery_dir": tmp_path / "recovery",
        "spool_dir": tmp_path / "spool",
        "outage_log": tmp_path / "outages.jsonl",
        "topic": f"sec.{tmp_path.name[-12:].replace('_', '-')}",
    }
    return settings.model_copy(update={**base, **overrides})


def env_of(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env()}


def test_the_pipeline_runs_through_sasl_ssl(secured, tmp_path):
    settings = with_(secured, tmp_path)
    ticks = [
        Tick(("COIN", "MARA")[i % 2], T0 + 700 * i, 100.0 + i % 5, 1.0 + i, f"t{i}", "sim")
        for i in range(200)
    ]
    with TickWriter(settings) as out:  # the producers' writer, topics created through SASL_SSL
        for t in ticks:
            out.send(t)
        out.send_raw("COIN", b"{not json")
    assert out.failed == 0 and sum(out.delivered.values()) == len(ticks)

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "2")
    assert done.returncode == 0, done.stdout[-3000:]
    want = batch_bars(
        {"symbol": t.symbol, "ts": t.ts, "seq": i, "price": t.price, "volume": t.volume}
        for i, t in enumerate(ticks)
    )
    assert_bars_equal(final_bars(read_lake_bars(settings.lake_url)), want)

    client = settings.kafka_security_config()
    dlq = read_records(settings.kafka_bootstrap_servers, settings.dlq_topic, config=client)
    assert [value for _, value, _, _ in dlq] == [b"{not json"]  # the DLQ sink wrote it
    markers = [
        r
        for r in read_records(settings.kafka_bootstrap_servers, settings.topic, config=client)
        if r[1] is None and HEARTBEAT_HEADER not in r[3]
    ]
    assert markers, "the stream wrote no flush marker through SASL_SSL"

    status = run_stockpipe(settings, "status", "--json")
    assert status.returncode == 0, status.stdout[-2000:]
    doc = json.loads(status.stdout[status.stdout.index("{") :])
    assert doc["broker"]["reachable"] is True
    ends = {p["partition"]: p["end"] for p in doc["topic"]["partitions"]}
    lags = {p["partition"]: p["lag"] for p in doc["stream"]["partitions"]}
    assert sum(ends.values()) >= len(ticks) + 1 and set(lags.values()) == {0}

    # a bench runner, as `stockpipe bench` starts it, reads the topic through SASL_SSL
    runner = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.tooling.engines.raw_consume",
            "--bootstrap",
            settings.kafka_bootstrap_servers,
            "--topic",
            settings.topic,
            "--ticks",
            str(len(ticks)),
        ],  # fmt: skip
        env=env_of(settings),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert runner.returncode == 0, runner.stderr[-2000:]
    result = json.loads(runner.stdout.split("BENCH_RESULT ", 1)[1])
    assert result["consumed"] == len(ticks)

    # the password is in no file of the broker and no output
    for path in Path(secured.kafka_data_dir).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert PASSWORD.encode() not in path.read_bytes(), path
    for text in (done.stdout, status.stdout, runner.stdout, runner.stderr):
        assert PASSWORD not in text


WRONG = "not-alices-Pa55word"


@pytest.mark.parametrize(
    ("refused", "says"),
    [
        ("password", "the broker refused the SASL credentials"),
        ("ca", "the TLS handshake failed"),
    ],
)
def test_refused_settings_stop_every_command_with_what_to_check(secured, tmp_path, refused, says):
    from flows.tooling.kafka_security import ensure_tls

    if refused == "password":
        settings = with_(secured, tmp_path, kafka_sasl_password=SecretStr(WRONG))
    else:  # a CA of its own, which did not sign the broker's certificate
        other = ensure_tls(tmp_path / "other-ca", "127.0.0.1").ca
        settings = with_(secured, tmp_path, kafka_ssl_ca_location=other)
    for command in (
        ["produce", "--source", "sim", "--count", "5"],
        ["stream", "--exit-when-idle", "2"],
    ):
        done = run_stockpipe(settings, *command, timeout=120)
        assert done.returncode == 2, (command, done.stdout[-2000:])  # a setting, not a service
        assert says in " ".join(done.stdout.split()), (command, done.stdout[-2000:])
        assert "Traceback" not in done.stdout
        assert WRONG not in done.stdout and PASSWORD not in done.stdout
    status = run_stockpipe(settings, "status", "--json")
    doc = json.loads(status.stdout[status.stdout.index("{") :])
    assert doc["broker"]["reachable"] is False and says in doc["broker"]["error"]


def test_a_secured_protocol_without_credentials_is_a_settings_error():
    with pytest.raises(Exception, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=PASSWORD)
    with pytest.raises(Exception, match="KAFKA_SSL_CA_LOCATION='/no/ca.pem': no such file"):
        load_settings(kafka_ssl_ca_location="/no/ca.pem")
    assert load_settings().kafka_config() == {"bootstrap.servers": "localhost:9092"}
    conf = load_settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="a", kafka_sasl_password="p"
    ).kafka_config()
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.password"] == "p"
    assert orjson.loads(orjson.dumps(conf))  # plain strings, as librdkafka takes them
