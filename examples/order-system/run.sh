#!/usr/bin/env bash
# The order system over NATS and Redis: three instances of each service
# (order, payment, inventory, notification) as separate processes, listed
# with `catga services`; a client places orders under load; one order
# instance and one payment instance are killed (-9) in the middle; the
# client then checks that nothing was lost. Everything started here is
# stopped by the pid it got.
#
#   ./examples/order-system/run.sh [--orders N] [--seconds S]
#
# It starts nats-server (JetStream) and redis-server on free 127.0.0.1
# ports, unless CATGA_NATS_URL / CATGA_REDIS_URL name servers to use.
# Exit status: the client's (0: nothing lost).
set -euo pipefail
cd "$(dirname "$0")/../.."

orders=3000
seconds=20
while [ $# -gt 0 ]; do
  case "$1" in
    --orders) orders="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "usage: $0 [--orders N] [--seconds S]" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/catga/target}"
cargo build -q -j "${CARGO_BUILD_JOBS:-2}" -p order-service -p payment-service -p inventory-service \
  -p notification-service -p order-client -p catga-cli
bin="$CARGO_TARGET_DIR/debug"
work="$(mktemp -d)"
servers=() # nats-server, redis-server: stopped last
pids=()    # the services and the client: stopped first
stop_all() { # SIGNAL pid...
  local signal="$1"; shift
  for pid in "$@"; do kill "-$signal" "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
cleanup() {
  # Stop what this script started, by pid: the services (gracefully) and
  # the client, then the servers they use.
  stop_all TERM "${pids[@]}"
  stop_all TERM "${servers[@]}"
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # host port name
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done
  echo "$3 did not listen on $1:$2 within 5 s" >&2; exit 1
}

if [ -z "${CATGA_NATS_URL:-}" ]; then
  port="$(free_port)"
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
  servers+=($!)
  wait_port 127.0.0.1 "$port" nats-server
  export CATGA_NATS_URL="nats://127.0.0.1:$port"
fi
if [ -z "${CATGA_REDIS_URL:-}" ]; then
  port="$(free_port)"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  servers+=($!)
  wait_port 127.0.0.1 "$port" redis-server
  export CATGA_REDIS_URL="redis://127.0.0.1:$port"
fi
echo "NATS $CATGA_NATS_URL, Redis $CATGA_REDIS_URL"

declare -A pid_of
for service in order payment inventory notification; do
  for i in 1 2 3; do
    CATGA_INSTANCE_ID="$service-$i" RUST_LOG="${RUST_LOG:-warn}" "$bin/$service-service" >"$work/$service-$i.log" 2>&1 &
    pid_of[$service-$i]=$!
    pids+=($!)
    disown "$!" # no "Killed" job notice when it is killed below
  done
done

# Up when every instance answers the service API (bounded: 20 s).
up=0
for _ in $(seq 100); do
  up="$("$bin/catga" services --json --wait 300 2>/dev/null | grep -c '"type": "io.nats.micro.v1.info_response"' || true)"
  [ "$up" -ge 12 ] && break
  sleep 0.2
done
if [ "$up" -lt 12 ]; then
  echo "only $up of 12 instances came up; their logs:" >&2
  tail -n 5 "$work"/*-?.log >&2 || true
  exit 1
fi
echo
"$bin/catga" services
echo

"$bin/order-client" --orders "$orders" --seconds "$seconds" >"$work/client.log" 2>&1 &
client=$!
pids+=("$client")
tail -n +1 -f --pid="$client" "$work/client.log" &
pids+=($!)
# Once the load runs, kill one order and one payment instance, without warning.
for _ in $(seq 100); do grep -q "load started" "$work/client.log" 2>/dev/null && break; sleep 0.1; done
sleep 1
echo "  kill -9 order-2 (pid ${pid_of[order-2]}) and payment-1 (pid ${pid_of[payment-1]})"
kill -KILL "${pid_of[order-2]}" "${pid_of[payment-1]}" 2>/dev/null || echo "  (one of them had already exited)"
status=0
wait "$client" || status=$?
sleep 0.2 # the last lines through tail

# What the servers and instances say afterwards (for the reader; the
# script's status is the client's check).
echo
echo "Each order instance's share (order-2 was killed):"
"$bin/catga" stats order || true
echo
echo "Every notification instance updated its dashboard with every created order; one per order e-mailed:"
"$bin/catga" stats notification || true
echo
"$bin/catga" sagas order || true
exit "$status"
