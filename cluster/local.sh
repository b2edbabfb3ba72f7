#!/usr/bin/env bash
# A local multi-node Ray cluster on 127.0.0.1: a head node and one worker node as separate Ray processes.
#
#   cluster/local.sh up        start both nodes (token auth on; the token lives in $STATE/auth_token)
#   eval "$(cluster/local.sh env)"   RAY_ADDRESS, RAY_DASHBOARD_ADDRESS + auth for `ray job submit` / `serve deploy`
#   cluster/local.sh status    nodes and resources
#   cluster/local.sh down      stop only the processes this script started (found by their temp dir)
#
# CPU counts (logical): head 2, worker 1. With 2 training workers x 0.5 CPU that leaves Ray Data its CPU
# (see scaling.data_cpus); override with MTL_HEAD_CPUS / MTL_WORKER_CPUS. Ports: MTL_GCS_PORT (6390, +1 for
# the Ray client), MTL_DASHBOARD_PORT (8265, +1/+2 for the two nodes' dashboard agents, which share this host).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${MTL_LOCAL_CLUSTER_DIR:-$ROOT/.ray-local}"
GCS_PORT="${MTL_GCS_PORT:-6390}"
DASHBOARD_PORT="${MTL_DASHBOARD_PORT:-8265}"
HEAD_CPUS="${MTL_HEAD_CPUS:-2}"
WORKER_CPUS="${MTL_WORKER_CPUS:-1}"
TEMP_DIR="$STATE/tmp"
# Jobs run `python -m jobs...`: make that the project's interpreter, and start Ray from the project root
# so relative paths in the shipped configs mean what they mean in a checkout.
if [[ -x "$ROOT/.venv/bin/ray" ]]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
# Serve's request path as measured (serve_app/local.py SERVE_ENV): read by Ray's processes when they start.
export RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.torch_extensions}"

our_pids() {
  # Ray daemons started here carry $TEMP_DIR in their command line; everything below them (workers,
  # job drivers, Serve replicas) goes with them.
  local roots
  # (The Ray client proxy only carries the GCS address.) Patterns come from a file so grep never matches itself.
  roots=$( { grep -l -a -F -f <(printf "%s\n" "$TEMP_DIR") /proc/[0-9]*/cmdline
             grep -l -a -E -f <(printf "address=[0-9.]+:%s\n" "$GCS_PORT") /proc/[0-9]*/cmdline; } 2>/dev/null \
           | cut -d/ -f3 | sort -u | tr '\n' ' ' || true)
  [[ -z "$roots" ]] && return 0
  ps -eo pid=,ppid= | awk -v roots="$roots" '
    { parent[$1] = $2; pids[NR] = $1 }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) ours[r[i]] = 1
      do { changed = 0
        for (i in pids) { p = pids[i]; if (!(p in ours) && (parent[p] in ours)) { ours[p] = 1; changed = 1 } }
      } while (changed)
      for (p in ours) print p
    }' | sort -n
}

up() {
  if [[ -n "$(our_pids)" ]]; then echo "already up (cluster/local.sh status)"; return 0; fi
  mkdir -p "$STATE"
  if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
    (umask 077; python -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH")
  fi
  cd "$ROOT"
  ray start --head --node-ip-address=127.0.0.1 --port="$GCS_PORT" --num-cpus="$HEAD_CPUS" --num-gpus=0 \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --temp-dir="$TEMP_DIR" \
    --dashboard-agent-listen-port=$((DASHBOARD_PORT + 1)) --ray-client-server-port=$((GCS_PORT + 1)) \
    --resources='{"head": 1}' --disable-usage-stats >/dev/null
  ray start --address="127.0.0.1:$GCS_PORT" --node-ip-address=127.0.0.1 --num-cpus="$WORKER_CPUS" --num-gpus=0 \
    --dashboard-agent-listen-port=$((DASHBOARD_PORT + 2)) --resources='{"worker": 1}' --disable-usage-stats >/dev/null
  echo "up: head + 1 worker node on 127.0.0.1; dashboard http://127.0.0.1:$DASHBOARD_PORT"
  echo "next: eval \"\$(cluster/local.sh env)\""
}

down() {
  local pids
  pids=$(our_pids)
  if [[ -z "$pids" ]]; then echo "down: nothing of ours is running"; return 0; fi
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 30); do
    pids=$(for pid in $pids; do if [[ -d /proc/$pid ]]; then echo "$pid"; fi; done)
    [[ -z "$pids" ]] && break
    sleep 0.5
  done
  if [[ -n "$pids" ]]; then kill -KILL $pids 2>/dev/null || true; fi
  echo "down: stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) cd "$ROOT" && ray status --address="127.0.0.1:$GCS_PORT" ;;
  env)
    echo "export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_DASHBOARD_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT" \
      "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
