#!/usr/bin/env bash
# Single-node SLURM cluster on this machine, for `snakemake --executor slurm`
# integration tests. Debian 12 packages (SLURM 22.05), run as root, no systemd:
# daemons are started directly.   Usage: scripts/slurm-local.sh start|stop|status
#
# Found in the test VM (Firecracker, cgroup v1 hybrid, /sys/fs/cgroup/memory writable):
#  - proctrack/cgroup + task/cgroup (ConstrainRAMSpace) work: a job over --mem is
#    killed by the kernel OOM killer and ends OUT_OF_MEMORY (exit 0:125).
#  - If the memory cgroup is not writable (or SLURM_LOCAL_CGROUP=no) we fall back to
#    proctrack/linuxproc + task/affinity + JobAcctGatherParams=OverMemoryKill: a job
#    over --mem is killed too, but ends FAILED (exit 0:9), not OUT_OF_MEMORY.
#  - A job over --time=1 ends TIMEOUT after ~70 s (OverTimeLimit=0, KillWait=5).
#  - No accounting: sacct exits 1 ("accounting storage is disabled"); use squeue or
#    scontrol (MinJobAge=600 keeps finished jobs visible for 10 min). snakemake's
#    slurm plugin therefore needs `--slurm-status-command squeue` (with sacct it
#    polls forever), and mem_mb >= 300: each job runs a snakemake process itself.
set -euo pipefail

ETC=/etc/slurm
LOGDIR=/var/log/slurm
NODE=$(hostname -s)
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
PKGS=(slurmctld slurmd slurm-client munge)

log() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] ERROR: $*" >&2; exit 1; }
pids() { ps -C "$1" -o pid=,stat= | awk '$2 !~ /Z/ {print $1}'; }  # exact name, no zombies
running() { [ -n "$(pids "$1")" ]; }
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }
usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }
logs_tail() {
  local f
  for f in /var/log/munge/munged.log "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log"; do
    if [ -f "$f" ]; then echo "--- tail $f"; tail -n 20 "$f"; fi
  done >&2
}

install_pkgs() {
  local p missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PKGS[@]}")
  # apt-get update only if the install fails (package lists missing or stale)
  "${apt[@]}" >/dev/null 2>&1 || { log "apt-get update"; apt-get update -qq && "${apt[@]}" >/dev/null; }
}

start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge   # no systemd/tmpfiles to create it
  [ -s /etc/munge/munge.key ] || { log "creating munge key"; mungekey --create --keyfile=/etc/munge/munge.key; }
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  running munged || runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.5; done
  logs_tail; die "munged does not answer"
}

# Memory cgroup (v1) writable? Then let the kernel enforce --mem, else poll RSS.
use_cgroup() {
  local d=/sys/fs/cgroup/memory/.slurm-local-probe
  [ "${SLURM_LOCAL_CGROUP:-auto}" != no ] && [ -d /sys/fs/cgroup/freezer ] && mkdir "$d" 2>/dev/null && rmdir "$d"
}

write_conf() {
  local cpus mem plugins
  # Topology from slurmd -C (avoids socket/core mismatch warnings), else nproc.
  cpus=$(slurmd -C 2>/dev/null | head -n1 | grep -o 'CPUs=.*ThreadsPerCore=[0-9]*' || echo "CPUs=$(nproc)")
  mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)  # MB, 5% headroom
  install -d -m 0755 "$ETC" "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
  if use_cgroup; then  # OverMemoryKill must be off here: slurmd refuses both mechanisms at once
    plugins=$'ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup,task/affinity'
    plugins+=$'\nJobAcctGatherType=jobacct_gather/cgroup\nJobAcctGatherParams=NoOverMemoryKill'
    printf 'CgroupPlugin=cgroup/v1\nConstrainCores=yes\nConstrainRAMSpace=yes\nConstrainSwapSpace=yes\n' >"$ETC/cgroup.conf"
  else
    plugins=$'ProctrackType=proctrack/linuxproc\nTaskPlugin=task/affinity'
    plugins+=$'\nJobAcctGatherType=jobacct_gather/linux\nJobAcctGatherParams=OverMemoryKill'
    rm -f "$ETC/cgroup.conf"
  fi
  cat >"$ETC/slurm.conf" <<EOF
# Written by scripts/slurm-local.sh: local single-node test cluster.
ClusterName=poscarflow-local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ReturnToService=2
MinJobAge=600
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MailProg=/bin/true
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without --mem get 1 GB/CPU, not the whole node (which would serialise them)
DefMemPerCPU=1024
$plugins
JobAcctGatherFrequency=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$NODE $cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_idle() {
  local s=""
  for _ in $(seq "$TIMEOUT"); do
    s=$(node_state)
    case "$s" in
      idle|mixed|allocated) log "node $NODE is $s: cluster up"; return 0 ;;
      down*|drain*) log "node is $s, resuming"; scontrol update nodename="$NODE" state=resume || true ;;
    esac
    if ! running slurmctld || ! running slurmd; then logs_tail; die "slurmctld/slurmd died (logs above)"; fi
    sleep 1
  done
  logs_tail; sinfo -N -l >&2 || true
  die "node $NODE not idle after ${TIMEOUT}s (state: '${s:-none}')"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  install_pkgs
  start_munge
  if ! running slurmctld || ! running slurmd; then
    write_conf
    running slurmctld || { log "starting slurmctld"; slurmctld; }
    running slurmd || { log "starting slurmd"; slurmd; }
  fi
  wait_idle
}

# Wait for process $1 to exit; SIGTERM after $2 half-seconds, SIGKILL after 15 s.
stop_proc() {
  local i p
  for i in $(seq 40); do
    running "$1" || return 0
    [ "$i" -eq "$2" ] && for p in $(pids "$1"); do kill "$p" 2>/dev/null || true; done
    [ "$i" -eq 30 ] && for p in $(pids "$1"); do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.5
  done
}

stop() {
  if running slurmctld; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
    # let cancelled jobs finish their epilog, else slurmd lingers ~10 s on shutdown
    for _ in $(seq 30); do [ -z "$(squeue -h -t PD,R,CG,S 2>/dev/null)" ] && break; sleep 0.5; done
    scontrol shutdown 2>/dev/null || true   # stops slurmctld and slurmd
  fi
  stop_proc slurmd 10; stop_proc slurmstepd 10; stop_proc slurmctld 10; stop_proc munged 1
  if running munged || running slurmctld || running slurmd; then die "some daemons are still running"; fi
  log "stopped"
}

status() {
  local d rc=0
  for d in munged slurmctld slurmd; do
    if running "$d"; then log "$d: running (pid $(pids "$d" | xargs))"; else log "$d: not running"; rc=1; fi
  done
  sinfo 2>&1 || true
  if [ $rc -eq 0 ] && usable; then log "cluster usable"; else log "cluster NOT usable"; return 1; fi
}

case "${1:-}" in
  start|stop|status) "$1" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
