#!/usr/bin/env bash
# Put throughput with the keyspace in N user ranges (default 64) against
# the same load on one range, on the Procfile cluster, with etcd's
# benchmark tool (100 clients, 10 connections, 60,000 random 8-byte keys,
# 256-byte values, all sent to infra1, which leads every range). Automatic
# splits are off; the N ranges come from `rangekvctl range split` at the
# first bytes of the benchmark's varint keys, so each gets an equal share.
# Prints throughput, p50/p99, the cluster's CPU seconds, and infra1's
# fsyncs and scheduler passes during the run.
#
#   go build -o bin/ ./cmd/... && go build -C tools -o ../bin/benchmark go.etcd.io/etcd/v3/tools/benchmark
#   bench/ranges-vs-one.sh 1; bench/ranges-vs-one.sh 64
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-64}
metric() { curl -s http://127.0.0.1:2379/metrics | awk -v m="$1" '$1 == m {print $2}'; }
cpu() { for p in $(pgrep -f "bin/rangekv --name infra"); do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc; }

bench/procfile-cluster.sh stop
sleep 1
RANGEKV_RANGE_MAX_BYTES=0 RANGEKV_RANGE_SPLIT_QPS=0 bench/procfile-cluster.sh start
for i in $(seq 1 $((n - 1))); do
	bin/rangekvctl range split "$(printf "\\x$(printf %02x $((0x80 + 2 * i)))")" >/dev/null
done
echo "ranges: $(bin/rangekvctl range list | tail -n +2 | wc -l)"
sleep 2
f0=$(metric etcd_disk_wal_fsync_duration_seconds_count)
p0=$(metric rangekv_raft_ready_duration_seconds_count)
c0=$(cpu)
bin/benchmark --endpoints=127.0.0.1:2379 --conns=10 --clients=100 put --key-size=8 --val-size=256 \
	--total=60000 --key-space-size=100000 2>&1 | grep -E "Requests/sec|50% in|99% in"
c1=$(cpu)
f1=$(metric etcd_disk_wal_fsync_duration_seconds_count)
p1=$(metric rangekv_raft_ready_duration_seconds_count)
echo "cluster CPU seconds: $(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l | cut -c1-6)"
echo "infra1 fsyncs: $(echo "$f1 - $f0" | bc), scheduler passes: $(echo "$p1 - $p0" | bc)"
bench/procfile-cluster.sh stop
