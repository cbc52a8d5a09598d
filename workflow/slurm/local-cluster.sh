#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (root, Debian/Ubuntu), then the smoke pipeline through the
# SLURM profile: every stage becomes a real SLURM job. Checks that workflow/profiles/slurm works.
#
#   sudo bash workflow/slurm/local-cluster.sh          # from the repository root, after `make test`
#
# Slurm 22.05 from apt, munge auth, no accounting database (so job state is polled with squeue), two
# fake GPUs (character devices) so that rules asking for gpu=1 are scheduled. Stop the daemons with
# `pkill slurmd slurmctld munged`.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "error: needs root (installs and starts slurmctld, slurmd, munged)" >&2; exit 2; }
cd "$(git rev-parse --show-toplevel)"
[ -x .venv/bin/snakemake ] || { echo "error: no .venv: run make test (or make run) first" >&2; exit 2; }
command -v slurmctld >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null

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
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
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
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo

export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DVC_NO_ANALYTICS=1
# rules ask for up to 8 threads; a small node gets what it has
threads=$(( cpus < 8 ? cpus : 8 ))
snakemake data/search/evolve --workflow-profile workflow/profiles/slurm \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 1 --slurm-no-account \
    --set-threads prepare=$threads quantize=$threads profile=$threads evolve=$threads \
    --config experiment=smoke
