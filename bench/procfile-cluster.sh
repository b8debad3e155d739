#!/usr/bin/env bash
# Starts or stops the three-node cluster of deploy/Procfile without goreman:
# each Procfile line runs in the background from $RUN_DIR (default
# /tmp/rangekv-procfile), logging to <proc>.log there. RANGEKV_* variables
# in the environment reach the nodes (e.g. RANGEKV_RANGE_MAX_BYTES=1048576).
#
#   bench/procfile-cluster.sh start   # fresh data directories
#   bench/procfile-cluster.sh stop
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run=${RUN_DIR:-/tmp/rangekv-procfile}
case "${1:-}" in
start)
	mkdir -p "$run"
	cd "$run"
	rm -rf infra1.rangekv infra2.rangekv infra3.rangekv ./*.log
	grep '^rangekv' "$root/deploy/Procfile" | while IFS= read -r line; do
		proc=${line%%:*}
		cmd=${line#*: }
		cmd=${cmd//bin\//$root/bin/}
		eval "nohup $cmd" >"$proc.log" 2>&1 &
	done
	for port in 2379 22379 32379; do
		for _ in $(seq 100); do
			curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
			sleep 0.1
		done
	done
	;;
stop)
	pkill -f "$root/bin/rangekv --name infra" || true
	for _ in $(seq 100); do
		pgrep -f "$root/bin/rangekv --name infra" >/dev/null || break
		sleep 0.1
	done
	;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac
