#!/usr/bin/env bash
# A `--hook` for `lockstep-chaos run --target`: acts on the lockstepd
# processes of a cluster running on this machine, the way an operator's
# own hook would act through systemd, Kubernetes or ssh.
#
#   local-hook.sh ACTION NODE_ID ADDR
#
# ACTION is start, stop (graceful: SIGTERM, returns once the process
# exited), kill (SIGKILL), pause (SIGSTOP) or resume (SIGCONT); NODE_ID is
# `node-N`; ADDR is the address its API listens on. `start` also starts a
# node the first time (chaos-tests/README.md, "An existing cluster").
#
# Configuration, from the environment:
#   LC_DIR          where each node keeps its data, log and pid file (required)
#   LC_PROXY_BASE   HOST:PORT given to lockstep-chaos as --proxy-base (required):
#                   node N advertises HOST:PORT+2N and sends through
#                   http://HOST:PORT+2N+1
#   LC_NODES        how many nodes (3)
#   LOCKSTEPD       the lockstepd binary (lockstepd on PATH)
#   LC_KAFKA, LC_TOPIC, LC_STORE, LC_TOKEN, LC_SECRET, LC_PIPELINE: the
#   nodes' --kafka-brokers, --kafka-topic, --object-store, --token,
#   --cluster-secret and --pipeline; AWS_* reach the object store.
set -euo pipefail

action="${1:?usage: local-hook.sh ACTION NODE_ID ADDR}"
id="${2:?usage: local-hook.sh ACTION NODE_ID ADDR}"
addr="${3:?usage: local-hook.sh ACTION NODE_ID ADDR}"
: "${LC_DIR:?set LC_DIR}" "${LC_PROXY_BASE:?set LC_PROXY_BASE}"
n="${id##*-}"
nodes="${LC_NODES:-3}"
host="${LC_PROXY_BASE%:*}"
base="${LC_PROXY_BASE##*:}"
dir="$LC_DIR/$id"
pidfile="$dir/pid"
mkdir -p "$dir"

pid() {
  [ -f "$pidfile" ] && cat "$pidfile"
}

alive() {
  local p
  p="$(pid)" && kill -0 "$p" 2>/dev/null
}

case "$action" in
  start)
    if alive; then
      echo "$id already runs (pid $(pid))"
      exit 0
    fi
    seeds=""
    for ((i = 0; i < nodes; i++)); do
      seeds="${seeds:+$seeds,}$host:$((base + 2 * i))"
    done
    LOCKSTEP_PEER_PROXY="http://$host:$((base + 2 * n + 1))" \
      setsid "${LOCKSTEPD:-lockstepd}" \
      --node-id "$id" \
      --listen "$addr" \
      --advertise "$host:$((base + 2 * n))" \
      --seeds "$seeds" \
      --bootstrap-expect "$nodes" \
      --data-dir "$dir/data" \
      --pipeline "${LC_PIPELINE:?set LC_PIPELINE}" \
      --token "${LC_TOKEN:?set LC_TOKEN}" \
      --cluster-secret "${LC_SECRET:?set LC_SECRET}" \
      --kafka-brokers "${LC_KAFKA:?set LC_KAFKA}" \
      --kafka-topic "${LC_TOPIC:?set LC_TOPIC}" \
      --object-store "${LC_STORE:?set LC_STORE}" \
      --checkpoint-interval "1 second" \
      </dev/null >>"$dir/lockstepd.log" 2>&1 &
    echo $! >"$pidfile"
    echo "$id started (pid $!)"
    ;;
  stop)
    if alive; then
      p="$(pid)"
      kill -CONT "$p" 2>/dev/null || true
      kill -TERM "$p"
      for _ in $(seq 1 600); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$p" 2>/dev/null; then
        echo "$id did not exit within 60 s of SIGTERM" >&2
        exit 1
      fi
    fi
    rm -f "$pidfile"
    ;;
  kill)
    if alive; then
      p="$(pid)"
      kill -KILL "$p"
      while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
    fi
    rm -f "$pidfile"
    ;;
  pause)
    kill -STOP "$(pid)"
    ;;
  resume)
    kill -CONT "$(pid)"
    ;;
  *)
    echo "unknown action $action (start, stop, kill, pause, resume)" >&2
    exit 2
    ;;
esac
