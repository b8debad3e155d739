#!/usr/bin/env bash
# Transactions against puts on the Procfile cluster, in ABBA order so that
# neither side always runs on the bigger data set: 100-client throughput of
# puts and of one-range txns (compare + put), then one-client latency of
# one-range and two-range txns (compare + a put in each range).
#
#   bench/txn-vs-put.sh [cycles]      # DURATION=15s for longer runs (default 10s)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cycles=${1:-2}
d=${DURATION:-10s}
EP=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
B="bin/rangekv-bench --endpoints $EP --no-progress"
RANGEKV_RANGE_MAX_BYTES=0 RANGEKV_RANGE_SPLIT_QPS=0 bench/procfile-cluster.sh start
# Two ranges, leaderships spread over the nodes.
$B --ranges 2 --clients 1 --total 10 put >/dev/null
sleep 2
put() { echo "--- put, 100 clients"; $B --clients 100 --conns 10 --duration $d put | grep -E "^ +put|server"; }
txn1() { echo "--- txn-put, one range, 100 clients"; $B --clients 100 --conns 10 --duration $d txn-put | grep -E "txn-put  |server"; }
lat1() { echo "--- txn-put, one range, 1 client"; $B --clients 1 --duration $d txn-put | grep -E "txn-put  "; }
lat2() { echo "--- txn-put, two ranges, 1 client"; $B --clients 1 --duration $d txn-put --txn-ops 2 --spread | grep -E "txn-put  "; }
for c in $(seq "$cycles"); do
	echo "=== cycle $c"
	put; txn1; txn1; put
	lat1; lat2; lat2; lat1
done
echo "--- txn-put, two ranges, 100 clients"
$B --clients 100 --conns 10 --duration $d txn-put --txn-ops 2 --spread | grep -E "txn-put  |server"
bench/procfile-cluster.sh stop
