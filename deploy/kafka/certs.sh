#!/usr/bin/env bash
# A private certificate authority and the broker's certificate for Kafka's SASL_SSL listener,
# made with keytool (it comes with the JDK that runs Kafka). The test suite's SASL_SSL broker gets
# its certificates from this script too (tests/kafka_cluster.py).
#
#   deploy/kafka/certs.sh DIR NAME...   the CA (made once, kept) and a broker certificate for
#                                       NAME... (host names and IP addresses clients connect to,
#                                       e.g. kafka localhost 127.0.0.1)
#   deploy/kafka/certs.sh DIR           the CA only
#
# DIR gets the files the apache/kafka image reads from /etc/kafka/secrets (docker-compose.yml
# mounts KAFKA_SECRETS_DIR there, deploy/kafka/sasl-ssl.env names them; deploy/kafka/SASL_SSL.md):
#
#   broker.p12       the broker's key and certificate chain (PKCS12)  KAFKA_SSL_KEYSTORE_FILENAME
#   broker-password  the password of broker.p12 and of its key        KAFKA_SSL_KEYSTORE_CREDENTIALS,
#                                                                     KAFKA_SSL_KEY_CREDENTIALS
#   ca.pem           the CA's certificate: what cdrwatch trusts       CDRWATCH_SSL_CAFILE
#   ca.p12           the CA's key (password: ca-password): needed to issue another broker
#   ca-password      certificate; the broker does not read them: CDRWATCH_KAFKA_CA_DIR=DIR2
#                    keeps them in DIR2 instead (ca.pem is written to both)
#
# An existing CA is kept (certificates it issued stay trusted); an existing broker certificate is
# replaced. A CA of your own: put its certificate in ca.pem and import a broker certificate it
# signed into broker.p12 instead of running this.
set -euo pipefail

die() {
    echo "certs.sh: $*" >&2
    exit 1
}

[[ $# -ge 1 ]] || die "usage: certs.sh DIR [NAME...]"
DIR="$1"
shift
KEYTOOL="${JAVA_HOME:+$JAVA_HOME/bin/}keytool"
command -v "$KEYTOOL" >/dev/null || die "keytool (from a JDK, 17 or newer) is needed"
# keytool is a short Java program: the quick JIT tier and a small heap start it faster.
JVM=(-J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC -J-Xmx64m)
CA_DAYS="${CDRWATCH_CA_DAYS:-3650}"
BROKER_DAYS="${CDRWATCH_CERT_DAYS:-825}"

CA_DIR="${CDRWATCH_KAFKA_CA_DIR:-$DIR}"
mkdir -p "$DIR" "$CA_DIR"
umask 077

new_password() {
    # 32 characters of [A-Za-z0-9] (512 random bytes hold about 120 of them): nothing a
    # properties file, a shell or the image's scripts would read specially.
    local random
    random="$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
    printf '%s' "${random:0:32}"
}

password_file() {  # FILE: its password, made first if the file does not exist
    [[ -s "$1" ]] || new_password >"$1"
    cat "$1"
}

run_keytool() {
    "$KEYTOOL" "${JVM[@]}" "$@"
}

make_ca() {
    if [[ ! -f "$CA_DIR/ca.p12" ]]; then
        run_keytool -genkeypair -noprompt -alias ca -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA \
            -dname "CN=cdrwatch Kafka CA" -validity "$CA_DAYS" \
            -ext bc:c=ca:true,pathlen:0 -ext ku:c=keyCertSign,cRLSign \
            -keystore "$CA_DIR/ca.p12" -storetype PKCS12 -storepass "$CA_PASSWORD" 2>/dev/null \
            || die "could not make the CA in $CA_DIR/ca.p12"
    fi
    run_keytool -exportcert -rfc -alias ca -keystore "$CA_DIR/ca.p12" -storepass "$CA_PASSWORD" \
        -file "$CA_DIR/ca.pem" >/dev/null 2>&1 \
        || die "could not read the CA from $CA_DIR/ca.p12 (with the password in $CA_DIR/ca-password)"
    chmod 644 "$CA_DIR/ca.pem"
    if [[ ! "$CA_DIR" -ef "$DIR" ]]; then
        cp "$CA_DIR/ca.pem" "$DIR/ca.pem"
        chmod 644 "$DIR/ca.pem"
    fi
}

make_broker_key() {  # a new key each time, in a keystore made beside the old one
    run_keytool -genkeypair -noprompt -alias broker -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA \
        -dname "CN=$1" -validity "$BROKER_DAYS" \
        -keystore "$work/broker.p12" -storetype PKCS12 -storepass "$BROKER_PASSWORD" 2>/dev/null \
        || die "could not make the broker's key"
    run_keytool -certreq -alias broker -keystore "$work/broker.p12" -storepass "$BROKER_PASSWORD" \
        -file "$work/broker.csr" 2>/dev/null || die "could not make the broker's certificate request"
}

CA_PASSWORD="$(password_file "$CA_DIR/ca-password")"
if [[ $# -eq 0 ]]; then
    make_ca
    echo "certs.sh: CA in $CA_DIR (ca.pem)"
    exit 0
fi

san=()
for name in "$@"; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
        san+=("ip:$name")
    else
        san+=("dns:$name")
    fi
done
SAN="$(IFS=,; echo "${san[*]}")"

BROKER_PASSWORD="$(password_file "$DIR/broker-password")"
work="$(mktemp -d "$DIR/.broker.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The CA and the broker's key do not depend on each other: made side by side (a JVM each).
make_ca &
ca_job=$!
make_broker_key "$1" &
key_job=$!
wait "$ca_job" || exit 1
wait "$key_job" || exit 1
run_keytool -gencert -rfc -alias ca -keystore "$CA_DIR/ca.p12" -storepass "$CA_PASSWORD" -validity "$BROKER_DAYS" \
    -ext "san=$SAN" -ext ku:c=digitalSignature -ext eku=serverAuth \
    -infile "$work/broker.csr" -outfile "$work/broker.pem" 2>/dev/null || die "the CA could not sign the broker's certificate"
# The reply holds the whole chain, root included, so the keystore needs no separate CA entry.
cat "$work/broker.pem" "$DIR/ca.pem" >"$work/chain.pem"
run_keytool -importcert -noprompt -alias broker -keystore "$work/broker.p12" -storepass "$BROKER_PASSWORD" \
    -file "$work/chain.pem" >/dev/null 2>&1 || die "could not import the signed certificate into broker.p12"
mv "$work/broker.p12" "$DIR/broker.p12"
echo "certs.sh: broker certificate for $* in $DIR (broker.p12), CA in $DIR (ca.pem)"
