"""Two JAX processes on this machine train, checkpoint, resume and evaluate
through the real CLI (`launch/local_processes.py`, 2 processes x 2 CPU
devices, gloo collectives): per-host data shards become global batches,
process 0 alone writes, both processes see the same losses and metrics, and
N straight steps equal k steps + restart + (N - k) steps exactly."""

import os
import re
import subprocess
import sys
import time

import numpy as np

from tests.cli_test import train_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(model_dir, frozen, steps):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # the launcher gives each process 2 devices
  command = [
      sys.executable, os.path.join(ROOT, "launch", "local_processes.py"),
      "--processes", "2", "--devices_per_process", "2", "--",
      "-m", "prompt_tuning.train", "--task_module=tests.tiny_tasks",
      *train_args(model_dir, frozen, steps)]
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  if result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout[-4000:]}")
  return result.stdout


def _per_process(output, pattern):
  """process index -> the matches of `pattern` in its lines, in order."""
  found = {0: [], 1: []}
  for line in output.splitlines():
    head = re.match(r"\[(\d)\] (.*)", line)
    if head:
      found[int(head.group(1))] += re.findall(pattern, head.group(2))
  return found


def test_two_processes_train_resume_and_evaluate(tmp_path, frozen):
  straight = str(tmp_path / "straight")
  resumed = str(tmp_path / "resumed")
  out = _launch(straight, frozen, 4)

  losses = _per_process(out, r"step \d/4 \| loss (\S+)")
  assert len(losses[0]) == 4 and losses[0] == losses[1], losses
  devices = _per_process(out, r"Process (\d)/2, 2 local / 4 global devices")
  assert devices == {0: ["0"], 1: ["1"]}, devices
  accuracy = _per_process(out, r"tiny_classify/accuracy (\S+)")
  assert accuracy[0] and accuracy[0] == accuracy[1], accuracy
  for name in ("checkpoint_2", "checkpoint_4", "best.json",
               "prompts/step_4.npy", "operative_config.gin"):
    assert os.path.exists(os.path.join(straight, name)), name

  _launch(resumed, frozen, 2)
  again = _launch(resumed, frozen, 4)
  assert _per_process(again, r"Resumed from step 2")[1], again[-3000:]
  assert not _per_process(again, r"step 1/4")[0]
  np.testing.assert_array_equal(
      np.load(os.path.join(resumed, "prompts", "step_4.npy")),
      np.load(os.path.join(straight, "prompts", "step_4.npy")))
  assert _per_process(again, r"step 4/4 \| loss (\S+)")[0] == losses[0][-1:]


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
