#!/usr/bin/env bash
# The first command: install what livesession needs on Debian, build it, check the
# machine, and run the server with its embedded defaults (SQLite in ./data, local
# desktops, free mode, no payment keys). Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

apt_install "${RUNTIME_PACKAGES[@]}" build-essential pkg-config
ensure_node
ensure_rust
install_web_client
echo "==> cargo build --release (a few minutes the first time)"
cargo build --release --locked -p livesession
./target/release/livesession doctor
exec ./target/release/livesession serve "$@"
