"""Benchmark runners for `stockpipe bench` (orchestrated by `flows.tooling.bench`).

Each engine runs in a process of its own, so imports, threads and memory never
mix: `python -m flows.tooling.engines.<runner> --bootstrap HOST:PORT --topic T --ticks N`.
A runner reads the topic from the beginning until it has handled N messages
and prints its measurement as the last line of stdout (see `common.emit`).

    raw_consume     confluent-kafka batch consume, no decoding (the ceiling)
    stockpipe_flow  the real dataflow, `flows.stream.run.run_stream`, into a fresh lake
    naive_bytewax   Bytewax's KafkaSource -> json.loads -> per-tick fold_window
    quix_app        Quix Streams tumbling_window(60 s).reduce(...).final()

`live_flow` is apart: the real stream for the bench's live run (bar latency,
resume after kill; `flows.tooling.bench_live`), which never stops by itself and
reports how far it has read in a progress file instead of a result line.

Every rate is N / busy seconds, where the busy time starts when the engine's
own code sees the first message (connecting, topic metadata and consumer-group
joins are left out) and ends when the last message has been handled; each
runner's docstring says exactly where its clock stops.
"""
