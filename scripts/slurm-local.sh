#!/usr/bin/env bash
# Single-node SLURM cluster on this machine, for `snakemake --executor slurm`
# integration tests. Debian 12 packages (SLURM 22.05, MariaDB 10.11), run as root, no
# systemd: daemons are started directly.
# Usage: scripts/slurm-local.sh start|stop|status|stop-controller|start-controller
#
# Daemons, in start order: munged, mariadbd (MariaDB, the accounting database: root
# over its Unix socket, no password), slurmdbd, slurmctld, slurmd. `stop` stops them
# all (in reverse); `start` and `stop` may be repeated. Every wait is bounded
# (SLURM_LOCAL_TIMEOUT seconds each, default 60); on failure the daemons' logs are shown.
#
# A controller outage on purpose (tests/test_slurm_outage.py): `stop-controller` stops
# slurmctld alone (it saves its state; jobs go on running under slurmd, and those that
# end meanwhile are reported when it is back), `start-controller` starts it again, has
# slurmd register at once and waits until the node is usable. Until then a note ($OUTAGE, with a deadline,
# SLURM_LOCAL_OUTAGE_MAX seconds, default 300) makes `start`, `stop` and `status` of
# other test runs wait for the end of the outage instead of taking the cluster over.
#
# Found in the test VM (Firecracker, cgroup v1 hybrid, /sys/fs/cgroup/memory writable):
#  - proctrack/cgroup + task/cgroup (ConstrainRAMSpace) work: a job over --mem is
#    killed by the kernel OOM killer and ends OUT_OF_MEMORY (exit 0:125).
#  - If the memory cgroup is not writable (or SLURM_LOCAL_CGROUP=no) we fall back to
#    proctrack/linuxproc + task/affinity + JobAcctGatherParams=OverMemoryKill: a job
#    over --mem is killed too, but ends FAILED (exit 0:9), not OUT_OF_MEMORY.
#  - A job over --time=1 ends TIMEOUT after ~70 s (OverTimeLimit=0, KillWait=5).
#  - Accounting (slurmdbd, cluster poscarflow-local; root's jobs go to account root):
#    `sacct -j ID` gives a job's state, also after squeue has forgotten it
#    (MinJobAge=600 keeps finished jobs in squeue/scontrol for 10 min). A job shows up
#    in sacct a moment after sbatch returns, not at once.
#  - snakemake's slurm plugin needs mem_mb >= 300: each job runs a snakemake process.
#    Its `--slurm-status-command sacct` works here as well as squeue. Its account guess
#    (plugin 2.8.0) passes "| tail -1" to sacct as arguments and warns on every run
#    ("sacct: invalid option -- '1'"); POSCARFLOW_SLURM_ACCOUNT=root avoids that.
set -euo pipefail

ETC=/etc/slurm
LOGDIR=/var/log/slurm
NODE=$(hostname -s)
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CLUSTER=poscarflow-local
MYSQL_LOG=/var/log/mysql/error.log
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
OUTAGE=/run/slurm-local-outage   # while slurmctld is stopped on purpose: its deadline
OUTAGE_MAX=${SLURM_LOCAL_OUTAGE_MAX:-300}

log() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] ERROR: $*" >&2; exit 1; }
pids() { ps -C "$1" -o pid=,stat= | awk '$2 !~ /Z/ {print $1}'; }  # exact name, no zombies
running() { [ -n "$(pids "$1")" ]; }
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }
usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }
logs_tail() {
  local f
  for f in /var/log/munge/munged.log "$MYSQL_LOG" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmctld.log" \
    "$LOGDIR/slurmd.log"; do
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

# Run "$@" every 0.5 s until it succeeds (0) or $TIMEOUT s have passed (1); each try
# is limited to 10 s. Dies early, with the logs, if daemon $1 is not running (after 2 s).
wait_for() {
  local daemon=$1 start=$SECONDS; shift
  while [ $((SECONDS - start)) -lt "$TIMEOUT" ]; do
    timeout 10 "$@" >/dev/null 2>&1 && return 0
    if [ $((SECONDS - start)) -ge 2 ] && ! running "$daemon"; then
      logs_tail; die "$daemon died (logs above)"
    fi
    sleep 0.5
  done
  return 1
}

# MariaDB for slurmdbd, started like the init script would (no mysqld_safe).
start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld   # no systemd/tmpfiles to create it
  install -d -o mysql -g adm -m 2750 /var/log/mysql
  if [ ! -d /var/lib/mysql/mysql ]; then  # normally made by the package's postinst
    log "creating the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  if ! running mariadbd; then
    log "starting mariadbd"
    # setsid + no inherited descriptors: the caller (e.g. Python's subprocess.run with
    # captured output) must not wait for it. Lock timeout as SLURM's docs advise.
    setsid mariadbd --user=mysql --innodb-lock-wait-timeout=900 --log-error="$MYSQL_LOG" \
      </dev/null >/dev/null 2>&1 &
  fi
  wait_for mariadbd mariadb-admin --silent ping || { logs_tail; die "mariadbd does not answer"; }
}

# slurmdbd stores to MariaDB as root over the Unix socket (Debian's root uses unix_socket
# authentication, so no password is needed or written anywhere).
write_dbd_conf() {
  install -d -m 0755 "$ETC" "$LOGDIR"
  install -m 0600 /dev/null "$ETC/slurmdbd.conf"   # slurmdbd refuses a readable one
  cat >"$ETC/slurmdbd.conf" <<EOF
# Written by scripts/slurm-local.sh: accounting of the local single-node test cluster.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
}

# slurmdbd, and the cluster registered in it (sacctmgr also creates the account root,
# with root's association). slurmdbd creates its database on its first start.
start_slurmdbd() {
  if ! running slurmdbd; then
    write_dbd_conf
    log "starting slurmdbd"
    slurmdbd
  fi
  wait_for slurmdbd sacctmgr -n list cluster || { logs_tail; die "slurmdbd does not answer"; }
  local clusters
  clusters=$(timeout 10 sacctmgr -n -P list cluster format=cluster) || die "sacctmgr failed"
  if ! grep -qx "$CLUSTER" <<<"$clusters"; then
    log "registering cluster $CLUSTER in slurmdbd"
    timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

# slurmctld's running configuration stores to slurmdbd? (No when it was started by an
# older version of this script.)
accounting_on() {
  local conf
  conf=$(scontrol show config 2>/dev/null) || return 1  # (grep -q in a pipe: SIGPIPE)
  grep -q '^AccountingStorageType *= *accounting_storage/slurmdbd' <<<"$conf"
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
ClusterName=$CLUSTER
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
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
  start_mariadb
  if running slurmctld && ! accounting_on; then
    log "slurmctld runs without accounting: restarting slurmctld and slurmd"
    scontrol shutdown 2>/dev/null || true
    stop_proc slurmd 10; stop_proc slurmctld 10
  fi
  local fresh=no
  if ! running slurmctld || ! running slurmd; then write_conf; fresh=yes; fi
  start_slurmdbd   # after slurm.conf: sacctmgr reads it
  if [ $fresh = yes ]; then
    running slurmctld || { log "starting slurmctld"; slurmctld; }
    running slurmd || { log "starting slurmd"; slurmd; }
  fi
  wait_idle
  # slurmctld registers with slurmdbd at start; sacct then answers from the database
  wait_for slurmdbd sacct -n -X -j 1 || { logs_tail; die "sacct does not answer"; }
  log "accounting up: sacct answers"
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
  stop_proc slurmd 10; stop_proc slurmstepd 10; stop_proc slurmctld 10
  # after slurmctld, which sends slurmdbd its last records when it shuts down
  stop_proc slurmdbd 1
  stop_proc mysqld_safe 1   # if the package's init script started MariaDB: it would restart it
  stop_proc mariadbd 1; stop_proc munged 1
  local d left=()
  for d in "${DAEMONS[@]}"; do running "$d" && left+=("$d"); done
  [ ${#left[@]} -eq 0 ] || die "still running: ${left[*]}"
  log "stopped"
}

status() {
  local d rc=0
  for d in "${DAEMONS[@]}"; do
    if running "$d"; then log "$d: running (pid $(pids "$d" | xargs))"; else log "$d: not running"; rc=1; fi
  done
  sinfo 2>&1 || true
  if [ $rc -eq 0 ] && ! timeout 10 sacct -n -X -j 1 >/dev/null 2>&1; then
    log "sacct does not answer"; rc=1
  fi
  if [ $rc -eq 0 ] && usable; then log "cluster usable"; else log "cluster NOT usable"; return 1; fi
}

# Wait while slurmctld is stopped on purpose (stop-controller), at most until the
# note's deadline; a note past its deadline (its test was killed) is removed.
wait_outage() {
  local deadline
  deadline=$(cat "$OUTAGE" 2>/dev/null) || return 0
  [ "$(date +%s)" -lt "$deadline" ] && log "slurmctld is stopped on purpose (a test): waiting"
  while [ -f "$OUTAGE" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done
  if [ -f "$OUTAGE" ]; then log "outage note past its deadline: removing it"; rm -f "$OUTAGE"; fi
}

stop_controller() {
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  running slurmctld || die "slurmctld is not running"
  echo $(($(date +%s) + OUTAGE_MAX)) >"$OUTAGE"
  stop_proc slurmctld 1   # SIGTERM: slurmctld saves its state and exits
  if running slurmctld; then rm -f "$OUTAGE"; die "slurmctld does not stop"; fi
  log "slurmctld stopped (jobs go on running; start-controller starts it again)"
}

start_controller() {
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  trap 'rm -f "$OUTAGE"' EXIT
  if ! running slurmctld; then
    log "starting slurmctld"
    slurmctld
    # Have slurmd register again at once. Else it does at slurmctld's next node ping
    # (SlurmdTimeout/3, 100 s here), and until then a new step (srun) of a job that ran
    # through the outage waits ("step creation temporarily disabled, retrying").
    wait_for slurmctld scontrol reconfigure || { logs_tail; die "slurmctld does not answer"; }
  fi
  wait_idle
}

case "${1:-}" in
  start|stop|status) wait_outage; "$1" ;;
  stop-controller) stop_controller ;;
  start-controller) start_controller ;;
  *) echo "usage: $0 start|stop|status|stop-controller|start-controller" >&2; exit 2 ;;
esac
