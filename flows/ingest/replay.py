"""Replay a file of ticks into Kafka.

Formats, by file name:
- `*.parquet`: columns `symbol`, `ts` (integer epoch ms, or a timestamp), `price`,
  optional `volume`, `id`, `source`, `conditions`.
- anything else: JSON lines, either one tick object per line, or the golden-file
  form `{"key": ..., "value": "<raw message>", "case": ...}` whose value is sent
  verbatim with its key (bad records then reach the DLQ exactly as in the file).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from flows.errors import StockpipeError
from flows.ingest.kafka_out import Item
from flows.ingest.pacing import as_float, checked, now_ms
from flows.ingest.ticks import BadTick, parse_tick, tick_id

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SOURCE = "replay"


def read_replay(path: Path) -> Iterator[Item]:
    """The messages of a replay file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise StockpipeError(f"replay file not found: {str(path)!r}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _parquet(path)
    return _jsonl(path)


def _jsonl(path: Path) -> Iterator[Item]:
    now = now_ms()
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s:%d is not JSON; sending it as is (no key)", path, lineno)
                yield None, line
                continue
            if isinstance(obj, dict) and "value" in obj and "key" in obj:
                yield _golden(obj, path, lineno)
                continue
            key = obj.get("symbol") if isinstance(obj, dict) else None
            key = key if isinstance(key, str) else None
            try:
                tick = parse_tick(line, None, now)
            except BadTick as exc:
                log.warning(
                    "%s:%d breaks contract 1 (%s); sending it as is", path, lineno, exc.reason
                )
                yield key, line
                continue
            yield tick if tick.source else tick._replace(source=SOURCE)


def _golden(obj: dict[str, Any], path: Path, lineno: int) -> Item:
    key, value = obj["key"], obj["value"]
    if key is not None and not isinstance(key, str):
        raise StockpipeError(f"{path}:{lineno}: key must be a string or null, got {key!r}")
    if value is not None and not isinstance(value, str):
        raise StockpipeError(
            f"{path}:{lineno}: value must be the raw message string, got {value!r}"
        )
    return key, value.encode() if value is not None else None


def _ts_ms(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(column.type):
        return pc.cast(pc.cast(column, pa.timestamp("ms", column.type.tz)), pa.int64()).to_pylist()
    if pa.types.is_integer(column.type):
        return column.to_pylist()
    raise StockpipeError(
        f"parquet column 'ts' must be integer epoch ms or a timestamp, got {column.type}"
    )


def _parquet(path: Path) -> Iterator[Item]:
    # Arrow is not in the base install (JSON-lines replay needs none): it comes with
    # the [stream] and [warehouse] extras.
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise StockpipeError(
            f"replaying the Parquet file {str(path)!r} needs pyarrow, which the [stream] "
            "and [warehouse] extras bring: pip install 'stockpipe[stream]' (JSON lines "
            "replay without it)"
        ) from None
    try:
        pfile = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StockpipeError(f"cannot read parquet file {str(path)!r}: {exc}") from None
    names = set(pfile.schema_arrow.names)
    missing = {"symbol", "ts", "price"} - names
    if missing:
        raise StockpipeError(
            f"parquet file {str(path)!r} lacks column(s) {sorted(missing)}; has {sorted(names)}"
        )
    wanted = [
        c for c in ("symbol", "ts", "price", "volume", "id", "source", "conditions") if c in names
    ]
    now = now_ms()
    prev_ts: Any = None
    seen: Counter[tuple] = Counter()  # identical rows at the same ts: occurrence index for ids
    for batch in pfile.iter_batches(batch_size=65_536, columns=wanted):
        cols = {name: batch.column(name) for name in wanted}
        ts_values = _ts_ms(cols["ts"])
        rows = {name: col.to_pylist() for name, col in cols.items() if name != "ts"}
        for i, ts in enumerate(ts_values):
            symbol, price = rows["symbol"][i], as_float(rows["price"][i])
            volume = as_float(rows["volume"][i]) if "volume" in rows else None
            conditions = list(rows["conditions"][i] or []) if "conditions" in rows else []
            obj: dict[str, Any] = {"symbol": symbol, "price": price, "volume": volume, "ts": ts}
            if ts != prev_ts:
                prev_ts = ts
                seen.clear()
            identity = (symbol, price, volume, tuple(conditions))
            tid = rows["id"][i] if "id" in rows else None
            if tid is None:
                tid = tick_id(str(symbol), ts, price, volume, conditions, seen[identity])
            seen[identity] += 1
            obj["id"] = tid
            obj["source"] = (rows["source"][i] if "source" in rows else None) or SOURCE
            if conditions:
                obj["conditions"] = conditions
            yield checked(obj, symbol if isinstance(symbol, str) else None, now)
