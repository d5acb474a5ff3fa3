#!/usr/bin/env bash
# Start a single-node Slurm (munged + slurmctld + slurmd) for the workflow tests.
#
#   tests/slurm/start_slurm.sh [STATE_DIR]      (default: $SYNAPSE_EI_SLURM_DIR or /tmp/synapse-ei-slurm)
#
# All state (munge key and socket, spool, logs, pid files) lives under STATE_DIR. The config goes
# to Slurm's default path, /etc/slurm/slurm.conf, because SLURM_CONF does not reach the `srun`
# inside a job (snakemake-executor-plugin-slurm-jobstep strips SLURM_* from its environment);
# a slurm.conf there that this script did not write is never overwritten. Idempotent: a cluster
# that already answers is reused. Prints `export SLURM_CONF=...` as its last line.
# Needs root and Debian's `slurmctld slurmd munge` packages (see .ci/run).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
state="${1:-${SYNAPSE_EI_SLURM_DIR:-/tmp/synapse-ei-slurm}}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
export SLURM_CONF="${SYNAPSE_EI_SLURM_CONF:-/etc/slurm/slurm.conf}"
marker="# synapse-ei test cluster"
ctld_port="${SYNAPSE_EI_SLURMCTLD_PORT:-6817}"
slurmd_port="${SYNAPSE_EI_SLURMD_PORT:-6818}"

fail() { echo "start_slurm.sh: $*" >&2; exit 1; }

for tool in munged slurmctld slurmd sinfo scontrol sbatch squeue; do
    command -v "$tool" >/dev/null || fail "'$tool' not found: apt-get install -y slurmctld slurmd munge"
done
[[ $EUID -eq 0 ]] || fail "must run as root (the daemons run as root here)"

node_ready() {
    # idle, mixed or allocated: the node takes jobs (a trailing * means not responding).
    sinfo --noheader --partition debug --format '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)$'
}

if [[ -f "$SLURM_CONF" ]] && ! grep -qF "$marker" "$SLURM_CONF"; then
    fail "$SLURM_CONF exists and is not the test cluster's: this looks like a real Slurm host; leave it alone (or set SYNAPSE_EI_SLURM_CONF)"
fi
if [[ -f "$SLURM_CONF" ]] && grep -qF "state=$state" "$SLURM_CONF" && scontrol ping >/dev/null 2>&1 && node_ready; then
    echo "start_slurm.sh: reusing the running cluster in $state" >&2
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
fi

mkdir -p "$state"/{munge,slurmctld,slurmd,log} "$(dirname "$SLURM_CONF")"
chmod 700 "$state/munge"

# --- munge: its own key and socket, so a host munged (if any) is left alone -------------------
if [[ ! -S "$state/munge/munge.socket.2" ]] || ! munge -n -S "$state/munge/munge.socket.2" >/dev/null 2>&1; then
    if [[ ! -s "$state/munge/munge.key" ]]; then
        dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$state/munge/munge.key"
    fi
    # --force: munged refuses to run as root, or beside world-writable /tmp, without it.
    munged --force \
        --key-file="$state/munge/munge.key" \
        --socket="$state/munge/munge.socket.2" \
        --pid-file="$state/munge/munged.pid" \
        --seed-file="$state/munge/munged.seed" \
        --log-file="$state/log/munged.log"
    for _ in $(seq 50); do
        munge -n -S "$state/munge/munge.socket.2" >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n -S "$state/munge/munge.socket.2" >/dev/null || fail "munged did not start: see $state/log/munged.log"
fi

# --- a stale or half-started cluster holds the ports: stop it (a whole one from another dir) ---
previous_state="$(sed -n "s|^$marker state=||p" "$SLURM_CONF" 2>/dev/null || true)"
if [[ -n "$previous_state" && "$previous_state" != "$state" && -d "$previous_state" ]]; then
    "$here/stop_slurm.sh" "$previous_state"
fi
"$here/stop_slurm.sh" "$state" --keep-munge

# --- slurm.conf: the real CPU count and memory of this machine --------------------------------
node="$(hostname -s)"
hardware="$(slurmd -C | head -1)"
cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")"
memory_mb="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")"
[[ -n "$cpus" && -n "$memory_mb" ]] || fail "could not read CPUs/RealMemory from 'slurmd -C': $hardware"
sed -e "s|@STATE@|$state|g" -e "s|@NODE@|$node|g" -e "s|@CPUS@|$cpus|g" \
    -e "s|@MEMORY_MB@|$memory_mb|g" -e "s|@CTLD_PORT@|$ctld_port|g" \
    -e "s|@SLURMD_PORT@|$slurmd_port|g" "$here/slurm.conf.in" >"$SLURM_CONF.tmp"
printf '%s state=%s\n' "$marker" "$state" >>"$SLURM_CONF.tmp"
mv "$SLURM_CONF.tmp" "$SLURM_CONF"

# --- daemons -------------------------------------------------------------------------------
# -c: start clean (no jobs from an earlier run); both fork into the background themselves.
slurmctld -c -f "$SLURM_CONF"
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
scontrol ping >/dev/null 2>&1 || fail "slurmctld did not start: see $state/log/slurmctld.log"
slurmd -f "$SLURM_CONF" -N "$node"

for _ in $(seq 150); do node_ready && break; sleep 0.2; done
if ! node_ready; then
    # A node that was DOWN in an earlier run's saved state comes back on request.
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 1
fi
node_ready || fail "node $node not ready: $(sinfo --noheader 2>&1); see $state/log/slurmd.log"
echo "start_slurm.sh: cluster up in $state (node $node, $cpus CPUs, $memory_mb MB)" >&2
echo "export SLURM_CONF=$SLURM_CONF"
