# cdrwatch — `make run` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast bench soak clean uncompiled kafka prometheus kamailio poppler chromium check

install: $(STAMP)

# The install compiles streams/core and streams/codecs.py with mypyc (hatch-mypyc, ~30 s), so it
# runs again when they change: a stale extension would shadow the new source.
COMPILED := $(wildcard streams/core/*.py streams/core/*/*.py) streams/codecs.py streams/processor.py

$(STAMP): pyproject.toml $(COMPILED)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# The same project without the compiled extensions (pure Python: same behaviour, slower).
uncompiled:
	rm -f streams/*.so streams/core/*.so streams/core/*/*.so ./*__mypyc*.so
	rm -f $(HOME)/.calfkit/bin/tansu-*  # the broker binary older versions copied out of the environment
	$(PYTHON) -m venv $(VENV)
	HATCH_BUILD_NO_HOOKS=true $(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: install
	$(BIN)/cdrwatch run

# Apache Kafka for the integration tests (marker kafka): the broker's jars from Maven Central, once,
# into a cache outside the checkout (deploy/kafka/kafka.sh; needs a JDK and Maven).
kafka:
	bash deploy/kafka/kafka.sh fetch >/dev/null

# Prometheus and promtool, for the tests of the dashboard and the alerting rules: Debian's package,
# installed with apt when missing (as root, or through sudo).
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian's prometheus package (apt-get)"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends prometheus >/dev/null; }

# Kamailio (registrar and proxy, with the dialog, http_client and jansson modules) and SIPp, for the
# end-to-end test of events from a real switch: Debian's packages, installed with apt when missing.
kamailio:
	@command -v kamailio >/dev/null && command -v sipp >/dev/null \
		&& [ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/http_client.so ] \
		&& [ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/jansson.so ] || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian's kamailio and sip-tester packages (apt-get)"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends kamailio kamailio-utils-modules kamailio-extra-modules sip-tester >/dev/null; }

# poppler-utils, to read the statements' PDFs back in their test (pdftotext, pdftoppm), and
# HarfBuzz's subsetter, which WeasyPrint uses to embed fonts: Debian's packages, when missing.
poppler:
	@command -v pdftoppm >/dev/null && command -v pdftotext >/dev/null && ldconfig -p | grep -q libharfbuzz-subset || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian's poppler-utils and libharfbuzz-subset0 packages (apt-get)"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends poppler-utils libharfbuzz-subset0 >/dev/null; }

# Chromium, for the alert console's browser test (Playwright drives it; it downloads no browser of
# its own): Debian's package, when missing.
chromium:
	@command -v chromium >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian's chromium package (apt-get)"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends chromium fonts-dejavu-core >/dev/null; }

test: install kafka prometheus kamailio poppler chromium
	$(BIN)/python -m pytest

# Static checks, zero errors: ruff (pyflakes, pycodestyle, no naive datetime) on the code and the
# tests, and mypy --strict on the whole streams package (pyproject.toml's [tool.ruff], [tool.mypy]).
check: install
	$(BIN)/ruff check streams tests
	$(BIN)/mypy

test-fast: install
	$(BIN)/python -m pytest -m 'not integration'

# The benchmarks of the README's Performance section (print the figures; ~19 min): on the embedded
# broker, then 1 against 2 worker processes there; then at-least-once against exactly-once, 1
# against 2 worker processes, and the quix-streams peer against cdrwatch, each on a one-node
# Apache Kafka started for it.
bench: install kafka
	$(BIN)/cdrwatch bench --users 20000 --cdrs 300000 --out bench.json
	$(BIN)/cdrwatch bench --scale-out --users 20000 --cdrs 300000 --out bench-scale-out.json
	$(BIN)/python -m tests.kafka_cluster $(BIN)/cdrwatch bench --broker {url} --users 20000 --cdrs 300000 \
		--out bench-kafka.json
	$(BIN)/python -m tests.kafka_cluster $(BIN)/cdrwatch bench --scale-out --broker {url} --users 20000 \
		--cdrs 300000 --out bench-kafka-scale-out.json
	$(BIN)/python -m tests.kafka_cluster $(BIN)/cdrwatch bench --peer --broker {url} --users 20000 --cdrs 300000 \
		--out bench-peer.json

# Long runs: 30,000+ property-test inputs, and a 5,000-user generated month replayed and scored.
soak: install
	CDRWATCH_PROPERTY_EXAMPLES=3000 $(BIN)/python -m pytest tests/unit/test_properties.py
	rm -rf soak && $(BIN)/cdrwatch generate --users 5000 --month 2026-11 --seed 2026 --out soak/month
	$(BIN)/cdrwatch replay --cdrs soak/month/cdrs.jsonl --registrations soak/month/registrations.jsonl --out soak/replay
	$(BIN)/cdrwatch evaluate --labels soak/month/labels.jsonl --alerts soak/replay/alerts.jsonl --strict

clean:
	rm -rf $(VENV) .pytest_cache build
	rm -f streams/*.so streams/core/*.so streams/core/*/*.so ./*__mypyc*.so
	rm -f $(HOME)/.calfkit/bin/tansu-*  # the broker binary older versions copied out of the environment
