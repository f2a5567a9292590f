#!/usr/bin/env bash
# User-space instructions per proxied request, the data plane next to
# HAProxy 2.6 (one thread), counted with callgrind under the same load.
#
#   tests/bench/instructions.sh [plain|jwt]
#
# Each proxy runs under `valgrind --tool=callgrind` in front of a tiny nginx
# upstream; wrk warms it up for 3 s with 16 connections, the counters are
# zeroed, wrk runs 8 s more, and the instructions counted are divided by the
# requests wrk completed. Needs valgrind, wrk, nginx and haproxy
# (apt-get install -y valgrind wrk nginx-light haproxy).
set -euo pipefail
mode=${1:-plain}
case "$mode" in plain|jwt) ;; *) echo "mode must be plain or jwt"; exit 2 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
for tool in valgrind callgrind_control wrk nginx haproxy python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind wrk nginx-light haproxy"; exit 1; }
done

# shellcheck source=setup.sh
source "$(dirname "$0")/setup.sh"
token=$(bench_token)
up=18180; port=18181; admin=18191
write_configs $up $port

(cd "$root" && cargo build --release -q -p data-plane)
bin="${CARGO_TARGET_DIR:-$root/target}/release/data-plane"
auth=()
[ "$mode" = jwt ] && auth=(-H "Authorization: Bearer $token")
taskset -c 1 nginx -c "$work/nginx.conf" &

# measure NAME COMMAND...: runs COMMAND under callgrind on core 0, loads it
# from core 1 and prints the instructions per request.
measure() {
  local name=$1; shift
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do curl -sf "${auth[@]}" -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.5; done
  taskset -c 1 wrk -t1 -c16 -d3s "${auth[@]}" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control --zero "$pid" >/dev/null 2>&1
  local requests
  requests=$(taskset -c 1 wrk -t1 -c16 -d8s "${auth[@]}" "http://127.0.0.1:$port/" | awk '/requests in/{print $1}')
  callgrind_control --dump "$pid" >/dev/null 2>&1
  sleep 1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local dump
  dump=$(ls -t "$work/$name.out".* | head -1)
  python3 - "$dump" "$requests" "$name" <<'PY'
import sys
total = next(int(l.split()[1]) for l in open(sys.argv[1]) if l.startswith(("summary:", "totals:")))
print(f"{sys.argv[3]:8} {int(sys.argv[2]):7d} requests  {total // int(sys.argv[2]):6d} instructions per request")
PY
}

measure haproxy haproxy -f "$work/haproxy.cfg"
JWT_SECRET=$secret LOG_LEVEL=warn measure gateway "$bin" --config "$work/gateway.yaml" \
  --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin
