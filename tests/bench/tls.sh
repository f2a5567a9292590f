#!/usr/bin/env bash
# HTTPS on loopback: the data plane's TLS listener pinned to one core next to
# HAProxy 2.6 with one thread terminating TLS with the same certificate, both
# in front of the same tiny nginx upstream (plain HTTP behind them).
#
#   tests/bench/tls.sh [seconds-per-run] [rounds]
#
# Certificate: ECDSA P-256, self-signed, made here with openssl; both proxies
# offer TLS 1.3 and wrk (OpenSSL) takes it. Two measurements per proxy, with
# the same load tool (wrk over https, 1 thread, 64 connections):
#
#   keep-alive  requests per second over established TLS connections
#   handshake   new full handshakes per second: every request asks
#               `Connection: close`, so each one is a new TCP connection and
#               a new TLS handshake (no session resumption: wrk does not
#               resume sessions)
#
# wrk connects to 127.0.0.1 and does not verify the certificate; both
# proxies then serve their only certificate (rustls takes an IP address sent
# as SNI for no SNI).
#
# Each line also gives the proxy's CPU time per request, user and system
# (from /proc/PID/stat around the run), and how idle core 1 (upstream and
# wrk) stayed: near 0% means the load side, not the proxy, set the pace.
# The targets run in a new random order each round; the last lines give each
# target's median and the median of the per-round gateway / HAProxy ratios.
#
# Needs wrk, nginx, haproxy, openssl (apt-get install -y wrk nginx-light
# haproxy openssl). Layout on a 2-core machine: proxy on core 0; upstream and
# wrk on core 1.
set -euo pipefail
secs=${1:-3}
rounds=${2:-10}
mode=plain
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=setup.sh
source "$(dirname "$0")/setup.sh"

for tool in wrk nginx haproxy openssl python3 shuf curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx-light haproxy openssl"; exit 1; }
done

up=18180; hap=18181; dp=18182; dptls=18183; dpadmin=18192
write_configs $up $hap

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cat "$work/tls.crt" "$work/tls.key" >"$work/haproxy.pem"
# HAProxy terminates TLS: same certificate, TLS 1.3, ALPN http/1.1.
sed -i -e "s|bind 127.0.0.1:$hap|bind 127.0.0.1:$hap ssl crt $work/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.3|" \
  "$work/haproxy.cfg"

# DATA_PLANE_BIN: a data-plane binary to measure instead of a fresh release
# build (a debug build checks the script, its figures mean nothing).
if [ -n "${DATA_PLANE_BIN:-}" ]; then
  bin=$DATA_PLANE_BIN
else
  (cd "$root" && cargo build --release -q -p data-plane)
  bin="${CARGO_TARGET_DIR:-$root/target}/release/data-plane"
fi

taskset -c 1 nginx -c "$work/nginx.conf" &
taskset -c 0 haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
hap_pid=$!
LOG_LEVEL=warn GW_ACCESS_LOG=false taskset -c 0 "$bin" --config "$work/gateway.yaml" \
  --listen 127.0.0.1:$dp --tls-listen 127.0.0.1:$dptls \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" \
  --admin-listen 127.0.0.1:$dpadmin >"$work/dp.log" 2>&1 &
dp_pid=$!
sleep 1
for port in $hap $dptls; do
  curl -sf --cacert "$work/tls.crt" --resolve "bench.test:$port:127.0.0.1" "https://bench.test:$port/" >/dev/null \
    || { echo "nothing answers https on $port"; cat "$work/dp.log" "$work/haproxy.log"; exit 1; }
  version=$(curl -sv -o /dev/null --cacert "$work/tls.crt" --resolve "bench.test:$port:127.0.0.1" \
    "https://bench.test:$port/" 2>&1 | sed -n 's/.*SSL connection using \([^ ]*\).*/\1/p' || true)
  echo "port $port: ${version:-(curl did not say which TLS version)}"
done
echo "$(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"

tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
load_core_ticks() { awk '/^cpu1 /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
# run PORT PID keepalive|handshake
run() {
  local before after load_before load_after out close=()
  [ "$3" = handshake ] && close=(-H "Connection: close")
  before=$(cpu_ticks "$2")
  load_before=$(load_core_ticks)
  out=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency "${close[@]}" "https://127.0.0.1:$1/" 2>&1 \
    || true)
  load_after=$(load_core_ticks)
  after=$(cpu_ticks "$2")
  echo "$out" | awk -v before="$before" -v after="$after" -v tick="$tick" \
    -v lb="$load_before" -v la="$load_after" '
    /requests in/{n=$1} /Requests\/sec/{r=$2} /^ +99%/{p=$2} /Non-2xx|Socket errors/{e=e" "$0}
    END{
      split(before, b, " "); split(after, a, " ")
      cpu = ""
      if (n > 0)
        cpu = sprintf("  cpu/req user %.2f us sys %.2f us", (a[1]-b[1])/tick*1e6/n, (a[2]-b[2])/tick*1e6/n)
      split(lb, x, " "); split(la, y, " ")
      busy = y[1] - x[1]; idle = y[2] - x[2]
      load = (busy + idle > 0) ? sprintf("  core 1 idle %.0f%%", 100 * idle / (busy + idle)) : ""
      printf "%s req/s p99 %s%s%s%s\n", r, p, cpu, load, e
    }'
}
declare -A port=([haproxy]=$hap [gateway]=$dptls)
declare -A pid=([haproxy]=$hap_pid [gateway]=$dp_pid)
for i in $(seq "$rounds"); do
  for run_of in $(shuf -e haproxy:keepalive gateway:keepalive haproxy:handshake gateway:handshake); do
    target=${run_of%%:*}; kind=${run_of##*:}
    line=$(run "${port[$target]}" "${pid[$target]}" "$kind")
    printf "round %s: %-8s %-9s %s\n" "$i" "$target" "$kind" "$line"
    echo "$i $target $kind $line" >>"$work/results"
  done
done
python3 - "$work/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    n, target, kind, rps, _, _, p99 = line.split()[:7]
    unit = re.sub(r"[0-9.]", "", p99)
    ms = float(re.sub(r"[a-z]", "", p99)) * {"us": 0.001, "ms": 1, "s": 1000}.get(unit, 1)
    runs.setdefault((target, kind), {})[n] = (float(rps), ms)
for kind in ("keepalive", "handshake"):
    for target in ("haproxy", "gateway"):
        r = runs[(target, kind)].values()
        print(f"median {kind:9} {target:8} {statistics.median(x for x, _ in r):9.0f} req/s  p99 {statistics.median(p for _, p in r):.2f} ms")
    ratios = sorted(runs[("gateway", kind)][n][0] / runs[("haproxy", kind)][n][0] for n in runs[("gateway", kind)])
    print(f"gateway / haproxy {kind:9}: median {statistics.median(ratios):.2f}x (lowest {ratios[0]:.2f}x, highest {ratios[-1]:.2f}x, {len(ratios)} rounds)")
PY
