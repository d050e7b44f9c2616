# AttentionKit: two commands.
#   make test   — build and run the test suite (installs OpenBLAS first if missing)
#   make bench  — run attention-bench's default suite in release mode
SWIFT ?= swift
APT_PACKAGES := pkg-config libopenblas-dev liblapacke-dev

# Homebrew's openblas is keg-only: point pkg-config at it.
ifeq ($(shell uname -s),Darwin)
  BREW_OPENBLAS := $(shell brew --prefix openblas 2>/dev/null)
  ifneq ($(BREW_OPENBLAS),)
    export PKG_CONFIG_PATH := $(BREW_OPENBLAS)/lib/pkgconfig:$(PKG_CONFIG_PATH)
  endif
endif

.PHONY: test bench deps

test: deps
	$(SWIFT) test
	@# The command-line tool, end to end on a tiny problem (checked against naive).
	$(SWIFT) run attention-bench --batch 2 --heads 4 --kv-heads 2 --query-length 33 --key-length 47 --dim 16 --mask causal --threads 2 --scaling-baseline 1 --repetitions 1 --format csv > /dev/null

bench: deps
	$(SWIFT) run -c release attention-bench

# OpenBLAS, found through pkg-config as `openblas`. On Debian/Ubuntu, installed with apt-get
# when missing (as root, or through sudo); elsewhere, say what to run.
deps:
	@if pkg-config --exists openblas 2>/dev/null; then exit 0; fi; \
	echo "pkg-config cannot find openblas: installing $(APT_PACKAGES)"; \
	if command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	  else echo "error: not root and no sudo; run as root: apt-get update && apt-get install -y $(APT_PACKAGES)"; exit 1; fi; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null || { \
	    echo "error: apt-get failed; run: sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES)"; exit 1; }; \
	elif command -v brew >/dev/null 2>&1; then \
	  echo "error: run: brew install openblas pkg-config   (this Makefile then finds it through brew --prefix openblas)"; exit 1; \
	else \
	  echo "error: install OpenBLAS with its pkg-config file (openblas.pc), e.g. libopenblas-dev on Debian/Ubuntu"; exit 1; \
	fi; \
	pkg-config --exists openblas || { echo "error: OpenBLAS installed but pkg-config still cannot find openblas.pc"; exit 1; }
