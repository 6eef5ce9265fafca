#!/bin/bash
# Copied from ../shared/slurm/ (see NOTES.md there); tests/test_slurm.py uses it to try slurm/cpu.sh for real.
# Start a single-node SLURM cluster on localhost without systemd (idempotent).
# Usage: start_local_slurm.sh   then: export SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf
# Env: SLURM_LOCAL_DIR (default /tmp/local-slurm), SLURM_LOCAL_INSTALL=1 to apt-get install
#      if missing, SLURMCTLD_PORT/SLURMD_PORT (6817/6818).
set -euo pipefail
D=${SLURM_LOCAL_DIR:-/tmp/local-slurm}
CTLD_PORT=${SLURMCTLD_PORT:-6817}; SLURMD_PORT=${SLURMD_PORT:-6818}
CONF=$D/etc/slurm.conf
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "${SLURM_LOCAL_INSTALL:-0}" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null
  else
    echo "slurm-wlm/munge not installed (set SLURM_LOCAL_INSTALL=1)" >&2; exit 1
  fi
fi

# --- munge -------------------------------------------------------------
if ! alive /run/munge/munged.pid; then
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --force   # --force: remove a stale socket
  mkdir -p "$D/run"; touch "$D/run/munged.ours"
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null

# --- slurm.conf ----------------------------------------------------------
mkdir -p "$D"/{etc,state,spool,run,log}
H=$(hostname -s)
# hardware line from slurmd -C, minus NodeName/RealMemory (we set those ourselves)
HW=$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
MEM=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$(( MEM * 9 / 10 ))
cat > "$CONF.tmp" <<EOF
ClusterName=local
SlurmctldHost=${H}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=${H} NodeAddr=127.0.0.1 ${HW}RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"
export SLURM_CONF=$CONF

# --- daemons (-c: start with a clean job state; they daemonize themselves) ---
alive "$D/run/slurmctld.pid" || slurmctld -c -f "$CONF"
T0=0000
alive "$D/run/slurmd.pid"    || { T0=$(date +%Y-%m-%dT%H:%M:%S); slurmd -c -f "$CONF" -N "$H"; }

ok=0
for _ in $(seq 150); do
  st=$(sinfo -h -n "$H" -o %t 2>/dev/null || true)
  # also wait until the slurmd we just started has registered (saved state may say idle)
  reg=$(scontrol show node "$H" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p' || true)
  [[ "$st" =~ ^(idle|mix|alloc)$ && ! "$reg" < "$T0" ]] && { ok=1; break; }
  sleep 0.2
done
if [ $ok != 1 ]; then
  echo "node not ready after 30s (state '$st', SlurmdStartTime '$reg'); see $D/log/" >&2; exit 1
fi
echo "export SLURM_CONF=$CONF"
