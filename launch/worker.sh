#!/usr/bin/env bash
# One JAX process of a multi-process run: the same script on every TPU VM
# worker (launch/tpu_vm.sh) and in every SLURM task (launch/slurm.sbatch).
#
# Usage, from the repository root (or, for a wheel install, the directory
# holding gin_configs/):
#   PROMPT_TUNING_VENV=/path/to/venv launch/worker.sh \
#     python -m prompt_tuning.train --gin_file=... --gin.MODEL_DIR="'...'"
# The command is a full train (eval, infer) command, e.g. one line of a
# sweep's commands.txt; this adds --multihost, so that
# jax.distributed.initialize() finds the coordinator, the process count and
# this process's index itself (Cloud TPU metadata, or SLURM's SLURM_JOB_ID,
# SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST).
#
# Optional: JAX_LOCAL_DEVICE_IDS (GPUs this process drives; set here for
# SLURM when the task layout makes it clear, see below), PT_SHARED_MARKER (a
# file the SLURM batch script wrote on the shared filesystem; checked here).
set -euo pipefail

: "${PROMPT_TUNING_VENV?set PROMPT_TUNING_VENV to the virtualenv with prompt-tuning installed}"
if [ "$#" -eq 0 ]; then
  echo "error: no command: launch/worker.sh python -m prompt_tuning.train ..." >&2
  exit 2
fi
if [ ! -f "$PROMPT_TUNING_VENV/bin/activate" ]; then
  echo "error: PROMPT_TUNING_VENV=$PROMPT_TUNING_VENV has no bin/activate on $(hostname)" >&2
  exit 2
fi
if [ -n "${PT_SHARED_MARKER:-}" ] && [ ! -e "$PT_SHARED_MARKER" ]; then
  # Orbax writes each process's shards itself: every node must see one
  # directory, or the checkpoints are torn.
  echo "error: $(dirname "$PT_SHARED_MARKER") is not shared with $(hostname): put run directories on a filesystem every node sees" >&2
  exit 2
fi
# shellcheck disable=SC1091  # the virtualenv's own script
. "$PROMPT_TUNING_VENV/bin/activate"

visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .
  elif command -v nvidia-smi > /dev/null; then
    nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${JAX_LOCAL_DEVICE_IDS:-}" ]; then
  # JAX's SLURM detection drives GPU number SLURM_LOCALID only: right for one
  # task per GPU that sees all of the node's GPUs, wrong for one task per
  # node (it would use 1 of 8) or a task bound to its own GPU (number
  # LOCALID does not exist there).
  gpus=$(visible_gpus)
  tasks=${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:-1}}
  nodes=${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-1}}
  if [ "$gpus" -gt 0 ] && { [ "$tasks" -eq "$nodes" ] || [ "$gpus" -eq 1 ]; }; then
    JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))
    export JAX_LOCAL_DEVICE_IDS
  fi
fi

# Process and device info first, before JAX takes the accelerators.
process="process ${SLURM_PROCID:-${TPU_WORKER_ID:-?}}/${SLURM_NTASKS:-?}"
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) pid $$ $process" \
  "gpus $(visible_gpus) tpu chips $(find /dev -maxdepth 1 -name 'accel*' 2> /dev/null | wc -l)" \
  "local device ids ${JAX_LOCAL_DEVICE_IDS:-default}"
python -c 'import sys, jax; print("python", sys.version.split()[0], "jax", jax.__version__)'
echo "command: $* --multihost"
if [ -n "${SLURM_JOB_ID:-}" ]; then
  # TERM and USR1 ask a train process to save and stop, once its handlers are
  # in (after JAX starts); before that, and after the run has saved and put
  # the inherited disposition back, they would kill it. Ignored here, and
  # so in the command: a requeue or time-limit signal during start-up is not
  # fatal, and the TERM with which srun's --kill-on-bad-exit ends the others
  # when the first process exits 75 cannot cut their exit short (75 -> 143:
  # no requeue). SLURM still ends a stuck task with SIGKILL after KillWait.
  trap '' TERM USR1
fi
exec "$@" --multihost
