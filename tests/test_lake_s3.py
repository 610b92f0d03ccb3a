"""The s3:// lake against a real S3 HTTP endpoint on loopback (moto server)."""

from __future__ import annotations

import threading
import time

import boto3
import polars as pl
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_bars_equal,
    final_bars,
    golden_bars,
    golden_messages,
    produce_raw,
    read_lake_bars,
)
from moto.server import ThreadedMotoServer

from flows.lake.store import open_lake
from flows.net import free_ports
from flows.settings import load_settings
from flows.stream.lake_sink import LakeWriter
from flows.stream.run import run_stream

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture
def s3_endpoint(monkeypatch):
    port = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        **{k.lower(): v for k, v in CREDS.items()},
    ).create_bucket(Bucket="lake")
    holder = {"server": server, "endpoint": endpoint, "port": port}
    yield holder
    holder["server"].stop()


@pytest.mark.kafka
def test_stream_writes_bars_to_s3(new_topic, settings_for, s3_endpoint, golden_dir):
    topic = new_topic("s3")
    settings = settings_for(
        topic=topic, lake_url="s3://lake/prod", s3_endpoint_url=s3_endpoint["endpoint"]
    )
    produce_raw(
        settings.kafka_bootstrap_servers,
        topic,
        [(m["key"].encode(), m["value"].encode()) for m in golden_messages(golden_dir)],
    )
    assert run_stream(settings, exit_when_idle=2.0) == 0
    rows = read_lake_bars(
        "s3://lake/prod",
        {"endpoint_url": s3_endpoint["endpoint"], "key": "testing", "secret": "testing"},
    )
    assert_bars_equal(final_bars(rows), golden_bars(golden_dir))
    keys = [
        o["Key"]
        for o in boto3.client(
            "s3", endpoint_url=s3_endpoint["endpoint"], region_name="us-east-1"
        ).list_objects_v2(Bucket="lake")["Contents"]
    ]
    assert all(
        k.startswith(("prod/bars/interval_s=60/date=2025-03-04/", "prod/late/date=2025-03-01/"))
        for k in keys
    ), keys
    assert not [k for k in keys if k.endswith(".tmp")]


def test_failing_object_store_is_retried_never_skipped(s3_endpoint):
    settings = load_settings(lake_url="s3://lake/retry", s3_endpoint_url=s3_endpoint["endpoint"])
    lake = open_lake(settings)
    writer = LakeWriter(lake, name_tag="t", retry_cap_s=0.5)
    row = (
        "COIN",
        60,
        1_741_100_400_000_000,
        1_741_100_460_000_000,
        1.0,
        2.0,
        0.5,
        1.5,
        10.0,
        1.2,
        3,
        1_741_100_401_000_000,
        1_741_100_459_000_000,
        0,
        1_741_100_470_000_000,
        0,
        0,
        0,
    )

    s3_endpoint["server"].stop()  # the store goes away
    result: list = []
    thread = threading.Thread(target=lambda: result.extend(writer.write_bars([row], 60)))
    thread.start()
    deadline = time.time() + 60
    while writer.failed_attempts < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert writer.failed_attempts >= 2
    assert thread.is_alive(), "the write must keep retrying while the store is down"

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_endpoint["port"], verbose=False)
    server.start()  # the store comes back (moto keeps its buckets in-process)
    s3_endpoint["server"] = server
    thread.join(timeout=60)
    assert not thread.is_alive() and len(result) == 1
    table = pq.read_table(result[0], filesystem=lake.fs)
    assert pl.from_arrow(table)["close"].to_list() == [1.5]
