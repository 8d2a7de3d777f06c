#!/usr/bin/env bash
# Schemathesis against both listeners' /openapi.json of the real binary, on each store.
#
#   .ci/schemathesis.sh [sqlite] [postgres]
#
# With no argument: SQLite, plus PostgreSQL when KEYWARDEN_TEST_DATABASE_URL names a server
# (a fresh database is made on it and dropped afterwards). The run fails on any 5xx, any
# response whose status, content type or body the document does not describe, and on a
# panic in the service's log.
#
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (per operation and phase; default 10, about two minutes
# for both stores on two cores), SCHEMATHESIS_SEED (default fixed, so a run can be
# repeated), KEYWARDEN_BIN (default: built here).
# Schemathesis is installed, pinned, into a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$(pwd)

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-10}"
SEED="${SCHEMATHESIS_SEED:-20261203}"
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
ROOT_KEY="schemathesis_root_key_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
MASTER_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
PEPPER=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

stores=("$@")
if [ ${#stores[@]} -eq 0 ]; then
  stores=(sqlite)
  [ -n "${KEYWARDEN_TEST_DATABASE_URL:-}" ] && stores+=(postgres)
fi

# ---- schemathesis, pinned, in a virtualenv
VENV="$ROOT_DIR/target/schemathesis-venv"
ST="$VENV/bin/schemathesis"
if ! "$ST" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
echo "schemathesis: $("$ST" --version)"

# ---- the binary
if [ -z "${KEYWARDEN_BIN:-}" ]; then
  cargo build -q -p keywarden
  KEYWARDEN_BIN="$ROOT_DIR/target/debug/keywarden"
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

json_field() { # json_field FIELD < json
  python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# `postgres://user@host:port/db?q` with the database replaced.
with_database() {
  python3 - "$1" "$2" <<'EOF'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], p.query, "")))
EOF
}

KW_PID=""
PG_DROP=""
WORK=""
cleanup() {
  if [ -n "$KW_PID" ]; then kill "$KW_PID" 2>/dev/null || true; wait "$KW_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DROP" ]; then psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DROP WITH (FORCE)" >/dev/null 2>&1 || true; fi
  KW_PID=""; PG_DROP=""
}
trap cleanup EXIT

passed=0
failed=0

run_store() {
  local store=$1 db_url
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/kw-schemathesis.XXXXXX")
  case "$store" in
    sqlite) db_url="sqlite://$WORK/keywarden.db" ;;
    postgres)
      PG_ADMIN="${KEYWARDEN_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
      command -v psql >/dev/null || { echo "psql is needed for the PostgreSQL run" >&2; return 1; }
      local name="kw_schemathesis_$(date +%s)_$$"
      psql -q "$PG_ADMIN" -c "CREATE DATABASE $name" >/dev/null
      PG_DROP=$name
      db_url=$(with_database "$PG_ADMIN" "$name")
      ;;
    *) echo "unknown store $store (sqlite or postgres)" >&2; return 1 ;;
  esac

  local public_port admin_port
  public_port=$(free_port)
  admin_port=$(free_port)
  # Limits high enough that a run is not mostly 429s; a second plan and a quota so plan
  # changes and usage reports have something to work on; recoverable test secrets so the
  # reveal endpoint answers.
  cat >"$WORK/keywarden.toml" <<EOF
[server]
public_listen = "127.0.0.1:$public_port"
admin_listen = "127.0.0.1:$admin_port"

[auth]
lockout = { max_failures = 1000000, window_seconds = 1, lock_seconds = 1 }

[keys]
recoverable_test_secrets = true

[plans]
default = "default"

[plans.tiers.default]
requests_per_minute = 1000000
quotas = [{ unit = "requests", limit = 100000000, period = "month" }]

[plans.tiers.pro]
requests_per_minute = 1000000
EOF
  KEYWARDEN_CONFIG="$WORK/keywarden.toml" KEYWARDEN_ROOT_KEY="$ROOT_KEY" \
    KEYWARDEN_DATABASE_URL="$db_url" KEYWARDEN_MASTER_KEY="$MASTER_KEY" \
    KEYWARDEN_PEPPER="$PEPPER" \
    RUST_LOG="${RUST_LOG:-warn}" \
    "$KEYWARDEN_BIN" serve >"$WORK/keywarden.log" 2>&1 &
  KW_PID=$!
  local admin="http://127.0.0.1:$admin_port" public="http://127.0.0.1:$public_port"
  for _ in $(seq 1 100); do
    curl -fsS "$admin/readyz" >/dev/null 2>&1 && curl -fsS "$public/readyz" >/dev/null 2>&1 && break
    kill -0 "$KW_PID" 2>/dev/null || { cat "$WORK/keywarden.log" >&2; return 1; }
    sleep 0.2
  done

  # An account and an owner key for the self-service listener.
  local acc key
  acc=$(curl -fsS -X POST "$admin/v1/admin/accounts" -H "Authorization: Bearer $ROOT_KEY" \
    -H 'Content-Type: application/json' -d '{"name":"Schemathesis"}' | json_field id)
  key=$(curl -fsS -X POST "$admin/v1/admin/accounts/$acc/keys" -H "Authorization: Bearer $ROOT_KEY" \
    -H 'Content-Type: application/json' -d '{"mode":"live","name":"schemathesis"}' | json_field api_key)

  local common=(--checks "$CHECKS" --max-examples "$MAX_EXAMPLES" --seed "$SEED"
    --phases examples,coverage,fuzzing --generation-database none --no-color
    --request-timeout 10 --workers 1 --suppress-health-check all --warnings off)
  local status=0
  # Schemathesis keeps a cache in its working directory.
  pushd "$WORK" >/dev/null
  echo "== schemathesis: $store, admin listener"
  "$ST" run "$admin/openapi.json" "${common[@]}" -H "Authorization: Bearer $ROOT_KEY" \
    || status=1
  # Erasing the account ends the key every other self-service call uses: it runs last.
  echo "== schemathesis: $store, public listener"
  "$ST" run "$public/openapi.json" "${common[@]}" -H "Authorization: Bearer $key" \
    --exclude-path /v1/account/data || status=1
  "$ST" run "$public/openapi.json" "${common[@]}" -H "Authorization: Bearer $key" \
    --include-path /v1/account/data || status=1
  popd >/dev/null

  if ! kill -0 "$KW_PID" 2>/dev/null; then
    echo "keywarden ($store) is no longer running" >&2
    status=1
  fi
  if grep -n "panicked" "$WORK/keywarden.log" >&2; then
    echo "keywarden ($store) panicked" >&2
    status=1
  fi
  if [ $status -ne 0 ]; then
    echo "---- keywarden log ($store), last lines" >&2
    tail -n 40 "$WORK/keywarden.log" >&2
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
  cleanup
  rm -rf "$WORK"
}

start=$(date +%s)
for store in "${stores[@]}"; do
  run_store "$store" || failed=$((failed + 1))
done
echo "schemathesis stage: $(($(date +%s) - start)) s, ${MAX_EXAMPLES} examples per operation and phase"
echo "schemathesis: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
