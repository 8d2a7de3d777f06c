#!/usr/bin/env bash
# Measures what a key-cache miss costs with 1 000 and with 1 000 000 keys (SQLite always;
# PostgreSQL too when KEYWARDEN_TEST_DATABASE_URL names a server, each size in a fresh
# database created next to it), and prints the figures as `BENCH <name> <value> <unit>`.
#
#   bench/lookup_scale.sh            # 1 000 and 1 000 000 keys
#   bench/lookup_scale.sh --quick    # 1 000 and 100 000 keys (also KEYWARDEN_BENCH_QUICK=1)
#
# Other arguments go to the benchmark (criterion options, e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
for arg in "$@"; do
    case "$arg" in
        --quick) export KEYWARDEN_BENCH_QUICK=1 ;;
        *) args+=("$arg") ;;
    esac
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo bench -p keywarden-store --bench lookup -- ${args[@]+"${args[@]}"} | tee "$log"
echo
echo "== figures =="
grep '^BENCH ' "$log"
