#!/usr/bin/env bash
# Stop the test cluster that start_slurm.sh started in STATE_DIR (its state files are kept).
#   tests/slurm/stop_slurm.sh [STATE_DIR] [--keep-munge]
# Only the daemons named by the pid files under STATE_DIR are signalled.
set -uo pipefail
state="${1:-${SYNAPSE_EI_SLURM_DIR:-/tmp/synapse-ei-slurm}}"
pidfiles=("$state/slurmd.pid" "$state/slurmctld.pid")
[[ "${2:-}" == "--keep-munge" ]] || pidfiles+=("$state/munge/munged.pid")
for pidfile in "${pidfiles[@]}"; do
    [[ -s "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
exit 0
