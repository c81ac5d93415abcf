# Strait: the two commands a newcomer needs are `make run` and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
RELEASE_DIR := target/release
DEMO_DIR := build/demo

.PHONY: run test deps build lint unit e2e bench clean

## make run: install what is missing, build, start two demo backends and the gateway.
run: deps build
	@mkdir -p $(DEMO_DIR)
	@set -euo pipefail; \
	trap 'trap - EXIT; echo; echo "stopping demo"; kill $$(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT INT TERM; \
	$(RELEASE_DIR)/strait-echo --listen 127.0.0.1:50051 --name echo-eu-west > $(DEMO_DIR)/echo-eu-west.log 2>&1 & \
	$(RELEASE_DIR)/strait-echo --listen 127.0.0.1:50052 --name echo-us-east > $(DEMO_DIR)/echo-us-east.log 2>&1 & \
	$(RELEASE_DIR)/strait run --config config/strait.toml & \
	sleep 1; \
	echo; \
	echo "Strait is listening on 127.0.0.1:8080 (h2c), routing bench.Echo to two backends:"; \
	echo "  echo-eu-west 127.0.0.1:50051 (weight 100, the gateway's own region)"; \
	echo "  echo-us-east 127.0.0.1:50052 (weight 50)"; \
	echo; \
	echo "Call it from another terminal:"; \
	echo "  $(RELEASE_DIR)/strait-loadgen --target 127.0.0.1:8080 --calls 10 --show"; \
	echo "  $(RELEASE_DIR)/strait-loadgen --target 127.0.0.1:8080 --calls 10 --show --region us-east"; \
	echo "  grpcurl -plaintext -import-path tests/proto -proto echo.proto 127.0.0.1:8080 bench.Echo/Unary"; \
	echo; \
	echo "Press Ctrl-C to stop."; \
	wait

## make test: install what is missing, then lint, unit tests and end-to-end tests.
test: deps lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets

deps:
	@bash .ci/install-deps

build:
	$(CARGO) build --release --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test -p strait

e2e:
	$(CARGO) build --workspace --bins
	$(CARGO) test -p strait-tests --test e2e

## make bench: the throughput/latency comparison in docs/benchmarks.md (needs nginx).
bench: build
	@bash .ci/install-deps nginx
	bash benches/run.sh

clean:
	$(CARGO) clean
	rm -rf build
