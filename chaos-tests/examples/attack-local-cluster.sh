#!/usr/bin/env bash
# `lockstep-chaos run --target` end to end, as an operator would run it
# against a cluster the harness did not start: three lockstepd started
# by local-hook.sh (each advertising the harness's proxy and sending
# through it), attacked from outside with kill, pause, leader-kill,
# partition, one-way and latency, then checked. `.ci/run` runs it.
#
#   attack-local-cluster.sh KAFKA_BROKERS S3_ENDPOINT BUCKET REPORT_DIR [SECONDS] [SEED]
#
# LOCKSTEPD and LOCKSTEP_CHAOS name the binaries (default: next to each
# other under $CARGO_TARGET_DIR/debug).
set -euo pipefail
kafka="${1:?KAFKA_BROKERS}"
s3="${2:?S3_ENDPOINT}"
bucket="${3:?BUCKET}"
report="${4:?REPORT_DIR}"
seconds="${5:-60}"
seed="${6:-3}"
here="$(cd "$(dirname "$0")" && pwd)"
bin="${CARGO_TARGET_DIR:-$here/../../target}/debug"
export LOCKSTEPD="${LOCKSTEPD:-$bin/lockstepd}"
chaos="${LOCKSTEP_CHAOS:-$bin/lockstep-chaos}"

# free ports: three for the nodes' APIs, six in a row for the proxies
read -r api0 api1 api2 proxy_base < <(python3 - <<'PY'
import socket
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
apis = [free() for _ in range(3)]
for base in range(41000, 60000, 16):
    socks = []
    try:
        for p in range(base, base + 6):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks: s.close()
    if len(socks) == 6 and not set(apis) & set(range(base, base + 6)):
        print(*apis, base); break
PY
)

mkdir -p "$report"
work="$(mktemp -d)"
export LC_DIR="$work" LC_PROXY_BASE="127.0.0.1:$proxy_base" LC_NODES=3
export LC_KAFKA="$kafka" LC_TOPIC="attack-$seed-$$" LC_STORE="s3://$bucket/attack-$seed-$$"
export LC_TOKEN="attack-token-$$-$RANDOM" LC_SECRET="attack-cluster-secret-$$-$RANDOM"
export LC_PIPELINE="$work/pipeline.sql"
export AWS_ENDPOINT_URL="$s3" AWS_ACCESS_KEY_ID=attack AWS_SECRET_ACCESS_KEY=attack-secret AWS_REGION=us-east-1
# the canonical pipeline, deduplicating by the producer's event id
sed "s/WITH (key = 'user_id',/WITH (key = 'user_id', event_id = 'event_id',/" \
  "$here/../../config/ad_features.sql" >"$LC_PIPELINE"
hook="bash $here/local-hook.sh"
targets="127.0.0.1:$api0,127.0.0.1:$api1,127.0.0.1:$api2"

stop_all() {
  for i in 0 1 2; do
    api_var="api$i"
    $hook kill "node-$i" "127.0.0.1:${!api_var}" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap stop_all EXIT

# the harness first (it binds the proxies), then the nodes, all at once
LOCKSTEP_CHAOS_TOKEN="$LC_TOKEN" "$chaos" run --target "$targets" --hook "$hook" \
  --proxy-base "127.0.0.1:$proxy_base" --faults all --duration "${seconds}s" --seed "$seed" \
  --report "$report" &
harness=$!
sleep 1
$hook start node-0 "127.0.0.1:$api0"
$hook start node-1 "127.0.0.1:$api1"
$hook start node-2 "127.0.0.1:$api2"
rc=0
wait "$harness" || rc=$?
if [ "$rc" -ne 0 ]; then
  tail -n 20 "$work"/node-*/lockstepd.log >&2 || true
fi
exit "$rc"
