#!/usr/bin/env bash
# Plain-proxying throughput on loopback: the data plane pinned to one core
# next to HAProxy 2.6 with one thread, both in front of the same tiny nginx
# upstream, and the upstream hit directly.
#
#   tests/bench/proxy.sh [seconds-per-run] [rounds] [plain|jwt]
#
# jwt: every request carries the same HS256 access token; HAProxy verifies it
# with jwt_verify and checks exp, the data plane with a route that requires a
# token (JWT_SECRET).
#
# Needs wrk, nginx and haproxy (apt-get install -y wrk nginx-light haproxy).
# Layout on a 2-core machine: proxy on core 0; upstream and wrk on core 1;
# wrk with 1 thread and 64 connections, response body "ok".
set -euo pipefail
secs=${1:-8}
rounds=${2:-3}
mode=${3:-plain}
case "$mode" in plain|jwt) ;; *) echo "mode must be plain or jwt"; exit 2 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

secret=bench-secret-of-at-least-32-bytes-0123456789
token=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "u-1", "tenant_id": "t-1", "type": "access",
                       "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)

for tool in wrk nginx haproxy python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx-light haproxy"; exit 1; }
done

up=18080; hap=18081; dp=18082; dpadmin=18092
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$up backlog=4096; location / { return 200 'ok'; } }
}
CONF
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$hap
$(if [ "$mode" = jwt ]; then cat <<JWT
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_header_query('\$.alg') -m str HS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("HS256","$secret") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
JWT
fi)
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$up
CONF
cat > "$work/gateway.yaml" <<CONF
version: 1
services:
  - name: up
    health_check: { enabled: false }
    instances: [ "http://127.0.0.1:$up" ]
routes:
  - name: all
    match: { path_prefix: / }
    service: up
$(if [ "$mode" = jwt ]; then echo "    auth: { required: true }"; fi)
CONF

(cd "$root" && cargo build --release -q -p data-plane)
bin="${CARGO_TARGET_DIR:-$root/target}/release/data-plane"

taskset -c 1 nginx -c "$work/nginx.conf" &
taskset -c 0 haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
JWT_SECRET=$secret LOG_LEVEL=warn taskset -c 0 "$bin" --config "$work/gateway.yaml" --listen 127.0.0.1:$dp \
  --admin-listen 127.0.0.1:$dpadmin >"$work/dp.log" 2>&1 &
sleep 1
auth=()
[ "$mode" = jwt ] && auth=(-H "Authorization: Bearer $token")
for port in $up $hap $dp; do curl -sf "${auth[@]}" "http://127.0.0.1:$port/" >/dev/null || { echo "nothing answers on $port"; cat "$work/dp.log"; exit 1; }; done

run() { taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency "${auth[@]}" "http://127.0.0.1:$1/" | awk '/Requests\/sec/{r=$2} /^ +99%/{p=$2} /Non-2xx|Socket errors/{e=e" "$0} END{printf "%s req/s p99 %s%s\n", r, p, e}'; }
for i in $(seq "$rounds"); do
  echo "round $i: direct    $(run $up)"
  echo "round $i: haproxy   $(run $hap)"
  echo "round $i: gateway   $(run $dp)"
done
