#!/usr/bin/env bash
# The whole-system benchmark: builds a release binary, installs websockify (the current
# release from PyPI) into a virtualenv under target/ if it is not there yet, and runs
# `livesession bench all`, which prints the tables and writes them into
# docs/performance.md between its bench markers.
#
#   scripts/bench.sh            # full run, about ten minutes
#   scripts/bench.sh --quick    # a minute or two, for use while working
#   scripts/bench.sh --no-write # any further flags go to `bench all`
#
# Needs what `scripts/run.sh` installs (Xvnc, openbox, Chromium, …) and python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/bench-venv
if [ ! -x "$venv/bin/websockify" ]; then
    echo "bench.sh: installing websockify into $venv" >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
        echo "bench.sh: python3 -m venv failed; on Debian: apt-get install -y python3-venv" >&2
        exit 1
    fi
    "$venv/bin/pip" install --quiet --upgrade websockify
fi

cargo build --release -p livesession
exec target/release/livesession bench all --websockify "$venv/bin/websockify" "$@"
