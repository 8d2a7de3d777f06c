# Shared by bench/run and bench/profile (sourced, not run): the tools they need, a scratch
# directory removed on exit, and Keywarden with a trivial upstream on free loopback ports.

# Installs wrk, nginx and curl from the Debian packages when missing, and any packages
# named as arguments.
bench_tools() {
  local need=("$@")
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# A scratch directory ($OUT); the processes started into `pids` are stopped on exit.
bench_scratch() {
  OUT=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
}

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }

# Starts an nginx instance named $1 with $2 workers serving the http block's content $3.
nginx_conf() {
  mkdir -p "$OUT/$1/logs"
  cat > "$OUT/$1/nginx.conf" <<NGX
worker_processes $2;
daemon off;
pid $OUT/$1/nginx.pid;
error_log $OUT/$1/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; $3 }
NGX
  "$NGINX" -p "$OUT/$1" -c "$OUT/$1/nginx.conf" >/dev/null 2>&1 &
  pids+=($!)
}

# The trivial upstream: nginx answering `200 ok` on port $UP.
start_upstream() {
  UP=$(port)
  nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; keepalive_requests 1000000; location / { return 200 \"ok\\n\"; } }"
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$UP/" >/dev/null && return; sleep 0.1; done
  echo "the upstream nginx did not start" >&2; return 1
}

# Keywarden (binary $KW) on SQLite in $OUT, proxying to $UP, started with an account
# ($ACC) and a live key ($KEY): listeners on $PUB and $ADM, root key $ROOT, process $KW_PID.
# Sets FORWARD_AUTH and GATEWAY, wrk's arguments for the two HTTP subjects. $1 is
# store.usage_durability (default batched); each mode gets a directory and database of its
# own, so a second service can run beside the first.
start_keywarden() {
  local mode=${1:-batched}
  local dir="$OUT/kw-$mode"
  mkdir -p "$dir"
  PUB=$(port); ADM=$(port)
  ROOT=bench-root-key-0123456789abcdef
  cat > "$dir/keywarden.toml" <<TOML
[server]
public_listen = "127.0.0.1:$PUB"
admin_listen = "127.0.0.1:$ADM"
[store]
database_url = "sqlite://$dir/kw.db"
usage_durability = "$mode"
[auth]
lockout = { max_failures = 0, window_seconds = 300, lock_seconds = 300 }
[plans]
default = "bench"
[plans.tiers.bench]
quotas = [ { unit = "tokens", limit = 1000000000000, period = "month" } ]
[gateway]
upstream = "http://127.0.0.1:$UP"
TOML
  ( cd "$dir" && KEYWARDEN_ROOT_KEY=$ROOT RUST_LOG=warn exec "$KW" --config "$dir/keywarden.toml" serve >"$dir/serve.log" 2>&1 ) &
  KW_PID=$!
  pids+=($KW_PID)
  local up=0
  for _ in $(seq 1 "${KW_START_TRIES:-100}"); do curl -sf "http://127.0.0.1:$ADM/healthz" >/dev/null && { up=1; break; }; sleep 0.1; done
  if [ "$up" = 0 ]; then
    echo "Keywarden did not start; its log:" >&2; tail -20 "$dir/serve.log" >&2; return 1
  fi
  local json='import sys,json;print(json.load(sys.stdin)[sys.argv[1]])'
  ACC=$(curl -s -X POST "http://127.0.0.1:$ADM/v1/admin/accounts" -H "Authorization: Bearer $ROOT" \
    -H 'Content-Type: application/json' -d '{"name":"bench"}' | python3 -c "$json" id)
  KEY=$(curl -s -X POST "http://127.0.0.1:$ADM/v1/admin/accounts/$ACC/keys" -H "Authorization: Bearer $ROOT" \
    -H 'Content-Type: application/json' -d '{"mode":"live","name":"bench"}' | python3 -c "$json" api_key)
  # wrk's arguments for the two HTTP subjects: forward-auth with the key, the gateway.
  FORWARD_AUTH=(-H "Authorization: Bearer $KEY" -H "X-Original-URI: /v1/things" -H "X-Original-Method: GET"
    "http://127.0.0.1:$ADM/v1/forward-auth")
  GATEWAY=(-H "Authorization: Bearer $KEY" "http://127.0.0.1:$PUB/ping")
}

# The bare proxy's arguments (`ADDED`) for the headers the gateway adds for the bench key:
# its identity headers, as forward-auth answers them for that key, the forwarding headers
# and a request id each way. Stops when forward-auth's answer lacks one, as the bare proxy
# would then send less than the gateway.
gateway_headers() {
  ADDED=(--up "x-forwarded-for: 127.0.0.1" --up "x-forwarded-host: 127.0.0.1:$PUB" --up "x-forwarded-proto: http")
  while IFS= read -r h; do
    case "${h,,}" in
      x-keywarden-mode:* | x-keywarden-key-id:* | x-keywarden-account-id:* | x-keywarden-scopes:*)
        ADDED+=(--up "$h") ;;
      x-request-id:*) ADDED+=(--up "$h" --down "$h") ;;
    esac
  done < <(curl -si "${FORWARD_AUTH[@]}" | tr -d '\r')
  # Four identity headers and the request id, or the reference would not send what the gateway
  # sends.
  if [ "${#ADDED[@]}" != 18 ]; then
    echo "forward-auth's answer for the bench key lacked identity headers or a request id:" >&2
    curl -si "${FORWARD_AUTH[@]}" >&2; exit 1
  fi
}

# wrk prints Requests/sec and, with --latency, the 99th percentile.
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99_ms() {
  awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$1"
}
