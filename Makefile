# tollgate — see README.md. `make run` serves the demo; `make test` runs everything.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
ENVOY     ?= $(CURDIR)/.tools/bin/envoy
export ENVOY
# Build and test with the toolchain go.mod names (a patched Go 1.26 release,
# fetched through the module proxy when the local one is older): the
# standard library's security fixes are part of the product.
export GOTOOLCHAIN := $(shell sed -n 's/^toolchain //p' go.mod)

.PHONY: all build run run-x402 demo-upstream demo-envoy demo-x402-envoy demo-facilitator test fuzz vulncheck unit vet e2e envoy-validate deploy-test promtool tools bench clean

all: build

# -tags vtprotobuf: go-control-plane's generated fast marshalling for the
# responses (see BENCHMARKS.md).
build:
	CGO_ENABLED=0 $(GO) build -tags vtprotobuf -trimpath -ldflags '$(LDFLAGS)' -o bin/tollgate .

run: build
	./bin/tollgate serve --config examples/tollgate.yaml

# The walkthrough's other two terminals: the demo API, and Envoy in front.
demo-upstream:
	$(GO) run ./examples/upstream

demo-envoy: tools
	$(ENVOY) -c envoy.yaml --log-level warn

# Agents that pay (docs/x402.md): tollgate with prices and top-ups, Envoy
# with the paid ext_authz filter and ext_proc, and a demo facilitator that
# keeps balances in memory (MINT=0xADDRESS=AMOUNT credits a payer).
run-x402: build
	./bin/tollgate serve --config examples/tollgate-x402.yaml

demo-x402-envoy: tools
	$(ENVOY) -c examples/envoy-x402.yaml --log-level warn

demo-facilitator:
	$(GO) run ./examples/facilitator $(if $(MINT),-mint $(MINT))

# The whole suite: vet, unit and in-process end-to-end tests under -race,
# the manifests in deploy/, and the end-to-end suite through a real Envoy.
test: vet unit vulncheck deploy-test e2e

vet:
	$(GO) vet ./...
	test -z "$$(gofmt -l . | grep -v '^.tools/')" || (gofmt -l . | grep -v '^.tools/'; exit 1)

unit:
	$(GO) test -race -count=1 ./...
	$(GO) test -race -count=1 -tags vtprotobuf ./authz/

vulncheck:
	scripts/vulncheck.sh

# deploy/'s tests run promtool's rule tests with .tools/bin/promtool (or
# $PROMTOOL), taken from Debian's prometheus package (building it from its
# Go module takes many minutes).
deploy-test: promtool
	@if [ -f deploy/go.mod ]; then cd deploy && $(GO) vet ./... && $(GO) test -count=1 ./...; fi

PROMTOOL ?= $(CURDIR)/.tools/bin/promtool
export PROMTOOL
promtool: $(PROMTOOL)

$(PROMTOOL):
	scripts/install-promtool.sh

tools: $(ENVOY)

$(ENVOY):
	scripts/install-envoy.sh

envoy-validate: tools
	@for f in $$(git ls-files '*envoy*.yaml' | grep -v '^deploy/'); do \
		echo "envoy --mode validate -c $$f"; \
		$(ENVOY) --mode validate -c $$f --log-level warn >/dev/null || exit 1; \
	done

e2e: tools envoy-validate
	@if [ -d e2e ]; then $(GO) test -race -count=1 -tags e2e ./e2e/...; fi

# Each fuzz target for FUZZTIME (default 30s). `make test` runs their seed
# corpora (testdata/fuzz) as ordinary tests.
FUZZTIME ?= 30s
FUZZ_TARGETS := ./authz:FuzzCheckRequest ./authz:FuzzCheckFromWire ./authz:FuzzAppendJSONString ./config:FuzzParse ./entitlement/filesource:FuzzParse ./admin:FuzzInvalidateBody ./entitlement/redissource:FuzzMessage ./quota:FuzzCostSequence ./policy:FuzzCostFromRequest ./entitlement/stripesource:FuzzWebhook ./entitlement:FuzzDecodeJSON ./internal/yamlpos:FuzzDecode ./reservation:FuzzVerify ./reservation:FuzzSignRoundTrip ./x402:FuzzDecodePaymentSignature ./x402:FuzzDecodeXPayment ./mpp:FuzzParseCredential

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# Go benchmarks, then the load harness (tollgate vs a do-nothing ext_authz
# server, and through Envoy), then the latency plot. Not part of make test.
# PEER_OPA=PATH adds OPA-envoy-plugin to the rounds (-peer opa=PATH);
# SCALE=10000,100000,1000000 adds the scale runs with SCALE_SOURCES
# (file, redis or file,redis); BENCH_FLAGS goes to the harness as it is
# (go run ./bench -h); BENCH_OUT and BENCH_PLOT name the results and plot.
PEER_OPA ?=
SCALE ?=
SCALE_SOURCES ?= file,redis
BENCH_FLAGS ?=
BENCH_OUT ?= bin/bench-results.json
BENCH_PLOT ?= bin/bench-latency.svg
bench: tools
	$(GO) test -run '^$$' -bench . -benchmem -tags vtprotobuf ./...
	$(GO) run ./bench -out $(BENCH_OUT) $(if $(PEER_OPA),-peer opa=$(PEER_OPA)) $(if $(SCALE),-scale $(SCALE) -scale-sources $(SCALE_SOURCES)) $(BENCH_FLAGS)
	python3 scripts/plot_bench.py $(BENCH_OUT) $(BENCH_PLOT)

clean:
	rm -rf bin
