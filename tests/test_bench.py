"""`stockpipe bench` end to end on the real broker, tiny: it runs, reports, and checks bars.

No timing assertions: speed is what the benchmark measures, never what a test pins.
"""

from __future__ import annotations

import json

import pytest

from flows.bench import JSON_KEYS, BenchRun, bench_symbols, run_bench

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_tiny_bench_writes_every_key_with_positive_rates_and_matching_bars(settings_for, tmp_path):
    out = tmp_path / "bench.json"
    runs = run_bench(
        settings_for(),
        ticks=3000,
        symbol_counts=[4, 20],
        exit_when_idle=1.0,
        workdir=tmp_path / "work",
        json_path=out,
    )

    report = json.loads(out.read_text())
    assert [run["symbols"] for run in report["runs"]] == [4, 20]
    for run in report["runs"]:
        assert tuple(run) == JSON_KEYS
        assert run["ticks"] == 3000
        for key in JSON_KEYS[2:]:
            assert isinstance(run[key], float) and run[key] > 0, (key, run[key])
    for run in runs:
        assert run.expected_bars > 0
        assert run.bars_ok, (run.bars, run.ticks_in_bars, run.expected_bars)
        assert all(result.ticks == 3000 for e, result in run.engines.items() if e != "raw")


def test_skipped_engines_are_null_in_the_report(settings_for, tmp_path):
    out = tmp_path / "bench.json"
    runs = run_bench(
        settings_for(),
        ticks=500,
        symbol_counts=[3],
        skip=["quix", "naive", "dataflow"],
        workdir=tmp_path / "work",
        json_path=out,
    )

    (run,) = json.loads(out.read_text())["runs"]
    assert run["raw_consume_tps"] > 0
    assert run["dataflow_tps"] is run["naive_bytewax_tps"] is run["quix_tps"] is None
    assert run["dataflow_peak_rss_mb"] is None
    assert runs[0].bars_ok is None


def test_bench_symbols_start_with_known_profiles_and_are_distinct():
    assert bench_symbols(4) == ["COIN", "MARA", "MSTR", "BLK"]
    names = bench_symbols(500)
    assert len(set(names)) == 500


def test_ratios_are_dataflow_over_the_other_engine():
    from flows.bench import EngineResult

    run = BenchRun(symbols=4, ticks=10, expected_bars=1)
    run.engines["dataflow"] = EngineResult(50.0, 0.2, 10, 100.0)
    run.engines["naive"] = EngineResult(25.0, 0.4, 10, 90.0)
    assert run.ratio("naive") == 2.0
    assert run.ratio("quix") is None
    assert run.as_json()["quix_tps"] is None


def test_unknown_engine_in_skip_says_which_engines_exist(settings_for):
    from flows.errors import StockpipeError

    with pytest.raises(StockpipeError, match="cannot skip spark: the engines are raw, dataflow"):
        run_bench(settings_for(), ticks=10, symbol_counts=[1], skip=["spark"])
