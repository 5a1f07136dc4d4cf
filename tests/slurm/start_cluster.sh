#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, so the sbatch scripts in slurm/ can be tested for real
# (submission, srun tasks, signals, requeue) on a CPU machine. Needs root and a Debian-like system.
#
#   tests/slurm/start_cluster.sh         install slurm-wlm, munge if missing; start; wait for idle
#   tests/slurm/start_cluster.sh stop    stop the daemons (configuration and state are kept)
#
# Idempotent: a running, idle cluster is left alone. It refuses to touch an /etc/slurm/slurm.conf
# that it did not write. Finished jobs are logged to $STATE_DIR/jobcomp.txt (no slurmdbd needed).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# written by megatron-ngpt tests/slurm/start_cluster.sh"
STATE_DIR=/var/spool/slurm-ngpt
NODE=$(hostname -s)

die() { echo "start_cluster.sh: $*" >&2; exit 1; }

stop_cluster() {
  local pidfile pid
  for pidfile in "$STATE_DIR/slurmd.pid" "$STATE_DIR/slurmctld.pid" /run/munge/munged.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$pidfile"
  done
}

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || die "slurm-wlm is not installed and there is no apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

# Prints the configuration. The node must not claim more than slurmd detects, or it is drained.
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again.
render_config() {
  local memory
  memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat <<EOF
$MARKER
ClusterName=ngpt-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
ReturnToService=2
JobRequeue=1
KillWait=30
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$((memory - 512)) Gres=gpu:0
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# Writes the configuration; a running cluster with a different one is stopped first.
write_config() {
  [[ ! -f $CONF ]] || grep -qxF "$MARKER" "$CONF" || die "$CONF exists and was not written by me"
  local config
  config=$(render_config)
  [[ -f $CONF && $(<"$CONF") == "$config" ]] && return
  stop_cluster
  mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/d" /etc/slurm
  printf '%s\n' "$config" >"$CONF"
}

start_daemons() {
  # Jobs rendezvous at the node's name (MASTER_ADDR), so it must resolve.
  getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >>/etc/hosts
  if ! munge -n </dev/null >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    [[ -f /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    runuser -u munge -- munged
  fi
  pgrep -F "$STATE_DIR/slurmctld.pid" >/dev/null 2>&1 || slurmctld
  pgrep -F "$STATE_DIR/slurmd.pid" >/dev/null 2>&1 || slurmd
}

wait_until_idle() {
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    [[ $state == idle || $state == mixed || $state == allocated ]] && return
    sleep 1
  done
  tail -n 20 "$STATE_DIR/slurmctld.log" "$STATE_DIR/slurmd.log" >&2 || true
  die "node $NODE is '${state:-unreachable}', not idle, after 60 s (logs above)"
}

case ${1:-start} in
  stop) stop_cluster ;;
  start)
    (( EUID == 0 )) || die "must run as root (it installs packages and starts slurm daemons)"
    install_packages
    write_config
    start_daemons
    wait_until_idle
    echo "slurm: node $NODE up ($(sinfo -h -n "$NODE" -o '%c CPUs, %m MB, %T'))" ;;
  *) die "usage: $0 [start|stop]" ;;
esac
