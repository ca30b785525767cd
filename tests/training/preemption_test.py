"""Signals save and stop: preemption, SLURM's time-limit signal and Ctrl-C.

Through the README's entry point (`python -m prompt_tuning.train` on the
quickstart) in a subprocess: a run signalled mid-training saves the step it
reached, releases its lock and exits resumable (75; 130 for Ctrl-C) with one
line and no traceback; the run resumed after three such stops ends with the
prompt of an uninterrupted run, bit for bit. With two JAX processes, a
signal to one stops both at one step. The handler itself is tested
in-process.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prompt_tuning.training import preemption
from tests.training.reliability_test import ROOT, _command, _env, _ok, _run

# Checkpoints only at the end: every step saved mid-run is the signal's.
ARGS = ["--gin.TRAIN_STEPS=40", "--gin.TrainConfig.eval_at_start=False",
        "--gin.TrainConfig.eval_period=0",
        "--gin.TrainConfig.checkpoint_period=1000",
        "--gin.TrainConfig.log_period=1"]


def _signal_after(model_dir, log_path, signum, after_step):
  """Starts a run, sends `signum` once it logged `after_step`; returns
  (exit code, log)."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(_command(model_dir, *ARGS), cwd=ROOT,
                               env=_env(), stdout=log, stderr=log)
    deadline = time.time() + 300
    while process.poll() is None:
      with open(log_path) as f:
        if re.search(rf"step {after_step}/40 \|", f.read()):
          break
      assert time.time() < deadline
      time.sleep(0.05)
    process.send_signal(signum)
    code = process.wait(timeout=300)
  with open(log_path) as f:
    return code, f.read()


def test_signals_save_stop_and_resume_bit_identically(tmp_path):
  straight = str(tmp_path / "straight")
  _ok(_run(straight, *ARGS))
  model_dir = str(tmp_path / "signalled")
  stops = []
  for attempt, (signum, after, code) in enumerate([
      (signal.SIGTERM, 5, 75), (signal.SIGUSR1, 15, 75),
      (signal.SIGINT, 25, 130)]):
    name = signal.Signals(signum).name
    exit_code, log = _signal_after(model_dir, str(tmp_path / f"{attempt}.log"),
                                   signum, after)
    assert exit_code == code, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    found = re.search(rf"^preempted: stopped by {name} at step (\d+); the "
                      r"checkpoint of step \d+ is saved in .*: rerun the "
                      r"same command to resume there$", log, re.M)
    assert found, log[-3000:]
    step = int(found.group(1))
    assert after <= step < 40
    assert os.path.isdir(os.path.join(model_dir, f"checkpoint_{step}"))
    assert os.path.exists(os.path.join(model_dir, "prompts",
                                       f"step_{step}.npy"))
    assert not os.path.exists(os.path.join(model_dir, "run.lock"))
    assert not [l for l in log.splitlines() if l.startswith("error:")]
    stops.append(step)
  final = _ok(_run(model_dir, *ARGS))
  assert f"Resumed from step {stops[-1]}" in final
  assert "Took over the stale lock" not in final
  np.testing.assert_array_equal(
      np.load(os.path.join(model_dir, "prompts", "step_40.npy")),
      np.load(os.path.join(straight, "prompts", "step_40.npy")))


def test_watch_turns_signals_into_a_request_and_restores_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.watch():
    assert preemption.stop_requested() is None
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    # The first signal names the stop.
    assert preemption.stop_requested() == "SIGUSR1"
  assert signal.getsignal(signal.SIGTERM) is before
  assert preemption.local_request() is None


def test_a_second_ctrl_c_stops_at_once():
  with preemption.watch():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert preemption.stop_requested() == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)


def test_exit_codes():
  assert preemption.Preempted("SIGTERM", 3, "/r").exit_code == 75
  assert preemption.Preempted("SIGUSR1", 3, "/r").exit_code == 75
  assert preemption.Preempted("SIGINT", 3, "/r").exit_code == 130
  assert str(preemption.Preempted("SIGTERM", 3, "/r")) == (
      "stopped by SIGTERM at step 3; the checkpoint of step 3 is saved in "
      "/r: rerun the same command to resume there")


def test_a_signal_to_one_process_stops_every_process_at_one_step(tmp_path):
  """Two JAX processes (launch/local_processes.py): SIGTERM to process 1
  only; process 0 stops at the same step through the all-gather, the step
  is saved once for both and the lock is released."""
  model_dir = str(tmp_path / "two")
  env = _env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  log_path = str(tmp_path / "two.log")
  with open(log_path, "w") as log:
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "launch", "local_processes.py"),
         "--processes", "2", "--devices_per_process", "1", "--",
         "-m", "prompt_tuning.train", "--gin_file=runs/quickstart.gin",
         f"--gin.MODEL_DIR='{model_dir}'", *ARGS],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while launcher.poll() is None:
      with open(log_path) as f:
        if re.search(r"^\[1\] .*step 5/40 \|", f.read(), re.M):
          break
      assert time.time() < deadline
      time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)],
                              capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    os.kill(int(sorted(children, key=int)[1]), signal.SIGTERM)
    code = launcher.wait(timeout=300)
  with open(log_path) as f:
    log = f.read()
  assert code == 75, log[-4000:]
  assert re.search(r"^\[1\] .*Received SIGTERM", log, re.M), log[-4000:]
  assert not re.search(r"^\[0\] .*Received SIGTERM", log, re.M)
  step = int(re.search(r"^\[0\] preempted: stopped by SIGTERM at step (\d+)",
                       log, re.M).group(1))
  assert 5 <= step < 40
  assert os.path.isdir(os.path.join(model_dir, f"checkpoint_{step}"))
  assert not os.path.exists(os.path.join(model_dir, "run.lock"))
  assert "Traceback" not in log, log[-4000:]


def test_a_nested_watch_keeps_the_outer_one_and_its_signals():
  with preemption.watch():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    with preemption.watch():
      assert preemption.stop_requested() == "SIGTERM"
    assert preemption.stop_requested() == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
  assert preemption.local_request() is None


def test_reclaim_takes_the_signals_back():
  with preemption.watch():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as another library would
    preemption.reclaim()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert preemption.stop_requested() == "SIGTERM"
  preemption.reclaim()  # outside a watch: nothing
  assert signal.getsignal(signal.SIGTERM) is not preemption._handler  # pylint: disable=protected-access
