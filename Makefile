# Roadsign — the two commands a newcomer needs are `make demo` and `make test`.
GO        ?= go
BIN       := $(CURDIR)/bin
TOOLS     := $(CURDIR)/.tools/bin
VERSITYGW := $(TOOLS)/versitygw
# Pinned S3-compatible server for the S3 blob-store suite (loopback only).
VERSITYGW_VERSION := v1.8.0

SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c

# What --version prints. The date is the commit's (or SOURCE_DATE_EPOCH),
# so the same commit builds the same binary.
VERSION ?= $(shell git describe --tags --dirty 2>/dev/null | sed 's/^v//' || true)
ifeq ($(VERSION),)
VERSION := 0.0.0-dev
endif
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
DATE    ?= $(shell date -u -d @$(SOURCE_DATE_EPOCH) +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -X github.com/roadsign/roadsign/internal/buildinfo.Version=$(VERSION) \
           -X github.com/roadsign/roadsign/internal/buildinfo.Commit=$(COMMIT) \
           -X github.com/roadsign/roadsign/internal/buildinfo.Date=$(DATE)

.PHONY: all build test demo bench benchdeps torture fuzz lint cover tools testdeps release clean cluster-test

all: build

# The programs are static, as make release builds them (the agent that is
# measured is the one that ships); the signer is built again with cgo,
# where a C compiler is found, for PKCS#11 keys.
# The TUF conformance suite reads expected failures beside the client.
# -v names each package as it compiles: on a cold Go cache the first build
# downloads and compiles every dependency (a few minutes).
build:
	@echo "building the programs into bin/ (the first build on a cold Go cache fetches and compiles every dependency: a few minutes)"
	CGO_ENABLED=0 $(GO) build -v -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...
	if command -v gcc >/dev/null; then $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/roadsign-signer ./cmd/roadsign-signer; fi
	cp cmd/roadsign-tuf-client/roadsign-tuf-client.xfails $(BIN)/

# All tests, with the race detector, including the state-store suite on
# PostgreSQL (127.0.0.1:5432, database test; each run in its own schema)
# and the S3 suite against a real versitygw that this target installs
# (first run: about 2-3 minutes), the web pages in headless Chromium, the
# push tests against the machine's Mosquitto on 127.0.0.1:1883 (never
# bound here), and the release packages (dpkg-deb, systemd-analyze).
# The power-loss torture and the hostile suite (it measures the server's
# memory and latency under floods) each run alone after the rest. The
# whole deployment under faults (TestCluster) is make cluster-test: it
# would take make test past its 15 minutes. The query plans at 100 000
# vehicles run without the race detector, which slows the pure-Go SQLite
# fourteenfold (172 s against 12 s) and has no concurrency to watch there.
# The pure-Go SQLite (modernc.org, C translated to Go with unsafe pointer
# arithmetic throughout) is built without the race detector's pointer
# checks (checkptr), which cost a tenth of the end-to-end suite's CPU and
# check code that is not ours; the race detector itself stays on.
test: lint tools testdeps
	ROADSIGN_REQUIRE_CLUSTER=1 ROADSIGN_REQUIRE_S3=1 ROADSIGN_REQUIRE_POSTGRES=1 ROADSIGN_REQUIRE_BROWSER=1 ROADSIGN_REQUIRE_HSM=1 ROADSIGN_REQUIRE_RELEASE_TOOLS=1 ROADSIGN_REQUIRE_MQTT=1 ROADSIGN_REQUIRE_QEMU=1 VERSITYGW=$(VERSITYGW) $(GO) test -race -gcflags='modernc.org/...=-d=checkptr=0' -count=1 -timeout 13m -skip '^(TestPowerLossTorture|TestDeltaPowerLossTorture|TestCluster|TestPerVehicleQueriesUseIndexesAt100k)$$' $$($(GO) list ./... | grep -v /internal/hostile)
	ROADSIGN_REQUIRE_POSTGRES=1 $(GO) test -count=1 -timeout 5m -run '^TestPerVehicleQueriesUseIndexesAt100k$$' ./server/sqlstore
	$(GO) test -race -count=1 -timeout 8m -run '^(TestPowerLossTorture|TestDeltaPowerLossTorture)$$' -v ./internal/e2e | grep -E '^(power-loss torture|delta power-loss torture|--- |ok|FAIL|PASS)|(safety|delta)_test'
	$(GO) test -race -count=1 -timeout 5m -v ./internal/hostile | grep -E '^(--- |ok|FAIL|PASS|panic)|_test\.go:[0-9]+: '
	@$(MAKE) --no-print-directory cover

# The decisions' own package tests (without the end-to-end suites) cover
# at least COVER_MIN % of the director, the campaign engine, the signer and
# the agent; make test runs it.
COVER_MIN  ?= 70
COVER_PKGS := ./server/director ./server/campaigns ./signer/... ./client/agent
cover:
	@out=$$(mktemp); ROADSIGN_REQUIRE_HSM=1 $(GO) test -count=1 -cover $(COVER_PKGS) > $$out 2>&1; rc=$$?; cat $$out; \
	awk -v min=$(COVER_MIN) '/coverage:/ { for (i = 1; i <= NF; i++) if ($$i == "coverage:") { pct = $$(i+1); sub("%", "", pct); \
		if (pct + 0 < min) { print "coverage of " $$2 " is " pct "%, under " min "%"; bad = 1 } } } END { exit bad }' $$out; bad=$$?; \
	rm -f $$out; [ $$rc -eq 0 ] && [ $$bad -eq 0 ]

# The whole deployment under faults (TestCluster at full size): three
# replicas behind HAProxy, a PostgreSQL primary and synchronous standby of
# its own (initdb, pg_basebackup, pg_ctl; never the machine's), versitygw,
# a private Mosquitto, 5 000 simulated vehicles and a campaign of four
# waves, once undisturbed and once while replicas are SIGKILLed, S3 is
# frozen, the broker restarted, the primary killed and the standby
# promoted, and the leader frozen past its lease. Prints the figures and,
# last, one invariant per line (ok: / FAIL:). make test runs it small.
CLUSTER_REPORT ?= cluster-report.txt
cluster-test: tools testdeps
	@rm -f $(CLUSTER_REPORT); ROADSIGN_CLUSTER=full ROADSIGN_CLUSTER_REPORT=$(CURDIR)/$(CLUSTER_REPORT) ROADSIGN_REQUIRE_CLUSTER=1 ROADSIGN_REQUIRE_S3=1 \
		ROADSIGN_REQUIRE_POSTGRES=1 ROADSIGN_REQUIRE_MQTT=1 VERSITYGW=$(VERSITYGW) \
		$(GO) test -count=1 -timeout 30m -run '^TestCluster$$' -v ./internal/e2e > $(CLUSTER_REPORT).log 2>&1; rc=$$?; \
	if [ -s $(CLUSTER_REPORT) ]; then \
		grep -vE '^(ok|FAIL): ' $(CLUSTER_REPORT); [ $$rc -eq 0 ] || grep -E '^(---|\s+cluster_test)' $(CLUSTER_REPORT).log | tail -n 20; \
		grep -E '^(ok|FAIL): ' $(CLUSTER_REPORT); \
	else tail -n 60 $(CLUSTER_REPORT).log; echo "FAIL: the cluster test ended before its invariants (see $(CLUSTER_REPORT).log)"; fi; \
	exit $$rc

# SIGKILLs the real agent at random points of 500 installs.
torture:
	ROADSIGN_TORTURE_INSTALLS=500 $(GO) test -count=1 -timeout 30m -run '^(TestPowerLossTorture|TestDeltaPowerLossTorture)$$' -v ./internal/e2e | grep -E '^(power-loss torture|delta power-loss torture|--- |ok|FAIL|PASS)|(safety|delta)_test'

# Go native fuzzing of everything that parses what an attacker can send:
# each target below for FUZZTIME (go test's -fuzztime: 30s, 10000x). The
# seed corpora run in make test as plain tests, with every crash found so
# far (testdata/fuzz/) as a regression test. A test checks this list names
# every Fuzz function in the repository.
FUZZTIME ?= 30s
FUZZ_TARGETS := internal/vin:FuzzValidate internal/vehicleauth:FuzzParse internal/vehicleauth:FuzzVerify \
	server/registry:FuzzCheckInManifest client/usb:FuzzOpenArchive client/usb:FuzzBundleDirectory \
	server/repo:FuzzPublish server/repo:FuzzUploadTarget internal/fwimage:FuzzParseHeader internal/delta:FuzzParseOp client/fault:FuzzParse \
	internal/vehicleauth:FuzzVerifyMQTTPassword server/backup:FuzzRestore signer/hsm:FuzzParseURI \
	client/ecunet:FuzzFrames internal/vehicleauth:FuzzECUReport internal/pairhash:FuzzWrite
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; echo "== $$fn (./$$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$pkg; \
	done

# End to end on embedded defaults: server, signer, one vehicle, one update.
demo: build
	$(BIN)/roadsign-demo --bin $(BIN) --samples firmware-samples

# Benchmarks, each beside its reference measured in the same run, ending
# with one table (internal/benchtable): timestamp.json and a 1 GiB download
# against nginx, the agent's verified install against Go's sha256, agent
# and server peak memory, signed check-ins at 10 000 and 100 000 vehicles
# on SQLite and PostgreSQL against ed25519 verifications/s. About 30
# minutes on 2 cores and 4 GiB of free space in $$TMPDIR; installs nginx,
# wrk and curl from Debian when missing. ROADSIGN_FLEET_SIZES=1000 for a
# quick look (the table then says what was not measured).
BENCH_OUT ?= bench.out
bench: benchdeps
	{ $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 90m ./... 2>&1; echo "exit status $$?"; } | tee $(BENCH_OUT)
	@echo; $(GO) run ./internal/benchtable $(BENCH_OUT)

benchdeps:
	@missing=""; for t in nginx wrk curl; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

# Release artifacts in dist/ (reproducible: the same commit builds the same
# files): make release VERSION=0.2.0. Tarballs of every program and .deb
# packages of the server and the agent for linux/amd64 and linux/arm64,
# and SHA256SUMS. Needs dpkg-deb (Debian's dpkg).
release:
	@case "$(VERSION)" in [0-9]*.[0-9]*.[0-9]*) ;; *) echo "make release VERSION=x.y.z (got $(VERSION))"; exit 2;; esac
	rm -rf dist
	$(GO) run ./internal/release --version $(VERSION) --commit $(COMMIT) --date $(SOURCE_DATE_EPOCH) --out dist
	@cat dist/SHA256SUMS

# gofmt, go vet, and go.mod/go.sum as go mod tidy would leave them (a
# module imported directly but marked indirect, or one no longer used,
# fails here). make test runs it first.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum drifted from the imports: run go mod tidy and commit the result"; exit 1; }

tools: $(VERSITYGW)

# Debian packages the tests use when missing: headless Chromium for the web
# page tests (screenshots land in screenshots/), jq for the README walkthrough,
# SoftHSM2 for the hardware-key signing test, systemd-analyze and kill(1)
# for the release test's unit checks.
testdeps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; command -v jq >/dev/null || missing="$$missing jq"; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; [ -x /bin/kill ] || missing="$$missing procps"; \
	command -v qemu-aarch64 >/dev/null || missing="$$missing qemu-user"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; command -v pgrep >/dev/null || missing="$$missing procps"; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

$(VERSITYGW):
	GOBIN=$(TOOLS) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

clean:
	rm -rf $(BIN) dist
