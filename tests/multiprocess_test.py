"""The `model` mesh axis across processes, through the real CLI: two JAX
processes x 2 CPU devices (`launch/local_processes.py`, gloo collectives) with
MESH_SHAPE (1, 4) train and evaluate like one process with 4 devices and the
same mesh. Both processes hold the one data shard, so both read the same
input rows (`partitioning.data_layout`); the frozen weights and the
embedding table are split over both. Equal to float32 rounding: the model
axis's sums are reduced in another order across processes. (Training on
per-process data shards, evaluating and resuming exactly as two processes is
tests/launch_test.py's SLURM test.)"""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from tests.cli_test import train_args
from tests.launch_test import per_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ACROSS_PROCESSES = "--gin.MESH_SHAPE=(1, 4)"


def _env(devices=None):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the launcher gives each process its devices
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _run(command, env):
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  if result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout[-4000:]}"
                         f"\n{result.stderr[-3000:]}")
  return result.stdout + result.stderr


def test_model_axis_across_processes_equals_one_process(tmp_path, frozen):
  two, one = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
  args = ["-m", "prompt_tuning.train", "--task_module=tests.tiny_tasks",
          MODEL_ACROSS_PROCESSES]
  out = _run([sys.executable, os.path.join(ROOT, "launch",
                                           "local_processes.py"),
              "--processes", "2", "--devices_per_process", "2", "--", *args,
              *train_args(two, frozen, 4)], _env())
  single = _run([sys.executable, *args, *train_args(one, frozen, 4)],
                _env(devices=4))

  losses = per_process(out, r"step \d/4 \| loss (\S+)")
  assert len(losses[0]) == 4 and losses[0] == losses[1], out[-3000:]
  assert per_process(out, r"Process (\d)/2, 2 local / 4 global devices") == {
      0: ["0"], 1: ["1"]}
  # Printed to 4 decimals; a rounding difference may flip the last one.
  numbers = r"(-?\d+\.\d+)"
  reference = re.findall(r"step \d/4 \| loss " + numbers, single)
  np.testing.assert_allclose(np.float64(losses[0]), np.float64(reference),
                             atol=2e-4)
  metrics = r"eval step 4: (.*)"
  (two_metrics,), (one_metrics,) = (per_process(out, metrics)[0],
                                    re.findall(metrics, single))
  assert re.sub(numbers, "#", two_metrics) == re.sub(numbers, "#", one_metrics)
  np.testing.assert_allclose(np.float64(re.findall(numbers, two_metrics)),
                             np.float64(re.findall(numbers, one_metrics)),
                             atol=2e-4)
  for step in (2, 4):
    np.testing.assert_allclose(
        np.load(os.path.join(two, "prompts", f"step_{step}.npy")),
        np.load(os.path.join(one, "prompts", f"step_{step}.npy")),
        rtol=0, atol=1e-5)


def test_one_failed_process_stops_the_others():
  """Process 1 exits with 3 while process 0 would wait for a minute (as a
  process waiting on a lost peer would): the launcher stops process 0 and
  returns 3 at once, with each process's output prefixed by its index."""
  script = ("import sys, time\n"
            "print('up', flush=True)\n"
            "if '--process_index=1' in sys.argv: sys.exit(3)\n"
            "time.sleep(60)\n")
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "local_processes.py"),
       "--processes", "2", "--", "-c", script],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 3, result.stdout + result.stderr
  assert time.monotonic() - start < 30
  assert "[0] up" in result.stdout and "[1] up" in result.stdout


def test_two_processes_fifty_evaluations_write_whole_records(tmp_path, frozen):
  """2 processes x 1 device, an evaluation after each of 50 steps: the run's
  metric records and the seqio metric log are written by process 0 alone,
  one whole JSON line per evaluation (two writers of one file lost lines and
  failed on each other's renames)."""
  model_dir = str(tmp_path / "evals")
  args = [a for a in train_args(model_dir, frozen, 50)
          if "eval_period" not in a and "checkpoint_period" not in a]
  out = _run([sys.executable, os.path.join(ROOT, "launch",
                                           "local_processes.py"),
              "--processes", "2", "--devices_per_process", "1", "--",
              "-m", "prompt_tuning.train", "--task_module=tests.tiny_tasks",
              *args, "--gin.TrainConfig.eval_period=1",
              "--gin.TrainConfig.checkpoint_period=50",
              "--gin.TrainConfig.log_period=50"], _env())
  assert "Error" not in out, out[-3000:]
  for name in ("metrics.jsonl", "tiny_classify-metrics.jsonl"):
    with open(os.path.join(model_dir, "eval", name), encoding="utf-8") as f:
      text = f.read()
    assert text.endswith("\n"), name
    steps = [json.loads(line)["step"] for line in text.splitlines()]
    assert steps == list(range(1, 51)), (name, steps)
