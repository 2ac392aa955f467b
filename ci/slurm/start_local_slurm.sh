#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm, run as root, no systemd, no
# cgroups, no slurmdbd), for the Slurm tests (tests/test_slurm.py) and CI (.ci/run).
#
#   sudo bash ci/slurm/start_local_slurm.sh      # idempotent; prints `sinfo` when ready
#   sudo bash ci/slurm/stop_local_slurm.sh
#
# The node is declared as big as a GPU node the lrz profile targets (4 GPUs, 64 CPUs,
# 500 GB; SlurmdParameters=config_overrides), so the lrz profile's requests (mem_mb up to
# 240000, 16 CPUs, gres=gpu:4) are scheduled unchanged on a small machine: with TaskPlugin=task/none
# and no cgroups nothing is enforced, the declared resources are scheduler bookkeeping only
# (the jobs run on the real CPUs; Snakemake's --jobs bounds how many run at once). The GPUs
# are fake: slurmd 22.05 drops a GPU GRES without File= ("Removing file-less GPU") and wants
# character devices, so the node's 4 "GPUs" are device nodes with /dev/null's numbers
# (/var/spool/slurm/fake-gpu/nvidia[0-3]): jobs get a GPU allocation, no device, and the
# workflow's experiment (demo_tiny) trains on CPU. Override the shape with
# HLRP_SLURM_CPUS, HLRP_SLURM_MEM_MB, HLRP_SLURM_GPUS; the partition is `local`
# (HLRP_SLURM_PARTITION). Files: /etc/slurm/{slurm,gres}.conf, /var/spool/slurm{ctld,d},
# /var/log/slurm. sacct is disabled (no slurmdbd): use `squeue` (MinJobAge=3600 keeps
# finished jobs visible to it for an hour).
set -euo pipefail

PARTITION="${HLRP_SLURM_PARTITION:-local}"
GPUS="${HLRP_SLURM_GPUS:-4}"
# Inherited Slurm variables (when this runs inside a job) would confuse the clients below.
for v in $(env | grep -oE '^(SLURM|SBATCH|SRUN)_[A-Z_]+' || true); do unset "$v"; done

if [ "$(id -u)" != 0 ]; then
  echo "start_local_slurm.sh: must run as root (it writes /etc/slurm and starts daemons)" >&2
  exit 1
fi

# 1. Packages (about 30 s on a fresh Debian 12).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
  || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

# 2. The node: the declared shape, or the real hardware (`slurmd -C`, a tenth of the memory
# left to the system) where that is bigger.
HOST="$(hostname -s)"
read -r REAL_CPUS REAL_MEM < <(slurmd -C | awk '/^NodeName/ {
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  print v["CPUs"], v["RealMemory"] }')
CPUS="${HLRP_SLURM_CPUS:-64}"
MEM="${HLRP_SLURM_MEM_MB:-500000}"
[ "$CPUS" -ge "$REAL_CPUS" ] || CPUS="$REAL_CPUS"
[ "$MEM" -ge $((REAL_MEM * 9 / 10)) ] || MEM=$((REAL_MEM * 9 / 10))

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
new_conf="$(mktemp)"
cat >"$new_conf" <<CONF
# Written by ci/slurm/start_local_slurm.sh: a one-node test cluster (see that script).
ClusterName=hlrp-ci
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd, no cgroups: track processes through /proc, no binding or limits
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# finished jobs stay visible to squeue and scontrol for an hour (the Slurm executor polls
# squeue; it needs at least 3x its first status check)
MinJobAge=3600
KillWait=5
ReturnToService=2
SlurmdTimeout=300
# the node may be declared larger than the machine (see the header)
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=${HOST} CPUs=${CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${CPUS} ThreadsPerCore=1 RealMemory=${MEM} Gres=gpu:${GPUS} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
# fake GPU devices: character devices 1:3 (what /dev/null is); plain files where mknod is
# not permitted (slurmd then logs "not a valid character or block device" but counts them)
FAKE=/var/spool/slurm/fake-gpu
mkdir -p "$FAKE"
for i in $(seq 0 $((GPUS - 1))); do
  [ -c "$FAKE/nvidia$i" ] || { rm -f "$FAKE/nvidia$i"; mknod -m 666 "$FAKE/nvidia$i" c 1 3 2>/dev/null || touch "$FAKE/nvidia$i"; }
done
new_gres="$(mktemp)"
cat >"$new_gres" <<CONF
# Written by ci/slurm/start_local_slurm.sh: fake GPUs (this machine has none), see that script.
NodeName=${HOST} Name=gpu File=${FAKE}/nvidia[0-$((GPUS - 1))]
CONF

changed=0
for pair in "$new_conf:/etc/slurm/slurm.conf" "$new_gres:/etc/slurm/gres.conf"; do
  src="${pair%%:*}" dst="${pair#*:}"
  if ! cmp -s "$src" "$dst"; then
    install -m 644 "$src" "$dst"
    changed=1
  fi
  rm -f "$src"
done

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # by pid file only
  local pidfile="$1"
  if alive "$pidfile"; then
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# 3. munge: a key owned by munge, mode 400; the daemon as the munge user.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
if ! alive /run/munge/munged.pid || ! munge -n </dev/null | unmunge >/dev/null 2>&1; then
  stop_daemon /run/munge/munged.pid
  rm -f /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n </dev/null | unmunge >/dev/null

# 4. slurmctld and slurmd: restarted when the configuration changed or one is not running.
if [ "$changed" = 1 ] || ! alive /run/slurm/slurmctld.pid || ! alive /run/slurm/slurmd.pid; then
  stop_daemon /run/slurm/slurmd.pid
  stop_daemon /run/slurm/slurmctld.pid
  # a changed node definition must not be overridden by the saved state
  if [ "$changed" = 1 ]; then rm -rf /var/spool/slurmctld/*; fi
  /usr/sbin/slurmctld
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  /usr/sbin/slurmd
fi

# 5. Wait for the node to be idle (or mixed/allocated when jobs already run).
state=""
for _ in $(seq 150); do
  state="$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1)"
  case "$state" in
    idle | mix | alloc) break ;;
    drain* | drng | inval | down*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in
  idle | mix | alloc) ;;
  *)
    echo "start_local_slurm.sh: node $HOST is '$state', not idle" >&2
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
    ;;
esac
sinfo
scontrol show node "$HOST" | grep -E 'CfgTRES|Gres=' || true
