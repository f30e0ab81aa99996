#!/usr/bin/env bash
# slurm_cluster.sh - a real single-node SLURM cluster on this machine, for the SLURM test
# (tests/test_slurm.py starts it with `up` and stops it with `down`). From the team's
# shared/tools/slurm_cluster.sh recipe.
#
# Tested on Debian 12 (bookworm), slurm-wlm 22.05.8, munge 0.5.15, MariaDB 10.11,
# as root, no systemd (daemons are started by hand and tracked by their PID files).
#
#   slurm_cluster.sh up      install (apt) + configure + start daemons, wait for node idle
#   slurm_cluster.sh down    stop every daemon this script starts, by PID (never by name)
#   slurm_cluster.sh status  show daemons, sinfo
#
# Knobs (environment):
#   SLURM_LOCAL_DBD=1        1: MariaDB + slurmdbd, so `sacct`/`sacctmgr` work (the
#                            snakemake slurm plugin's default status command and its
#                            account validation). 0: no accounting; then run snakemake
#                            with `--slurm-status-command squeue` or it hangs forever.
#   SLURM_LOCAL_GPUS=1       fake GPUs on the node (gres gpu:fake:N, backed by symlinks
#                            to /dev/null) so --gpus=N / --gres=gpu:N / --gpus=fake:N jobs
#                            schedule. 0: a cluster without GPUs (such jobs are rejected).
#   SLURM_LOCAL_ACCOUNT=ci   account created in slurmdbd for root (and $SUDO_USER)
#   SLURM_LOCAL_PARTITION=debug
#   SLURM_LOCAL_TIMEOUT=90   seconds to wait for each daemon
set -euo pipefail

ACTION=${1:-up}
DBD=${SLURM_LOCAL_DBD:-1}
NGPU=${SLURM_LOCAL_GPUS:-1}
ACCOUNT=${SLURM_LOCAL_ACCOUNT:-ci}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
CLUSTER=localcluster
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-90}
DB_PASS=slurmlocal            # local-only MariaDB password for the slurm DB user

ETC=/etc/slurm
STATE=/var/lib/slurm
LOGS=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mysqld.pid
DBD_PID=/run/slurmdbd.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

log() { printf '[slurm_cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# gone PID -> 0 if the process has exited (a zombie waiting for PID 1 counts as gone)
gone() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 0
  [ -z "$st" ] || [ "$st" = Z ] || [ "$st" = X ]
}

# pid_alive PIDFILE COMM -> 0 if the pid in PIDFILE runs a process named COMM
pid_alive() {
  local pf=$1 comm=$2 pid
  [ -s "$pf" ] || return 1
  pid=$(tr -dc '0-9' < "$pf")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$comm" ] \
    && ! gone "$pid"
}

# wait_for DESCRIPTION CMD... -> retry CMD every 0.25 s until it succeeds or TIMEOUT
wait_for() {
  local what=$1; shift
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 0.25
  done
}

# stop_pid PIDFILE COMM -> SIGTERM the daemon, wait, SIGKILL if needed
# (slurmctld/slurmdbd run as 'slurm' and cannot unlink their pid files in /run: a
#  stale /run/slurmctld.pid makes the slurmctld package's prerm fail on purge)
stop_pid() {
  local pf=$1 comm=$2 pid i
  if ! pid_alive "$pf" "$comm"; then rm -f "$pf"; return 0; fi
  pid=$(tr -dc '0-9' < "$pf")
  log "stopping $comm (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 120); do
    gone "$pid" && { rm -f "$pf"; return 0; }
    sleep 0.25
  done
  log "$comm (pid $pid) ignored SIGTERM for 30 s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pf"
}

do_down() {
  stop_pid "$SLURMD_PID" slurmd
  stop_pid "$CTLD_PID" slurmctld
  stop_pid "$DBD_PID" slurmdbd
  stop_pid "$MARIADB_PID" mariadbd
  stop_pid "$MUNGE_PID" munged
  log "all daemons stopped"
}

do_status() {
  local n c
  for n in "$MUNGE_PID:munged" "$MARIADB_PID:mariadbd" "$DBD_PID:slurmdbd" \
           "$CTLD_PID:slurmctld" "$SLURMD_PID:slurmd"; do
    c=${n#*:}
    if pid_alive "${n%%:*}" "$c"; then echo "$c: running (pid $(cat "${n%%:*}"))";
    else echo "$c: not running"; fi
  done
  sinfo -o '%P %a %l %D %t %N %G' 2>/dev/null || true
}

install_packages() {
  local pkgs=(munge slurmctld slurmd slurm-client) missing=()
  [ "$DBD" = 1 ] && pkgs+=(slurmdbd mariadb-server)
  local p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >> /tmp/slurm_cluster.apt.log 2>&1 \
      || die "apt-get install failed, see /tmp/slurm_cluster.apt.log"
  fi
}

ensure_hostname() {
  H=$(hostname -s)
  if ! getent hosts "$H" >/dev/null; then
    log "adding '127.0.0.1 $H' to /etc/hosts"
    echo "127.0.0.1 $H" >> /etc/hosts
  fi
}

start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  if ! pid_alive "$MUNGE_PID" munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for munge bash -c 'munge -n | unmunge'
}

# install_if_changed SRC DEST MODE OWNER -> returns 0 if DEST was (re)written
install_if_changed() {
  local src=$1 dst=$2 mode=$3 owner=$4
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then rm -f "$src"; return 1; fi
  install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dst"; rm -f "$src"
  return 0
}

write_configs() {
  local hw cpus boards sockets cores threads mem realmem tmp gres_node="" i
  hw=$(slurmd -C | head -1)
  field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<< "$hw"; }
  cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
  cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
  realmem=$(( mem * 90 / 100 ))          # leave room for the OS
  install -d -o slurm -g slurm -m 0755 "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
  CONF_CHANGED=0

  tmp=$(mktemp)
  : > "$tmp"
  if [ "$NGPU" -gt 0 ]; then
    gres_node=" Gres=gpu:fake:$NGPU"
    for i in $(seq 0 $(( NGPU - 1 ))); do
      # slurmd wants a character device per GPU: a symlink to /dev/null is enough
      # (no mknod needed, works in unprivileged containers)
      ln -sfn /dev/null "$STATE/fakegpu$i"
      echo "NodeName=$H Name=gpu Type=fake File=$STATE/fakegpu$i" >> "$tmp"
    done
  fi
  install_if_changed "$tmp" "$ETC/gres.conf" 0644 root:root && CONF_CHANGED=1

  tmp=$(mktemp)
  cat > "$tmp" <<EOF
# generated by slurm_cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$H(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups anywhere: works in VMs and containers alike
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
# keep finished jobs visible to squeue/scontrol for 10 min (squeue status fallback)
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
JobCompType=jobcomp/none
EOF
  if [ "$DBD" = 1 ]; then
    cat >> "$tmp" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
EOF
  else
    echo "AccountingStorageType=accounting_storage/none" >> "$tmp"
  fi
  [ "$NGPU" -gt 0 ] && echo "GresTypes=gpu" >> "$tmp"
  cat >> "$tmp" <<EOF
NodeName=$H NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$realmem$gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOF
  install_if_changed "$tmp" "$ETC/slurm.conf" 0644 root:root && CONF_CHANGED=1

  # slurmd initialises a cgroup plugin even with linuxproc/none. On hybrid/v1 hosts
  # (like this one) autodetect picks cgroup/v1 and needs nothing. On cgroup-v2-only
  # hosts without systemd/dbus (most containers) cgroup/v2 must not talk to systemd.
  # (v2 branch untested here: this VM is hybrid)
  tmp=$(mktemp)
  if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
    printf 'CgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\n' > "$tmp"
  else
    printf 'CgroupPlugin=autodetect\n' > "$tmp"
  fi
  install_if_changed "$tmp" "$ETC/cgroup.conf" 0644 root:root && CONF_CHANGED=1

  DBD_CHANGED=0
  if [ "$DBD" = 1 ]; then
    tmp=$(mktemp)
    cat > "$tmp" <<EOF
# generated by slurm_cluster.sh
AuthType=auth/munge
DbdHost=$H
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=$DBD_PID
EOF
    # slurmdbd refuses to start unless its config is 0600 and owned by SlurmUser
    install_if_changed "$tmp" "$ETC/slurmdbd.conf" 0600 slurm:slurm && DBD_CHANGED=1
  fi
  return 0
}

start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! pid_alive "$MARIADB_PID" mariadbd; then
    log "starting mariadbd"
    # socket only (no TCP port), fully detached from this shell
    setsid -f /usr/sbin/mariadbd --user=mysql --skip-networking \
      --pid-file="$MARIADB_PID" --socket=/run/mysqld/mysqld.sock \
      --log-error="$LOGS/mariadb.log" </dev/null >/dev/null 2>&1
  fi
  wait_for mariadb mariadb-admin --silent ping
  wait_for "mariadb pid file" pid_alive "$MARIADB_PID" mariadbd
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  if [ "$DBD_CHANGED" = 1 ]; then stop_pid "$DBD_PID" slurmdbd; fi
  if ! pid_alive "$DBD_PID" slurmdbd; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
  fi
  wait_for slurmdbd sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

node_state() { sinfo -h -N -n "$H" -o '%t' 2>/dev/null | head -1; }

start_slurm() {
  if [ "$CONF_CHANGED" = 1 ]; then      # node/gres changes need a restart
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$CTLD_PID" slurmctld
  fi
  if ! pid_alive "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld -c   # clean state: a killed test run's jobs must not hold the node
  fi
  wait_for slurmctld scontrol ping
  scancel -u "$(id -un)" 2>/dev/null || true   # the same for a controller left running
  if ! pid_alive "$SLURMD_PID" slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd
  fi
  local deadline=$(( $(date +%s) + TIMEOUT )) st resumed=0
  while :; do
    st=$(node_state)
    case "$st" in
      idle|mix|alloc) break ;;
      inval*|down*|drain*|drng*|fail*)
        if [ "$resumed" = 0 ]; then
          log "node $H is '$st', resuming it"
          scontrol update nodename="$H" state=resume || true
          resumed=1
        fi ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || {
      scontrol show node "$H" >&2 || true
      die "node $H not idle (state '$st'); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
    }
    sleep 0.25
  done
}

add_accounts() {
  sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Description="$ACCOUNT" Organization=local >/dev/null
  local u
  for u in root ${SUDO_USER:-}; do
    sacctmgr -n -P list assoc user="$u" account="$ACCOUNT" format=user | grep -qx "$u" \
      || sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
  done
}

do_up() {
  local t0=$SECONDS
  install_packages
  ensure_hostname
  start_munge
  write_configs
  if [ "$DBD" = 1 ]; then start_mariadb; start_slurmdbd; fi
  start_slurm
  [ "$DBD" = 1 ] && add_accounts
  # end-to-end smoke test: munge + slurmctld + slurmd + step launch
  srun -Q --immediate="$TIMEOUT" -t 1 -n1 true || die "srun smoke test failed"
  log "cluster up in $(( SECONDS - t0 )) s: node $H $(node_state), partition $PARTITION," \
      "accounting=$([ "$DBD" = 1 ] && echo slurmdbd || echo none), fake GPUs=$NGPU"
  sinfo -o '%P %a %l %D %t %N %G'
}

case "$ACTION" in
  up) do_up ;;
  down|stop) do_down ;;
  status) do_status ;;
  *) die "usage: $0 up|down|status" ;;
esac
