#!/usr/bin/env bash
# The README's "Running on a Ray cluster" commands, run on this one machine (CI runs it from
# scripts/test.sh): start a head node on 127.0.0.1, run `amc search --address auto` and
# `ray job submit -- amc search` against it with a tiny experiment, check that both studies
# hold their completed trials, stop the cluster. Everything it writes is in one temporary
# folder, removed at the end.
#
# Single-machine settings (a real cluster needs none of them):
# - Ray replaces a loopback --node-ip-address (and a 127.0.0.1 in RAY_ADDRESS) by the address of
#   the machine's default route; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's own single-node mode
#   (its default on macOS and Windows) and keeps the node, and so every server, on 127.0.0.1.
# - Ray's token authentication gets a token made here (RAY_AUTH_TOKEN_PATH), not ~/.ray.
# - The head runs with --block in the background and is stopped by signalling that one process,
#   which takes its node down with it: `ray stop` would stop every Ray process of the machine,
#   other people's clusters and test sessions included.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$repo/.venv/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 # a stopped head does not wait for draining
unset RAY_ADDRESS RAY_API_SERVER_ADDRESS
started=$SECONDS

tmp=$(mktemp -d -t amc-cluster.XXXXXX)
ray_pid=""
step_pid=""
# A long step runs in the background and is waited for, so a signal to this script stops it
# at once instead of after the step.
step() {
  "$@" &
  step_pid=$!
  wait "$step_pid"
  step_pid=""
}
stop_cluster() {
  if [ -n "$step_pid" ]; then
    kill -TERM "$step_pid" 2>/dev/null || true
    wait "$step_pid" 2>/dev/null || true
  fi
  if [ -n "$ray_pid" ] && kill -0 "$ray_pid" 2>/dev/null; then
    kill -TERM "$ray_pid"
    for _ in $(seq 30); do
      kill -0 "$ray_pid" 2>/dev/null || break
      sleep 1
    done
    kill -KILL "$ray_pid" 2>/dev/null || true
    wait "$ray_pid" 2>/dev/null || true
  fi
  # A process of the stopped node can still write its last log lines for a moment (rm then
  # fails with "Directory not empty"): retry, and never let the clean-up change the result
  # (a failing command in this EXIT trap would make the script exit 1 under set -e).
  for _ in 1 2 3 4 5; do
    rm -rf "$tmp" 2>/dev/null && return 0
    sleep 1
  done
  echo "cluster_smoke: could not remove $tmp (a Ray process still writing there?)" >&2
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$tmp/auth_token"
python -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH"

# Free loopback ports, so this cluster collides with no other Ray on the machine.
read -r port dashboard client agent < <(
  python - <<'EOF'
import socket

sockets = [socket.socket() for _ in range(4)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
EOF
)

mkdir "$tmp/job" "$tmp/ray"
cd "$tmp/job"
cat >exp.yaml <<'EOF'
model: resnet20
data: digits
input_shape: [1, 16, 16]
data_limit: 200
baseline: {epochs: 1}
target: flops=0.5
latency: {warmup: 1, min_run_time: 0.01, repeats: 3, table_min_run_time: 0.01, table_repeats: 2}
finetune: {steps: 2, bn_batches: 1, eval_batches: 2}
agent: {name: random}
threads: 1
EOF
storage="sqlite:///$tmp/amc.db"

echo "== [$((SECONDS - started)) s] ray start --head on 127.0.0.1:$port (dashboard :$dashboard)"
ray start --head --node-ip-address=127.0.0.1 --port="$port" --num-cpus=2 \
  --dashboard-host=127.0.0.1 --dashboard-port="$dashboard" --ray-client-server-port="$client" \
  --dashboard-agent-listen-port="$agent" --temp-dir="$tmp/ray" --disable-usage-stats \
  --block >"$tmp/ray-start.log" 2>&1 &
ray_pid=$!
export RAY_ADDRESS="127.0.0.1:$port"
for _ in $(seq 120); do
  grep -q "Ray runtime started" "$tmp/ray-start.log" && break
  if ! kill -0 "$ray_pid" 2>/dev/null; then break; fi
  sleep 0.5
done
if ! grep -q "Ray runtime started" "$tmp/ray-start.log"; then
  cat "$tmp/ray-start.log" >&2
  echo "cluster_smoke: the Ray head did not start" >&2
  exit 1
fi

echo "== [$((SECONDS - started)) s] amc search --address auto"
step amc search exp.yaml --address auto --episodes 2 --workers 1 --storage "$storage" \
  --study smoke-driver --quiet

echo "== [$((SECONDS - started)) s] ray job submit -- amc search"
step ray job submit --address "http://127.0.0.1:$dashboard" --working-dir . -- \
  amc search exp.yaml --address auto --episodes 2 --workers 1 --storage "$storage" \
  --study smoke-job --quiet

echo "== [$((SECONDS - started)) s] amc studies / amc show"
amc studies --storage "$storage" | tee "$tmp/studies.txt"
for study in smoke-driver smoke-job; do
  amc show "$study" --storage "$storage" >/dev/null
  complete=$(awk -F'│' -v s="$study" '{gsub(/ /, "", $2); gsub(/ /, "", $5)} $2 == s {print $5}' \
    "$tmp/studies.txt")
  if [ "$complete" != 2 ]; then
    echo "cluster_smoke: study $study has ${complete:-no} completed trials, expected 2" >&2
    exit 1
  fi
done
echo "cluster_smoke: ok in $((SECONDS - started)) s"
