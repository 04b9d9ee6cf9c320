#!/usr/bin/env bash
# The SCRAM user cdrwatch connects as on the broker's SASL_SSL listener (deploy/kafka/sasl-ssl.env):
# run by the one-off `kafka-users` service (docker-compose.yml) before any worker starts. Nothing
# to do unless CDRWATCH_SECURITY_PROTOCOL is SASL_SSL (or SASL_PLAINTEXT).
#
# The user CDRWATCH_SASL_USERNAME is created in the cluster's metadata, or its password set to
# CDRWATCH_SASL_PASSWORD (so changing the password in .env and running `up` again changes it),
# through the broker's PLAINTEXT listener, which only the compose network reaches. The password
# goes to kafka-configs.sh in a file only this user can read, never on a command line.
#
# KAFKA_CONFIGS is the kafka-configs.sh to run: the image's by default, or a command and its first
# arguments (split on whitespace), such as "deploy/kafka/kafka.sh configs" (the same tool from
# Maven Central's jars, without Docker).
set -euo pipefail

read -r -a KAFKA_CONFIGS_COMMAND <<<"${KAFKA_CONFIGS:-/opt/kafka/bin/kafka-configs.sh}"
BOOTSTRAP_SERVER="${BOOTSTRAP_SERVER:-kafka:9092}"
PROTOCOL="${CDRWATCH_SECURITY_PROTOCOL:-PLAINTEXT}"
MECHANISM="${CDRWATCH_SASL_MECHANISM:-SCRAM-SHA-512}"
NAME="${CDRWATCH_SASL_USERNAME:-}"

die() {
    echo "create-users: $*" >&2
    exit 1
}

case "$PROTOCOL" in
    SASL_SSL | SASL_PLAINTEXT) ;;
    *)
        echo "create-users: CDRWATCH_SECURITY_PROTOCOL is $PROTOCOL: no SASL user to create"
        exit 0
        ;;
esac
case "$MECHANISM" in
    SCRAM-SHA-256 | SCRAM-SHA-512) ;;
    *) die "CDRWATCH_SASL_MECHANISM is $MECHANISM: only SCRAM users are kept in the cluster's metadata" ;;
esac
[[ ${#KAFKA_CONFIGS_COMMAND[@]} -gt 0 ]] || die "KAFKA_CONFIGS names no command"
[[ -n "$NAME" ]] || die "CDRWATCH_SASL_USERNAME is not set"
[[ -n "${CDRWATCH_SASL_PASSWORD:-}" ]] || die "CDRWATCH_SASL_PASSWORD is not set"
# kafka-configs.sh reads the file as Java properties, in ISO-8859-1: printable ASCII only (a
# backslash is escaped below).
LC_ALL=C
[[ "$CDRWATCH_SASL_PASSWORD" =~ ^[[:print:]]+$ ]] \
    || die "CDRWATCH_SASL_PASSWORD must be printable ASCII (letters, digits, punctuation, spaces)"

umask 077
credentials="$(mktemp)"
trap 'rm -f "$credentials"' EXIT
# Without the brackets of --add-config's form (`SCRAM-SHA-512=[password=...]`): in a file they
# would be taken as part of the password.
printf '%s=password=%s\n' "$MECHANISM" "${CDRWATCH_SASL_PASSWORD//\\/\\\\}" >"$credentials"
# Its own output only: the tool's error for a malformed credential quotes the password.
if ! output="$("${KAFKA_CONFIGS_COMMAND[@]}" --bootstrap-server "$BOOTSTRAP_SERVER" --alter \
    --entity-type users --entity-name "$NAME" --add-config-file "$credentials" 2>&1)"; then
    die "kafka-configs.sh could not set the $MECHANISM credential of $NAME on $BOOTSTRAP_SERVER: $(
        printf '%s' "$output" | grep -v -F -e "$CDRWATCH_SASL_PASSWORD" | tail -n 3)"
fi
echo "create-users: $MECHANISM user $NAME ready on $BOOTSTRAP_SERVER"
