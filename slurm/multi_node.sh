#!/bin/bash
# Several nodes, one DDP process per GPU: srun starts one torchrun per node, which meet at a c10d rendezvous on
# the first node. From the repository root, on a file system every node sees (--save_path must be shared):
#   sbatch slurm/multi_node.sh [train.py options]
# --batch_size is per GPU: 2 nodes x 4 GPUs x --batch_size 32 = 256 sentences per update (printed at start-up).
# Preempted or near its time limit, it saves a resumable checkpoint, requeues itself and resumes (--resume auto).
#SBATCH --job-name=bert-nodes
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -uo pipefail
echo "== job ${SLURM_JOB_ID} start ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST} at $(date -Is)"
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
nproc=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}  # one process per GPU; set NPROC_PER_NODE on CPU-only nodes
threads=$(( ${SLURM_CPUS_PER_TASK:-1} / nproc ))
export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))

# In the background, so that bash runs the trap at once instead of after the command ends.
srun --kill-on-bad-exit=1 ${PYTHON:-python} -m torch.distributed.run \
  --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$nproc" \
  --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head_node:29500" \
  --signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
  train.py -p True --resume auto --save_every 1000 "$@" &
child=$!
# USR1 (time limit near) or TERM (preemption, scancel): srun passes it to torchrun on every node, torchrun
# (told to handle USR1, of which it would otherwise die and leave its workers running) to its workers, which agree on a step, save (rank 0) and exit 75; torchrun itself then exits non-zero.
trap 'signalled=1; kill -USR1 $child 2>/dev/null' USR1 TERM
signalled=0
wait $child; rc=$?
while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done  # a trap ends `wait` early: wait again
echo "== job ${SLURM_JOB_ID} srun exit code $rc at $(date -Is)"
if [ $rc -eq 75 ] || { [ $signalled = 1 ] && [ $rc -ne 0 ]; }; then
  # scancel sends TERM too: a job its user cancelled (no longer RUNNING, never preempted) stays cancelled
  case "$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null)" in
    *JobState=RUNNING*|*PreemptTime=[0-9]*|"")
      scontrol requeue "$SLURM_JOB_ID" ;;  # back to the queue; the next start resumes from the checkpoint
    *) echo "== job ${SLURM_JOB_ID} cancelled: not requeued; the checkpoint stays for --resume auto" ;;
  esac
fi
exit $rc
