#!/usr/bin/env bash
# The load generator: scaling, latency at fixed offered rates against raw
# async-nats, recovery from failures under steady load, sagas, and
# per-operation costs, from real processes on this machine (nats-server,
# redis-server, N instance processes, separate client processes; all on
# free 127.0.0.1 ports, all stopped by the pid started).
#
#   ./scripts/load.sh                 # full run, ~12 min after the build
#   ./scripts/load.sh --quick         # every phase, fewer points, ~80 s
#   ./scripts/load.sh --out DIR       # where results.json, RESULTS.md and
#                                     # the SVG plots go (default docs/results)
#   ./scripts/load.sh --only latency --scenarios kill-1-of-3   # a part
#
# Builds in release first (not counted). Figures are only comparable from a
# quiet machine: the run prints the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/catga/target}"
for s in nats-server redis-server redis-cli; do
  command -v "$s" >/dev/null || {
    echo "$s is required; ./scripts/test.sh installs it (Debian: nats-server, redis-server, redis-tools)" >&2
    exit 1
  }
done
cargo build --release --locked --bin catga-load --bin catga-load-service
CATGA_LOAD_SCRIPT=./scripts/load.sh exec "$CARGO_TARGET_DIR/release/catga-load" "$@"
