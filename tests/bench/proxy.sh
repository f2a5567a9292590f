#!/usr/bin/env bash
# Plain-proxying throughput on loopback: the data plane pinned to one core
# next to HAProxy 2.6 with one thread, both in front of the same tiny nginx
# upstream, and the upstream hit directly.
#
#   tests/bench/proxy.sh [seconds-per-run] [rounds] [plain|jwt]
#
# HAProxy runs twice: as configured out of the box ("haproxy": it forwards
# the client's request and the upstream's answer as they are), and made to
# send what the data plane sends ("haproxy+h": X-Forwarded-For/Proto/Host,
# X-Original-IP, X-Gateway-Forwarded and a deadline to the upstream, an
# X-Request-ID both ways), so that the upstream and wrk parse the same bytes
# behind both proxies.
#
# jwt: every request carries the same HS256 access token; HAProxy verifies it
# with jwt_verify and checks exp, the data plane with a route that requires a
# token (JWT_SECRET).
#
# Needs wrk, nginx and haproxy (apt-get install -y wrk nginx-light haproxy).
# Layout on a 2-core machine: proxy on core 0; upstream and wrk on core 1;
# wrk with 1 thread and 64 connections, response body "ok". Each proxy line
# also gives the proxy's CPU time per request, user and system (from
# /proc/PID/stat around the run), and how idle core 1 (upstream and wrk)
# stayed: near 0% means the load side, not the proxy, set the pace.
#
# The four targets run in a new random order each round, so that the
# machine's drift favours none of them, and the last lines sum the rounds up:
# each target's median throughput and p99, and the median of each round's
# gateway / HAProxy throughput (with the lowest and highest), against both
# HAProxy configurations. On a shared VM many short rounds (the default, 20
# of 3 s) give a steadier figure than few long ones.
set -euo pipefail
secs=${1:-3}
rounds=${2:-20}
mode=${3:-plain}
case "$mode" in plain|jwt) ;; *) echo "mode must be plain or jwt"; exit 2 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=setup.sh
source "$(dirname "$0")/setup.sh"
token=$(bench_token)

for tool in wrk nginx haproxy python3 shuf; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx-light haproxy"; exit 1; }
done

up=18080; hap=18081; dp=18082; haph=18083; dpadmin=18092
write_configs $up $hap $haph

(cd "$root" && cargo build --release -q -p data-plane)
bin="${CARGO_TARGET_DIR:-$root/target}/release/data-plane"

taskset -c 1 nginx -c "$work/nginx.conf" &
taskset -c 0 haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
hap_pid=$!
taskset -c 0 haproxy -f "$work/haproxy-headers.cfg" >"$work/haproxy-headers.log" 2>&1 &
haph_pid=$!
JWT_SECRET=$secret LOG_LEVEL=warn taskset -c 0 "$bin" --config "$work/gateway.yaml" --listen 127.0.0.1:$dp \
  --admin-listen 127.0.0.1:$dpadmin >"$work/dp.log" 2>&1 &
dp_pid=$!
sleep 1
auth=()
[ "$mode" = jwt ] && auth=(-H "Authorization: Bearer $token")
for port in $up $hap $haph $dp; do curl -sf "${auth[@]}" "http://127.0.0.1:$port/" >/dev/null || { echo "nothing answers on $port"; cat "$work/dp.log"; exit 1; }; done

tick=$(getconf CLK_TCK)
# cpu_ticks PID: user and system clock ticks the process has used.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# load_core_ticks: busy and idle clock ticks of core 1 so far.
load_core_ticks() { awk '/^cpu1 /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
# run PORT [PID]: wrk against PORT; with PID, that process's CPU per request.
run() {
  local before="0 0" after="0 0" load_before load_after
  [ -n "${2:-}" ] && before=$(cpu_ticks "$2")
  load_before=$(load_core_ticks)
  local out
  out=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency "${auth[@]}" "http://127.0.0.1:$1/")
  load_after=$(load_core_ticks)
  [ -n "${2:-}" ] && after=$(cpu_ticks "$2")
  echo "$out" | awk -v before="$before" -v after="$after" -v tick="$tick" \
    -v lb="$load_before" -v la="$load_after" '
    /requests in/{n=$1} /Requests\/sec/{r=$2} /^ +99%/{p=$2} /Non-2xx|Socket errors/{e=e" "$0}
    END{
      split(before, b, " "); split(after, a, " ")
      cpu = ""
      if (a[1] + a[2] > 0 && n > 0)
        cpu = sprintf("  cpu/req user %.2f us sys %.2f us", (a[1]-b[1])/tick*1e6/n, (a[2]-b[2])/tick*1e6/n)
      split(lb, x, " "); split(la, y, " ")
      busy = y[1] - x[1]; idle = y[2] - x[2]
      load = (busy + idle > 0) ? sprintf("  core 1 idle %.0f%%", 100 * idle / (busy + idle)) : ""
      printf "%s req/s p99 %s%s%s%s\n", r, p, cpu, load, e
    }'
}
declare -A port=([direct]=$up [haproxy]=$hap [haproxy+h]=$haph [gateway]=$dp)
declare -A pid=([direct]="" [haproxy]=$hap_pid [haproxy+h]=$haph_pid [gateway]=$dp_pid)
for i in $(seq "$rounds"); do
  for target in $(shuf -e direct haproxy haproxy+h gateway); do
    line=$(run "${port[$target]}" "${pid[$target]}")
    printf "round %s: %-9s %s\n" "$i" "$target" "$line"
    echo "$i $target $line" >>"$work/results"
  done
done
python3 - "$work/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    n, target, rps, _, _, p99 = line.split()[:6]
    unit = re.sub(r"[0-9.]", "", p99)
    ms = float(re.sub(r"[a-z]", "", p99)) * {"us": 0.001, "ms": 1, "s": 1000}.get(unit, 1)
    runs.setdefault(target, {})[n] = (float(rps), ms)
for target in ("direct", "haproxy", "haproxy+h", "gateway"):
    r = runs[target].values()
    print(f"median {target:9} {statistics.median(x for x, _ in r):9.0f} req/s  p99 {statistics.median(p for _, p in r):.2f} ms")
for base in ("haproxy", "haproxy+h"):
    ratios = sorted(runs["gateway"][n][0] / runs[base][n][0] for n in runs["gateway"])
    print(f"gateway / {base:9}: median {statistics.median(ratios):.2f}x (lowest {ratios[0]:.2f}x, highest {ratios[-1]:.2f}x, {len(ratios)} rounds)")
PY
