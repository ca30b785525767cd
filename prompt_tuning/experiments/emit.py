"""A sweep's runs for clusters: one command per line, a SLURM array, TPU VMs.

`write(...)` puts three files under the sweep's root (on a filesystem every
node sees), next to the run directories' `sweep_run.json`:

  commands.txt       line i = run i's complete `python -m prompt_tuning.train`
                     command (the one run-command format: `run` executes the
                     same commands locally, and a launcher runs a line as is,
                     adding `--multihost` where one run spans hosts)
  slurm_array.sbatch `sbatch` it: array task i runs line i+1 of commands.txt;
                     `--requeue` on preemption resumes from the newest
                     checkpoint, because every run resumes by itself
  tpu_vm_runs.sh     runs the lines one after another on every worker of a
                     TPU VM slice (`gcloud ... ssh --worker=all`), each with
                     `--multihost`

Nothing here talks to a cluster: the files are plain text to read and submit.
"""

from __future__ import annotations

import os
import shlex
from typing import Dict, Sequence

from prompt_tuning.experiments import runner
from prompt_tuning.experiments import sweeps

COMMANDS_FILE = "commands.txt"
SLURM_FILE = "slurm_array.sbatch"
TPU_FILE = "tpu_vm_runs.sh"


def _slurm(sweep: sweeps.Sweep, root: str, count: int, repo: str,
           max_parallel: int) -> str:
  commands = os.path.join(root, COMMANDS_FILE)
  return f"""#!/usr/bin/env bash
# Sweep {sweep.name}: {count} runs as one SLURM array job, one run per task.
# Submit from anywhere: sbatch {os.path.join(root, SLURM_FILE)}
# Needs: PROMPT_TUNING_VENV (a virtualenv with prompt-tuning installed on
# every node). Edit the resources below for your cluster. Each run resumes
# from its newest checkpoint, so a requeued or resubmitted task continues.
#SBATCH --job-name=pt-{sweep.name}
#SBATCH --array=0-{count - 1}%{max_parallel}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --requeue
#SBATCH --output={os.path.join(root, "slurm-%A_%a.out")}
set -euo pipefail
: "${{PROMPT_TUNING_VENV?set PROMPT_TUNING_VENV to the virtualenv to use}}"
: "${{SLURM_ARRAY_TASK_ID?run this with sbatch}}"
. "$PROMPT_TUNING_VENV/bin/activate"
cd {shlex.quote(repo)}
line=$((SLURM_ARRAY_TASK_ID + 1))
command=$(sed -n "${{line}}p" {shlex.quote(commands)})
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) array task $SLURM_ARRAY_TASK_ID: $command"
python -c 'import jax; print("jax", jax.__version__, jax.devices())'
eval "$command"
"""


def _tpu(sweep: sweeps.Sweep, root: str, count: int) -> str:
  commands = os.path.join(root, COMMANDS_FILE)
  return f"""#!/usr/bin/env bash
# Sweep {sweep.name}: {count} runs, one after another, on a TPU VM slice.
# Every worker runs the same command at once (--worker=all); each run gets
# --multihost so JAX finds the slice's other hosts. Runs resume from their
# newest checkpoint, so rerunning this script continues the sweep.
# Needs: TPU_NAME, ZONE, REPO_DIR (this repository on every worker) and
# VENV (its virtualenv on every worker). MODEL_DIRs are under {root}: use a
# gs:// root or a filesystem all workers share.
set -euo pipefail
: "${{TPU_NAME?}}" "${{ZONE?}}" "${{REPO_DIR?}}" "${{VENV?}}"
i=0
while IFS= read -r command; do
  i=$((i + 1))
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) run $i/{count}: $command"
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \\
    --command "cd $REPO_DIR && . $VENV/bin/activate && $command --multihost"
done < {shlex.quote(commands)}
"""


def write(sweep: sweeps.Sweep, runs: Sequence[sweeps.Run], root: str,
          repo: str, max_parallel: int = 16) -> Dict[str, str]:
  """Writes the three cluster files for `runs` (the caller has written the
  plan, `runner.write_plan`); returns what was written (kind -> path)."""
  os.makedirs(root, exist_ok=True)
  paths = {"commands": os.path.join(root, COMMANDS_FILE),
           "slurm": os.path.join(root, SLURM_FILE),
           "tpu": os.path.join(root, TPU_FILE)}
  lines = [runner.shell_command(r, root, sweep.task_modules) for r in runs]
  texts = {"commands": "".join(line + "\n" for line in lines),
           "slurm": _slurm(sweep, root, len(runs), repo,
                           max(1, min(max_parallel, len(runs)))),
           "tpu": _tpu(sweep, root, len(runs))}
  for kind, path in paths.items():
    with open(path, "w", encoding="utf-8") as f:
      f.write(texts[kind])
    if kind != "commands":
      os.chmod(path, 0o755)
  return paths
