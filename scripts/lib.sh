# Shared by scripts/run.sh and scripts/test.sh: install the Debian packages given,
# skipping those already installed, and run `apt-get update` at most once.
set -euo pipefail

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "Missing Debian packages: ${missing[*]}; run as root or install them with apt-get." >&2
    exit 1
  fi
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The desktop toolchain (Xvnc, openbox, Chromium, fonts) and what builds the server.
RUNTIME_PACKAGES=(tigervnc-standalone-server openbox chromium fonts-dejavu-core ca-certificates socat bubblewrap slirp4netns iproute2 util-linux)

ensure_node() {
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "==> installing the Rust toolchain (rustup)"
    apt_install curl build-essential
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

# noVNC comes from npm and is embedded into the binary at build time.
install_web_client() {
  echo "==> npm ci (web client: @novnc/novnc)"
  npm ci --prefix web --no-audit --no-fund --loglevel=error
}
