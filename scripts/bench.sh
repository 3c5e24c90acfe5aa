#!/usr/bin/env bash
# make bench: the benchmark suite (about 7 minutes on a 2-vCPU box: the
# round-trip ratios are medians of BENCH_REPEAT rounds, default 5, and the
# mcp storm starts 100 supergateway children).
#
# 1. go test -bench of the codec, ring and session packages, summarised by
#    benchstat against the previous run's raw results (docs/bench-micro.txt);
# 2. agentbridge bench, every scenario over the Unix socket and WebSocket
#    with its baselines in the same run, writing
#      docs/benchmarks.md         the report (table, chart, machine, command)
#      docs/benchmarks.svg        the chart
#      docs/bench-latest.json     every figure of this run plus machine facts
#      docs/bench-history.json    one entry per run; the report compares
#                                 with the previous entry so a regression shows.
#
# Extra arguments go to agentbridge bench (e.g. scripts/bench.sh rtt --pin=false).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=bin/agentbridge
# benchstat has no releases; pin the commit (builds with Go 1.26).
BENCHSTAT_VERSION=v0.0.0-20260908200009-22c9c6c9d4da
export GOBIN="$PWD/bin"

[ -x "$BIN" ] || { echo "bench.sh: $BIN missing: run make bench (it builds first)" >&2; exit 1; }

if ! go version -m bin/benchstat 2>/dev/null | grep -q "golang.org/x/perf[[:space:]]*$BENCHSTAT_VERSION"; then
	echo "bench.sh: installing benchstat $BENCHSTAT_VERSION into bin/" >&2
	go install "golang.org/x/perf/cmd/benchstat@$BENCHSTAT_VERSION"
fi

mkdir -p docs
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "bench.sh: micro-benchmarks (go test -bench, 6 rounds each)" >&2
go test -run '^$' -bench . -benchmem -count 6 -benchtime 150ms \
	./codec/... ./ring/... ./session/... >"$tmp/micro.new"
if [ -s docs/bench-micro.txt ]; then
	bin/benchstat previous=docs/bench-micro.txt this="$tmp/micro.new" >"$tmp/micro.txt"
else
	bin/benchstat "$tmp/micro.new" >"$tmp/micro.txt"
fi
cp "$tmp/micro.new" docs/bench-micro.txt

# The fleet scenario needs a NATS server with JetStream: test/natsd runs
# nats-server's package on loopback (not linked into agentbridge), stopped
# on exit; the scenario bounds itself (3 minutes).
go build -o bin/natsd ./test/natsd
bin/natsd >"$tmp/nats.url" &
natsd=$!
trap 'kill $natsd 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [ -s "$tmp/nats.url" ] && break; sleep 0.1; done
[ -s "$tmp/nats.url" ] || { echo "bench.sh: test/natsd did not start" >&2; exit 1; }

echo "bench.sh: agentbridge bench (all scenarios, both transports, baselines)" >&2
# rtt pinned to one vCPU as the targets prescribe (a wake-up across vCPUs
# adds ~40 µs a hop); the other scenarios use the whole machine. Ratios of
# rtt, throughput and mcp round trips are the median of --repeat rounds
# (one round moves a ratio 2.9x -> 6.0x on a shared box).
"$BIN" bench \
	--duration 1s --warmup 250ms --pin --rate 2000 --repeat "${BENCH_REPEAT:-5}" \
	--json docs/bench-latest.json --plot docs/benchmarks.svg \
	--history docs/bench-history.json --report docs/benchmarks.md \
	--micro "$tmp/micro.txt" --nats "$(head -1 "$tmp/nats.url")" "$@"
echo "bench.sh: wrote docs/benchmarks.md, docs/benchmarks.svg, docs/bench-latest.json; appended docs/bench-history.json" >&2
