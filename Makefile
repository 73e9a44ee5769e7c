# snaplab: see README.md. Every dependency goes through `make deps`.
SHELL   := /bin/bash
GO      ?= go
CACHE   ?= $(CURDIR)/.cache
FUZZTIME ?= 10s
export SNAPLAB_CACHE := $(CACHE)

.PHONY: all run test test-sim test-nbd test-vm bench fuzz deps build vet clean

all: build

deps:
	@bash scripts/deps.sh

build:
	$(GO) build ./...

vet:
	$(GO) vet ./...

# The main job: the scenario library on the in-process simulator.
run: deps
	$(GO) run ./cmd/snaplab run scenarios/library/*.scn

# Everything: unit tests, fuzz seeds, the Ginkgo suites of every label.
test: deps vet
	$(GO) test -count=1 -timeout 30m ./...

# No VMs, no external NBD clients: the simulator and its suites.
test-sim:
	$(GO) test -count=1 ./sim/... ./cmd/... ./scenarios/

bench: deps
	$(GO) run ./cmd/snaplab-bench

# Each fuzz target for a bounded time (FUZZTIME).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz: $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf bin out
