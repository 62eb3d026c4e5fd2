#!/bin/bash
# A one-node slurm on this machine, from Debian's packages, for trying slurm/train.sbatch for real
# (tests/test_slurm_cluster.py uses it). Needs root (or the daemons already running).
#
#   bash slurm/local_cluster.sh start    # install if needed, start munged, slurmctld, slurmd; reuse running ones
#   bash slurm/local_cluster.sh status   # daemons, node state, queue; exit 0 when the node takes jobs
#   bash slurm/local_cluster.sh stop     # stop slurmd and slurmctld (and munged if this script started it)
#   export SLURM_CONF=/tmp/llmcore-slurm/slurm.conf    # then sbatch, squeue, scontrol, scancel use it
#
# Everything slurm writes (config, state, spool, logs, pid files) is under $LLMCORE_SLURM_DIR
# (default /tmp/llmcore-slurm); munged is the system one (key in /etc/munge, socket in /run/munge).
# The node is `hostname -s` at 127.0.0.1 with $LLMCORE_SLURM_CPUS CPUs (default 2), one partition
# `debug`, no accounting database: finished jobs stay visible to `scontrol show job` for
# MinJobAge (10 minutes) and their final state is appended to $LLMCORE_SLURM_DIR/log/jobcomp.log.
# cred_expire=10 lets a requeued job start again after ~11 s instead of slurm's default 121 s.
set -euo pipefail

DIR="${LLMCORE_SLURM_DIR:-/tmp/llmcore-slurm}"
CONF="$DIR/slurm.conf"
CPUS="${LLMCORE_SLURM_CPUS:-2}"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF"

say() { echo "[local_cluster] $*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || { say "slurm/munge not installed and not root: cannot apt-get install"; return 1; }
  say "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurmctld slurmd slurm-client munge >"$DIR/log/apt.log" 2>&1 || {
    apt-get update -q >>"$DIR/log/apt.log" 2>&1 &&
      apt-get install -y -q slurmctld slurmd slurm-client munge >>"$DIR/log/apt.log" 2>&1
  } || { say "apt-get install failed (see $DIR/log/apt.log)"; return 1; }
}

start_munge() {
  if munge_ok; then say "munged: running, reused"; return 0; fi
  local key=/etc/munge/munge.key
  if [ ! -s "$key" ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    say "munged: created $key"
  fi
  chown munge:munge /etc/munge "$key" && chmod 700 /etc/munge && chmod 400 "$key"
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$DIR/munged.ours"
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { say "munged did not start (see /var/log/munge/munged.log)"; return 1; }
  say "munged: started (pid $(cat /run/munge/munged.pid 2>/dev/null || echo ?))"
}

write_conf() {
  local new="$DIR/slurm.conf.new"
  cat >"$new" <<EOF
# written by slurm/local_cluster.sh: a one-node test cluster
ClusterName=llmcore-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=${LLMCORE_SLURMCTLD_PORT:-6817}
SlurmdPort=${LLMCORE_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
ReturnToService=2
KillWait=60
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=2048 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then
    rm "$new"; say "config: $CONF unchanged"; return 1
  fi
  mv "$new" "$CONF"; say "config: wrote $CONF"; return 0
}

start() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  install_packages
  start_munge
  local changed=0
  write_conf && changed=1
  if [ "$changed" = 1 ] && { alive "$DIR/slurmctld.pid" || alive "$DIR/slurmd.pid"; }; then
    say "config changed: restarting the daemons"; stop_daemons
  fi
  if alive "$DIR/slurmctld.pid"; then
    say "slurmctld: running (pid $(cat "$DIR/slurmctld.pid")), reused"
  else
    slurmctld -f "$CONF"
    for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
    scontrol ping 2>/dev/null | grep -q UP || { say "slurmctld did not come up (see $DIR/log/slurmctld.log)"; return 1; }
    say "slurmctld: started (pid $(cat "$DIR/slurmctld.pid"))"
  fi
  if alive "$DIR/slurmd.pid"; then
    say "slurmd: running (pid $(cat "$DIR/slurmd.pid")), reused"
  else
    slurmd -f "$CONF"
    for _ in $(seq 50); do alive "$DIR/slurmd.pid" && break; sleep 0.1; done
    alive "$DIR/slurmd.pid" || { say "slurmd did not start (see $DIR/log/slurmd.log)"; return 1; }
    say "slurmd: started (pid $(cat "$DIR/slurmd.pid"))"
  fi
  local state=""
  for _ in $(seq 150); do
    state="$(node_state)"
    case "$state" in idle|mixed|allocated|completing) break ;; esac
    case "$state" in down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;; esac
    sleep 0.2
  done
  case "$state" in
    idle|mixed|allocated|completing) say "node $NODE: $state; partition debug ($CPUS CPUs)" ;;
    *) say "node $NODE did not become idle (state '${state:-?}'; see $DIR/log/slurmd.log)"; return 1 ;;
  esac
  echo "export SLURM_CONF=$CONF"
}

stop_one() {  # name pidfile
  if alive "$2"; then
    local pid; pid="$(cat "$2")"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    say "$1: stopped (pid $pid)"
  else
    say "$1: not running"
  fi
}

stop_daemons() {
  stop_one slurmd "$DIR/slurmd.pid"
  stop_one slurmctld "$DIR/slurmctld.pid"
}

stop() {
  stop_daemons
  if [ -f "$DIR/munged.ours" ]; then
    stop_one munged /run/munge/munged.pid
    rm -f "$DIR/munged.ours"
  else
    say "munged: not started by this script, left running"
  fi
}

status() {
  local up=0
  munge_ok && say "munged: running" || { say "munged: not running"; up=1; }
  for d in slurmctld slurmd; do
    if alive "$DIR/$d.pid"; then say "$d: running (pid $(cat "$DIR/$d.pid"))"; else say "$d: not running"; up=1; fi
  done
  if [ "$up" = 0 ]; then
    say "node $NODE: $(node_state)"
    squeue -o "%.8i %.12j %.10T %.10M %R" 2>/dev/null || true
    echo "export SLURM_CONF=$CONF"
  fi
  return "$up"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
