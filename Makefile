# Strait: the two commands a newcomer needs are `make run` and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
RELEASE_DIR := target/release

.PHONY: run test deps build lint unit e2e fuzz mutants bench clean

## make run: install what is missing, build, start etcd, two demo backends registered through
## `strait register` in two regions, and the gateway with an etcd upstream.
run: deps build
	@bash scripts/demo.sh

## make test: install what is missing, then lint, unit tests, end-to-end tests (the short fault
## soak included) and a few seconds of each fuzz target from the committed seeds.
test: deps lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets
	bash fuzz/run.sh 5

## make fuzz: ten minutes per fuzz target (FUZZ_SECONDS to change it).
fuzz:
	bash fuzz/run.sh $${FUZZ_SECONDS:-600}

## make mutants: mutation testing of the pure-logic modules against the unit and property
## tests (cargo-mutants; the files are listed in .cargo/mutants.toml, the figures in
## docs/testing.md). About an hour on 2 cores (issue #32 added the call core); not part of `make test`.
mutants: deps
	command -v cargo-mutants >/dev/null || $(CARGO) install cargo-mutants --locked \
	  || $(CARGO) install cargo-mutants --locked --offline
	@# Exit 3 means "some mutants timed out": each such mutant turned a loop infinite and the
	@# tests noticed, so it counts as caught. Exit 2 (a mutant missed) fails.
	$(CARGO) mutants --jobs 1 --output target/mutants-report || [ $$? -eq 3 ]

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

## make bench: installs nginx, haproxy, nghttpx and h2load, then prints the CPU-per-call table
## (benches/cpu.sh, each proxy alone on one core) and the throughput/latency comparison
## (benches/run.sh); docs/benchmarks.md has the figures and the other benches.
bench: build
	@bash .ci/install-deps bench
	bash benches/cpu.sh
	bash benches/run.sh

clean:
	$(CARGO) clean
	rm -rf build
