#!/usr/bin/env bash
# Apache Kafka without Docker: the broker and its tools as jars from Maven Central (pom.xml beside
# this script, which holds the Kafka version), run with the machine's JDK (17 or newer). The test
# suite's brokers start through this script (tests/kafka_cluster.py); it also runs a broker or a
# tool by hand:
#
#   deploy/kafka/kafka.sh fetch                  download the jars once; prints their directory
#   deploy/kafka/kafka.sh version                the Kafka version (pom.xml's kafka.version)
#   deploy/kafka/kafka.sh random-uuid            a new cluster id
#   deploy/kafka/kafka.sh format CONFIG CLUSTER_ID
#                                                format a node's KRaft storage (its log.dirs)
#   deploy/kafka/kafka.sh server CONFIG [LOGDIR] run a broker in the foreground, logging to
#                                                LOGDIR/server.log (default: CONFIG's directory)
#   deploy/kafka/kafka.sh topics ARGS...         kafka-topics.sh
#   deploy/kafka/kafka.sh configs ARGS...        kafka-configs.sh
#   deploy/kafka/kafka.sh run CLASS ARGS...      any other main class of the jars
#
# The jars go to $CDRWATCH_KAFKA_CACHE (default ~/.cache/cdrwatch/kafka-VERSION), outside the
# checkout, once: a later call finds them complete and asks Maven nothing. Maven's own repository
# (~/.m2) is where it always is; MAVEN_OPTS=-Dmaven.repo.local=DIR moves it.
#
# JVM options, as Kafka's own bin/ scripts name them: KAFKA_HEAP_OPTS (heap; default small, for
# test brokers on a laptop), KAFKA_JVM_PERFORMANCE_OPTS (GC and JIT) and KAFKA_OPTS (anything
# else, e.g. -D properties). The tools get a smaller heap and a JIT tuned for short runs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
VERSION="$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$POM")"
CACHE="${CDRWATCH_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cdrwatch/kafka-$VERSION}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

[[ -n "$VERSION" ]] || die "no <kafka.version> in $POM"

# The cache is complete when its stamp holds the checksum of the pom that filled it: a changed pom
# (another Kafka version, another dependency) fetches again.
pom_sum() {
    sha256sum "$POM" | cut -d' ' -f1
}

is_complete() {
    [[ -f "$CACHE/.complete" && "$(cat "$CACHE/.complete")" == "$(pom_sum)" ]]
}

fetch() {
    is_complete && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Apache Kafka $VERSION"
    mkdir -p "$(dirname "$CACHE")"
    # Test runs in parallel share the cache: one fetches, the others wait and find it complete.
    exec 9>"$CACHE.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if ! is_complete; then
        local partial
        partial="$(mktemp -d "$CACHE.partial.XXXXXX")"
        echo "kafka.sh: fetching Apache Kafka $VERSION from Maven Central into $CACHE" >&2
        # Copied beside the cache and moved into place: an interrupted fetch leaves no half cache.
        # Maven's output is shown only if it fails.
        if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$partial" >"$partial.log" 2>&1; then
            cat "$partial.log" >&2
            rm -rf "$partial" "$partial.log"
            die "could not fetch Apache Kafka $VERSION (mvn failed; see above)"
        fi
        rm -f "$partial.log"
        compgen -G "$partial/kafka_2.13-$VERSION.jar" >/dev/null || {
            rm -rf "$partial"
            die "Maven copied no kafka_2.13-$VERSION.jar"
        }
        pom_sum >"$partial/.complete"
        rm -rf "$CACHE"
        mv "$partial" "$CACHE"
    fi
    exec 9>&-
}

# The broker's JVM, sized for test brokers on two cores: a small heap (the log cleaner's dedupe
# buffer, log.cleaner.dedupe.buffer.size, must fit in it), the serial collector, and the quick JIT
# tier only: three brokers start in half the time, and a test's load never needs the optimising
# compiler (same produce and consume rates measured). Production brokers run the apache/kafka
# image with its own JVM options.
SERVER_HEAP_OPTS="-Xms64m -Xmx384m"
SERVER_JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:MaxMetaspaceSize=256m -Djava.awt.headless=true"
# A tool runs for a second or two.
TOOL_HEAP_OPTS="-Xmx256m"
TOOL_JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true"

run_java() {  # HEAP JVM LOG4J_CONFIG [-DNAME=VALUE...] CLASS ARGS...
    local heap="$1" jvm="$2" log4j="$3"
    shift 3
    fetch
    command -v "$JAVA" >/dev/null || die "a JDK (java, 17 or newer) is needed to run Apache Kafka $VERSION"
    # The option variables hold several options each: split on purpose, as Kafka's scripts do.
    # shellcheck disable=SC2086
    exec "$JAVA" $heap $jvm ${KAFKA_OPTS:-} -Dlog4j2.configurationFile="$log4j" -cp "$CACHE/*" "$@"
}

tool() {  # CLASS ARGS...
    run_java "${KAFKA_HEAP_OPTS:-$TOOL_HEAP_OPTS}" "${KAFKA_JVM_PERFORMANCE_OPTS:-$TOOL_JVM_OPTS}" \
        "$HERE/tools-log4j2.yaml" "$@"
}

command="${1:-}"
[[ $# -gt 0 ]] && shift
case "$command" in
    fetch)
        fetch
        echo "$CACHE"
        ;;
    version)
        echo "$VERSION"
        ;;
    random-uuid)
        tool kafka.tools.StorageTool random-uuid
        ;;
    format)
        [[ $# -eq 2 ]] || usage
        [[ -f "$1" ]] || die "no broker configuration $1"
        # --ignore-formatted: a node restarted on its data keeps it.
        tool kafka.tools.StorageTool format --config "$1" --cluster-id "$2" --ignore-formatted
        ;;
    server)
        [[ $# -ge 1 && $# -le 2 ]] || usage
        [[ -f "$1" ]] || die "no broker configuration $1"
        logs="${2:-$(dirname "$1")}"
        mkdir -p "$logs"
        # exec: the broker's JVM takes this process's id, so whoever started it can signal it.
        run_java "${KAFKA_HEAP_OPTS:-$SERVER_HEAP_OPTS}" "${KAFKA_JVM_PERFORMANCE_OPTS:-$SERVER_JVM_OPTS}" \
            "$HERE/log4j2.yaml" -Dkafka.logs.dir="$logs" kafka.Kafka "$1"
        ;;
    topics)
        tool org.apache.kafka.tools.TopicCommand "$@"
        ;;
    configs)
        tool org.apache.kafka.tools.ConfigCommand "$@"
        ;;
    run)
        [[ $# -ge 1 ]] || usage
        tool "$@"
        ;;
    *)
        usage
        ;;
esac
