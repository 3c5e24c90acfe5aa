# agentbridge — build, run, test, bench.
GO       ?= go
BIN      := bin/agentbridge
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
FUZZTIME ?= 3s
export GOBIN := $(CURDIR)/bin

.PHONY: all build run test test-deps test-go test-fuzz test-node bench lint clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/agentbridge

## run: serve the built-in demo agent on the default socket and port.
run: build
	./$(BIN) serve

## test: install what the tests need, then run them all.
test: test-deps lint test-go test-fuzz test-node

test-deps:
	./scripts/test-deps.sh

test-go: build
	$(GO) test -race -count=1 -timeout 15m ./...
	# Allocation assertions skip under -race (its instrumentation allocates): run them bare.
	$(GO) test -count=1 -run 'TestAllocs' ./...

# Each fuzz target runs its seed corpus (in test-go) plus a few seconds of fuzzing.
test-fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

test-node: build test-deps
	cd test/node && AGENTBRIDGE_BIN=$(CURDIR)/$(BIN) node --test --test-concurrency=1 --test-timeout=180000 .

bench: build
	./scripts/bench.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -run TestDeps ./cmd/agentbridge

clean:
	rm -rf bin
