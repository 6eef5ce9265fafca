#!/bin/bash
# One GPU, one process. From the repository root:  sbatch slurm/one_gpu.sh [train.py options]
# e.g.  sbatch slurm/one_gpu.sh -d classes.json --save_path runs/emotions --save_every 500
# Preempted or near its time limit, it saves a resumable checkpoint, requeues itself and resumes (--resume auto).
#SBATCH --job-name=bert-1gpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -uo pipefail
echo "== job ${SLURM_JOB_ID} start ${SLURM_RESTART_COUNT:-0} on $(hostname) at $(date -Is)"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

# In the background, so that bash runs the trap at once instead of after the command ends.
${PYTHON:-python} train.py -p False --resume auto --save_every 1000 "$@" &
child=$!
# USR1 (time limit near) or TERM (preemption, scancel): train.py finishes the step, saves, exits 75.
trap 'signalled=1; kill -USR1 $child 2>/dev/null' USR1 TERM
signalled=0
wait $child; rc=$?
while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done  # a trap ends `wait` early: wait again
echo "== job ${SLURM_JOB_ID} train.py exit code $rc at $(date -Is)"
if [ $rc -eq 75 ] || { [ $signalled = 1 ] && [ $rc -ne 0 ]; }; then
  # scancel sends TERM too: a job its user cancelled (no longer RUNNING, never preempted) stays cancelled
  case "$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null)" in
    *JobState=RUNNING*|*PreemptTime=[0-9]*|"")
      scontrol requeue "$SLURM_JOB_ID" ;;  # back to the queue; the next start resumes from the checkpoint
    *) echo "== job ${SLURM_JOB_ID} cancelled: not requeued; the checkpoint stays for --resume auto" ;;
  esac
fi
exit $rc
