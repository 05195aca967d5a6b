#!/usr/bin/env bash
# Start a one-node SLURM cluster in a scratch folder (installing Debian's slurm-wlm if missing)
# and print the path of its slurm.conf on the last line of stdout.
#
#   SLURM_CONF=$(.ci/start_slurm.sh [DIR]) && export SLURM_CONF
#
# Idempotent: a cluster already running from DIR (default /tmp/stokesflow-slurm) is reused.
# Needs root (the daemons run as root, there is no systemd: they are started by hand).
# Facts behind the configuration: DESIGN.md, "Field notes", "A real one-node SLURM".
#   - one node with this machine's real CPUs and memory (slurmd -C), one default partition;
#   - AuthType=auth/none + CredType=cred/none instead of munge (a scratch cluster on one host);
#   - no cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none; accounting off;
#   - DefMemPerCPU so that a job without --mem does not take the whole node's memory.
# Environment: STOKESFLOW_SLURM_INSTALL=0 never runs apt-get.
# Exit status: 0 running (conf path printed); 3 cannot start here (reason on stderr).
set -uo pipefail

DIR=${1:-${STOKESFLOW_SLURM_DIR:-/tmp/stokesflow-slurm}}
CONF="$DIR/slurm.conf"
say() { echo "start_slurm: $*" >&2; }
fail() { say "$*"; exit 3; }

ready() {  # the node answers and is idle/mixed/allocated
    SLURM_CONF="$CONF" timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

if [ -f "$CONF" ] && [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null \
   && [ -f "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null && ready; then
    echo "$CONF"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || fail "needs root to run slurmctld/slurmd (running as $(id -un))"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    [ "${STOKESFLOW_SLURM_INSTALL:-1}" != 0 ] || fail "SLURM is not installed and STOKESFLOW_SLURM_INSTALL=0"
    command -v apt-get >/dev/null || fail "SLURM is not installed and there is no apt-get to install slurm-wlm"
    say "installing slurm-wlm (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >&2 || fail "apt-get update failed"
    timeout 600 apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurmd slurmctld slurm-client slurm-wlm-torque >&2 \
        || fail "apt-get install slurm-wlm failed"
fi
command -v slurmctld >/dev/null || fail "slurmctld not found after installation"

# Stop what an earlier start from this folder left behind (only our own pids).
for d in slurmd slurmctld; do
    if [ -f "$DIR/$d.pid" ]; then
        pid=$(cat "$DIR/$d.pid")
        kill "$pid" 2>/dev/null && for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$DIR/$d.pid"
    fi
done

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" || fail "cannot create $DIR"
NODE=$(hostname -s)
CPUS=$(nproc --all)
# slurmd -C: what slurmd itself will find (a node declaring more is drained).
HW=$(slurmd -C 2>/dev/null | head -1)
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
[ -n "$MEM" ] || MEM=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
SOCK=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$HW")
CORES=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$HW")
THREADS=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$HW")
TOPO=""
[ -n "$SOCK" ] && [ -n "$CORES" ] && [ -n "$THREADS" ] && \
    TOPO="Sockets=$SOCK CoresPerSocket=$CORES ThreadsPerCore=$THREADS"
DEFMEM=$(( MEM / CPUS / 2 ))
[ "$DEFMEM" -gt 1024 ] && DEFMEM=1024

cat >"$CONF" <<EOF
# One-node scratch SLURM written by .ci/start_slurm.sh
ClusterName=stokesflow
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
MinJobAge=30
NodeName=$NODE CPUs=$CPUS $TOPO RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

export SLURM_CONF="$CONF"
slurmctld -i -f "$CONF" >>"$DIR/log/start.log" 2>&1 || fail "slurmctld did not start (see $DIR/log/slurmctld.log)"
slurmd -f "$CONF" >>"$DIR/log/start.log" 2>&1 || fail "slurmd did not start (see $DIR/log/slurmd.log)"
for _ in $(seq 150); do
    if ready; then
        echo "$CONF"
        exit 0
    fi
    # A node left down/drained by an earlier run: resume it.
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 0.2
done
fail "the node did not become idle within 30 s: $(sinfo -h -o '%T %E' 2>&1 | head -1) (logs in $DIR/log)"
