# Parley's one entry point, the same for a person, CI and the README.
#
#   make run     start infrastructure and the four services, seed a demo, show a conversation
#   make test    lint (rustfmt, clippy -D warnings, buf lint) and every test, on real NATS,
#                Redis and PostgreSQL
#   make bench   the benchmark harness (raw JetStream anchor vs Parley end to end)
#   make fuzz    every fuzz target on its corpus and FUZZ_ITERS seeded mutants (200 000)
#   make lint    the lint part of `make test` alone
#   make infra-up / infra-down   the local NATS and Redis of `make run`

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)
NEXTEST_PROFILE := $(if $(CI),ci,default)

.PHONY: help run test lint fmt bench fuzz infra-up infra-down tools build

help:
	@sed -n 's/^#   //p' Makefile

tools:
	@deploy/local/infra.sh tools

build:
	$(CARGO) build --workspace --bins

run:
	@deploy/local/run.sh

lint: tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd tools/buf && npm install --silent --no-audit --no-fund >/dev/null 2>&1 && cd ../../proto && ../tools/buf/node_modules/.bin/buf lint

fmt:
	$(CARGO) fmt --all

test: lint
	$(CARGO) build --workspace --bins --locked
	source .parley/test.env && \
	$(if $(NEXTEST),$(CARGO) nextest run --workspace --locked --profile $(NEXTEST_PROFILE),$(CARGO) test --workspace --locked)

bench: tools
	$(CARGO) build --release --locked --bins -p parley-bench -p parley-routing
	source .parley/test.env && target/release/parley-bench $(BENCH_ARGS)

FUZZ_ITERS ?= 200000

fuzz:
	PARLEY_FUZZ_ITERS=$(FUZZ_ITERS) \
	$(if $(NEXTEST),$(CARGO) nextest run -p parley-fuzz --locked --profile fuzz,$(CARGO) test -p parley-fuzz --locked)

infra-up:
	@deploy/local/infra.sh up

infra-down:
	@deploy/local/infra.sh down
