#!/usr/bin/env bash
# Lays out cdrwatch's topics on the production broker, idempotently: run by the one-off
# `topics-init` service (docker-compose.yml) before any worker starts. The broker runs with
# auto.create.topics.enable=false, so these are the only topics there are.
#
# Faust's own topics (table changelogs, repartition topics, the assignor's leader topic) are
# NOT created here: the workers create them at start-up, with CDRWATCH_PARTITIONS partitions,
# through the admin API.
#
# --if-not-exists never changes an existing topic: to change its retention later, use
# kafka-configs.sh --alter. Its partition count must not change at all (keys -> partitions
# would move under the workers' state), so a mismatch stops this script, and the workers.
#
# KAFKA_TOPICS is the kafka-topics.sh to run: the image's by default, or a command and its first
# arguments (split on whitespace), such as "deploy/kafka/kafka.sh topics", which runs the same tool
# from Maven Central's jars without Docker (the test suite lays out its brokers so).
set -euo pipefail

read -r -a KAFKA_TOPICS_COMMAND <<<"${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"
BOOTSTRAP_SERVER="${BOOTSTRAP_SERVER:-kafka:9092}"
PARTITIONS="${CDRWATCH_PARTITIONS:-12}"
REPLICATION_FACTOR="${CDRWATCH_REPLICATION_FACTOR:-1}"

DAY_MS=86400000
# Inputs: a whole calendar month can be re-processed, plus margin for late CDRs.
INPUT_RETENTION_MS=$((40 * DAY_MS))
# Alerts, re-bill lines, account actions: a billing year plus time for disputes.
OUTPUT_RETENTION_MS=$((400 * DAY_MS))

# Keyed by user and co-partitioned: a worker finds a user's subscriber record, CDRs and
# registrations in the same partition number, and Faust sizes its changelogs to match.
INPUT_TOPICS=(cdrs sip-registrations subscribers fraud-feedback)
OUTPUT_TOPICS=(fairuse-alerts rebilled-calls fraud-alerts account-actions)
DLQ_TOPICS=(cdrs-dlq sip-registrations-dlq subscribers-dlq fraud-feedback-dlq)

die() {
    echo "create-topics: $*" >&2
    exit 1
}

[[ ${#KAFKA_TOPICS_COMMAND[@]} -gt 0 ]] || die "KAFKA_TOPICS names no command"
for value in "$PARTITIONS" "$REPLICATION_FACTOR"; do
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "partitions and replication factor must be positive integers, got '$value'"
done

create() {
    local topic="$1"
    shift
    echo "create-topics: $topic ($PARTITIONS partitions, replication $REPLICATION_FACTOR) $*"
    "${KAFKA_TOPICS_COMMAND[@]}" --bootstrap-server "$BOOTSTRAP_SERVER" --create --if-not-exists \
        --topic "$topic" --partitions "$PARTITIONS" --replication-factor "$REPLICATION_FACTOR" "$@"
}

create cdrs --config "retention.ms=$INPUT_RETENTION_MS"
create sip-registrations --config "retention.ms=$INPUT_RETENTION_MS"
# user -> {customer, plan}: only the latest record per user matters, kept forever.
create subscribers --config cleanup.policy=compact
# an analyst's verdicts on fraud alerts (cdrwatch console): the workers' input, and an audit trail.
create fraud-feedback --config "retention.ms=$OUTPUT_RETENTION_MS"
for topic in "${OUTPUT_TOPICS[@]}"; do
    create "$topic" --config "retention.ms=$OUTPUT_RETENTION_MS"
done
# Raw bytes and a reason: kept as long as the inputs, so a bad batch can be replayed once fixed.
for topic in "${DLQ_TOPICS[@]}"; do
    create "$topic" --config "retention.ms=$INPUT_RETENTION_MS"
done

# One --describe for all of them (a JVM start each costs seconds); --topic takes a regex there.
all_topics=("${INPUT_TOPICS[@]}" "${OUTPUT_TOPICS[@]}" "${DLQ_TOPICS[@]}")
pattern="$(IFS='|'; echo "${all_topics[*]}")"
described="$("${KAFKA_TOPICS_COMMAND[@]}" --bootstrap-server "$BOOTSTRAP_SERVER" --describe --topic "$pattern")"
# Summary lines read "Topic: cdrs<TAB>TopicId: ...<TAB>PartitionCount: 12<TAB>...".
counts="$(awk '/PartitionCount:/ {
    for (i = 1; i < NF; i++) {
        if ($i == "Topic:") topic = $(i + 1)
        if ($i == "PartitionCount:") count = $(i + 1)
    }
    print topic, count
}' <<<"$described")"

partitions_of() {
    awk -v topic="$1" '$1 == topic { print $2 }' <<<"$counts"
}

status=0
for topic in "${all_topics[@]}"; do
    actual="$(partitions_of "$topic")"
    if [[ -z "$actual" ]]; then
        echo "create-topics: $topic is missing after creation" >&2
        status=1
    elif [[ "$actual" != "$PARTITIONS" ]]; then
        if [[ " ${INPUT_TOPICS[*]} " == *" $topic "* ]]; then
            echo "create-topics: $topic has $actual partitions, CDRWATCH_PARTITIONS is $PARTITIONS:" \
                "inputs must all have the workers' partition count (co-partitioning)." \
                "Set CDRWATCH_PARTITIONS=$actual, or migrate to new topics." >&2
            status=1
        else
            echo "create-topics: warning: $topic has $actual partitions, not $PARTITIONS" >&2
        fi
    fi
done
[[ $status -eq 0 ]] || die "topic layout does not match; workers must not start on it"
echo "create-topics: ${#all_topics[@]} topics ready on $BOOTSTRAP_SERVER"
