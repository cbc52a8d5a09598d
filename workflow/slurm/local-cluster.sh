#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (root, Debian/Ubuntu), then the smoke pipeline through the
# SLURM profile: every stage becomes a real SLURM job. Checks that workflow/profiles/slurm works.
#
#   sudo bash workflow/slurm/local-cluster.sh [run]    # start the cluster, run the smoke search through it
#   sudo bash workflow/slurm/local-cluster.sh start    # install (apt) and start munged, slurmctld, slurmd
#   sudo bash workflow/slurm/local-cluster.sh stop     # stop the daemons `start` started (by pid), no others
#
# Slurm 22.05 from apt, munge auth, no accounting database (so job state is polled with squeue), two
# fake GPUs (character devices) so that rules asking for gpu=1 are scheduled. tests/test_slurm.py uses
# start and stop.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "error: needs root (installs and starts slurmctld, slurmd, munged)" >&2; exit 2; }
cd "$(dirname "$(readlink -f "$0")")/../.."   # the repository (or a copy of it)
STARTED=/run/autoqra-slurm.pids   # "name pid" of every daemon this script started

stop() {
    [ -f "$STARTED" ] || return 0
    while read -r name pid; do
        kill "$pid" 2>/dev/null && echo "stopped $name ($pid)" || true
    done < "$STARTED"
    for _ in $(seq 20); do
        alive=0
        while read -r _ pid; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$STARTED"
        [ $alive = 0 ] && break
        sleep 0.5
    done
    while read -r _ pid; do kill -9 "$pid" 2>/dev/null || true; done < "$STARTED"
    rm -f "$STARTED"
}

started() {  # name pidfile: record a daemon this script started
    for _ in $(seq 50); do [ -s "$2" ] && break; sleep 0.1; done
    [ -s "$2" ] || { echo "error: $1 did not start (no $2)" >&2; exit 1; }
    echo "$1 $(cat "$2")" >> "$STARTED"
}

start() {
if ! command -v slurmctld >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        munge slurmctld slurmd slurm-client >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
           --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null; } \
      || { echo "error: could not install Slurm (apt-get install munge slurmctld slurmd slurm-client)" >&2; exit 1; }
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
mkdir -p /run/munge /var/spool/slurmctld /var/spool/slurmd /etc/slurm
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    head -c 1024 /dev/urandom > /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if ! pgrep -x munged >/dev/null; then
    rm -f /run/munge/munged.pid
    su -s /bin/sh munge -c /usr/sbin/munged
    started munged /run/munge/munged.pid
fi
for i in 0 1; do [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:fake:2 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
printf 'AutoDetect=off\nNodeName=%s Name=gpu Type=fake File=/dev/fakegpu[0-1]\n' "$host" > /etc/slurm/gres.conf
if ! pgrep -x slurmctld >/dev/null; then rm -f /run/slurmctld.pid; /usr/sbin/slurmctld; started slurmctld /run/slurmctld.pid; fi
if ! pgrep -x slurmd >/dev/null; then rm -f /run/slurmd.pid; /usr/sbin/slurmd; started slurmd /run/slurmd.pid; fi
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %T | grep -q idle || { echo "error: the SLURM node did not become idle" >&2; sinfo >&2; exit 1; }
sinfo
}

run() {
[ -x .venv/bin/snakemake ] || { echo "error: no .venv: run make test (or make run) first" >&2; exit 2; }
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1
# rules ask for up to 8 threads; a small node gets what it has
threads=$(( cpus < 8 ? cpus : 8 ))
snakemake data/search/evolve --workflow-profile workflow/profiles/slurm \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 1 --slurm-no-account \
    --set-threads prepare=$threads quantize=$threads profile=$threads evolve=$threads \
    --config experiment=smoke
}

case "${1:-run}" in
    start) start ;;
    stop) stop ;;
    run) start; run ;;
    *) echo "error: unknown command ${1} (allowed: start, stop, run)" >&2; exit 2 ;;
esac
