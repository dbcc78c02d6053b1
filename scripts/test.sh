#!/usr/bin/env bash
# The second command: install what the tests need (the desktop toolchain, noVNC and
# Playwright from npm) and run every test: Rust unit and integration tests against real
# Xvnc/openbox/Chromium, SQLite and PostgreSQL (the store suites start their own server
# on loopback from Debian's package), then the Playwright tests against the real server
# and viewer. Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

apt_install "${RUNTIME_PACKAGES[@]}" build-essential pkg-config procps python3 python3-venv postgresql postgresql-client
ensure_node
ensure_rust
install_web_client
echo "==> npm ci (end-to-end tests: playwright-core, stripe)"
npm ci --prefix e2e --no-audit --no-fund --loglevel=error

echo "==> cargo test"
cargo build --locked --workspace --all-targets
cargo test --locked --workspace
# What the fault-injection suite tried and what held (tests/integration/faults.rs).
cat "${CARGO_TARGET_DIR:-target}/tmp/fault-report.txt"

echo "==> The REST API against its OpenAPI spec (schemathesis)"
bash scripts/api-check.sh

echo "==> deploy/kubernetes/ validated offline (kubectl, kubernetes-validate; no cluster runs here)"
bash scripts/k8s-check.sh

echo "==> Playwright end-to-end tests"
LIVESESSION_BIN="$PWD/target/debug/livesession" node --test --test-concurrency=1 e2e/
