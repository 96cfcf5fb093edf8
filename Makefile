# The only entry points a user needs. Every target installs what it is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := frame_decoder message_decode handshake vmx_decode api_request
# cargo-fuzz needs nightly -Z flags; RUSTC_BOOTSTRAP lets the one stable toolchain accept them.
FUZZ_ENV := RUSTC_BOOTSTRAP=1

.PHONY: help deps deps-rust build tether kernel boot test lint unit fuzz fuzz-regressions bench demo clean

TETHER_BIN := target/x86_64-unknown-linux-musl/release/tether
TETHER_MAX_BYTES := 2097152

help:
	@echo "make demo    boot a containerVM under QEMU and show its output"
	@echo "make test    all tests (installs what they need)"
	@echo "make fuzz    run every fuzz target for FUZZ_SECONDS (default $(FUZZ_SECONDS)) each"
	@echo "make bench   measure boot, throughput and footprint into docs/benchmarks.md"
	@echo "make deps    install system packages and rust targets"

deps:
	./scripts/install-deps.sh all

deps-rust:
	./scripts/install-deps.sh rust

build: deps-rust
	$(CARGO) build --workspace --release

# The guest agent: static, stripped, at most 2 MiB.
tether: deps-rust
	$(CARGO) build -p tether --release --target x86_64-unknown-linux-musl
	@file $(TETHER_BIN)
	@size=$$(stat -c %s $(TETHER_BIN)); echo "tether: $$size bytes (limit $(TETHER_MAX_BYTES))"; \
		test $$size -le $(TETHER_MAX_BYTES) || { echo "tether is over 2 MiB" >&2; exit 1; }

# What `appliance run` boots: the kernel and an initramfs with this tree's tether, in
# ~/.cache/tether/boot/ (outside the repo).
BOOT_DIR := $(HOME)/.cache/tether/boot
boot: tether kernel
	$(CARGO) build -q --release -p bootstrap-iso
	mkdir -p $(BOOT_DIR)
	cp "$$(./kernel-config/build.sh | tail -n 1)" $(BOOT_DIR)/bzImage
	target/release/bootstrap-iso initramfs --tether $(TETHER_BIN) -o $(BOOT_DIR)/initramfs.gz

# The containerVM kernel, cached under ~/.cache/tether/kernel/<config hash>/.
kernel:
	./scripts/install-deps.sh system
	./kernel-config/build.sh

lint: deps-rust
	python3 scripts/check-imports.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Includes the QEMU tier (tests/): it builds the kernel once (cached under ~/.cache) and boots
# real containerVMs, so it needs the system packages too.
unit: deps
	$(CARGO) test --workspace

# Inputs that once crashed a fuzz target (and the seeds) live in fuzz/regressions/<target>/ and
# are replayed here through the same target code, without the fuzzer.
fuzz-regressions:
	$(CARGO) test -p wire -p guestinfo -p appliance-side --test fuzz_regressions

test: lint unit fuzz-regressions

fuzz: deps-rust
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t; \
		$(FUZZ_ENV) $(CARGO) fuzz run $$t corpus/$$t regressions/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 || exit 1; \
	done

# Boot, stream and footprint measurements, side by side with a trivial-init baseline; writes
# docs/benchmarks.md. Takes a few minutes (real VMs under TCG).
bench: deps
	$(CARGO) run -q --release -p e2e --bin bench

# Builds everything it needs, boots the busybox sample image as a containerVM, shows its output.
demo:
	./scripts/demo.sh

clean:
	$(CARGO) clean
