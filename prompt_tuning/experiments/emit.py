"""A sweep's runs for clusters: one command per line, a SLURM array, TPU VMs.

`write(...)` puts three files in `out` (by default the sweep's root; a
local or shared directory: sbatch and launch/tpu_vm.sh read them as files),
while the run directories are under the root, which may be `gs://`:

  commands.txt       line i = run i's complete `python -m prompt_tuning.train`
                     command, with its MODEL_DIR (the one run-command format:
                     `run` executes the same commands locally, and both
                     launchers take the file as is, `--commands FILE`, adding
                     `--multihost` through launch/worker.sh)
  slurm_array.sbatch `sbatch` it: array task i runs line i+1 through
                     launch/slurm.sbatch (`--requeue`: a preempted task
                     resumes from its newest checkpoint, because every run
                     resumes by itself); time limit, memory and CPUs per
                     task from `SlurmResources`
  tpu_vm_runs.sh     runs the lines one after another on every worker of a
                     TPU VM slice (`gcloud ... ssh --worker=all`) through
                     launch/tpu_vm.sh; its arguments go to that script

Nothing here talks to a cluster: the files are plain text to read and submit.
Both scripts pass `shellcheck` (tests/launch_test.py).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Dict, Sequence

from prompt_tuning.experiments import runner
from prompt_tuning.experiments import sweeps

COMMANDS_FILE = "commands.txt"
SLURM_FILE = "slurm_array.sbatch"
TPU_FILE = "tpu_vm_runs.sh"


@dataclasses.dataclass(frozen=True)
class SlurmResources:
  """What each array task (one run) asks SLURM for; sbatch flags on the
  command line override them."""
  # Wall-clock limit per attempt; a run that reaches it saves (USR1 300 s
  # before) and requeues itself, so it need not cover the whole run.
  time: str = "24:00:00"
  # Host memory: the frozen model's shards, the data pipeline, orbax.
  mem: str = "64G"
  # Data loading (tf.data, seqio) and XLA's host threads.
  cpus_per_task: int = 8
  gpus: int = 1


def _slurm(sweep: sweeps.Sweep, root: str, count: int, repo: str,
           max_parallel: int,
           resources: SlurmResources = SlurmResources()) -> str:
  """`root`: where the files are (commands.txt, the logs)."""
  commands = os.path.join(root, COMMANDS_FILE)
  return f"""#!/usr/bin/env bash
# Sweep {sweep.name}: {count} runs as one SLURM array job, one run per task,
# each one JAX process on one GPU (edit the resources for bigger runs: the
# tasks of a run become its processes). Submit from anywhere:
#   PROMPT_TUNING_VENV=/path/to/venv sbatch {os.path.join(root, SLURM_FILE)}
# PROMPT_TUNING_VENV: a virtualenv with prompt-tuning, the same path on every
# node. Each run resumes from its newest checkpoint, so a requeued or
# resubmitted task continues. sbatch flags override the resources below,
# e.g. sbatch --time=4:00:00 --mem=32G {SLURM_FILE}.
#SBATCH --job-name=pt-{sweep.name}
#SBATCH --array=0-{count - 1}%{max_parallel}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={resources.gpus}
#SBATCH --cpus-per-task={resources.cpus_per_task}
#SBATCH --mem={resources.mem}
#SBATCH --time={resources.time}
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output={os.path.join(root, "slurm-%A_%a.out")}
set -euo pipefail
: "${{PROMPT_TUNING_VENV?set PROMPT_TUNING_VENV to the virtualenv to use}}"
export REPO_DIR={shlex.quote(repo)}
exec bash "$REPO_DIR/launch/slurm.sbatch" --commands {shlex.quote(commands)}
"""


def _tpu(sweep: sweeps.Sweep, root: str, count: int, repo: str) -> str:
  """`root`: where the files are (commands.txt)."""
  commands = os.path.join(root, COMMANDS_FILE)
  return f"""#!/usr/bin/env bash
# Sweep {sweep.name}: {count} runs, one after another, on a TPU VM slice:
# every worker runs each command at once (--worker=all) with --multihost, so
# JAX finds the slice's other hosts. Runs resume from their newest
# checkpoint, so rerunning this script continues the sweep. MODEL_DIRs are
# those in {commands}: gs://... or a path every worker mounts.
# Needs what launch/tpu_vm.sh needs (TPU_NAME, ZONE, and for its create and
# install steps ACCELERATOR_TYPE, RUNTIME_VERSION, INSTALL). Arguments go to
# it, e.g. --dry_run, or --steps=run to use a slice that is up and installed.
set -euo pipefail
exec {shlex.quote(os.path.join(repo, "launch", "tpu_vm.sh"))} "$@" --commands {shlex.quote(commands)}
"""


def write(sweep: sweeps.Sweep, runs: Sequence[sweeps.Run], root: str,
          repo: str, max_parallel: int = 16,
          resources: SlurmResources = SlurmResources(),
          out: str = "") -> Dict[str, str]:
  """Writes the three cluster files for `runs` (the caller has written the
  plan, `runner.write_plan`); returns what was written (kind -> path).

  Args:
    sweep: the sweep.
    runs: its runs to emit.
    root: the sweep's root: the runs' MODEL_DIRs are under it (may be
      gs://).
    repo: the checkout the scripts run launch/ from.
    max_parallel: SLURM array tasks at a time.
    resources: each array task's time limit, memory, CPUs and GPUs.
    out: a local (or shared) directory for the files; default `root`.
  """
  out = out or root
  os.makedirs(out, exist_ok=True)
  paths = {"commands": os.path.join(out, COMMANDS_FILE),
           "slurm": os.path.join(out, SLURM_FILE),
           "tpu": os.path.join(out, TPU_FILE)}
  lines = [runner.shell_command(r, root, sweep.task_modules) for r in runs]
  texts = {"commands": "".join(line + "\n" for line in lines),
           "slurm": _slurm(sweep, out, len(runs), repo,
                           max(1, min(max_parallel, len(runs))), resources),
           "tpu": _tpu(sweep, out, len(runs), repo)}
  for kind, path in paths.items():
    with open(path, "w", encoding="utf-8") as f:
      f.write(texts[kind])
    if kind != "commands":
      os.chmod(path, 0o755)
  return paths
