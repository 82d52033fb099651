#!/usr/bin/env bash
# Checks deploy/systemd/lockstepd.service with `systemd-analyze verify`,
# its ExecStart pointed at a built lockstepd: any message (an unknown key
# is only a warning to systemd) fails the check.
#
#   scripts/check_systemd_unit.sh <lockstepd binary>
set -euo pipefail
lockstepd="$(realpath "$1")"
top="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v systemd-analyze >/dev/null; then
  apt-get install -y --no-install-recommends systemd >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends systemd >/dev/null; }
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed "s#/usr/local/bin/lockstepd#$lockstepd#" "$top/deploy/systemd/lockstepd.service" >"$work/lockstepd.service"
out="$(systemd-analyze verify "$work/lockstepd.service" 2>&1)" || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
  echo "$out"
  exit 1
fi
echo "deploy/systemd/lockstepd.service: systemd-analyze verify found nothing"
