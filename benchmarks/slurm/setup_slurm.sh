#!/usr/bin/env bash
# A single-node SLURM on this machine (Debian's slurm-wlm + munge), to test
# `bigrestore run --scheduler` against workers that dask-jobqueue submits as SLURM jobs
# (benchmarks/slurm/run_slurm.py; docs/slurm.md).
#
#   sudo bash benchmarks/slurm/setup_slurm.sh        # idempotent: run it again any time
#
# Installs slurm-wlm and munge with apt, writes /etc/slurm/slurm.conf for this host (its name,
# and the CPUs and memory that `slurmd -C` finds), creates a munge key, and starts munged,
# slurmctld and slurmd directly (no systemd needed: containers and VMs without an init).
# Daemons already running (their pid files name a live process) are left as they are.
# No cgroups: proctrack/linuxproc and task/none, which single-node testing does not need.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
export DEBIAN_FRONTEND=noninteractive

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm \
    /etc/munge /var/lib/munge /var/log/munge /run/munge

# --- munge: one key, owned by the munge user ---------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key

running() {  # running PIDFILE: a live process is named by the pid file
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

if ! running /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null  # the key works

# --- slurm.conf for this node --------------------------------------------------------------
node=$(slurmd -C | head -n 1)  # NodeName=HOST CPUs=.. Boards=.. ... RealMemory=..
cat >"$CONF.new" <<EOF
# written by bigrestore benchmarks/slurm/setup_slurm.sh: one node, no accounting, no cgroups
ClusterName=bigrestore
SlurmctldHost=$host
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    changed=1
else
    rm -f "$CONF.new"
fi

# --- daemons ---------------------------------------------------------------------------
if ! running /run/slurmctld.pid; then
    slurmctld
elif [ "$changed" = 1 ]; then
    scontrol reconfigure
fi
if ! running /run/slurmd.pid; then
    slurmd
fi

for _ in $(seq 30); do  # until the controller answers and the node is up
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        break
    fi
    sleep 1
done
if sinfo -h -N -o '%T' | grep -qE '^(drain|down)'; then
    scontrol update NodeName="$host" State=RESUME
fi
sinfo -N -l
