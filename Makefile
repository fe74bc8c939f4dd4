# cc-relay — build, run, test. `make run` and `make test` work on a fresh machine: they install
# what the build needs first (cmake for Pingora's zlib-ng, the Anthropic Python SDK for its test).

CARGO ?= cargo
PYTHON ?= python3
CONFIG ?=

.PHONY: all build run test lint fmt bench load silent-clients soak demo deps deps-build deps-test deps-fuzz fuzz fuzz-smoke clean

all: build

# Pingora's flate2/zlib-ng needs cmake and a C compiler even with rustls.
deps-build:
	@command -v cmake >/dev/null 2>&1 || { \
		echo "installing cmake (needed to build Pingora)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake >/dev/null; }
	@command -v cc >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq build-essential >/dev/null; }

# The end-to-end SDK test drives the relay with the official Anthropic Python SDK; the TLS test
# makes its certificates with the openssl CLI; the status page test loads /ui in headless
# Chromium; the switching test runs Claude Code's CLI (from npm) with the settings
# `config cc init` wrote; the shared_state tests run a real redis-server (each test starts its
# own on a free loopback port, without persistence).
deps-test:
	@command -v openssl >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssl >/dev/null; }
	@[ -n "$$CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (the status page test loads /ui in headless Chromium)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@$(PYTHON) -c "import anthropic" 2>/dev/null || { \
		echo "installing the anthropic Python SDK (for the SDK end-to-end test)"; \
		$(PYTHON) -m pip install -q anthropic || $(PYTHON) -m pip install -q --break-system-packages anthropic; }
	@[ -n "$$CLAUDE_CODE_BIN" ] || [ -x target/claude-code/node_modules/.bin/claude ] || { \
		echo "installing Claude Code's CLI (a test runs it against the relay)"; \
		command -v npm >/dev/null 2>&1 || { \
			SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
			$$SUDO apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }; \
		npm install --silent --no-fund --no-audit --prefix target/claude-code @anthropic-ai/claude-code; }
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (the shared_state tests start their own on loopback)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@$(PYTHON) -c "import prometheus_client" 2>/dev/null || { \
		echo "installing prometheus_client (its parser checks the relay's metrics in a test)"; \
		$(PYTHON) -m pip install -q prometheus_client || $(PYTHON) -m pip install -q --break-system-packages prometheus_client; }

deps: deps-build deps-test

# The `dist` profile (Cargo.toml): release with fat LTO, the binary to run and measure.
build: deps-build
	$(CARGO) build --profile dist --workspace --bins

# Runs the relay: with CONFIG=path, that file; otherwise ./cc-relay.yaml,
# ~/.config/cc-relay/config.yaml, or the embedded default (127.0.0.1:8787, Anthropic,
# ANTHROPIC_API_KEY when set, else the client's own credentials pass through).
run: build
	./target/dist/cc-relay serve $(if $(CONFIG),--config $(CONFIG))

# --no-fail-fast: every test binary runs even when one fails, so a run reports all of them.
test: deps
	$(CARGO) test --release --workspace --no-fail-fast

# Fuzzing (nightly + cargo-fuzz): every target for FUZZ_SECONDS each, from the committed seeds
# (fuzz/seeds/, read only) and what earlier runs found (target/fuzz-corpus/). A crash stops
# the run with its input in fuzz/artifacts/. `fuzz-smoke` is CI's 30 s each.
FUZZ_TARGETS := config_load request_facts sse_usage json_usage rate_limit_headers bedrock_event_stream
FUZZ_SECONDS ?= 600

deps-fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || { 		echo "installing cargo-fuzz"; $(CARGO) install --locked cargo-fuzz; }

fuzz: deps-build deps-fuzz
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t; \
		echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
		( cd fuzz && cargo +nightly fuzz run --sanitizer none --debug-assertions $$t \
			../target/fuzz-corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) \
			-print_final_stats=1 ) || exit 1; \
	done

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=30

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: deps-build
	$(CARGO) bench

# Side-by-side load test: direct to the mock, through cc-relay, through nginx (see docs/BENCHMARKS.md).
load: build
	bash scripts/load.sh

# Issue 26's acceptance run: 4,096 silent connections (half half a TLS ClientHello) and 2,000
# idle HTTP/2 connections closed by the relay's deadlines while a normal client is served.
silent-clients: build
	bash scripts/silent_clients.sh

# Memory under constant load: the relay's and the bare Pingora proxy's RSS every 10 s, 30 min of
# SSE then 30 min of JSON (docs/BENCHMARKS.md, "Soak").
soak: build
	SOAK_DURATION=1800 SCENARIO=sse bash scripts/soak.sh
	SOAK_DURATION=1800 SCENARIO=json bash scripts/soak.sh

# The relay in front of the mock upstream, with a two-key pool: try it with curl or Claude Code.
demo: build
	bash scripts/demo.sh

clean:
	$(CARGO) clean
