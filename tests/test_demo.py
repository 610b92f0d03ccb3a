"""`stockpipe demo`, the README's main command, end to end (shortened: 30 days, a 20 s session).

One demo run (the module-scoped `demo_run`) serves the demo test and the secret scan
of contract 4: it runs with a recognisable fake value in every secret setting, and
everything it printed or wrote is searched for them (tests/test_secrets.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from test_secrets import Hit, assert_no_leak, fake_secrets, scan_run

REPO = Path(__file__).resolve().parents[1]

# the demo alone takes ~7 minutes, more on a busy machine (its subprocess timeout is 1200 s)
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.dbt,
    pytest.mark.airflow,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
]


@dataclass(frozen=True)
class DemoRun:
    done: subprocess.CompletedProcess[str]
    root: Path
    secrets: dict[str, str]
    leaks: list[Hit]
    searched: int


@pytest.fixture(scope="module")
def demo_run(kafka_bootstrap: str) -> DemoRun:
    """`stockpipe demo` once, with every secret set to a fake value, then scanned for them.

    FINNHUB_API_KEY is set, so `--source sim` keeps the demo on the simulator (with a
    key and no --source it would go live on Finnhub); the alert webhook points at a
    loopback port nothing listens on.
    """
    secrets = fake_secrets()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "COLUMNS": "200",
        **secrets,
    }
    started = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "demo",
            "--source",
            "sim",
            "--history-days",
            "30",
            "--session-seconds",
            "20",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    root = REPO / "data" / "demo"
    # scanned now: the other demo tests of this module start over in data/demo
    leaks, searched = scan_run(
        secrets,
        started=started,
        texts={"demo stdout": done.stdout, "demo stderr": done.stderr},
        paths=[root],
    )
    return DemoRun(done, root, secrets, leaks, searched)


def test_demo_builds_marts_docs_and_report_for_the_default_symbols(demo_run: DemoRun):
    done, root = demo_run.done, demo_run.root
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "live Finnhub trades" not in done.stdout  # the simulator, though a key is set
    assert f"report:     {root / 'report.html'}" in done.stdout

    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        symbols = {
            r[0] for r in con.execute("select distinct symbol from gold.fct_bars_daily").fetchall()
        }
        assert symbols == {"COIN", "MARA", "MSTR", "BLK"}
        sessions = con.execute(
            "select count(distinct trade_date) from gold.fct_bars_daily"
        ).fetchone()[0]
        assert sessions >= 15  # 30 calendar days of history plus the session
        # the session leads on from the history: no day change beyond +-50%
        worst = con.execute(
            """select max(abs(close / lag_close - 1)) from (
                 select close, lag(close) over (partition by symbol order by trade_date) as lag_close
                 from gold.fct_bars_daily) where lag_close is not null"""
        ).fetchone()[0]
        assert worst < 0.5
        restated = con.execute("select count(*) from bronze.bars where revision > 0").fetchone()[0]
        assert restated > 0  # late ticks were injected and restated their bars

    html = (root / "report.html").read_text()
    assert all(f'id="symbol-{s}"' in html for s in ["COIN", "MARA", "MSTR", "BLK"])
    manifest = (root / "dbt" / "manifest.json").read_text()
    assert (
        "model.stockpipe.mart_trend_daily" in manifest
        and "source.stockpipe.bronze.bars" in manifest
    )
    assert (root / "dbt" / "index.html").exists() and (root / "dbt" / "catalog.json").exists()


def test_demo_run_writes_and_prints_no_secret(demo_run: DemoRun):
    """Contract 4 over the demo: its output, data/demo (lake, warehouse, recovery, dbt
    target and logs, Airflow home, report, logs), the outage ledger, the spool, the rest of
    the repo, and whatever changed in the temp and home dirs while it ran."""
    assert demo_run.done.returncode == 0, demo_run.done.stderr[-3000:]
    for written in ["logs/stream.log", "logs/produce.log", "logs/airflow.log", "airflow"]:
        assert (demo_run.root / written).exists(), written
    print(f"searched the demo's output and {demo_run.searched} files")
    assert demo_run.searched > 100
    assert_no_leak(demo_run.leaks, demo_run.searched)


def test_ctrl_c_stops_every_process_the_demo_started(kafka_bootstrap):
    import signal
    import time

    import psutil

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "COLUMNS": "200"}
    env.pop("FINNHUB_API_KEY", None)
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "demo",
            "--history-days",
            "30",
            "--session-seconds",
            "600",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    parent = psutil.Process(demo.pid)
    children: list[psutil.Process] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(children) < 2:  # the worker and the producer
        time.sleep(0.5)
        children = [
            c for c in parent.children(recursive=True) if "flows.cli" in " ".join(c.cmdline())
        ]
    assert len(children) >= 2, "the demo did not start its worker and producer"
    demo.send_signal(signal.SIGINT)
    out, _ = demo.communicate(timeout=120)
    assert demo.returncode != 0
    assert "stopping every process the demo started" in out
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"still running: {[p.cmdline() for p in alive]}"


def test_demo_on_live_finnhub_trades(kafka_bootstrap):
    """`stockpipe demo --source finnhub` against a loopback server speaking Finnhub's websocket."""
    import asyncio
    import threading
    import time

    from fakes.finnhub_server import PING, FakeFinnhubWS, trade, trades

    symbols = ["COIN", "MARA", "MSTR", "BLK"]
    now = int(time.time() * 1000)
    script = []
    for i in range(240):  # ~50 s of live trades, a frame every 0.2 s, pings in between
        t = now + 5_000 + i * 200
        script.append(
            trades(*(trade(s, 100.0 + k + (i % 7) / 10, t + k, 10) for k, s in enumerate(symbols)))
        )
        script.append(("sleep", 0.2))
        if i % 25 == 0:
            script.append(PING)
    script.append(("hold", None))

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict = {}

    async def serve_until_stopped() -> None:
        async with FakeFinnhubWS([script], token="demo-key", subscriptions=len(symbols)) as server:
            holder["server"] = server
            holder["stop"] = asyncio.Event()
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(
        target=lambda: loop.run_until_complete(serve_until_stopped()), daemon=True
    )
    thread.start()
    assert ready.wait(10)
    try:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FINNHUB_API_KEY": "demo-key",
            "FINNHUB_WS_URL": holder["server"].url,
            "COLUMNS": "200",
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "demo",
                "--history-days",
                "30",
                "--live-minutes",
                "1",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "live Finnhub trades" in done.stdout
    root = REPO / "data" / "demo"
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        live = con.execute(
            "select symbol, sum(trade_count) from ("
            "  select * from bronze.bars where window_start >= to_timestamp(?) "
            "  qualify row_number() over (partition by symbol, window_start order by revision desc) = 1"
            ") group by symbol order by symbol",
            [(now - 60_000) / 1000],  # the window holding the first live trade
        ).fetchall()
    # every live trade the server sent reached the warehouse, once per symbol and frame
    assert dict(live) == dict.fromkeys(sorted(symbols), 240)
