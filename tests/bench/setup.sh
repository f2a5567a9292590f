# Shared by proxy.sh and instructions.sh (sourced): the HS256 access token
# every jwt-mode request carries, and the configs of the tiny nginx upstream,
# HAProxy 2.6 with one thread, and the data plane in front of it.

secret=bench-secret-of-at-least-32-bytes-0123456789

# bench_token: an HS256 access token signed with $secret, valid for a day.
bench_token() {
  python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "u-1", "tenant_id": "t-1", "type": "access",
                       "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
}

# write_configs UP HAP [HAP_HEADERS]: nginx.conf (upstream on port UP),
# haproxy.cfg (listening on HAP), haproxy-headers.cfg (on HAP_HEADERS, when
# given) and gateway.yaml in $work, for $mode (plain or jwt).
write_configs() {
  local up=$1 hap=$2
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
# The same HAProxy made to send what the data plane sends: the upstream gets
# the forwarding headers, a request id and a deadline, the client the request
# id (byte for byte as long as the data plane's, so that the upstream and wrk
# do the same work behind both).
[ -n "${3:-}" ] && sed -e "s/bind 127.0.0.1:$hap/bind 127.0.0.1:$3/" -e '/default_backend be/i\
  option forwardfor\
  http-request set-header X-Request-ID %[uuid()] unless { req.hdr(x-request-id) -m found }\
  http-request set-var(txn.rid) req.hdr(x-request-id)\
  http-request set-header X-Original-IP %[src]\
  http-request set-header X-Forwarded-Proto http\
  http-request set-header X-Gateway-Forwarded true\
  http-request set-header X-Forwarded-Host %[req.hdr(host)]\
  http-request set-header X-Request-Deadline-Ms 9999\
  http-response set-header X-Request-ID %[var(txn.rid)]' "$work/haproxy.cfg" >"$work/haproxy-headers.cfg"
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
}
