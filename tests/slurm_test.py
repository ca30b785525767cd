"""launch/slurm.sbatch on a real SLURM: sbatch, srun, requeue, --signal, arrays.

A private slurmctld + slurmd + munged on this machine (tests/services/
slurm.py; one node declaring 8 CPUs, no GPUs) runs the real batch script,
which srun-s two JAX processes (1 CPU device each, gloo collectives) of the
quickstart. Three jobs run side by side while a driver thread acts on them
as a user, an admin or SLURM would:

- A, uninterrupted: trains, evaluates, exits 0: the reference prompt.
- B: `scontrol requeue` once it has trained a few steps: every task gets
  SIGTERM, they save the step they agree on and exit 75; the job comes back
  with the same id, and its second attempt resumes there and ends with A's
  prompt bit for bit.
- C: submitted with `--signal=B:USR1@150` and a 10-minute limit; once it
  trains, the driver shortens the limit (`scontrol update TimeLimit=`) to
  90-150 s left, so that slurmctld's own time-limit check, which runs every
  30 s, sends USR1 to the batch script. Until then C's tasks are stopped
  (SIGSTOP: one long step) so that the signal comes mid-run however fast
  this machine trains. The script forwards it, the tasks save and exit 75,
  the script requeues the job itself, and the resumed attempt (its limit
  lengthened again, so that it is not signalled too) ends with A's prompt.

The second test submits the array job that `python -m prompt_tuning.sweep
emit` writes for a 3-run sweep (resources overridden on the sbatch command
line for this node), and `python -m prompt_tuning.report` reads the 3
finished runs. The tests share nothing but the cluster (one per module and
pytest-xdist worker), so `pytest -n 2` may run them side by side.

The cluster's parts must start: a test fails (never skips) when they do not
(tests/services/install.sh installs them).
"""

import csv
import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.services import slurm
from tests.services.slurm import slurm_cluster  # pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 150
# The quickstart, evaluated once at the end; no periodic checkpoints, so
# every checkpoint mid-run is a signal's.
TRAIN = ["--gin_file=runs/quickstart.gin", f"--gin.TRAIN_STEPS={STEPS}",
         "--gin.TrainConfig.eval_at_start=False",
         "--gin.TrainConfig.eval_period=0",
         "--gin.TrainConfig.checkpoint_period=1000",
         "--gin.TrainConfig.log_period=10"]
# The batch script's defaults are for 2 GPU nodes: one CPU node here.
TWO_TASKS = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
             "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
# B is requeued, C's limit shortened, once they logged this step.
ACT_AT_STEP = 10
TIMEOUT = 600


def _env(tmp, run_root=None):
  env = {"PROMPT_TUNING_VENV": sys.prefix, "PYTHONPATH": ROOT,
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         # The array's runs (one process each, one after another) compile
         # once; the executables are the same, so are the bits.
         "JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  if run_root:
    env["RUN_ROOT"] = run_root
  return env


def _logged(text, step):
  return re.search(rf"step {step}/{STEPS} \|", text) is not None


class _Driver(threading.Thread):
  """Acts on the jobs as a user or an admin would, polling every second:
  requeues B and shortens C's limit once they logged ACT_AT_STEP (pausing C
  until USR1 comes), lengthens C's limit again once it is back in the
  queue. Errors are kept for the tests."""

  def __init__(self, cluster, jobs):
    super().__init__(daemon=True)
    self.cluster, self.jobs = cluster, jobs
    self.done = threading.Event()
    self.events = {}
    self.paused = []
    self.error = None

  def _act(self):
    b, c = self.jobs["B"], self.jobs["C"]
    if "requeued" not in self.events and _logged(
        slurm.read_output(b["out"]), ACT_AT_STEP):
      self.cluster.requeue(b["id"])
      self.events["requeued"] = time.time()
    if "shortened" not in self.events and _logged(
        slurm.read_output(c["out"]), ACT_AT_STEP):
      # slurmctld checks time limits every 30 s: until its check sends
      # USR1, C's processes are stopped, a step that lasts until then,
      # so that the signal comes mid-run however fast the steps are.
      self.paused = self.cluster.python_tasks(c["id"])
      assert len(self.paused) == 2, self.paused
      for pid in self.paused:
        os.kill(pid, signal.SIGSTOP)
      elapsed = _seconds(self.cluster.job(c["id"])["RunTime"])
      # Whole minutes: 90 to 150 s left, at most the 150 s of the
      # --signal, so that the next check sends it.
      limit = -(-(elapsed + 90) // 60)
      self.cluster.scontrol("update", f"JobId={c['id']}",
                            f"TimeLimit={limit}")
      self.events["shortened"] = time.time()
    if "shortened" in self.events and "continued" not in self.events and (
        "USR1: asking the tasks" in slurm.read_output(c["out"]) or
        time.time() > self.events["shortened"] + 60):
      for pid in self.paused:
        os.kill(pid, signal.SIGCONT)
      self.events["continued"] = time.time()
    if "continued" in self.events and "lengthened" not in self.events:
      if int(self.cluster.job(c["id"])["Restarts"]) >= 1:
        # The next attempt is not signalled again.
        self.cluster.scontrol("update", f"JobId={c['id']}", "TimeLimit=10")
        self.events["lengthened"] = time.time()

  def run(self):
    try:
      while not self.done.wait(1):
        self._act()
    except Exception as e:  # pylint: disable=broad-except
      self.error = e
    finally:
      if "continued" not in self.events:
        for pid in self.paused:
          try:
            os.kill(pid, signal.SIGCONT)
          except ProcessLookupError:
            pass


def _seconds(runtime):
  """SLURM's [D-]HH:MM:SS -> seconds."""
  days, _, clock = runtime.rpartition("-")
  h, m, s = (int(x) for x in clock.split(":"))
  return int(days or 0) * 86400 + h * 3600 + m * 60 + s


SWEEP = """\
[sweep]
name = "slurm_array"
gin_files = ["runs/quickstart.gin"]
bindings = [
  "TRAIN_STEPS = 20",
  "TrainConfig.eval_at_start = False",
  "TrainConfig.eval_period = 0",
  "TrainConfig.checkpoint_period = 1000",
  "TrainConfig.log_period = 10",
]
task_modules = ["prompt_tuning.tasks.quickstart"]
tasks = ["quickstart_sentiment_taskless"]
seeds = [0, 1, 2]
"""


def _submit(cluster, tmp, name, *extra):
  """launch/slurm.sbatch with TRAIN as two tasks, RUN_ROOT tmp/<name>."""
  out = os.path.join(tmp, f"{name}.out")
  run_root = os.path.join(tmp, name)
  job = cluster.sbatch(
      [*TWO_TASKS, *extra, f"--output={out}", f"--job-name=pt-{name}",
       os.path.join(ROOT, "launch", "slurm.sbatch"), *TRAIN],
      cwd=ROOT, env=_env(tmp, run_root))
  return {"id": job, "out": out, "root": run_root}


def _finished(cluster, job, restarts, driver=None):
  """Waits for `job` to complete after `restarts` requeues; its output."""

  def done(records):
    if driver is not None and driver.error:
      raise driver.error
    (record,) = records
    if record["JobState"] in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                              "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"):
      raise slurm.ClusterError(
          f"job {job['id']} ended {record['JobState']} "
          f"(exit {record['ExitCode']}, {record['Restarts']} requeues):\n"
          f"{slurm.read_output(job['out'])[-5000:]}")
    return (record["JobState"] == "COMPLETED" and
            int(record["Restarts"]) == restarts)

  (record,) = cluster.wait(job["id"], done, TIMEOUT,
                           f"completed after {restarts} requeues")
  assert record["ExitCode"] == "0:0", record
  return slurm.read_output(job["out"])


def _model_dir(job):
  (model_dir,) = glob.glob(os.path.join(job["root"], f"*-job{job['id']}"))
  return model_dir


def _final_prompt(job):
  return np.load(os.path.join(_model_dir(job), "prompts",
                              f"step_{STEPS}.npy"))


def _attempts(output):
  """The job's output split at each attempt's first line."""
  parts = re.split(r"^(?=\S+ job \d+ \(attempt \d+\))", output, flags=re.M)
  return [p for p in parts if "(attempt" in p]


def _check_uninterrupted(output, job):
  assert len(_attempts(output)) == 1, output[-3000:]
  # Two JAX processes found each other through SLURM's variables.
  assert re.search(r"process 0/2, devices: \[CpuDevice\(id=0\), "
                   r"CpuDevice\(id=\d+\)\]", output), output[-3000:]
  assert "process 1/2" in output
  assert output.count(f"step {STEPS}/{STEPS} |") == 2, output[-3000:]
  assert re.search(rf"eval step {STEPS}: .*quickstart_sentiment_taskless/"
                   r"accuracy \d", output), output[-3000:]
  assert "preempted" not in output
  assert re.search(rf"job {job['id']}: exit 0$", output, re.M)
  model_dir = _model_dir(job)
  for name in (f"checkpoint_{STEPS}", "best.json", "operative_config.gin"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  assert not os.path.exists(os.path.join(model_dir, "run.lock"))


def _check_resumed(output, signal_name, job):
  """The first attempt saved on `signal_name` in every task, which exited
  75; the second resumed there and finished."""
  first, second = _attempts(output)
  stops = re.findall(rf"^preempted: stopped by {signal_name} at step (\d+);",
                     first, re.M)
  assert len(stops) == 2 and stops[0] == stops[1], first[-5000:]
  step = int(stops[0])
  assert ACT_AT_STEP <= step < STEPS, first[-3000:]
  # Every task exited 75 itself: none was killed before it finished.
  assert re.search(r"^srun: error: \S+: tasks? [0-9-]+: Exited with exit "
                   r"code 75$", first, re.M), first[-3000:]
  assert not re.search(r"^srun: error: .*: (Killed|Terminated)$", first,
                       re.M), first[-3000:]
  assert os.path.isdir(os.path.join(_model_dir(job), f"checkpoint_{step}"))
  assert "(attempt 2)" in second
  assert second.count(f"Resumed from step {step} ") == 2, second[-5000:]
  assert not _logged(second, ACT_AT_STEP)
  assert "Took over the stale lock" not in second
  assert re.search(rf"job {job['id']}: exit 0$", second, re.M)


def test_jobs_train_and_resume_bit_identically_after_requeue_and_time_limit(
    slurm_cluster, tmp_path):  # pylint: disable=redefined-outer-name
  tmp = str(tmp_path)
  jobs = {"A": _submit(slurm_cluster, tmp, "A"),
          "B": _submit(slurm_cluster, tmp, "B"),
          "C": _submit(slurm_cluster, tmp, "C", "--signal=B:USR1@150")}
  driver = _Driver(slurm_cluster, jobs)
  driver.start()
  try:
    reference = _finished(slurm_cluster, jobs["A"], 0, driver)
    _check_uninterrupted(reference, jobs["A"])

    requeued = _finished(slurm_cluster, jobs["B"], 1, driver)
    _check_resumed(requeued, "SIGTERM", jobs["B"])
    assert "DUE TO JOB REQUEUE" in requeued
    np.testing.assert_array_equal(_final_prompt(jobs["B"]),
                                  _final_prompt(jobs["A"]))

    signalled = _finished(slurm_cluster, jobs["C"], 1, driver)
    first = _attempts(signalled)[0]
    # slurmctld sent USR1 to the batch script, which passed it on and, after
    # the save, requeued the job itself (a time limit does not requeue).
    assert "USR1: asking the tasks to save a checkpoint and stop" in first
    assert re.search(rf"job {jobs['C']['id']}: exit 75$", first,
                     re.M), first[-3000:]
    assert "checkpoint saved before the time limit: requeueing job" in first
    _check_resumed(signalled, "SIGUSR1", jobs["C"])
    assert "DUE TO TIME LIMIT" not in signalled
    np.testing.assert_array_equal(_final_prompt(jobs["C"]),
                                  _final_prompt(jobs["A"]))
  finally:
    driver.done.set()
    driver.join(timeout=30)


def test_emitted_array_job_runs_the_sweep_and_report_reads_it(
    slurm_cluster, tmp_path):  # pylint: disable=redefined-outer-name
  tmp = str(tmp_path)
  sweep_file = os.path.join(tmp, "sweep.toml")
  with open(sweep_file, "w", encoding="utf-8") as f:
    f.write(SWEEP)
  root = os.path.join(tmp, "sweep")
  emitted = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.sweep", "emit", sweep_file,
       "--root", root], cwd=ROOT, capture_output=True, text=True,
      timeout=300, check=False)
  assert emitted.returncode == 0, emitted.stderr[-3000:]
  with open(os.path.join(root, "slurm_array.sbatch")) as f:
    script = f.read()
  for line in ("#SBATCH --array=0-2%3", "#SBATCH --time=",
               "#SBATCH --mem=", "#SBATCH --cpus-per-task="):
    assert line in script, script
  # As written, but for this node's resources; one task at a time (the
  # first compiles, the others find its programs in the cache).
  array = slurm_cluster.sbatch(
      ["--array=0-2%1", "--gpus-per-node=0", "--cpus-per-task=1",
       "--mem=1G", "--time=10", os.path.join(root, "slurm_array.sbatch")],
      cwd=tmp, env=_env(tmp))

  def done(records):
    states = {r["JobState"] for r in records}
    if states - {"COMPLETED", "RUNNING", "PENDING", "COMPLETING"}:
      logs = "".join(slurm.read_output(p)[-2000:] for p in
                     glob.glob(os.path.join(root, "slurm-*.out")))
      raise slurm.ClusterError(f"array job {array}: {states}\n{logs}")
    return len(records) == 3 and states == {"COMPLETED"}

  records = slurm_cluster.wait(array, done, TIMEOUT, "3 array tasks completed")
  assert sorted(int(r["ArrayTaskId"]) for r in records) == [0, 1, 2]
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.report", root],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(root, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["seed"] for r in rows) == ["0", "1", "2"], rows
  assert {r["status"] for r in rows} == {"finished"}, rows
