# The only entry points a user needs. Every target installs what it is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := frame_decoder message_decode
# cargo-fuzz needs nightly -Z flags; RUSTC_BOOTSTRAP lets the one stable toolchain accept them.
FUZZ_ENV := RUSTC_BOOTSTRAP=1

.PHONY: help deps deps-rust build test lint unit fuzz fuzz-regressions demo clean

help:
	@echo "make demo    boot a containerVM under QEMU and show its output"
	@echo "make test    all tests (installs what they need)"
	@echo "make fuzz    run every fuzz target for FUZZ_SECONDS (default $(FUZZ_SECONDS)) each"
	@echo "make deps    install system packages and rust targets"

deps:
	./scripts/install-deps.sh all

deps-rust:
	./scripts/install-deps.sh rust

build: deps-rust
	$(CARGO) build --workspace --release

lint: deps-rust
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: deps-rust
	$(CARGO) test --workspace

# Inputs that once crashed a fuzz target live in wire/fuzz/regressions/<target>/ and are replayed
# here through the same target code, without the fuzzer.
fuzz-regressions:
	$(CARGO) test -p wire --test fuzz_regressions

test: lint unit fuzz-regressions

fuzz: deps-rust
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd wire/fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t; \
		$(FUZZ_ENV) $(CARGO) fuzz run $$t corpus/$$t ../fuzz/regressions/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 || exit 1; \
	done

demo:
	@echo "make demo boots a containerVM; it needs tether, the appliance and the toolchain," >&2
	@echo "which are not in this tree yet (issues [tether], [appliance], [toolchain])." >&2
	@exit 1

clean:
	$(CARGO) clean
