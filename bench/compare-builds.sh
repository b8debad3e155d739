#!/usr/bin/env bash
# Runs one round of a before/after comparison on the Procfile cluster of
# the checkout at ROOT (its bin/ built: rangekv, rangekv-bench, and etcd's
# benchmark tool): put with 1 and 100 clients (rangekv-bench) and
# linearizable one-key reads with 100 and 1 clients (etcd's benchmark).
# Alternate two checkouts, several times, in one session:
#
#   git worktree add /tmp/old <commit> && (cd /tmp/old && go build -o bin/ ./cmd/...)
#   cp bin/benchmark /tmp/old/bin/
#   for i in 1 2; do bench/compare-builds.sh /tmp/old old; bench/compare-builds.sh . new; done
#
# usage: compare-builds.sh ROOT LABEL
set -uo pipefail
root=$(cd "$1" && pwd); label=$2
cd "$root"
RUN_DIR=/tmp/rangekv-compare-$label bench/procfile-cluster.sh start
sleep 2
EP=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
echo "== $label put 1 client"
bin/rangekv-bench --no-progress --endpoints 127.0.0.1:2379 --clients 1 --conns 1 --total 3000 put 2>&1 | grep -E "^ +put"
echo "== $label put 100 clients"
bin/rangekv-bench --no-progress --endpoints $EP --clients 100 --conns 10 --total 30000 put 2>&1 | grep -E "^ +put"
echo "== $label range linearizable 1 key, 100 clients"
bin/benchmark --endpoints=$EP --conns=10 --clients=100 range bench/00000001 --consistency=l --total=30000 2>&1 | grep -E "Requests/sec|Average|50%|99%" 
echo "== $label range linearizable 1 key, 1 client"
bin/benchmark --endpoints=127.0.0.1:2379 --conns=1 --clients=1 range bench/00000001 --consistency=l --total=2000 2>&1 | grep -E "Requests/sec|Average|50%|99%" 
RUN_DIR=/tmp/rangekv-compare-$label bench/procfile-cluster.sh stop
