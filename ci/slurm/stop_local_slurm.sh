#!/usr/bin/env bash
# Stops the one-node test cluster started by ci/slurm/start_local_slurm.sh (by pid file).
# Its configuration and logs stay (/etc/slurm, /var/log/slurm); jobs still queued are lost
# with the state under /var/spool/slurmctld only if the next start rewrites the config.
set -uo pipefail
stop_daemon() {
  local pidfile="$1" pid
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
stop_daemon /run/slurm/slurmd.pid
stop_daemon /run/slurm/slurmctld.pid
if [ "${1:-}" = "--all" ]; then  # munge too (other Slurm users of this machine need it)
  stop_daemon /run/munge/munged.pid
fi
echo "local Slurm stopped"
