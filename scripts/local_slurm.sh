#!/usr/bin/env bash
# Start (idempotently) a real two-node SLURM cluster on this machine, as root:
# munged + slurmctld + two slurmd daemons (node1, node2) sharing this host. Installs the Debian
# packages first if missing. Recipe: ../shared/LOCAL-SLURM.md. Exit 0 once `sinfo` shows 2 idle
# nodes; exit 2 (with a reason on stderr) where SLURM cannot be installed or started here.
# Stop with `scripts/local_slurm.sh stop` (scontrol shutdown + munged by its pid file).
set -euo pipefail

die() { echo "local_slurm: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (installs packages and starts daemons)"

HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf

if [ "${1:-start}" = stop ]; then
  scontrol shutdown >/dev/null 2>&1 || true
  [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available"
  echo "local_slurm: installing slurmctld slurmd slurm-client munge (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null || die "apt-get install failed"
fi

# Node names must resolve for rendezvous on the emulated nodes.
grep -qE '^127\.0\.0\.1[[:space:]].*\bnode1\b' /etc/hosts || echo "127.0.0.1 node1 node2" >>/etc/hosts

# munge: key once, daemon as the munge user.
[ -f /etc/munge/munge.key ] || mungekey -c >/dev/null 2>&1 || die "mungekey -c failed"
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  su -s /bin/sh munge -c /usr/sbin/munged || die "munged did not start"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null 2>&1 || die "munge credentials do not verify"
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm
WANT=$(cat <<CONFEOF
ClusterName=local
SlurmctldHost=$HOST
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdSpoolDir=/var/spool/slurmd-%n
StateSaveLocation=/var/spool/slurmctld
SlurmUser=root
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
KillWait=30
NodeName=node[1-2] NodeHostname=$HOST Port=17001-17002 CPUs=2 RealMemory=10000 State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
CONFEOF
)
if [ -f "$CONF" ] && ! grep -q '^ClusterName=local$' "$CONF"; then
  die "$CONF belongs to another cluster (ClusterName is not 'local'); not overwriting it"
fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$WANT" ]; then
  printf '%s\n' "$WANT" >"$CONF"
  scontrol shutdown >/dev/null 2>&1 && sleep 2 || true
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive /run/slurmctld.pid || slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
for n in node1 node2; do
  mkdir -p "/var/spool/slurmd-$n"
  alive "/run/slurmd-$n.pid" || slurmd -N "$n" || die "slurmd -N $n did not start (see /var/log/slurm/slurmd-$n.log)"
done

for _ in $(seq 120); do
  idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2=="idle"' | wc -l)
  [ "$idle" -ge 2 ] && { echo "local_slurm: 2 idle nodes"; exit 0; }
  # Nodes left DOWN/DRAIN by an earlier run come back with an explicit resume.
  scontrol update nodename=node[1-2] state=resume >/dev/null 2>&1 || true
  sleep 0.5
done
sinfo >&2 || true
die "nodes did not become idle within 60 s (see /var/log/slurm/)"
