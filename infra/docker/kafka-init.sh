#!/usr/bin/env bash
# One-shot job of docker-compose.yml (runs in the apache/kafka image): create the
# tick topic and its dead-letter topic, and grow the tick topic when
# STOCKPIPE_TOPIC_PARTITIONS was raised. Idempotent; safe on every `up`.
#
# Partitions are the unit of parallelism of the stream: Bytewax spreads them
# over its worker processes, so have at least as many partitions as workers.
# Kafka can add partitions but never remove them, so this only ever grows.
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
topic="${STOCKPIPE_TOPIC:-stock.ticks}"
partitions="${STOCKPIPE_TOPIC_PARTITIONS:-8}"
topics=(/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bootstrap")

# Ticks: key = symbol, so one symbol's ticks stay in order in one partition.
"${topics[@]}" --create --if-not-exists --topic "$topic" \
    --partitions "$partitions" --replication-factor 1
# Rejects with their reason (contract 1); one partition, as the producers and the
# dataflow create it when it is missing; kept 30 days for inspection.
"${topics[@]}" --create --if-not-exists --topic "$topic.dlq" \
    --partitions 1 --replication-factor 1 --config retention.ms=2592000000

current="$("${topics[@]}" --describe --topic "$topic" \
    | sed -n 's/.*PartitionCount: *\([0-9][0-9]*\).*/\1/p' | head -n 1)"
if [ -n "$current" ] && [ "$current" -lt "$partitions" ]; then
    # New partitions change which partition a symbol hashes to; the dataflow keys
    # its state by symbol and orders by event time, so this is safe while running.
    echo "growing $topic from $current to $partitions partitions"
    "${topics[@]}" --alter --topic "$topic" --partitions "$partitions"
fi
"${topics[@]}" --describe --topic "$topic" | head -n 1
echo "kafka-init: topics $topic and $topic.dlq are ready"
