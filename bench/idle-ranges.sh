#!/usr/bin/env bash
# Idle cost of many ranges: starts the Procfile cluster, splits the
# keyspace into N user ranges (default 1000) with `rangekvctl range split`,
# lets them quiesce, then reports each node's CPU (percent of one core,
# over 30 s) and resident memory.
#
#   go build -o bin/ ./cmd/... && bench/idle-ranges.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
window=${WINDOW:-30}
bench/procfile-cluster.sh stop
sleep 1
RANGEKV_RANGE_MAX_BYTES=0 RANGEKV_RANGE_SPLIT_QPS=0 bench/procfile-cluster.sh start
start=$(date +%s)
for i in $(seq 1 $((n - 1))); do
	bin/rangekvctl range split "$(printf 'k%06d' "$i")" >/dev/null
done
echo "ranges: $(bin/rangekvctl range list -w json | grep -o '"range_id"' | wc -l) (splits took $(($(date +%s) - start)) s)"
sleep ${SETTLE:-10}
declare -A before
for p in $(pgrep -f "bin/rangekv --name infra"); do before[$p]=$(awk '{print $14+$15}' "/proc/$p/stat"); done
sleep "$window"
for p in "${!before[@]}"; do
	after=$(awk '{print $14+$15}' "/proc/$p/stat")
	name=$(tr '\0' ' ' <"/proc/$p/cmdline" | awk '{print $3}')
	echo "$name: cpu $(echo "scale=2; ($after - ${before[$p]}) * 100 / $(getconf CLK_TCK) / $window" | bc)% of a core," \
		"rss $(awk '/VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$p/status")"
done
bench/procfile-cluster.sh stop
