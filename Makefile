# snaplab: see README.md. Every dependency goes through `make deps`.
SHELL   := /bin/bash
GO      ?= go
CACHE   ?= $(CURDIR)/.cache
FUZZTIME ?= 10s
export SNAPLAB_CACHE := $(CACHE)

.PHONY: all run test test-sim test-kernels bench fuzz soak deps build vet lint clean fixtures goldens explore explore-kernel screenshot

# The kernels the kernel suite runs on: 6.1, 6.12, 6.1-rt, 6.12-rt (Debian's
# builds), a .deb, or IMAGE,MODDIR (a user's build); "all" is the four.
# make test runs the whole test set on the first and the kernel suite on
# each other one; make test-kernels (and goldens) on each.
KERNELS ?= $(or $(SNAPLAB_KERNEL),6.1)
ALL_KERNELS := 6.1 6.12 6.1-rt 6.12-rt
override KERNEL_LIST = $(if $(filter all,$(KERNELS)),$(ALL_KERNELS),$(KERNELS))

all: build

deps:
	@bash scripts/deps.sh

build:
	$(GO) build ./...

vet:
	$(GO) vet ./...

# go.mod and go.sum as go mod tidy leaves them, and staticcheck clean, at
# the version go.mod's tool block pins (go get -tool ...@VERSION to move it).
lint:
	@$(GO) mod tidy -diff || { echo "lint: go.mod/go.sum are not tidy (the diff above): run go mod tidy" >&2; exit 1; }
	$(GO) tool staticcheck ./...

# The main job: the scenario library on the in-process simulator. Go only:
# no root, no packages, no kernel.
run:
	$(GO) run ./cmd/snaplab run scenarios/library/*.scn

# Everything: unit tests, fuzz seeds, the Ginkgo suites of every label.
# Guest consoles and other artifacts are kept in out/artifacts.
# Reports for CI in out/reports: a JUnit XML and a Ginkgo JSON report per
# suite (a failing spec's carry its console, its recording and timeline,
# and the commands that reproduce it), and progress.log, which is followed
# here so that the long suites show which spec runs, k of n.
REPORTS := $(CURDIR)/out/reports
test: deps vet lint
	@rm -rf $(REPORTS); mkdir -p $(REPORTS); : > $(REPORTS)/progress.log; \
	(tail -n +1 -F --pid=$$$$ $(REPORTS)/progress.log 2>/dev/null | sed -u 's/^/progress: /') & \
	echo "test: go test ./... (progress: lines follow the Ginkgo suites' specs: k of n, and what runs long)"; \
	SNAPLAB_KERNEL=$(firstword $(KERNEL_LIST)) SNAPLAB_ARTIFACTS=$(CURDIR)/out/artifacts SNAPLAB_REPORTS=$(REPORTS) \
	  $(GO) test -count=1 -timeout 30m ./... || exit 1; \
	for k in $(wordlist 2,99,$(KERNEL_LIST)); do \
	  echo "test: the kernel suite on $$k"; \
	  SNAPLAB_KERNEL=$$k SNAPLAB_ARTIFACTS=$(CURDIR)/out/artifacts/$$k SNAPLAB_REPORTS=$(REPORTS)/$$k SNAPLAB_PROGRESS=$(REPORTS)/progress.log \
	    $(GO) test -count=1 -timeout 60m ./scenarios/kernel/ || exit 1; \
	done; \
	echo "test: reports in $(REPORTS)"

# The kernel suite on every kernel of the matrix (KERNELS=all unless
# given), one after another, each with its goldens; wall time per kernel
# printed. About 15 minutes a kernel under TCG.
test-kernels: KERNELS = all
test-kernels: deps
	@set -e; for k in $(KERNEL_LIST); do \
	  echo "test-kernels: $$k"; start=$$(date +%s); \
	  SNAPLAB_KERNEL=$$k SNAPLAB_ARTIFACTS=$(CURDIR)/out/artifacts/$$k $(GO) test -count=1 -timeout 60m ./scenarios/kernel/; \
	  echo "test-kernels: $$k passed in $$(( $$(date +%s) - start )) s"; \
	done

# Go only: the simulator, the command's in-process parts and the sim
# suite; no QEMU, no NBD clients, no external tools.
test-sim:
	$(GO) test -count=1 ./sim/... ./cmd/... ./scenarios/

# Rewrite fixtures/kernel/RELEASE from each kernel of KERNELS (review the
# diff): the library's results on the real kernel, which the sim suite
# checks without a VM.
goldens: deps
	@set -e; for k in $(KERNEL_LIST); do \
	  SNAPLAB_KERNEL=$$k $(GO) test -count=1 -timeout 60m ./scenarios/kernel/ -args -kernel.update -ginkgo.focus='library on the kernel executor|real LVM'; \
	done

bench: deps
	$(GO) run ./cmd/snaplab-bench

# snaplab serve under load for SOAKTIME (default 10m): 64 verifying NBD
# clients, floods, connection resets, suspend/resume churn; RSS sampled.
# Go only.
SOAKTIME ?= 10m
soak:
	$(GO) run ./cmd/snaplab-soak -duration $(SOAKTIME)

# Each fuzz target for a bounded time (FUZZTIME). A new input is minimised
# for at most FUZZMINTIME (go test's default, 60s, ate all of a 10s
# FUZZTIME: FuzzReadMetadata ran no new inputs).
FUZZMINTIME ?= 1s
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz: $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME) $$pkg; \
	  done; \
	done

# A long exploration campaign on the simulator (Go only): EXPLORE_SEEDS
# generated cases, both semantics, faults, swarm, seeded interleavings,
# power cuts; failures, shrunk, and the summary in out/explore.
EXPLORE_SEEDS ?= 100000
EXPLORE_OPS   ?= 60
explore:
	$(GO) run ./cmd/snaplab explore --seeds $(EXPLORE_SEEDS) --ops $(EXPLORE_OPS) --semantics both --faults on --out out/explore

# The kernel-differential campaign: KERNEL_SEEDS generated cases (faults,
# swarm, mainline) on the real kernel in GUESTS guests, each diffed with the
# simulator; differences shrunk, summary in out/explore-kernel.
KERNEL_SEEDS ?= 500
KERNEL_OPS   ?= 60
GUESTS       ?= 2
explore-kernel: deps
	$(GO) run ./cmd/snaplab explore --executor kernel --compare sim --guests $(GUESTS) --seeds $(KERNEL_SEEDS) --ops $(KERNEL_OPS) --out out/explore-kernel

clean:
	rm -rf bin out

# Regenerate the recordings the suite replays (fixtures/recordings): a few
# library scenarios on the sim executor (FIFO and seeded) and on the vm
# executor. Review the diff: a changed recording is a changed behaviour.
FIXTURES_SIM := seed-call-sequence h1-handover-basic h4-remove-source-cancels-handover \
	seed-trigger-source-remove cow-full-po-overflow persistent-reload-keeps-exceptions handover-pending-copies
FIXTURES_VM := seed-call-sequence handover-pending-copies
fixtures:
	rm -rf out/fixtures && mkdir -p fixtures/recordings
	$(GO) run ./cmd/snaplab run -q -record out/fixtures/sim $(FIXTURES_SIM:%=scenarios/library/%.scn)
	$(GO) run ./cmd/snaplab run -q -seed 7 -record out/fixtures/seed7 $(FIXTURES_SIM:%=scenarios/library/%.scn)
	$(GO) run ./cmd/snaplab run -q -executor vm -record out/fixtures/vm $(FIXTURES_VM:%=scenarios/library/%.scn)
	for f in out/fixtures/sim/*.jsonl; do cp $$f fixtures/recordings/sim-$$(basename $$f); done
	for f in out/fixtures/seed7/*.jsonl; do cp $$f fixtures/recordings/sim-seed7-$$(basename $$f); done
	for f in out/fixtures/vm/*.jsonl; do cp $$f fixtures/recordings/vm-$$(basename $$f); done

# The README's picture of a timeline (docs/img/seed-timeline.png, docs/timeline.md):
# the seed call sequence recorded, drawn by snaplab show and photographed
# by headless chromium (make deps installs it) at the size of the chart.
screenshot:
	rm -rf out/screenshot && mkdir -p out/screenshot docs/img
	$(GO) run ./cmd/snaplab run -q -record out/screenshot scenarios/library/seed-call-sequence.scn
	$(GO) run ./cmd/snaplab show -o out/screenshot/seed-timeline.html out/screenshot/seed-call-sequence.jsonl
	size=$$(sed -n 's/^<svg [^>]* width="\([0-9]*\)" height="\([0-9]*\)".*/\1 \2/p' out/screenshot/seed-timeline.html); \
	set -- $$size; \
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
	  --user-data-dir=$(CURDIR)/out/screenshot/chromium --window-size=$$(($$1 + 16)),$$(($$2 + 16)) \
	  --screenshot=$(CURDIR)/docs/img/seed-timeline.png file://$(CURDIR)/out/screenshot/seed-timeline.html 2>/dev/null
