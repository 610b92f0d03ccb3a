"""`stockpipe bench` end to end on the real broker, tiny: it runs, reports, and checks bars.

No timing assertions: speed is what the benchmark measures, never what a test pins.
"""

from __future__ import annotations

import json

import pytest

from flows.errors import StockpipeError
from flows.settings import load_settings
from flows.tooling.bench import (
    JSON_KEYS,
    RATE_KEYS,
    RSS_KEY,
    BenchRun,
    EngineResult,
    Spread,
    bench_symbols,
    intensity_for,
    run_bench,
)
from flows.tooling.bench_live import kill_fractions, percentile

SPREAD_KEYS = (*RATE_KEYS.values(), RSS_KEY)
TOP_KEYS = (
    "runs",
    "bar_latency_p50_s",
    "bar_latency_p99_s",
    "bar_latency_max_s",
    "bar_latency_bars",
    "bar_latency_missing_bars",
    "resume_s",
    "resume_s_min",
    "resume_s_max",
    "live_lake",
    "machine",
)


def _assert_run_keys(run: dict) -> None:
    assert tuple(run)[: len(JSON_KEYS)] == JSON_KEYS  # the documented keys first, as medians
    for key in SPREAD_KEYS:
        assert f"{key}_min" in run and f"{key}_max" in run, key
    assert set(run["ratios"]) == {"dataflow/raw", "dataflow/naive", "dataflow/quix"}
    assert "repetitions" in run and "event_span_hours" in run and "bars_ok" in run


@pytest.mark.kafka
@pytest.mark.slow
def test_tiny_bench_reports_medians_of_repetitions_with_matching_bars(settings_for, tmp_path):
    out = tmp_path / "bench.json"
    report = run_bench(
        settings_for(),
        ticks=3000,
        symbol_counts=[4, 20],
        repeat=2,
        latency_seconds=0,
        exit_when_idle=1.0,
        workdir=tmp_path / "work",
        json_path=out,
    )

    data = json.loads(out.read_text())
    assert tuple(data) == TOP_KEYS
    assert [run["symbols"] for run in data["runs"]] == [4, 20]
    for run in data["runs"]:
        _assert_run_keys(run)
        assert run["ticks"] == 3000 and run["repetitions"] == 2
        for key in SPREAD_KEYS:
            assert isinstance(run[key], float) and run[key] > 0, (key, run[key])
            assert run[f"{key}_min"] <= run[key] <= run[f"{key}_max"], key
        assert run["ratios"]["dataflow/naive"] == pytest.approx(
            run["dataflow_tps"] / run["naive_bytewax_tps"]
        )
        assert run["event_span_hours"] > 1  # hours of event time, not minutes
        assert run["bars_ok"] is True
    assert data["bar_latency_p50_s"] is data["resume_s"] is None  # no live run
    assert data["machine"]["nproc"] >= 1 and len(data["machine"]["load_average"]) == 3
    for run in report.runs:
        assert run.expected_bars > 0
        assert len(run.bar_checks) == 2 and run.bars_ok, (run.bar_checks, run.expected_bars)
        assert all(len(results) == 2 for results in run.results.values())
        assert all(r.ticks == 3000 for e, rs in run.results.items() if e != "raw" for r in rs)


@pytest.mark.kafka
@pytest.mark.slow
def test_live_run_measures_bar_latency_and_resume_after_kill(settings_for, tmp_path):
    out = tmp_path / "bench.json"
    # 5 s bars, so a short paced run holds several whole windows
    report = run_bench(
        settings_for(bar_seconds=5),
        ticks=1000,
        symbol_counts=[3],
        skip=["naive", "quix"],
        repeat=2,
        latency_seconds=22,
        latency_rate=300,
        latency_symbols=4,
        workdir=tmp_path / "work",
        json_path=out,
    )

    data = json.loads(out.read_text())
    assert tuple(data) == TOP_KEYS
    (run,) = data["runs"]
    _assert_run_keys(run)
    assert run["bars_ok"] is True
    for key in ("bar_latency_p50_s", "bar_latency_p99_s", "bar_latency_max_s"):
        assert isinstance(data[key], float), (key, data[key])
    assert data["bar_latency_p50_s"] <= data["bar_latency_p99_s"] <= data["bar_latency_max_s"]
    assert data["bar_latency_bars"] > 0
    assert data["bar_latency_missing_bars"] == 0
    assert isinstance(data["resume_s"], float) and data["resume_s"] >= 0
    assert data["resume_s_min"] <= data["resume_s"] <= data["resume_s_max"]
    assert len(report.live.resumes) == 2  # one kill per repetition
    assert data["live_lake"]["ok"] is True
    assert data["live_lake"]["rows"] == data["live_lake"]["distinct_revisions"]


@pytest.mark.kafka
@pytest.mark.slow
def test_skipped_engines_and_live_run_are_null_in_the_report(settings_for, tmp_path):
    out = tmp_path / "bench.json"
    report = run_bench(
        settings_for(),
        ticks=500,
        symbol_counts=[3],
        skip=["quix", "naive", "dataflow"],
        repeat=1,
        latency_seconds=0,
        workdir=tmp_path / "work",
        json_path=out,
    )

    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert run["raw_consume_tps"] > 0
    assert run["dataflow_tps"] is run["naive_bytewax_tps"] is run["quix_tps"] is None
    assert run["dataflow_peak_rss_mb"] is run["dataflow_peak_rss_mb_min"] is None
    assert run["ratios"]["dataflow/raw"] is None
    for key in TOP_KEYS[1:-1]:
        assert data[key] is None, key
    assert report.runs[0].bars_ok is None


def test_bench_symbols_start_with_known_profiles_and_are_distinct():
    assert bench_symbols(4) == ["COIN", "MARA", "MSTR", "BLK"]
    names = bench_symbols(500)
    assert len(set(names)) == 500


def test_ratios_are_of_medians_dataflow_over_the_other_engine():
    run = BenchRun(symbols=4, ticks=10, expected_bars=1, repetitions=3)
    for tps in (50.0, 10.0, 70.0):
        run.add("dataflow", EngineResult(tps, 0.2, 10, 100.0))
    for tps in (25.0, 20.0, 30.0):
        run.add("naive", EngineResult(tps, 0.4, 10, 90.0))
    assert run.rate("dataflow") == Spread(50.0, 10.0, 70.0)
    assert run.ratio("naive") == 2.0
    assert run.ratio("quix") is None
    report = run.as_json()
    assert report["quix_tps"] is report["quix_tps_min"] is None
    assert report["dataflow_tps_min"] == 10.0 and report["dataflow_tps_max"] == 70.0


def test_bars_check_must_hold_for_every_dataflow_repetition():
    run = BenchRun(symbols=4, ticks=10, expected_bars=3, repetitions=2)
    assert run.bars_ok is None
    run.bar_checks.append((3, 10))
    assert run.bars_ok is True
    run.bar_checks.append((3, 9))
    assert run.bars_ok is False


def test_intensity_makes_the_ticks_span_the_asked_event_time():
    from flows.ingest import simulate
    from flows.tooling.bench import BENCH_START_MS

    symbols = bench_symbols(20)
    intensity = intensity_for(symbols, 4000, span_hours=3.0)
    last = {
        t.symbol: t.ts
        for t in simulate(symbols, start_ms=BENCH_START_MS, count=4000, intensity=intensity)
    }
    hours = sorted((ts - BENCH_START_MS) / 3_600_000 for ts in last.values())
    assert 2.0 < hours[len(hours) // 2] < 4.0


def test_percentile_interpolates_linearly_and_kills_are_spread():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert kill_fractions(1) == [0.6]
    assert kill_fractions(3) == pytest.approx([0.4, 0.6, 0.8])


def test_bad_options_say_which_option_is_wrong():
    settings = load_settings(bar_seconds=60)
    with pytest.raises(StockpipeError, match="cannot skip spark: the engines are raw, dataflow"):
        run_bench(settings, ticks=10, symbol_counts=[1], skip=["spark"])
    with pytest.raises(StockpipeError, match="--repeat must be at least 1, got 0"):
        run_bench(settings, ticks=10, symbol_counts=[1], repeat=0)
    with pytest.raises(StockpipeError, match="--span must be > 0"):
        run_bench(settings, ticks=10, symbol_counts=[1], span_hours=0)
    with pytest.raises(StockpipeError, match="--latency 30s is shorter than one bar"):
        run_bench(settings, ticks=10, symbol_counts=[1], latency_seconds=30)
    with pytest.raises(StockpipeError, match="--latency-rate must be > 0"):
        run_bench(settings, ticks=10, symbol_counts=[1], latency_rate=0)


@pytest.mark.kafka
@pytest.mark.slow
def test_long_run_samples_memory_through_the_run_and_times_the_resume(settings_for):
    from flows.tooling.bench_long import long_run

    result = long_run(
        settings_for(), 20_000, 10, span_hours=3.0, kill_at=(0.3, 0.6), say=lambda _: None
    )
    assert result["ticks"] == 20_000 and result["symbols"] == 10
    assert 2.0 <= result["event_span_hours"] <= 4.0
    peaks = result["peak_rss_mb_by_tenth"]
    assert len(peaks) == 10 and peaks[-1] is not None and peaks[-1] > 0
    known = [p for p in peaks if p is not None]
    assert known == sorted(known)  # a running peak
    assert result["kill_at"] == [0.3, 0.6]
    assert len(result["resume_s"]) == 2 and all(s >= 0 for s in result["resume_s"])


def test_the_command_takes_durations_and_names_a_bad_one():
    import subprocess
    import sys

    for args, says in (
        (["--span", "soon"], "--span/--latency/--exit-when-idle: "),
        (["--exit-when-idle", "100ms"], "--exit-when-idle must be at least 500ms, got '100ms'"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "bench", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-1000:]
        assert says in " ".join(done.stderr.split()), done.stderr[-1000:]
