#!/usr/bin/env bash
# One-shot job of docker-compose.yml (runs in the apache/kafka image): create the
# tick topic and its dead-letter topic. Idempotent; safe on every `up`.
#
# Both topics take the broker's clock as record timestamp (LogAppendTime): the
# stream's log time (contract 2), which makes every replay give the same bars.
# Partitions are the unit of parallelism of the stream: Bytewax spreads them
# over its worker processes, so have at least as many partitions as workers.
# An existing topic is never grown here: the stream keys its bar state by
# partition and refuses to restart on a changed partition count, so adding
# partitions is an operator's step between a drain and `stockpipe stream
# --from-drain` (docs/operations.md, "Changing a rule or adding partitions").
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
topic="${STOCKPIPE_TOPIC:-stock.ticks}"
partitions="${STOCKPIPE_TOPIC_PARTITIONS:-8}"
topics=(/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bootstrap")

# Ticks: key = symbol, so one symbol's ticks stay in order in one partition.
"${topics[@]}" --create --if-not-exists --topic "$topic" \
    --partitions "$partitions" --replication-factor 1 \
    --config message.timestamp.type=LogAppendTime
# Rejects with their reason (contract 1); one partition, as the producers and the
# dataflow create it when it is missing; kept 30 days for inspection.
"${topics[@]}" --create --if-not-exists --topic "$topic.dlq" \
    --partitions 1 --replication-factor 1 --config retention.ms=2592000000 \
    --config message.timestamp.type=LogAppendTime

current="$("${topics[@]}" --describe --topic "$topic" \
    | sed -n 's/.*PartitionCount: *\([0-9][0-9]*\).*/\1/p' | head -n 1)"
if [ -n "$current" ] && [ "$current" -ne "$partitions" ]; then
    echo "kafka-init: $topic has $current partitions, STOCKPIPE_TOPIC_PARTITIONS says" \
        "$partitions; left as it is (see docs/operations.md," \
        "\"Changing a rule or adding partitions\")" >&2
fi
"${topics[@]}" --describe --topic "$topic" | head -n 1
echo "kafka-init: topics $topic and $topic.dlq are ready"
