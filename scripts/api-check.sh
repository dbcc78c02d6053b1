#!/usr/bin/env bash
# The REST API against its own OpenAPI spec: starts the server (the debug build, or
# $LIVESESSION_BIN) on loopback with a fresh data directory and runs schemathesis (from
# PyPI, in a virtualenv under the target directory) over every operation of
# /api/openapi.json with the admin token. It fails on any 5xx and on any answer that
# the spec does not describe (status, content type, headers, body schema). Run by
# scripts/test.sh; see docs/api.md, "OpenAPI".
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
bin="${LIVESESSION_BIN:-$target/debug/livesession}"
venv="$target/schemathesis-venv"
# Fixed, so that a run can be repeated; raise both by hand for a longer search.
seed="${LIVESESSION_API_CHECK_SEED:-1}"
examples="${LIVESESSION_API_CHECK_EXAMPLES:-20}"

if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "==> schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/schemathesis-requirements.txt
fi

data="$(mktemp -d)"
admin="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$target/api-check-server.log"
# The rate limits raised (they are tested elsewhere), so that generated requests reach
# the handlers' logic instead of 429s; no warm desktops, since nothing here watches one.
limits=(--create-rate 1000 --create-burst 100000 --checkout-rate 1000 --checkout-burst 100000
  --token-rate 1000 --token-burst 100000)
"$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" --warm-desktops 0 --admin-token "$admin" "${limits[@]}" >"$log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=1)" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "the server did not start; its log:"; cat "$log"; exit 1; }
  sleep 0.2
done

echo "==> schemathesis against http://127.0.0.1:$port/api/openapi.json (seed $seed, $examples examples per operation)"
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/api/openapi.json" \
  --header "Authorization: Bearer $admin" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$examples" --seed "$seed" --workers 2 --no-color
