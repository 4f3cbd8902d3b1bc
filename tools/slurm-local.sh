#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the cluster-profile test (tests/test_slurm.py).
#   tools/slurm-local.sh up DIR     start munged (if needed), slurmctld and slurmd; state under DIR
#   tools/slurm-local.sh down DIR   stop what `up` started, by PID file
# Needs root and Debian's slurmctld slurmd slurm-client munge packages (.ci/run installs them).
# Facts and traps: slurm.conf must be at /etc/slurm/slurm.conf (the executor plugin strips
# SLURM_CONF inside jobs); without DefMemPerCPU every job takes the node's whole memory.
set -euo pipefail
action=${1:?usage: slurm-local.sh up|down DIR}
dir=$(realpath -m "${2:?usage: slurm-local.sh up|down DIR}")
conf=/etc/slurm/slurm.conf

up() {
  mkdir -p "$dir"/state "$dir"/spool "$dir"/log
  if [ -e "$conf" ] && [ ! -L "$conf" ]; then
    echo "slurm-local.sh: $conf exists and is not ours; refusing to replace it" >&2; exit 3
  fi
  if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    echo "slurm-local.sh: a slurmctld or slurmd is already running here; stop it first" >&2; exit 3
  fi
  if ! (munge -n 2>/dev/null | unmunge >/dev/null 2>&1); then
    mkdir -p /run/munge && chown munge:munge /run/munge
    su -s /bin/sh munge -c /usr/sbin/munged
    cp /run/munge/munged.pid "$dir"/munged.pid
    for _ in $(seq 50); do (munge -n | unmunge >/dev/null 2>&1) && break; sleep 0.1; done
  fi
  local mem cpus
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cpus=$(nproc)
  cat > "$dir"/slurm.conf <<CONF
ClusterName=msptycho
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
ReturnToService=2
SchedulerParameters=sched_interval=1
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  mkdir -p /etc/slurm
  ln -sfn "$dir"/slurm.conf "$conf"
  slurmctld
  slurmd -N localhost
  for _ in $(seq 300); do
    [ "$(sinfo -h -o %t 2>/dev/null)" = "idle" ] && { echo "slurm up: $dir"; return 0; }
    sleep 0.1
  done
  echo "slurm-local.sh: the node did not become idle within 30 s" >&2
  sinfo >&2 || true
  exit 4
}

down() {
  for d in slurmd slurmctld munged; do
    if [ -f "$dir/$d.pid" ]; then
      pid=$(cat "$dir/$d.pid")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/$d.pid"
    fi
  done
  if [ -L "$conf" ] && [ "$(readlink "$conf")" = "$dir/slurm.conf" ]; then rm -f "$conf"; fi
  echo "slurm down: $dir"
}

"$action"
