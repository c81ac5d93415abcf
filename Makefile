# Strait: the two commands a newcomer needs are `make run` and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
RELEASE_DIR := target/release
DEMO_DIR := build/demo

.PHONY: run test deps build lint unit e2e fuzz bench clean

## make run: install what is missing, build, start etcd, two demo backends registered through
## `strait register` in two regions, and the gateway with an etcd upstream.
run: deps build
	@rm -rf $(DEMO_DIR)/etcd && mkdir -p $(DEMO_DIR)
	@set -euo pipefail; \
	trap 'trap - EXIT; echo; echo "stopping demo"; kill $$(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT INT TERM; \
	ETCD=$$(command -v etcd || echo /usr/bin/etcd); \
	$$ETCD --name demo --data-dir $(DEMO_DIR)/etcd --listen-client-urls http://127.0.0.1:2379 \
	  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
	  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster demo=http://127.0.0.1:2380 \
	  --logger zap --log-level error > $(DEMO_DIR)/etcd.log 2>&1 & \
	for i in $$(seq 100); do (echo > /dev/tcp/127.0.0.1/2379) 2>/dev/null && break; sleep 0.1; done; \
	$(RELEASE_DIR)/strait-echo --listen 127.0.0.1:50051 --name echo-eu-west > $(DEMO_DIR)/echo-eu-west.log 2>&1 & \
	ECHO_EU=$$!; \
	$(RELEASE_DIR)/strait-echo --listen 127.0.0.1:50052 --name echo-us-east > $(DEMO_DIR)/echo-us-east.log 2>&1 & \
	$(RELEASE_DIR)/strait register --etcd http://127.0.0.1:2379 --service echo --addr 127.0.0.1:50051 \
	  --id echo-eu-west --version v1.0.0 --weight 100 --label region=eu-west --label env=demo \
	  --ttl 5s --health-check --drain 3s > $(DEMO_DIR)/register-eu-west.log 2>&1 & \
	REG_EU=$$!; \
	$(RELEASE_DIR)/strait register --etcd http://127.0.0.1:2379 --service echo --addr 127.0.0.1:50052 \
	  --id echo-us-east --version v1.0.0 --weight 50 --label region=us-east --label env=demo \
	  --ttl 5s --health-check --drain 3s > $(DEMO_DIR)/register-us-east.log 2>&1 & \
	$(RELEASE_DIR)/strait run --config config/strait.toml & \
	sleep 2; \
	echo; \
	echo "Strait is listening on 127.0.0.1:8080 (h2c), routing bench.Echo to the instances registered in etcd:"; \
	echo "  echo-eu-west 127.0.0.1:50051 (weight 100, the gateway's own region)"; \
	echo "  echo-us-east 127.0.0.1:50052 (weight 50)"; \
	echo "Status page: http://127.0.0.1:9901/   metrics: curl 127.0.0.1:9901/metrics"; \
	echo; \
	echo "Call it from another terminal:"; \
	echo "  $(RELEASE_DIR)/strait-loadgen --target 127.0.0.1:8080 --calls 10 --show"; \
	echo "  $(RELEASE_DIR)/strait-loadgen --target 127.0.0.1:8080 --calls 10 --show --region us-east"; \
	echo; \
	echo "Drain and kill a backend under load without a failed call:"; \
	echo "  $(RELEASE_DIR)/strait-loadgen --target 127.0.0.1:8080 --rate 200 --duration 15 &"; \
	echo "  kill -TERM $$REG_EU; sleep 4; kill $$ECHO_EU    # the eu-west registrar drains (weight 0, 3 s), then its backend dies"; \
	echo "  (the load generator prints errors=0; calls move to us-east)"; \
	echo; \
	echo "Press Ctrl-C to stop."; \
	wait

## make test: install what is missing, then lint, unit tests, end-to-end tests (the short fault
## soak included) and a few seconds of each fuzz target from the committed seeds.
test: deps lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets
	bash fuzz/run.sh 5

## make fuzz: ten minutes per fuzz target (FUZZ_SECONDS to change it).
fuzz:
	bash fuzz/run.sh $${FUZZ_SECONDS:-600}

deps:
	@bash .ci/install-deps

build:
	$(CARGO) build --release --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test -p strait

e2e:
	$(CARGO) build --workspace --bins
	$(CARGO) test -p strait-tests --test e2e

## make bench: the throughput/latency comparison in docs/benchmarks.md (needs nginx).
bench: build
	@bash .ci/install-deps bench
	bash benches/run.sh

clean:
	$(CARGO) clean
	rm -rf build
