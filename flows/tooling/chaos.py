"""`stockpipe chaos`: a fault campaign against real parts, checked against a batch computation.

One command runs, on this machine:

- its own Apache Kafka broker (`flows.tooling.kafka`, free port, temporary data
  dir) with a 4-partition `LogAppendTime` topic and its `.dlq`, and a lake on a
  real S3 HTTP endpoint (moto server in this process, so the objects survive a
  server stop/start on the same port);
- a deterministic, seeded tick stream (`generate`) with every fault of
  contracts 1 and 2: near and far duplicates (far = 15-50 min of event time
  later, inside the restate horizon), ties, small swaps, late ticks (restate),
  too-late ticks (> horizon: `late/`), future ticks (`future-ts`: DLQ), poison
  records (invalid UTF-8, lone surrogates, a 400-digit price, 100,000 `[`,
  1e400, tombstones, > 64 KiB values, wrong or no key, ...), event-time gaps
  and log-time pauses, and a burst sent unpaced (a backlog);
- a producer in a separate process (plain confluent_kafka, idempotent, key =
  symbol, the partition chosen from the symbol, every record tagged with its
  sequence number in header `chaos.seq`), killed once mid-way and restarted:
  it resumes where the broker says each partition got to and re-sends a range
  before that (same bytes, same ids: they must dedup);
- `stockpipe stream` as a subprocess, SIGKILLed K times at random moments and
  restarted, through a broker stop/start and an object-store outage; then
  `stockpipe stream --exit-when-idle 5s` until it exits 0.

The expected outcome is computed independently of the code under test: the
campaign reads the topic back (which sequence numbers landed where, in offset
order, re-sends included), looks each one up in the generator's own labels
(no decoding of the bytes), and folds the valid ones the obvious way (dedup by
id, or by content for ticks without one; too late = window end at or before
max event time - lateness - horizon). The lake, the DLQ and `late/` are then
compared with it, and a table (rich) says OK/FAIL per check; the exit code is
non-zero when any check fails. `--json PATH` writes the same table as JSON.

The lake is also checked against itself (pure functions, `lake_findings`): a
bar is its (symbol, window_start, revision), so that key in more than one row
is a row held more than once, and held with any column different (every
column, `emitted_at` included) is a revision with two contents; a window's
revisions run 0, 1, 2, ... without a gap; and the bucket is versioned, so a
file name written again (a replay) with other rows than before is reported.

Run it as `stockpipe chaos [--ticks N] [--kills K] [--seed S] [--store-outage 30]`.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from flows.errors import EXIT_CHECK, StockpipeError
from flows.ingest.ticks import DLQ_OFFSET, DLQ_PARTITION
from flows.tooling.engines.common import kafka_security

SEQ_HEADER = "chaos.seq"
BASE_MS = 1_741_095_000_000  # 2025-03-04T13:30:00Z: event times are in the past of any log time
FUTURE_MS = 4_102_444_800_000  # 2100-01-01: always > 1 min ahead of the record's log time
PARTITIONS = 4
BAR_MS = 60_000
LATENESS_MS = 5_000
HORIZON_MS = 3_600_000
MIN_MS = 60_000
SYMBOLS = ["COIN", "MARA", "MSTR", "BLK", "BINANCE:BTCUSDT", "BRK.B"]

VALID, FUTURE, POISON = 0, 1, 2
POISON_KINDS = [
    "invalid-utf8",
    "surrogate-id",
    "surrogate-conditions",
    "huge-int-price",
    "deep-nesting-100k",
    "deep-nesting-60k",
    "inf-price",
    "tombstone",
    "oversize",
    "wrong-key",
    "no-key",
    "negative-price",
    "ts-seconds",
    "not-an-object",
    "empty-bytes",
    "nan-price",
]

out = Console()


# ----------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class StreamPlan:
    """What to generate; probabilities are per generated record."""

    seed: int = 7
    ticks: int = 1_000_000
    symbols: tuple[str, ...] = tuple(SYMBOLS)
    partitions: int = PARTITIONS
    mean_gap_ms: float = 250.0
    p_tie: float = 0.08
    p_swap: float = 0.03
    p_dup_near: float = 0.03
    p_dup_far: float = 0.01
    p_late: float = 0.01
    p_too_late: float = 0.005
    p_future: float = 0.0005
    p_poison: float = 0.0015
    p_event_gap: float = 0.0002
    p_no_id: float = 0.3
    p_null_volume: float = 0.03
    p_conditions: float = 0.15  # a trade with UTP sale conditions (the simulator's codes)

    def partition_of(self, sym_idx: int) -> int:
        return sym_idx % self.partitions


# Sale conditions as a SIP prints them (UTP codes, `source` sim), alone and combined:
# regular, odd lot, sweep, Form T, average price, out of sequence, official close, and
# a code no mapping knows.
CONDITION_MIX: tuple[tuple[str, ...], ...] = (
    ("@",), ("I",), ("@", "F"), ("@", "F", "I"), ("T",), ("W",), ("Z",), ("4",), ("M",),
    ("@", "?"),
)  # fmt: skip


def _json_tick(
    symbol: str,
    ts: int,
    price: float,
    volume: float | None,
    tid: str | None,
    conditions: tuple[str, ...] = (),
) -> dict:
    msg: dict[str, Any] = {"symbol": symbol, "price": price, "volume": volume, "ts": ts}
    if tid is not None:
        msg["id"] = tid
    if conditions:  # the simulator's codes, which its feed mapping knows
        msg["conditions"] = list(conditions)
        msg["source"] = "sim"
    else:
        msg["source"] = "chaos"
    return msg


@lru_cache(maxsize=1)
def _condition_tables() -> tuple[dict, dict]:
    """The rules table and feed mappings, read straight from their CSV files (not through
    flows.stream.conditions: the expected outcome is computed on its own)."""
    folder = resources.files("flows.stream") / "conditions"

    def rows(name: str) -> list[dict]:
        return list(csv.DictReader(io.StringIO((folder / name).read_text())))

    def yes(text: str) -> bool:
        return text.strip().lower() == "true"

    rules = {
        (r["scheme"], r["code"]): (
            yes(r["updates_open_close"]),
            yes(r["updates_high_low"]),
            yes(r["updates_volume"]),
        )
        for r in rows("rules.csv")
    }
    feeds = {(r["source"], r["feed_code"]): (r["scheme"], r["code"]) for r in rows("feeds.csv")}
    return rules, feeds


def trade_updates(
    source: str | None, codes: Iterable[str] | None, unknown: str = "regular"
) -> tuple[bool, bool, bool, bool]:
    """(updates open/close, high/low, volume; has an unmapped code), the obvious way: a
    field only if every code allows it; an unmapped code counts as `unknown` says."""
    if not codes:
        return True, True, True, False
    rules, feeds = _condition_tables()
    oc = hl = vol = True
    unmapped = False
    for code in codes:
        rule = rules.get(feeds.get((source, code)))  # type: ignore[arg-type]
        if rule is None:
            unmapped = True
            rule = (True, True, True) if unknown == "regular" else (False, False, True)
        oc, hl, vol = oc and rule[0], hl and rule[1], vol and rule[2]
    return oc, hl, vol, unmapped


def _poison(kind: str, symbol: str, ts: int) -> tuple[bytes | None, bytes | None]:
    key = symbol.encode()
    head = f'{{"symbol":"{symbol}","volume":1,"ts":{ts},'
    if kind == "invalid-utf8":
        return key, (head + '"price":1.5,"id":"').encode() + b"\xff\xfe\xc3" + b'"}'
    if kind == "surrogate-id":
        return key, (head + '"price":1.5,"id":"\\ud800x"}').encode()
    if kind == "surrogate-conditions":
        return key, (head + '"price":1.5,"conditions":["1","\\udc00"]}').encode()
    if kind == "huge-int-price":
        return key, (head + '"price":' + "9" * 400 + "}").encode()
    if kind == "deep-nesting-100k":
        return key, b"[" * 100_000
    if kind == "deep-nesting-60k":
        return key, b"[" * 60_000
    if kind == "inf-price":
        return key, (head + '"price":1e400}').encode()
    if kind == "tombstone":
        return key, None
    if kind == "oversize":
        return key, (head + '"price":1.5,"source":"' + "x" * 70_000 + '"}').encode()
    if kind == "wrong-key":
        return b"WRONG", (head + '"price":1.5}').encode()
    if kind == "no-key":
        return None, (head + '"price":1.5}').encode()
    if kind == "negative-price":
        return key, (head + '"price":-3.25}').encode()
    if kind == "ts-seconds":
        return key, f'{{"symbol":"{symbol}","price":1.5,"volume":1,"ts":{ts / 1000}}}'.encode()
    if kind == "not-an-object":
        return key, b'"just a string"'
    if kind == "empty-bytes":
        return key, b""
    if kind == "nan-price":
        return key, (head + '"price":NaN}').encode()
    raise ValueError(kind)


def generate(plan: StreamPlan) -> Iterator[tuple]:
    """The records of the campaign, in send order; deterministic for a plan (same bytes).

    Each: (seq, sym_idx, key, value, label, ts, price, volume, ident, conditions, fault),
    where label is VALID/FUTURE/POISON, volume is nan for null, ident identifies a valid
    tick for dedup (its id, or its content when it carries none), conditions are its
    sale-condition codes and fault names what the record is (for the table).
    """
    rng = random.Random(plan.seed)
    syms = plan.symbols
    n_sym = len(syms)
    cur = [BASE_MS + rng.randrange(0, 60_000) for _ in syms]
    price = [50.0 + 37.0 * i for i in range(n_sym)]
    counter = [0] * n_sym
    recent: list[deque] = [deque(maxlen=5) for _ in syms]  # last records of each symbol
    ring_ts: list[list[int]] = [[] for _ in syms]  # in-order ticks of the last hour
    ring_rec: list[list[tuple]] = [[] for _ in syms]
    ring_lo = [0] * n_sym
    poison_i = 0
    for seq in range(plan.ticks):
        s = rng.randrange(n_sym)
        symbol = syms[s]
        key = symbol.encode()
        r = rng.random()
        if r < plan.p_poison:
            kind = POISON_KINDS[poison_i % len(POISON_KINDS)]
            poison_i += 1
            pkey, pval = _poison(kind, symbol, cur[s])
            yield (seq, s, pkey, pval, POISON, 0, 0.0, math.nan, None, (), "poison:" + kind)
            continue
        r -= plan.p_poison
        if r < plan.p_future:
            counter[s] += 1
            ts = FUTURE_MS + seq
            msg = _json_tick(symbol, ts, price[s], 1.0, f"{symbol}-fut-{counter[s]}")
            rec = (seq, s, key, orjson.dumps(msg), FUTURE, ts, price[s], 1.0, None, (), "future")
            yield rec
            continue
        r -= plan.p_future
        if r < plan.p_dup_near and recent[s]:
            rec = recent[s][rng.randrange(len(recent[s]))]
            yield (seq, *rec[1:10], "dup-near")
            continue
        r -= plan.p_dup_near
        if r < plan.p_dup_far:
            ts_list, lo = ring_ts[s], ring_lo[s]
            a = bisect.bisect_left(ts_list, cur[s] - 50 * MIN_MS, lo)
            b = bisect.bisect_right(ts_list, cur[s] - 15 * MIN_MS, lo)
            if b > a:
                rec = ring_rec[s][rng.randrange(a, b)]
                yield (seq, *rec[1:10], "dup-far")
                continue
        r -= plan.p_dup_far
        # a new trade
        counter[s] += 1
        n = counter[s]
        fault = "tick"
        if r < plan.p_late:
            ts = cur[s] - rng.randrange(2 * MIN_MS, 40 * MIN_MS)
            fault = "late"
        elif r < plan.p_late + plan.p_too_late:
            ts = cur[s] - HORIZON_MS - LATENESS_MS - 2 * BAR_MS - rng.randrange(0, 120 * MIN_MS)
            fault = "too-late"
        elif r < plan.p_late + plan.p_too_late + plan.p_swap:
            ts = cur[s] - rng.randrange(0, 3_000)
            fault = "swap"
        else:
            if rng.random() < plan.p_event_gap:
                cur[s] += rng.randrange(2 * MIN_MS, 20 * MIN_MS)
                fault = "event-gap"
            elif rng.random() < plan.p_tie:
                fault = "tie"
            else:
                cur[s] += 1 + int(rng.expovariate(1.0 / plan.mean_gap_ms))
            ts = cur[s]
        price[s] = round(max(0.01, price[s] * (1 + rng.gauss(0, 0.0015))), 4)
        vol = None if rng.random() < plan.p_null_volume else float(rng.choice([1, 5, 10, 100, 250]))
        tid = None if rng.random() < plan.p_no_id else f"{symbol}-{n}"
        codes = rng.choice(CONDITION_MIX) if rng.random() < plan.p_conditions else ()
        ident = tid if tid is not None else (ts, price[s], vol, codes)
        msg = _json_tick(symbol, ts, price[s], vol, tid, codes)
        volf = math.nan if vol is None else vol
        rec = (seq, s, key, orjson.dumps(msg), VALID, ts, price[s], volf, ident, codes, fault)
        recent[s].append(rec)
        if fault in ("tick", "tie", "event-gap"):
            ring_ts[s].append(ts)
            ring_rec[s].append(rec)
            # forget what is more than an hour old (amortised: compact now and then)
            lo = bisect.bisect_left(ring_ts[s], ts - 60 * MIN_MS, ring_lo[s])
            ring_lo[s] = lo
            if lo > 50_000:
                del ring_ts[s][:lo], ring_rec[s][:lo]
                ring_lo[s] = 0
        yield rec


def producer_pauses(plan: StreamPlan, count: int = 4, seconds: float = 2.5) -> dict[int, float]:
    """Log-time gaps: the producer goes quiet for `seconds` before these sequence numbers."""
    return {plan.ticks * (i + 1) // (count + 1): seconds for i in range(count)}


def unpaced_range(plan: StreamPlan) -> tuple[int, int]:
    """A burst sent as fast as possible (a backlog for the stream)."""
    return int(plan.ticks * 0.80), int(plan.ticks * 0.85)


# ----------------------------------------------------------------------------- the producer


def last_seqs(bootstrap: str, topic: str, partitions: int, look_back: int = 5000) -> dict[int, int]:
    """Per partition, the largest `chaos.seq` the broker holds (-1 when none).

    Retries for up to two minutes: right after a broker restart the partitions
    may not have a leader yet.
    """
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + 120
    while True:
        try:
            return _last_seqs(bootstrap, topic, partitions, look_back)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise
            print(f"chaos producer: reading the log ends failed ({exc}); retrying", flush=True)
            time.sleep(1.0)


def _last_seqs(bootstrap: str, topic: str, partitions: int, look_back: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(_reader_config(bootstrap, "chaos-resume"))
    result = {}
    try:
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            best = -1
            end = high
            while best < 0 and end > low:
                start = max(low, end - look_back)
                for _offset, seq, _msg in _read_range(consumer, topic, p, start, end):
                    if seq is not None and seq > best:
                        best = seq
                end = start
            result[p] = best
    finally:
        consumer.close()
    return result


def _reader_config(bootstrap: str, group: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        **kafka_security(),
        "group.id": group,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }


def _read_range(consumer: Any, topic: str, p: int, start: int, end: int) -> Iterator[tuple]:
    """(offset, chaos.seq, message) of offsets start..end-1 of one partition."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    if end <= start:
        return
    consumer.assign([TopicPartition(topic, p, start)])
    deadline = time.monotonic() + 300
    while True:
        for msg in consumer.consume(5000, 1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= end:
                        return
                    continue
                if err.fatal() or not err.retriable():
                    raise KafkaException(err)
                continue
            if msg.offset() >= end:
                return
            yield msg.offset(), _seq_of(msg.headers()), msg
            if msg.offset() >= end - 1:
                return
        if time.monotonic() > deadline:
            raise StockpipeError(f"could not read {topic}[{p}] up to offset {end} in 5 min")


def _seq_of(headers: list | None) -> int | None:
    if headers:
        for name, value in headers:
            if name == SEQ_HEADER:
                return int(value)
    return None


def producer_main(cfg: dict) -> int:
    """The producer process: send the plan's records (resuming, re-sending), paced."""
    from confluent_kafka import Producer

    plan = StreamPlan(**{k: tuple(v) if k == "symbols" else v for k, v in cfg["plan"].items()})
    bootstrap, topic = cfg["bootstrap"], cfg["topic"]
    rate = float(cfg["rate"])
    resend = int(cfg.get("resend", 0))
    last = {p: -1 for p in range(plan.partitions)}
    if cfg.get("resume"):
        last = last_seqs(bootstrap, topic, plan.partitions)
        print(
            f"chaos producer: resuming after {last}, re-sending {resend} per partition", flush=True
        )
    failed = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed[0] += 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            **kafka_security(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 900_000,
            "queue.buffering.max.messages": 200_000,
        }
    )

    def send(rec: tuple) -> None:
        seq, s, key, value = rec[0], rec[1], rec[2], rec[3]
        while True:
            try:
                producer.produce(
                    topic,
                    key=key,
                    value=value,
                    partition=plan.partition_of(s),
                    headers=[(SEQ_HEADER, str(seq).encode())],
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.1)

    if resend and max(last.values()) >= 0:
        tails: dict[int, deque] = {p: deque(maxlen=resend) for p in last}
        top = max(last.values())
        for rec in generate(plan):
            if rec[0] > top:
                break
            p = plan.partition_of(rec[1])
            if rec[0] <= last[p]:
                tails[p].append(rec)
        again = sorted((r for t in tails.values() for r in t), key=lambda r: r[0])
        for rec in again:
            send(rec)
        print(f"chaos producer: re-sent {len(again)} records", flush=True)

    pauses = producer_pauses(plan)
    burst = unpaced_range(plan)
    start = time.monotonic()
    sent = 0
    paused = 0.0
    for rec in generate(plan):
        seq = rec[0]
        if seq <= last[plan.partition_of(rec[1])]:
            continue
        if seq in pauses:
            producer.flush(60)
            time.sleep(pauses[seq])
            paused += pauses[seq]
        send(rec)
        sent += 1
        if sent % 500 == 0:
            producer.poll(0)
            if burst[0] <= seq < burst[1]:
                paused -= 500 / rate  # the burst does not count against the pace
            else:
                ahead = start + paused + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    left = producer.flush(900)
    print(f"chaos producer: sent {sent}, undelivered {left}, failed {failed[0]}", flush=True)
    return 0 if left == 0 and failed[0] == 0 else 3


# ----------------------------------------------------------------------------- the expected outcome


@dataclass
class Expected:
    bars: dict[tuple[str, int], list]  # (symbol, window_start ms) -> aggregate
    dlq: set[tuple[int, int]]  # (partition, offset) of records that must go to the DLQ
    late: Counter  # (symbol, ts ms, price) of too-late records
    produced: int  # records in the topic with a chaos.seq (re-sends included)
    distinct: int  # distinct sequence numbers among them
    resent: int


def read_topic(bootstrap: str, topic: str, keep: bool = False) -> dict[int, list[tuple]]:
    """Per partition, (offset, chaos.seq or None, message if `keep`) of every record, in order."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(_reader_config(bootstrap, "chaos-reader"))
    parts: dict[int, list] = {}
    try:
        meta = consumer.list_topics(topic, timeout=30)
        for p in sorted(meta.topics[topic].partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            parts[p] = [
                (off, seq, msg if keep else None)
                for off, seq, msg in _read_range(consumer, topic, p, low, high)
            ]
    finally:
        consumer.close()
    return parts


# The expected aggregate of one (symbol, window), as a list: the event times of its
# first and last tick, open and close (each with the (ts, offset) that decides it),
# high, low, volume, Σ price·volume, trade count, ticks kept out of some price, ticks
# with unmapped codes. Prices no tick could set stay None (null in the lake).
(B_FIRST, B_LAST, B_OPEN_TS, B_OPEN_OFFSET, B_OPEN, B_CLOSE_TS, B_CLOSE_OFFSET, B_CLOSE,
 B_HIGH, B_LOW, B_VOLUME, B_PV, B_COUNT, B_EXCLUDED, B_UNMAPPED) = range(15)  # fmt: skip
_NO_TS = 2**62


def new_bar(ts: int) -> list:
    """The expected aggregate of a window before any of its ticks is folded in."""
    return [ts, ts, _NO_TS, 0, None, -_NO_TS, 0, None, None, None, 0.0, 0.0, 0, 0, 0]


def expected_outcome(plan: StreamPlan, log: dict[int, list]) -> Expected:
    """Fold the log the obvious way, from the generator's labels (not from the bytes)."""
    n = plan.ticks
    label = bytearray(n)
    sym = bytearray(n)
    ts_a = array("q", bytes(8 * n))
    price_a = array("d", bytes(8 * n))
    vol_a = array("d", bytes(8 * n))
    ident: list = [None] * n
    conditions: list[tuple[str, ...]] = [()] * n
    for rec in generate(plan):
        seq = rec[0]
        label[seq], sym[seq] = rec[4], rec[1]
        ts_a[seq], price_a[seq], vol_a[seq], ident[seq] = rec[5], rec[6], rec[7], rec[8]
        conditions[seq] = rec[9]

    bars: dict[tuple[str, int], list] = {}
    dlq: set = set()
    late: Counter = Counter()
    produced = 0
    seen_seq: set[int] = set()
    for p, rows in log.items():
        max_ts: dict[int, int] = {}
        seen: dict[int, set] = defaultdict(set)
        for offset, seq, _msg in rows:
            if seq is None:
                continue  # a heartbeat or a flush marker
            produced += 1
            seen_seq.add(seq)
            if label[seq] != VALID:
                dlq.add((p, offset))
                continue
            s, ts = sym[seq], ts_a[seq]
            if ts > max_ts.get(s, ts - 1):
                max_ts[s] = ts
            symbol = plan.symbols[s]
            price = price_a[seq]
            ws = ts - ts % BAR_MS
            if ws + BAR_MS <= max_ts[s] - LATENESS_MS - HORIZON_MS:
                late[(symbol, ts, price)] += 1
                continue
            if ident[seq] in seen[s]:
                continue
            seen[s].add(ident[seq])
            v = vol_a[seq]
            v = 0.0 if math.isnan(v) else v
            codes = conditions[seq]
            oc, hl, counts, unmapped = trade_updates("sim" if codes else "chaos", codes)
            bar = bars.get((symbol, ws))
            if bar is None:
                bar = bars[(symbol, ws)] = new_bar(ts)
            bar[B_FIRST] = min(bar[B_FIRST], ts)
            bar[B_LAST] = max(bar[B_LAST], ts)
            if oc:
                if (ts, offset) < (bar[B_OPEN_TS], bar[B_OPEN_OFFSET]):
                    bar[B_OPEN_TS], bar[B_OPEN_OFFSET], bar[B_OPEN] = ts, offset, price
                if (ts, offset) > (bar[B_CLOSE_TS], bar[B_CLOSE_OFFSET]):
                    bar[B_CLOSE_TS], bar[B_CLOSE_OFFSET], bar[B_CLOSE] = ts, offset, price
            if hl:
                bar[B_HIGH] = price if bar[B_HIGH] is None else max(bar[B_HIGH], price)
                bar[B_LOW] = price if bar[B_LOW] is None else min(bar[B_LOW], price)
            if counts:
                bar[B_VOLUME] += v
                bar[B_PV] += price * v
                bar[B_COUNT] += 1
            if not (oc and hl):
                bar[B_EXCLUDED] += 1
            if unmapped:
                bar[B_UNMAPPED] += 1
    return Expected(bars, dlq, late, produced, len(seen_seq), produced - len(seen_seq))


# ----------------------------------------------------------------------------- the lake
#
# Reading the lake is the only I/O here; the checks below it are pure functions
# (rows and file listings in, findings out), so tests/test_chaos_checks.py feeds
# them crafted lake contents without a broker.

BAR_KEY = ("symbol", "window_start", "revision")


@dataclass(frozen=True)
class FileVersion:
    """One version of a lake file as the store kept it: its bytes' digest and its rows."""

    digest: str
    rows: tuple[dict, ...]  # every row, every column (emitted_at and later columns included)


def file_version(data: bytes) -> FileVersion:
    """The version of a file whose bytes are `data`."""
    import hashlib
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    return FileVersion(hashlib.blake2b(data, digest_size=16).hexdigest(), tuple(table.to_pylist()))


def read_lake(fs: Any, root: str) -> tuple[list[tuple], list[tuple]]:
    """(bar rows, late rows) of every file, each row with its file's path appended."""
    import pyarrow.parquet as pq

    result = []
    for prefix in ("bars", "late"):
        rows = []
        try:
            paths = [p for p in fs.find(f"{root}/{prefix}") if p.endswith(".parquet")]
        except FileNotFoundError:
            paths = []
        for path in sorted(paths):
            with fs.open(path, "rb") as fh:
                table = pq.read_table(fh)
            rows += [(row, path) for row in table.to_pylist()]
        result.append(rows)
    return result[0], result[1]


def read_versions(client: Any, bucket: str, prefix: str) -> dict[str, list[FileVersion]]:
    """Every version a versioned S3 bucket kept of each Parquet file under `prefix`.

    Keys are `bucket/key`, the form `read_lake` gives paths in (s3fs). A file
    written once has one version; the bytes of a file written again are only
    read when its ETags differ (equal ETags of single-part uploads are equal bytes).
    """
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for v in page.get("Versions", []):
            if v["Key"].endswith(".parquet"):
                found[v["Key"]].append((v["VersionId"], v["ETag"]))
    result: dict[str, list[FileVersion]] = {}
    for key, versions in found.items():
        if len({etag for _, etag in versions}) > 1:
            result[f"{bucket}/{key}"] = [
                file_version(
                    client.get_object(Bucket=bucket, Key=key, VersionId=vid)["Body"].read()
                )
                for vid, _ in versions
            ]
        else:
            result[f"{bucket}/{key}"] = [FileVersion(etag, ()) for _, etag in versions]
    return result


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


def _close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _value(v: Any) -> Any:
    """A cell as a hashable, comparable value (NaN equal to NaN, timestamps as instants)."""
    if isinstance(v, float) and math.isnan(v):
        return ("nan",)
    if hasattr(v, "timestamp") and hasattr(v, "tzinfo"):
        return ("ts", int(round(v.timestamp() * 1_000_000)))
    if isinstance(v, list):
        return tuple(_value(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _value(x)) for k, x in v.items()))
    return v


def row_content(row: dict) -> tuple:
    """Every column of a row, names included, so no column can differ unseen."""
    return tuple(sorted((name, _value(v)) for name, v in row.items()))


def bar_key(row: dict) -> tuple:
    """(symbol, window_start, revision): what a bar row is, whichever file holds it."""
    return tuple(_value(row[column]) for column in BAR_KEY)


@dataclass
class Finding:
    check: str  # "held more than once", "two contents", "missing revision", "rewritten file"
    what: str

    def __str__(self) -> str:
        return f"{self.check}: {self.what}"


def held_more_than_once(bar_rows: list[tuple], late_rows: list[tuple]) -> list[Finding]:
    """Rows the lake holds more than once: one finding per extra copy.

    A bar is its (symbol, window_start, revision): held again, in another file or
    in the same one, with the same content or not, is a copy. A late row has no
    key of its own (every too-late record is one row, and a duplicate of one
    read in the same millisecond of log time is an identical row of the same
    file), so a late row is a copy when the same row is in another file.
    """
    found: list[Finding] = []
    bars: dict[tuple, list[str]] = defaultdict(list)
    for row, path in bar_rows:
        bars[bar_key(row)].append(path)
    for key, paths in bars.items():
        for _ in range(len(paths) - 1):
            found.append(Finding("held more than once", f"bar {key} in {sorted(paths)}"))
    late: dict[tuple, set[str]] = defaultdict(set)
    for row, path in late_rows:
        late[row_content(row)].add(path)
    for content, paths in late.items():
        for _ in range(len(paths) - 1):
            found.append(Finding("held more than once", f"late row {content} in {sorted(paths)}"))
    return found


def two_contents(bar_rows: list[tuple]) -> list[Finding]:
    """Bar keys held with more than one content, every column compared (emitted_at too)."""
    contents: dict[tuple, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row, path in bar_rows:
        contents[bar_key(row)][row_content(row)].append(path)
    found = []
    for key, by_content in contents.items():
        if len(by_content) > 1:
            differ = _differing_columns(list(by_content))
            files = sorted({p for paths in by_content.values() for p in paths})
            found.append(Finding("two contents", f"bar {key}: {differ} differ, in {files}"))
    return found


def _differing_columns(contents: list[tuple]) -> list[str]:
    cells = [dict(c) for c in contents]
    names = sorted({name for c in cells for name in c})
    return [n for n in names if len({repr(c.get(n, "<absent>")) for c in cells}) > 1]


def missing_revisions(bar_rows: list[tuple]) -> list[Finding]:
    """Revisions absent below a window's highest (each restatement adds one: 0, 1, 2, ...)."""
    revisions: dict[tuple, set[int]] = defaultdict(set)
    for row, _path in bar_rows:
        revisions[(row["symbol"], _value(row["window_start"]))].add(row["revision"])
    found = []
    for key, revs in revisions.items():
        missing = sorted(set(range(max(revs) + 1)) - revs)
        if missing:
            found.append(Finding("missing revision", f"bar {key}: revisions {missing} missing"))
    return found


def rewritten_files(versions: dict[str, list[FileVersion]]) -> tuple[list[Finding], list[str]]:
    """File names written again: (those with other rows: findings, those with other bytes only).

    A file under a name the lake already held is compared by the rows it holds
    (contract 3), every column, as a multiset; other bytes with the same rows is
    reported apart (the lake sink means to write the same bytes too).
    """
    found: list[Finding] = []
    bytes_only: list[str] = []
    for path, vs in sorted(versions.items()):
        if len(vs) < 2 or len({v.digest for v in vs}) == 1:
            continue
        rows = {tuple(sorted((row_content(r) for r in v.rows), key=repr)) for v in vs}
        if len(rows) > 1:
            counts = ", ".join(str(len(v.rows)) for v in vs)
            found.append(
                Finding(
                    "rewritten file", f"{path}: {len(vs)} versions with other rows ({counts} rows)"
                )
            )
        else:
            bytes_only.append(path)
    return found, bytes_only


def lake_findings(
    bar_rows: list[tuple],
    late_rows: list[tuple],
    versions: dict[str, list[FileVersion]] | None = None,
) -> dict[str, list]:
    """Every check of the lake's own consistency (no expected outcome needed)."""
    rewritten, bytes_only = rewritten_files(versions or {})
    return {
        "held more than once": held_more_than_once(bar_rows, late_rows),
        "two contents": two_contents(bar_rows),
        "missing revision": missing_revisions(bar_rows),
        "rewritten file": rewritten,
        "rewritten bytes only": bytes_only,
    }


def compare(
    exp: Expected,
    bar_rows: list,
    late_rows: list,
    versions: dict[str, list[FileVersion]] | None = None,
) -> dict[str, Any]:
    """The figures of the table from the expected outcome, the lake's rows and file versions."""
    lake = lake_findings(bar_rows, late_rows, versions)
    final: dict[tuple, dict] = {}
    for row, _path in bar_rows:
        key = (row["symbol"], _ms(row["window_start"]))
        if key not in final or row["revision"] > final[key]["revision"]:
            final[key] = row

    lost = duplicated = exact = 0
    mismatches: list[str] = []
    for key in sorted(set(exp.bars) | set(final)):
        want, got = exp.bars.get(key), final.get(key)
        want_tc = want[B_COUNT] if want else 0
        got_tc = got["trade_count"] if got else 0
        lost += max(want_tc - got_tc, 0)
        duplicated += max(got_tc - want_tc, 0)
        if want is None or got is None:
            if len(mismatches) < 5:
                mismatches.append(f"{key}: expected {want}, lake {got}")
            continue
        vwap = want[B_PV] / want[B_VOLUME] if want[B_VOLUME] > 0 else None
        same = (
            got["open"] == want[B_OPEN]
            and got["close"] == want[B_CLOSE]
            and got["high"] == want[B_HIGH]
            and got["low"] == want[B_LOW]
            and got_tc == want_tc
            and _ms(got["first_ts"]) == want[B_FIRST]
            and _ms(got["last_ts"]) == want[B_LAST]
            and _close(got["volume"], want[B_VOLUME])
            and _close(got["vwap"], vwap)
            and got.get("excluded_count") == want[B_EXCLUDED]
            and got.get("unmapped_count") == want[B_UNMAPPED]
        )
        if same:
            exact += 1
        elif len(mismatches) < 5:
            mismatches.append(f"{key}: expected {want}, lake {got}")
    total = len(set(exp.bars) | set(final))
    late_got = Counter((r["symbol"], _ms(r["ts"]), r["price"]) for r, _ in late_rows)
    findings = [
        str(f) for name in ("held more than once", "two contents", "missing revision",
                            "rewritten file") for f in lake[name][:5]
    ]  # fmt: skip
    return {
        "bars_expected": len(exp.bars),
        "bars_in_lake": len(final),
        "bar_rows": len(bar_rows),
        "bar_files": len({p for _, p in bar_rows}),
        "lost": lost,
        "duplicated": duplicated,
        "two_contents": len(lake["two contents"]),
        "repeated_rows": len(lake["held more than once"]),
        "missing_revisions": len(lake["missing revision"]),
        "rewritten_files": len(lake["rewritten file"]),
        "rewritten_bytes_only": len(lake["rewritten bytes only"]),
        "files_written_again": sum(1 for vs in (versions or {}).values() if len(vs) > 1),
        "exact_pct": 100.0 * exact / total if total else 100.0,
        "mismatches": mismatches + findings,
        "late_rows": len(late_rows),
        "late_expected": sum(exp.late.values()),
        "late_match": late_got == exp.late,
    }


# ----------------------------------------------------------------------------- the campaign


@dataclass
class Campaign:
    ticks: int = 1_000_000
    kills: int = 10
    seed: int = 7
    store_outage: float = 30.0
    rate: float = 10_000.0
    resend: int = 300
    broker_down: float = 3.0
    workdir: Path | None = None
    keep: bool = False
    events: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    our_kills: int = 0
    t0: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        line = f"t+{time.monotonic() - self.t0:6.1f}s  {text}"
        self.events.append(line)
        out.print(line, highlight=False)


class _Store:
    """The moto S3 server of the campaign: stop and start it again on the same port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.up = True

    def stop(self) -> None:
        if self.up:
            self.server.stop()
            self.server._server.server_close()  # free the port for the restart
            self.up = False

    def start(self) -> None:
        if not self.up:
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
                    self.server.start()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            self.up = True


class _Stream:
    """`stockpipe stream` subprocesses: start, SIGKILL, and tell our kills from crashes."""

    def __init__(self, camp: Campaign, env: dict, logs: Path):
        self.camp, self.env, self.logs = camp, env, logs
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.log_path: Path | None = None

    def start(self, *args: str) -> subprocess.Popen:
        self.runs += 1
        self.log_path = self.logs / f"stream-{self.runs:02d}.log"
        fh = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "stream", *args],
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        fh.close()
        return self.proc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.camp.our_kills += 1
        self.proc = None

    def check(self) -> bool:
        """False (and a crash recorded) when the stream exited without us killing it."""
        if self.proc is None or self.proc.poll() is None:
            return True
        code = self.proc.returncode
        tail = _tail(self.log_path)
        self.camp.crashes.append(f"run {self.runs} exited {code}: {tail}")
        self.camp.say(f"[red]stream run {self.runs} exited {code} by itself[/] ({self.log_path})")
        self.proc = None
        return False


def _tail(path: Path | None, lines: int = 4) -> str:
    """The first error line (the cause) and the last lines of a log."""
    if path is None or not path.exists():
        return ""
    text = [ln for ln in path.read_text(errors="replace").splitlines() if not ln.startswith("%")]
    cause = [ln for ln in text if "Exception:" in ln or "Error:" in ln][:1]
    return " | ".join(cause + text[-lines:])[-1500:]


def run_campaign(camp: Campaign) -> dict[str, Any]:
    """Run the whole campaign; returns {"checks": [...], "info": {...}, "ok": bool}."""
    import boto3
    import s3fs
    from confluent_kafka.admin import AdminClient, NewTopic

    from flows.net import free_ports
    from flows.settings import load_settings
    from flows.tooling import kafka as kafka_local

    work = Path(camp.workdir or tempfile.mkdtemp(prefix="stockpipe-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    plan = StreamPlan(seed=camp.seed, ticks=camp.ticks)
    topic = "chaos.ticks"
    creds = {"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos"}

    store = _Store()
    s3 = boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        region_name="us-east-1",
        aws_access_key_id="chaos",
        aws_secret_access_key="chaos",
    )
    s3.create_bucket(Bucket="chaos")
    # Versioned, so a file name written twice keeps both contents for the checks.
    s3.put_bucket_versioning(Bucket="chaos", VersioningConfiguration={"Status": "Enabled"})
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_ports(2)}",  # and its controller
        kafka_data_dir=work / "kafka",
        topic=topic,
        topic_partitions=PARTITIONS,
        symbols=list(plan.symbols),
        lake_url="s3://chaos/lake",
        s3_endpoint_url=store.endpoint,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        recovery_dir=work / "recovery",
        warehouse=f"duckdb:///{work / 'warehouse.duckdb'}",
        spool_dir=work / "spool",
        outage_log=work / "outages.jsonl",
    )
    bootstrap = settings.kafka_bootstrap_servers
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    stream = _Stream(camp, env, logs)
    producer: subprocess.Popen | None = None
    broker_restarts = producer_restarts = producer_failures = 0
    store_down_s = 0.0
    try:
        camp.say(f"workdir {work}; starting Kafka at {bootstrap} and S3 at {store.endpoint}")
        kafka_local.start(settings, timeout=180)
        admin = AdminClient(settings.kafka_config())
        cfg = {"message.timestamp.type": "LogAppendTime"}
        futures = admin.create_topics(
            [NewTopic(topic, PARTITIONS, 1, config=cfg), NewTopic(f"{topic}.dlq", 1, 1, config=cfg)]
        )
        for f in futures.values():
            f.result(timeout=60)

        def start_producer(resume: bool, resend: int) -> subprocess.Popen:
            conf = {
                "plan": {**plan.__dict__, "symbols": list(plan.symbols)},
                "bootstrap": bootstrap,
                "topic": topic,
                "rate": camp.rate,
                "resume": resume,
                "resend": resend,
            }
            fh = (logs / f"producer-{time.monotonic_ns()}.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.tooling.chaos", "--producer", json.dumps(conf)],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            fh.close()
            return proc

        producer = start_producer(False, 0)
        stream.start()
        camp.say(f"producing {plan.ticks:,} records at ~{camp.rate:,.0f}/s; stream started")

        # The timeline of faults (seconds after the start of production).
        rng = random.Random(camp.seed * 7919 + 1)
        produce_s = plan.ticks / camp.rate + 10
        span = max(produce_s, 20 + 4 * camp.kills + camp.store_outage + 25)
        events: list[tuple[float, str]] = []
        last = 0.0
        for t in sorted(rng.uniform(0.05, 0.95) * span for _ in range(camp.kills)):
            t = max(t, last + 3.0)
            events.append((t, "kill"))
            last = t
        events.append((0.35 * span, "broker"))
        events.append((min(0.5 * produce_s, 0.5 * span), "producer"))
        if camp.store_outage > 0:
            events.append((0.6 * span, "store"))
        events.sort()
        start = time.monotonic()
        store_thread: threading.Thread | None = None

        def outage() -> None:
            nonlocal store_down_s
            store.stop()
            camp.say(f"object store DOWN for {camp.store_outage:g}s")
            t = time.monotonic()
            time.sleep(camp.store_outage)
            store.start()
            store_down_s += time.monotonic() - t
            camp.say("object store back")

        def ensure_stream() -> None:
            if stream.proc is None or stream.proc.poll() is not None:
                if stream.proc is not None:
                    stream.check()
                while not kafka_local.broker_reachable(bootstrap):
                    time.sleep(0.5)
                stream.start()

        producer_done = False
        while events or not producer_done:
            now = time.monotonic() - start
            if not stream.check():
                if len(camp.crashes) > 30:
                    raise StockpipeError("the stream keeps crashing; see the crash list")
                time.sleep(1.0)
                ensure_stream()
            if producer is not None and producer.poll() is not None:
                if producer.returncode == 0:
                    if not producer_done:
                        camp.say("producer finished")
                    producer_done = True
                else:
                    producer_failures += 1
                    camp.say(f"[yellow]producer exited {producer.returncode}: restarting[/]")
                    producer = start_producer(True, 0)
            if events and events[0][0] <= now:
                _, what = events.pop(0)
                if what == "kill":
                    stream.kill()
                    camp.say(f"SIGKILL stream ({camp.our_kills}/{camp.kills})")
                    ensure_stream()
                elif what == "broker":
                    camp.say("broker STOP")
                    kafka_local.stop(settings)
                    time.sleep(camp.broker_down)
                    kafka_local.start(settings, timeout=180)
                    broker_restarts += 1
                    camp.say("broker started again")
                elif what == "producer":
                    if producer is not None and producer.poll() is None:
                        producer.send_signal(signal.SIGKILL)
                        producer.wait()
                        producer_restarts += 1
                        camp.say(f"SIGKILL producer; restarting it (re-sends {camp.resend}/part)")
                        producer = start_producer(True, camp.resend)
                    else:
                        camp.say("producer already done: its restart re-sends a range")
                        producer_restarts += 1
                        producer = start_producer(True, camp.resend)
                        producer_done = False
                elif what == "store":
                    store_thread = threading.Thread(target=outage, daemon=True)
                    store_thread.start()
            time.sleep(0.2)
        if store_thread is not None:
            store_thread.join()
        time.sleep(3)
        if not stream.check():
            ensure_stream()
        stream.kill()
        camp.say("stopped the continuous stream (SIGKILL); final run with --exit-when-idle 5s")
        for attempt in range(5):
            proc = stream.start("--exit-when-idle", "5s")
            code = proc.wait()
            if code == 0:
                camp.say(f"final stream run exited 0 (attempt {attempt + 1})")
                break
            stream.check()
        else:
            raise StockpipeError("the final `stream --exit-when-idle 5s` never exited 0")

        camp.say("measuring: reading the topic, the DLQ and the lake")
        log_rows = read_topic(bootstrap, topic)
        exp = expected_outcome(plan, log_rows)
        del log_rows
        dlq_rows = read_topic(bootstrap, f"{topic}.dlq", keep=True)
        dlq_src: list[tuple[int, int]] = []
        for _off, _seq, msg in dlq_rows.get(0, []):
            h = dict(msg.headers() or [])
            dlq_src.append((int(h[DLQ_PARTITION]), int(h[DLQ_OFFSET])))
        del dlq_rows
        fs = s3fs.S3FileSystem(endpoint_url=store.endpoint, key="chaos", secret="chaos")
        bar_rows, late_rows = read_lake(fs, "chaos/lake")
        versions = read_versions(s3, "chaos", "lake/")
        figures = compare(exp, bar_rows, late_rows, versions)
    finally:
        if stream.proc is not None and stream.proc.poll() is None:
            stream.proc.kill()
            stream.proc.wait()
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        try:
            kafka_local.stop(settings)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
            out.print(f"could not stop the campaign broker: {exc}")
        store.start()
        store.stop()

    dlq_set = set(dlq_src)
    generated = plan.ticks
    checks = [
        _check("ticks produced (distinct seq / generated)", f"{exp.distinct:,} / {generated:,}",
               exp.distinct == generated),
        _check("lost ticks", figures["lost"], figures["lost"] == 0),
        _check("duplicated ticks", figures["duplicated"], figures["duplicated"] == 0),
        _check("revisions written twice with different content", figures["two_contents"],
               figures["two_contents"] == 0),
        _check("rows held more than once in the lake", figures["repeated_rows"],
               figures["repeated_rows"] == 0),
        _check("bar revisions missing below a window's highest", figures["missing_revisions"],
               figures["missing_revisions"] == 0),
        _check("file names written again with other rows", figures["rewritten_files"],
               figures["rewritten_files"] == 0),
        _check("stream crashes", len(camp.crashes), not camp.crashes),
        _check("DLQ records (distinct source offsets) vs expected",
               f"{len(dlq_set):,} vs {len(exp.dlq):,}", dlq_set == exp.dlq),
        _check("late/ rows vs expected", f"{figures['late_rows']:,} vs {figures['late_expected']:,}",
               figures["late_match"]),
        _check("final bars equal to the batch computation", f"{figures['exact_pct']:.4f}%",
               figures["exact_pct"] == 100.0),
    ]  # fmt: skip
    info = {
        "ticks": plan.ticks,
        "seed": camp.seed,
        "records in topic (re-sends included)": exp.produced,
        "records re-sent": exp.resent,
        "SIGKILLs of the stream (ours)": camp.our_kills,
        "stream runs": stream.runs,
        "broker restarts": broker_restarts,
        "producer restarts (SIGKILL)": producer_restarts,
        "producer failures (restarted)": producer_failures,
        "object store down (s)": round(store_down_s, 1),
        "DLQ records written (replays repeat some)": len(dlq_src),
        "DLQ records repeated": len(dlq_src) - len(dlq_set),
        "bars expected": figures["bars_expected"],
        "bar rows in lake (all revisions)": figures["bar_rows"],
        "bar files": figures["bar_files"],
        "file names written more than once (replays)": figures["files_written_again"],
        "of them with other bytes, same rows": figures["rewritten_bytes_only"],
        "elapsed (s)": round(time.monotonic() - camp.t0, 1),
        "workdir": str(work),
    }
    return {
        "checks": checks,
        "info": info,
        "crashes": camp.crashes,
        "mismatches": figures["mismatches"],
        "events": camp.events,
        "ok": all(c["ok"] for c in checks),
    }


def _check(name: str, figure: Any, ok: bool) -> dict[str, Any]:
    value = figure if isinstance(figure, int | float) else str(figure)
    return {"check": name, "figure": value, "ok": bool(ok)}


def print_report(result: dict[str, Any]) -> None:
    table = Table(title="stockpipe chaos")
    table.add_column("check")
    table.add_column("figure", justify="right")
    table.add_column("", justify="center")
    for c in result["checks"]:
        fig = f"{c['figure']:,}" if isinstance(c["figure"], int) else str(c["figure"])
        table.add_row(c["check"], fig, "[green]OK[/]" if c["ok"] else "[bold red]FAIL[/]")
    out.print(table)
    info = Table(title="what the campaign did", show_header=False)
    for k, v in result["info"].items():
        info.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    out.print(info)
    for line in result["crashes"]:
        out.print(f"[red]crash:[/] {line}", highlight=False)
    for line in result["mismatches"]:
        out.print(f"[red]mismatch:[/] {line}", highlight=False)


def chaos_command(
    ticks: Annotated[
        int, typer.Option("--ticks", min=1000, help="Records to produce.")
    ] = 1_000_000,
    kills: Annotated[int, typer.Option("--kills", min=0, help="SIGKILLs of the stream.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the stream and the timeline.")] = 7,
    store_outage: Annotated[
        str, typer.Option("--store-outage", help="How long the object store is down (e.g. 30s).")
    ] = "30s",
    rate: Annotated[
        float, typer.Option("--rate", min=100, help="Producer pace, records per second.")
    ] = 10_000.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as one JSON object instead.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Also write the result as JSON to this file.", show_default="no file"
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Keep broker data, logs, recovery here.",
            show_default="a new temporary folder",
        ),
    ] = None,
) -> None:
    """Fault campaign: kills, broker and store outages, poison records; checks the lake exactly."""
    from flows.settings import parse_duration

    try:
        outage = parse_duration(store_outage)
    except ValueError as exc:
        raise StockpipeError(f"--store-outage: {exc}") from None
    camp = Campaign(ticks=ticks, kills=kills, seed=seed, store_outage=outage, rate=rate,
                    workdir=workdir)  # fmt: skip
    result = run_campaign(camp)
    if json_output:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
    if out is not None:
        out.write_text(json.dumps(result, indent=2, default=str))
    raise typer.Exit(0 if result["ok"] else EXIT_CHECK)  # 3: the campaign found a problem


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(chaos_command)
    try:
        app()
    except StockpipeError as exc:
        out.print(f"[bold red]stockpipe chaos:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--producer":
        sys.exit(producer_main(json.loads(sys.argv[2])))
    main()
