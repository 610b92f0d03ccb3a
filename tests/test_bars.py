"""Bar arithmetic and the per-partition event-time state, without Bytewax or Kafka.

The state is driven the way the dataflow drives it: Kafka records of one
partition in offset order, each with its log time (the record timestamp).
Expected bars come from `helpers.batch_bars` over `streamgen.expected_ticks`,
a separate, obvious computation.
"""

from __future__ import annotations

import pickle
import random
import zlib
from pathlib import Path

import orjson
import polars as pl
import pytest
from helpers import assert_bars_equal, batch_bars, golden_bars, golden_messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamgen import StreamSpec, expected_ticks, make_stream

from flows.ingest.ticks import BadTick, Tick, decode_tick
from flows.stream.bars import (
    BAD,
    FLUSH,
    HEARTBEAT,
    TICK,
    BarRules,
    FileBatch,
    FileRules,
    PartialBar,
    PartitionBars,
    Record,
    TickIn,
    fold_ticks,
)
from flows.stream.lake_sink import BAR_SCHEMA

DATA = Path(__file__).parent / "data"

RULES = BarRules()
FILES = FileRules(max_rows=1_000_000, max_age_ms=10**12)  # one file unless a test says otherwise
T0 = 1_741_100_400_000  # 15:00:00Z, a window boundary
LOG0 = 1_796_000_000_000  # a log time (2026) later than every event time here
BAR_COLS = BAR_SCHEMA.names


def tick(symbol: str, ts: int, price: float, volume: float | None = 1.0, tid: str = "") -> Tick:
    return Tick(symbol, ts, price, volume, tid or f"{symbol}-{ts}-{price}")


class Feed:
    """Records of one partition, with log time moving as a test says."""

    def __init__(self, rules: BarRules = RULES, files: FileRules = FILES, log: int = LOG0):
        self.state = PartitionBars(rules, files, "t", 0)
        self.offset = 0
        self.log = log
        self.batches: list[FileBatch] = []

    def send(self, *ticks: Tick, log_step: int = 1) -> None:
        for t in ticks:
            self.log += log_step
            self._record(TICK, t)

    def heartbeat(self, after_ms: int) -> None:
        self.log += after_ms
        self._record(HEARTBEAT)

    def flush(self) -> None:
        self.log += 1
        self._record(FLUSH)

    def _record(self, kind: int, t: Tick | None = None) -> None:
        self.batches += self.state.on_record(Record(self.offset, self.log, kind, t))
        self.offset += 1

    def rows(self) -> pl.DataFrame:
        """Every bar row emitted so far, sealed or not (window_start as epoch ms)."""
        pending = FileBatch("t", 0, -1, -1, self.state._bars, self.state._late)
        return rows_of([*self.batches, pending])


def rows_of(batches: list[FileBatch]) -> pl.DataFrame:
    rows = [r for b in batches for r in b.bars]
    schema = dict.fromkeys(BAR_COLS, pl.Int64) | {
        c: pl.Float64 for c in ["open", "high", "low", "close", "volume", "vwap"]
    }
    return pl.DataFrame(rows, schema=schema | {"symbol": pl.String}, orient="row").with_columns(
        pl.col("window_start") // 1000, pl.col("first_ts") // 1000, pl.col("last_ts") // 1000
    )


def final(rows: pl.DataFrame) -> pl.DataFrame:
    """Highest revision per (symbol, window)."""
    return (
        rows.sort("revision")
        .group_by(["symbol", "window_start"])
        .last()
        .sort(["symbol", "window_start"])
    )


def test_golden_stream_gives_golden_bars(golden_dir):
    messages = golden_messages(golden_dir)
    states = {p: PartitionBars(RULES, FILES, "golden", p) for p in range(4)}
    offsets = dict.fromkeys(range(4), 0)
    batches: list[FileBatch] = []
    late = 0
    for i, msg in enumerate(messages):
        p = zlib.crc32(msg["key"].encode()) % 4  # a symbol stays in one partition
        log = LOG0 + 10 * i
        decoded = decode_tick(msg["value"].encode(), msg["key"].encode(), log)
        if isinstance(decoded, BadTick):
            assert msg["case"].startswith("bad:"), (msg, decoded)
            rec = Record(offsets[p], log, BAD)
        else:
            assert not msg["case"].startswith("bad:"), msg
            rec = Record(offsets[p], log, TICK, decoded)
        offsets[p] += 1
        batches += states[p].on_record(rec)
    for p, state in states.items():
        batches += state.on_record(Record(offsets[p], LOG0 + 10**7, FLUSH))
        late += state.too_late
    want = golden_bars(golden_dir)
    assert_bars_equal(final(rows_of(batches)).select(want.columns), want)
    assert late == sum(m["case"] == "too-late" for m in messages)
    assert sum(len(b.late) for b in batches) == late


def test_ties_take_open_and_close_in_partition_order():
    feed = Feed()
    feed.send(tick("A", T0 + 5, 10.0), tick("A", T0 + 5, 11.0), tick("A", T0 + 5, 9.0))
    feed.flush()
    (bar,) = feed.rows().to_dicts()
    assert (bar["open"], bar["close"], bar["high"], bar["low"]) == (10.0, 9.0, 11.0, 9.0)


def test_window_closes_when_event_time_passes_its_end_plus_lateness():
    feed = Feed()
    feed.send(tick("A", T0 + 1000, 10.0), tick("A", T0 + 64_999, 11.0))
    assert feed.state._bars == []  # watermark 59_999 + 1 ms of log time: not yet
    feed.send(tick("A", T0 + 65_000, 12.0))
    (bar,) = feed.state._bars
    assert bar[2] == T0 * 1000 and bar[13] == 0 and bar[10] == 1


def test_log_time_closes_the_window_of_a_quiet_feed():
    """No new tick: heartbeats move log time, and the watermark moves with it."""
    feed = Feed()
    feed.send(tick("A", T0 + 30_000, 10.0))  # watermark T0 + 25 s; the window ends at T0 + 60 s
    feed.heartbeat(34_000)  # log time +34 s (+1 ms for the tick): watermark T0 + 59.001 s
    assert feed.state._bars == []
    feed.heartbeat(1_000)
    (bar,) = feed.state._bars
    assert bar[14] == feed.log * 1000  # emitted_at is the log time of the causing record


def test_a_backlog_read_at_one_log_time_closes_nothing_early():
    """Catching up: every record has nearly the same log time; only event time closes windows."""
    feed = Feed()
    feed.send(*(tick("A", T0 + i * 1000, 10.0 + i) for i in range(200)), log_step=0)
    feed.flush()
    got = final(feed.rows())
    assert got["trade_count"].to_list() == [60, 60, 60, 20]
    assert feed.rows()["revision"].max() == 0  # nothing restated: nothing closed early


def test_late_ticks_restate_a_closed_bar_in_one_coalesced_row():
    feed = Feed()
    feed.send(tick("A", T0 + 1000, 10.0), tick("A", T0 + 70_000, 10.0))  # closes window T0
    late = [tick("A", T0 + 2000 + i, 10.0 + i / 100) for i in range(1000)]
    feed.send(*late, log_step=0)  # a burst of 1,000 late ticks within one log-time instant
    feed.heartbeat(RULES.restate_interval_ms)  # the restatement is due
    rows = feed.rows().filter(pl.col("window_start") == T0).sort("revision")
    assert rows["revision"].to_list() == [0, 1]
    assert rows["trade_count"].to_list() == [1, 1001]
    assert rows["high"][1] == 10.0 + 999 / 100


def test_restatements_of_a_window_are_at_least_one_interval_of_log_time_apart():
    feed = Feed(log=LOG0)
    feed.send(tick("A", T0 + 1000, 10.0), tick("A", T0 + 70_000, 10.0))
    for i in range(50):  # one late tick every 100 ms of log time for 5 s
        feed.send(tick("A", T0 + 2000 + i, 11.0), log_step=100)
    feed.heartbeat(2 * RULES.restate_interval_ms)
    rows = feed.rows().filter(pl.col("window_start") == T0).sort("revision")
    emitted = rows["emitted_at"].to_list()
    assert rows["revision"].to_list() == list(range(len(rows)))
    assert 3 <= len(rows) <= 7  # revision 0, then about one per second, not 50
    assert all(
        b - a >= RULES.restate_interval_ms * 1000
        for a, b in zip(emitted[1:], emitted[2:], strict=False)
    )
    assert rows["trade_count"][-1] == 51


def test_first_emission_of_window_with_only_late_ticks_is_revision_0():
    feed = Feed()
    feed.send(tick("A", T0 + 300_000, 10.0), tick("A", T0 + 1000, 9.0))
    feed.heartbeat(RULES.restate_interval_ms)
    rows = feed.rows().filter(pl.col("window_start") == T0)
    assert rows["revision"].to_list() == [0] and rows["trade_count"].to_list() == [1]


def test_tick_older_than_restate_horizon_is_too_late():
    feed = Feed()
    feed.send(tick("A", T0 + 2 * 3_600_000, 10.0), tick("A", T0, 9.0, tid="old"))
    feed.flush()
    assert feed.state.too_late == 1
    (late,) = [r for b in feed.batches for r in b.late]
    assert late[4] == "old" and late[1] == T0 * 1000
    assert feed.rows()["trade_count"].to_list() == [1]


def test_duplicate_15_minutes_of_event_time_late_counts_once():
    feed = Feed()
    original = tick("A", T0 + 1000, 10.0, volume=100, tid="x-1")
    feed.send(original)
    feed.send(*(tick("A", T0 + 60_000 * m, 10.0) for m in range(1, 16)))
    feed.send(original)  # the same trade again, 15 minutes of event time later
    feed.heartbeat(5_000)
    feed.flush()
    bar = final(feed.rows()).filter(pl.col("window_start") == T0).to_dicts()[0]
    assert bar["trade_count"] == 1 and bar["volume"] == 100
    assert feed.state.duplicates == 1


def test_ids_are_forgotten_with_their_window_and_state_stays_bounded():
    feed = Feed()
    for i in range(3 * 3600):  # three hours, one tick a second
        feed.send(tick("A", T0 + i * 1000, 10.0))
    state = feed.state.symbols["A"]
    horizon_windows = (RULES.restate_ms + RULES.lateness_ms) // RULES.bar_ms + 2
    assert len(state.closed) + len(state.open) <= horizon_windows
    assert sum(len(w.ids) for w in state.closed.values()) <= horizon_windows * 60


def test_snapshot_survives_pickle_and_restores_the_same_state():
    feed = Feed()
    feed.send(tick("A", T0 + 1000, 10.0), tick("B", T0 + 2000, 5.0), tick("A", T0 + 90_000, 11.0))
    feed.send(tick("A", T0 + 3000, 12.0))  # a pending restatement of window T0
    snap = pickle.loads(pickle.dumps(feed.state.snapshot()))
    restored = PartitionBars.restore(RULES, FILES, snap)
    assert restored.snapshot() == feed.state.snapshot()


def test_micro_batches_are_cut_by_rows_and_log_time_and_named_by_offsets():
    files = FileRules(max_rows=3, max_age_ms=10_000)
    feed = Feed(files=files)
    feed.send(*(tick(s, T0 + 1000, 10.0) for s in "ABCD"))
    feed.heartbeat(70_000)  # one record closes 4 windows
    assert [len(b.bars) for b in feed.batches] == [4]  # one record's rows are never split
    feed.send(*(tick(s, T0 + 100_000, 10.0) for s in "AB"))
    feed.heartbeat(70_000)  # closes A's and B's second windows: 2 rows pending
    assert [len(b.bars) for b in feed.batches] == [4]
    feed.heartbeat(10_000)  # the pending rows are 10 s of log time old
    assert [len(b.bars) for b in feed.batches] == [4, 2]
    firsts = [(b.first_offset, b.last_offset) for b in feed.batches]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)


# -- replay: the same log gives the same rows, whatever crashed where ---------------------


def stream_records(
    seed: int, spec: StreamSpec, live: bool = False
) -> tuple[list[Record], list[tuple[str, dict]]]:
    """One partition's records: the random stream with log time, quiet gaps and heartbeats.

    By default log time crawls (a backlog: event time closes windows); `live` keeps
    it about 0-3 s behind the newest event time (a live feed: log time closes them).
    """
    rng = random.Random(seed)
    stream = make_stream(seed, spec)
    records: list[Record] = []
    log = 0 if live else LOG0
    newest = 0
    for symbol, msg in stream:
        if rng.random() < 0.02:  # a quiet spell: heartbeats move log time
            for _ in range(rng.randrange(1, 8)):
                log += 1000
                records.append(Record(len(records), log, HEARTBEAT))
        if rng.random() < 0.01:  # a future tick (the decoder rejects it) still moves log time
            records.append(Record(len(records), log, BAD))
        log += rng.choice([0, 0, 1, 5, 50])
        if live:
            newest = max(newest, msg["ts"])
            log = max(log, newest + rng.randrange(0, 3000))
        t = decode_tick(orjson.dumps(msg), symbol.encode(), log)
        assert not isinstance(t, BadTick), (msg, t)
        records.append(Record(len(records), log, TICK, t))
    records.append(Record(len(records), log + 1, FLUSH))
    return records, stream


def run_records(state: PartitionBars, records: list[Record]) -> list[list[FileBatch]]:
    return [state.on_record(rec) for rec in records]


def draw_stream_and_files(data: st.DataObject) -> tuple[StreamSpec, FileRules]:
    """A random 3-symbol stream's shape, and file rules from one row to many per file."""
    spec = StreamSpec(
        symbols=["A", "B", "C"],
        ticks_per_symbol=data.draw(st.integers(50, 300)),
        max_gap_ms=data.draw(st.sampled_from([2_000, 20_000])),
        p_far_dup=0.05,
    )
    files = FileRules(max_rows=data.draw(st.sampled_from([5, 50, 10_000])), max_age_ms=3_000)
    return spec, files


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), data=st.data())
def test_resuming_from_any_snapshot_after_a_crash_rewrites_the_same_rows(seed, data):
    spec, files = draw_stream_and_files(data)
    records, stream = stream_records(seed, spec)
    first = PartitionBars(RULES, files, "t", 0)
    snap_at = data.draw(st.integers(0, len(records) - 1))
    # A snapshot is committed only after the outputs of what it covers were written
    # (Bytewax closes an epoch's outputs before its snapshot): the crash comes later.
    crash_at = data.draw(st.integers(snap_at + 1, len(records)))
    out1: list[list[FileBatch]] = []
    for i, rec in enumerate(records):
        out1.append(first.on_record(rec))
        if i == snap_at:
            snapshot = pickle.dumps(first.snapshot())

    resumed = PartitionBars.restore(RULES, files, pickle.loads(snapshot))
    out2 = run_records(resumed, records[snap_at + 1 :])
    # The resumed run seals exactly the batches the first run sealed after the snapshot.
    assert out2 == out1[snap_at + 1 :]

    # What the lake holds after the crash: the first run's files up to the crash, then the
    # resumed run's, by name; a name written twice holds the same rows.
    lake: dict[tuple[int, int], FileBatch] = {}
    for batch in [b for bs in out1[:crash_at] for b in bs] + [b for bs in out2 for b in bs]:
        key = (batch.first_offset, batch.last_offset)
        assert lake.setdefault(key, batch) == batch
    got = final(rows_of(list(lake.values())))
    good, late = expected_ticks(stream)
    want = batch_bars(good)
    assert_bars_equal(got.select(want.columns), want)
    assert sum(len(b.late) for b in lake.values()) == len(late)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), data=st.data())
def test_on_batch_returns_what_on_record_returns_however_the_records_are_batched(seed, data):
    """The dataflow's fast path (on_batch) against the definition (on_record), crash included."""
    spec, files = draw_stream_and_files(data)
    records, _ = stream_records(seed, spec, live=data.draw(st.booleans()))
    reference = PartitionBars(RULES, files, "t", 0)
    want = [b for rec in records for b in reference.on_record(rec)]

    cuts = sorted(data.draw(st.sets(st.integers(1, len(records) - 1), max_size=40)))
    chunks = [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]
    restart = data.draw(st.integers(0, len(chunks)))  # restore from a snapshot before this chunk
    state = PartitionBars(RULES, files, "t", 0)
    got: list[FileBatch] = []
    for n, chunk in enumerate(chunks):
        if n == restart:
            state = PartitionBars.restore(
                RULES, files, pickle.loads(pickle.dumps(state.snapshot()))
            )
        got += state.on_batch(
            [r.offset for r in chunk],
            [r.log_ts for r in chunk],
            [r.kind for r in chunk],
            [r.tick for r in chunk],
        )
    assert got == want
    assert state.snapshot() == reference.snapshot()


def assert_snapshot_fresh(state: PartitionBars) -> None:
    """A snapshot reusing windows' earlier snapshots equals one built from scratch."""
    snap = state.snapshot()
    for bars in state.symbols.values():
        for win in (*bars.open.values(), *bars.closed.values()):
            win._snap = None
    assert state.snapshot() == snap


@pytest.mark.parametrize("live", [False, True])
def test_on_batch_equals_on_record_over_many_streams_and_batch_sizes(live):
    """The same as above over fixed seeds, live and backlog log time, batches of 1 to 200."""
    for seed in range(30):
        spec = StreamSpec(
            symbols=["A", "B", "C"], ticks_per_symbol=300, max_gap_ms=20_000, p_far_dup=0.05
        )
        records, _ = stream_records(seed, spec, live=live)
        files = FileRules(max_rows=50, max_age_ms=3_000)
        reference = PartitionBars(RULES, files, "t", 0)
        want = [b for rec in records for b in reference.on_record(rec)]
        state = PartitionBars(RULES, files, "t", 0)
        rng = random.Random(seed)
        got: list[FileBatch] = []
        i = 0
        while i < len(records):
            chunk = records[i : i + rng.randrange(1, 200)]
            i += len(chunk)
            got += state.on_batch(
                [r.offset for r in chunk],
                [r.log_ts for r in chunk],
                [r.kind for r in chunk],
                [r.tick for r in chunk],
            )
            assert_snapshot_fresh(state)  # an epoch's snapshot after every batch
        assert got == want, f"seed {seed}"
        assert state.snapshot() == reference.snapshot(), f"seed {seed}"


def test_random_streams_with_far_duplicates_equal_batch_computation():
    for seed in range(5):
        spec = StreamSpec(ticks_per_symbol=1500, max_gap_ms=10_000, p_far_dup=0.05)
        records, stream = stream_records(seed, spec)
        state = PartitionBars(RULES, FileRules(max_rows=100, max_age_ms=5000), "t", 0)
        batches = [b for bs in run_records(state, records) for b in bs]
        good, late = expected_ticks(stream)
        want = batch_bars(good)
        assert_bars_equal(final(rows_of(batches)).select(want.columns), want)
        assert state.too_late == len(late) > 0
        assert state.duplicates > 0


@given(
    ticks=st.lists(
        st.tuples(
            st.integers(0, 59_999), st.floats(0.01, 1e6), st.sampled_from([None, 0.0, 1.0, 100.0])
        ),
        min_size=2,
        max_size=40,
    ),
    data=st.data(),
)
def test_merging_partial_bars_in_any_split_equals_one_fold(ticks, data):
    events = [TickIn(T0 + ts, i, p, v, str(i)) for i, (ts, p, v) in enumerate(ticks)]
    whole = fold_ticks(events, 60_000)[T0]
    cut = data.draw(st.integers(1, len(events) - 1))
    order = data.draw(st.permutations(range(len(events))))
    shuffled = [events[i] for i in order]
    a = fold_ticks(shuffled[:cut], 60_000)[T0]
    b = fold_ticks(shuffled[cut:], 60_000)[T0]
    merged = a.merge(b) if data.draw(st.booleans()) else b.merge(a)
    assert isinstance(merged, PartialBar)
    assert (merged.open, merged.close, merged.high, merged.low, merged.trade_count) == (
        whole.open,
        whole.close,
        whole.high,
        whole.low,
        whole.trade_count,
    )
    assert abs(merged.volume - whole.volume) <= 1e-9 * max(1.0, whole.volume)


@pytest.mark.parametrize(
    "old",
    [
        ("COIN", (1, 1_741_100_400_000, 0.0, {}, {}, [], 0, 0)),  # per-symbol state, v0.1
        (1, "t", 0, 0, {}, (0, 0, 0), ([], [], -1, -1, 0)),  # version 1: blake2b id hashes
    ],
)
def test_a_snapshot_of_another_format_is_refused_not_misread(old):
    with pytest.raises(ValueError, match=r"not a version-3 \(or 2\) partition bar-state snapshot"):
        PartitionBars.restore(RULES, FILES, old)


def test_a_format_2_snapshot_of_the_previous_release_resumes_to_the_same_rows():
    """Written by stockpipe at 843ee12 after the first records of a stream, then pickled."""
    with open(DATA / "bars-snapshot-format2.pickle", "rb") as fh:
        saved = pickle.load(fh)
    assert saved["snapshot"][0] == 2
    spec = StreamSpec(
        symbols=["A", "B", "C"], ticks_per_symbol=300, max_gap_ms=20_000, p_far_dup=0.05
    )
    records, _ = stream_records(saved["seed"], spec, live=saved["live"])
    files = FileRules(max_rows=saved["max_rows"], max_age_ms=saved["max_age_ms"])
    cut = saved["records_before"]
    fresh = PartitionBars(RULES, files, "t", 0)
    run_records(fresh, records[:cut])
    resumed = PartitionBars.restore(RULES, files, saved["snapshot"])
    assert resumed.snapshot() == fresh.snapshot()
    assert run_records(resumed, records[cut:]) == run_records(fresh, records[cut:])
    assert resumed.snapshot() == fresh.snapshot()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("heartbeat_interval", "0", "STOCKPIPE_HEARTBEAT_INTERVAL='0': must be at least 50ms"),
        ("restate_interval", "soon", "STOCKPIPE_RESTATE_INTERVAL='soon': not a duration"),
        ("max_clock_skew", "-1s", "STOCKPIPE_MAX_CLOCK_SKEW='-1s'"),
    ],
)
def test_log_time_settings_say_what_is_wrong(variable, value, says):
    from flows.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as err:
        load_settings(**{variable: value})
    assert says in str(err.value)
