# dyad — `make help` lists the targets.

GO        ?= go
FUZZTIME  ?= 30s
FUZZLONG  ?= 8h
FUZZSLICE ?= 10m
SMOKETIME ?= 4s
SOAKTIME  ?= 10m
BENCHCOUNT ?= 5
OUT       := bench/out
# Every build is stamped with the version git describes (daemon.Version;
# `dyad version`, the start event, the report).
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/dyad-tunnel/dyad/daemon.Version=$(VERSION)
# make install: PREFIX=/usr for a distribution layout, DESTDIR to stage.
PREFIX    ?= /usr/local
DESTDIR   ?=
# The OpenTelemetry Collector of the end-to-end audit test, built once from
# deploy/otel-collector/builder.yaml and kept in .cache/ between runs.
OTELCOL   := .cache/otelcol/build/dyad-otelcol

.PHONY: help install uninstall demo soak collector prev-release test test-race test-transports test-exhaustive fuzz-smoke fuzz fuzz-long collector-siem test-siem helm-check image release release-check lint bench bench-quick bench-micro bench-deps build clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build bin/dyad (and check that every package builds)
	$(GO) build ./...
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/dyad ./cmd/dyad

# Installed files: the binary, the systemd unit (ExecStart pointing at this
# PREFIX's binary) and sysusers entry, an example configuration (not
# /etc/dyad/dyad.yaml itself: that is the operator's), and the completion
# scripts dyad prints for bash, zsh and fish. Checked by deploy TestMakeInstall.
install: build ## install into $(DESTDIR)$(PREFIX) (PREFIX=/usr/local): binary, systemd unit, sysusers, completions, example config
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/lib/sysusers.d \
		$(DESTDIR)$(PREFIX)/share/dyad $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 0755 bin/dyad $(DESTDIR)$(PREFIX)/bin/dyad
	sed 's|/usr/local/bin/dyad|$(PREFIX)/bin/dyad|g' deploy/systemd/dyad.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/dyad.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/dyad.service
	install -m 0644 deploy/systemd/dyad-sysusers.conf $(DESTDIR)$(PREFIX)/lib/sysusers.d/dyad.conf
	install -m 0644 deploy/systemd/dyad.yaml $(DESTDIR)$(PREFIX)/share/dyad/dyad.yaml.example
	bin/dyad completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/dyad
	bin/dyad completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_dyad
	bin/dyad completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/dyad.fish

uninstall: ## remove what make install put in $(DESTDIR)$(PREFIX) (configuration, keys and journal stay)
	rm -f $(DESTDIR)$(PREFIX)/bin/dyad $(DESTDIR)$(PREFIX)/lib/systemd/system/dyad.service \
		$(DESTDIR)$(PREFIX)/lib/sysusers.d/dyad.conf $(DESTDIR)$(PREFIX)/share/dyad/dyad.yaml.example \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions/dyad $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_dyad \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/dyad.fish

demo: build ## two paired daemons on loopback carrying real HTTP traffic, 100 MiB each way
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/dyad-demo ./cmd/dyad-demo
	bin/dyad-demo -dyad bin/dyad

soak: build ## SOAKTIME (10m) of mixed traffic both ways with a fault every 45-60 s; SHA-256 per transfer, leak checks (not in CI)
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/dyad-soak ./cmd/dyad-soak
	bin/dyad-soak -dyad bin/dyad -duration $(SOAKTIME)

# The SIEM collector of deploy/otel-collector/, from siem-builder.yaml with the
# module hashes pinned in siem-builder.go.sum; kept in .cache/ between runs.
OTELCOL_SIEM := .cache/otelcol-siem/build/dyad-otelcol-siem

collector-siem: $(OTELCOL_SIEM) ## build the SIEM collector (Splunk HEC, Elasticsearch, S3...; ~4 min cold)

$(OTELCOL_SIEM): deploy/otel-collector/siem-builder.yaml deploy/otel-collector/siem-builder.go.sum
	@mkdir -p .cache/otelcol-siem/build
	GOBIN=$(CURDIR)/.cache/otelcol-siem/bin $(GO) install go.opentelemetry.io/collector/cmd/builder@v0.120.0
	cp deploy/otel-collector/siem-builder.go.sum .cache/otelcol-siem/build/go.sum
	cd .cache/otelcol-siem && ./bin/builder --config $(CURDIR)/deploy/otel-collector/siem-builder.yaml

test-siem: collector-siem ## SIEM collector configs against local HEC, Elasticsearch, S3 and OTLP endpoints (not in CI: ~4 min build)
	DYAD_OTELCOL_SIEM=$(CURDIR)/$(OTELCOL_SIEM) $(GO) test -race -count 1 -run TestSIEM ./deploy

test: test-race test-exhaustive fuzz-smoke ## everything CI runs: race tests, exhaustive codec round trip, fuzz smoke

test-race: collector prev-release ## go test -race, shuffled, all packages (replays the fuzz corpora too), with a real OTLP collector
	DYAD_OTELCOL=$(CURDIR)/$(OTELCOL) DYAD_OLD_BIN=$$(test -x $(PREV_BIN) && echo $(CURDIR)/$(PREV_BIN)) $(GO) test -race -shuffle on -count 1 ./...

# The previous release, for the interoperability test (daemon TestInteropPreviousRelease):
# the last commit before connection IDs grew to 16 bytes. Built once into .cache/.
PREV_RELEASE ?= db54a77
PREV_BIN     := .cache/prev-$(PREV_RELEASE)/dyad

prev-release: ## build the previous release's dyad (PREV_RELEASE) for the interoperability test
	@if [ -x $(PREV_BIN) ]; then exit 0; fi; \
	if ! git cat-file -e $(PREV_RELEASE)^{commit} 2>/dev/null; then \
		echo "prev-release: $(PREV_RELEASE) is not in this clone; the interoperability test will skip"; exit 0; fi; \
	rm -rf .cache/prev-src && mkdir -p .cache/prev-src $$(dirname $(PREV_BIN)) && \
	git archive $(PREV_RELEASE) | tar -x -C .cache/prev-src && \
	(cd .cache/prev-src && $(GO) build -trimpath -o $(CURDIR)/$(PREV_BIN) ./cmd/dyad) && rm -rf .cache/prev-src

collector: $(OTELCOL) ## build the OpenTelemetry Collector (OTLP receiver + file exporter) the audit tests send to

$(OTELCOL): deploy/otel-collector/builder.yaml
	@mkdir -p .cache/otelcol
	GOBIN=$(CURDIR)/.cache/otelcol/bin $(GO) install go.opentelemetry.io/collector/cmd/builder@v0.120.0
	cd .cache/otelcol && ./bin/builder --config $(CURDIR)/deploy/otel-collector/builder.yaml

test-transports: ## the whole tunnel suite over QUIC and over the TCP fallback (make test runs a representative subset over both)
	DYAD_TEST_TRANSPORTS=all $(GO) test -race -count 1 ./tunnel
	$(GO) test -race -count 1 -run 'TestTCPFallbackProcesses|TestTransportConfig|TestDeadPeerNoticed|TestStatusCommandTCP|TestPingOutcomes' ./daemon

test-exhaustive: ## every record size 0..max without -race (it strides under -race)
	$(GO) test -count 1 -run 'TestRoundTripEverySize|TestSteadyStateAllocatesNothing' ./codec

fuzz-smoke: ## fuzz each target for SMOKETIME (part of make test)
	@GO=$(GO) fuzz/run.sh -time $(SMOKETIME)

fuzz: ## fuzz each target for FUZZTIME (30s); stops at the first crasher with the line that replays it
	@GO=$(GO) fuzz/run.sh -time $(FUZZTIME)

fuzz-long: ## fuzz round-robin for FUZZLONG (8h), FUZZSLICE (10m) a target; resumable, corpus in Go's fuzz cache
	@GO=$(GO) fuzz/run.sh -long $(FUZZLONG) -slice $(FUZZSLICE)

image: ## container image dyad:$(VERSION) from deploy/container/Dockerfile (needs Docker with BuildKit; none in CI)
	docker build -f deploy/container/Dockerfile --build-arg VERSION=$(VERSION) \
		--build-arg SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) -t dyad:$(VERSION) .

release: ## reproducible linux/amd64 and linux/arm64 binaries, SHA256SUMS and CycloneDX SBOMs in dist/
	GO=$(GO) VERSION=$(VERSION) deploy/release/release.sh

release-check: ## build the release twice with separate caches and compare: binaries, SBOM, SHA256SUMS, stamped version
	DYAD_RELEASE_CHECK=1 $(GO) test -count 1 -timeout 30m -run TestReleaseReproducible -v ./deploy

helm-check: ## Helm chart: strict lint, render with several value sets, strict decode into Kubernetes types, `dyad check` its dyad.yaml
	cd deploy/helm/check && $(GO) vet ./... && $(GO) test -count 1 ./...

lint: ## gofmt and go vet
	@out=$$(find . -name '*.go' -not -path './.cache/*' -exec gofmt -l {} +); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: build bench-micro ## full benchmark (about 25 min on 2 cores): dyad vs direct, quic-relay and stunnel; bench/out/
	$(GO) run ./bench -dyad bin/dyad -out $(OUT)

bench-quick: build ## every system and scenario briefly, dyad limits as in the full run, 3000 churned and 4096 idle connections, the emulated WAN link as root (about a minute); fails on errors, never on timings
	$(GO) run ./bench -quick -dyad bin/dyad -out $(OUT)

bench-micro: ## package micro-benchmarks (benchstat format) and the codec vs raw AEAD ratio table
	@mkdir -p $(OUT)
	$(GO) test ./codec -run '^$$' -bench 'Record|Stream' -benchmem -count $(BENCHCOUNT) | tee $(OUT)/micro.txt
	@echo; $(GO) run ./bench/codecratio < $(OUT)/micro.txt | tee $(OUT)/codec-ratio.txt
	@echo; echo "dark listener: bulk throughput with it on vs off, and its cost per datagram passed and dropped:"
	$(GO) test ./tunnel -run '^$$' -bench 'ForwardBulk|DarkInbound|DarkDrop' -benchmem -count $(BENCHCOUNT) | tee $(OUT)/dark.txt
	@med() { grep "ForwardBulk/$$1" $(OUT)/dark.txt | awk '{print $$5}' | sort -n | awk '{v[NR]=$$1} END{print v[int((NR+1)/2)]}'; }; \
	on=$$(med dark=on); off=$$(med dark=off); \
	awk -v on=$$on -v off=$$off 'BEGIN{printf "dark listener on / off, median bulk MB/s: %s / %s = %.3fx\n", on, off, on/off}' | tee -a $(OUT)/dark.txt
	@echo; echo "audit overhead per forwarded connection (churn: 4 audit events each):"
	$(GO) test ./tunnel -run '^$$' -bench 'ConnAudit' -benchmem -count 3 | tee $(OUT)/audit.txt
	@echo; echo "daemon start on a 64 MiB journal (Open verifies it; DYAD_JOURNAL_BENCH_MB=1024 for 1 GiB):"
	$(GO) test ./audit/journal -run '^$$' -bench 'Open' -benchtime 3x | tee $(OUT)/journal-open.txt

bench-deps: ## install the baselines' packages (stunnel4, iperf3) with apt-get, as root
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq stunnel4 iperf3; \
	else echo "bench-deps: run as root (apt-get); without stunnel4 the report says stunnel was not measured"; fi

clean: ## remove build and benchmark output (the collector cache stays; rm -rf .cache to rebuild it)
	rm -rf $(OUT) bin dist
