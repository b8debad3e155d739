#!/usr/bin/env bash
# The issue 6 targets, each measured by rangekv-bench compare against
# etcd 3.7.3 in one run (3-node clusters on loopback, fresh per round,
# alternating which system goes first):
#   put, 100 clients, 256 B values: throughput, p99, server CPU per put
#   put, 1 client, 1 connection: p50
#   range of one key, 100 clients: linearizable and serializable throughput
#   tenants, 64 tenants: throughput and p99 of each operation
# Reports go to $OUT (default /tmp/rangekv-vs-etcd): one table (.txt) and
# one JSON per comparison, and its charts in a folder of its name.
#
#   bench/vs-etcd.sh [rounds]         # DURATION=20s per run by default
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-2}
d=${DURATION:-20s}
out=${OUT:-/tmp/rangekv-vs-etcd}
mkdir -p "$out"
go build -o bin/ ./cmd/rangekv ./cmd/rangekv-bench
C="bin/rangekv-bench compare --rounds $rounds --no-progress"
run() {
	name=$1
	shift
	echo "=== $name: $C $*"
	$C --json "$out/$name.json" --plot "$out/$name" "$@" | tee "$out/$name.txt"
}
run put-100 put --clients 100 --conns 10 --duration "$d"
run put-1 put --clients 1 --conns 1 --duration "$d"
run range-l range --consistency l --clients 100 --conns 10 --key-space-size 1000 --duration "$d"
run range-s range --consistency s --clients 100 --conns 10 --key-space-size 1000 --duration "$d"
run tenants tenants --tenants 64 --objects 100 --clients 64 --conns 8 --duration "$d"
