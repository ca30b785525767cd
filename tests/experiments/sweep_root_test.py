"""`sweep run` for real, on what a root and a machine share: one `sweep run`
per root (the second refused at once naming the first; the lock released on
SIGTERM and Ctrl-C; a dead one's lock taken over), and the persistent
compilation cache (the second run of a sweep loads what the first
compiled)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from prompt_tuning.training import records

from tests.experiments.sweep_cli_test import ROOT
from tests.experiments.sweep_cli_test import SWEEP
from tests.experiments.sweep_cli_test import _cli
from tests.experiments.sweep_cli_test import _sweep_file

GOOD = "frozen-tiny__task-tiny_classify__seed-{}"
# The tiny sweep without its run of a missing checkpoint (refused now by
# the checks before any run).
TINY = SWEEP.replace(
    "values.missing = {{ bindings = [\"INITIAL_CHECKPOINT_PATH = "
    "'{missing}'\"] }}\n", "").split("[studies.broken]")[0]


def _env(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  env["PROMPT_TUNING_COMPILATION_CACHE"] = os.path.join(str(tmp_path),
                                                         "cache")
  return env


def _start(path, root, tmp_path, *args):
  # Ctrl-C's default action, also where the test runner ignores SIGINT (a
  # process started with SIGINT ignored keeps ignoring it, as a shell's
  # background jobs do).
  command = [sys.executable, "-m", "prompt_tuning.sweep", "run", path,
             "--root", root, *args]
  exec_with_sigint = ("import os, signal, sys; "
                      "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.argv[1], sys.argv[1:])")
  return subprocess.Popen(
      [sys.executable, "-c", exec_with_sigint, *command], cwd=ROOT,
      env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _wait_for(path, process, seconds=300):
  deadline = time.time() + seconds
  while not os.path.exists(path):
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, f"{path} never appeared"
    time.sleep(0.2)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143),
                                         (signal.SIGINT, 130)])
def test_second_sweep_on_a_root_is_refused_naming_the_first(
    frozen, tmp_path, signum, code):
  # A run that outlasts the test.
  text = TINY.replace('"TRAIN_STEPS = 4"', '"TRAIN_STEPS = 100000"')
  path = _sweep_file(tmp_path, frozen, text)
  root = os.path.join(str(tmp_path), "runs")
  first = _start(path, root, tmp_path, "--only", GOOD.format(0))
  try:
    # The first holds the root once its child run has started.
    _wait_for(os.path.join(root, GOOD.format(0), "train.log"), first)
    second = _cli("sweep", "run", path, "--root", root)
    assert second.returncode == 2, second.stderr[-2000:]
    # One line (TensorFlow's start-up chatter aside).
    error = [line for line in second.stderr.splitlines()
             if line.startswith(("error", "Traceback"))]
    assert len(error) == 1, second.stderr
    assert error[0].startswith(f"error: sweep root {root} is in use by "
                               f"another `sweep run` (pid {first.pid} on "
                               f"host {socket.gethostname()!r}, started "), \
        error[0]
    assert "compilation cache" not in second.stdout  # refused before it
    first.send_signal(signum)
    out, err = first.communicate(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == code, err[-2000:]
  assert "interrupted: rerun the same command" in out
  assert not os.path.exists(os.path.join(root, "run.lock")), err


def test_a_dead_sweeps_lock_is_taken_over(frozen, tmp_path):
  path = _sweep_file(tmp_path, frozen, TINY)
  root = os.path.join(str(tmp_path), "runs")
  for seed in (0, 1):  # finished: nothing to run once past the lock
    records.write_summary(os.path.join(root, GOOD.format(seed)), 4, 4, {},
                          {})
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with open(os.path.join(root, "run.lock"), "w", encoding="utf-8") as f:
    f.write(f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}, '
            f'"start_time": "1", "started": "2020-01-01 00:00:00"}}')
  result = _cli("sweep", "run", path, "--root", root,
                "--compilation_cache", "off")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"Took over the stale lock {root}/run.lock" in result.stderr
  assert f"pid {dead.pid}" in result.stderr
  assert "compilation cache: off" in result.stdout
  assert "2 runs, 2 already finished, 0 to run" in result.stdout
  assert not os.path.exists(os.path.join(root, "run.lock"))


def _cache_line(log_path):
  with open(log_path, encoding="utf-8") as f:
    lines = re.findall(r"Compilation cache (\S+): (\d+) compilation\(s\) "
                       r"loaded from it \(([\d.]+)s of compiling saved\), "
                       r"(\d+) written to it", f.read())
  assert len(lines) == 1, log_path
  directory, hits, saved, writes = lines[0]
  return directory, int(hits), float(saved), int(writes)


def test_the_second_run_of_a_sweep_loads_what_the_first_compiled(
    frozen, tmp_path):
  text = TINY.replace('"TRAIN_STEPS = 4"', '"TRAIN_STEPS = 2"')
  path = _sweep_file(tmp_path, frozen, text)
  root = os.path.join(str(tmp_path), "runs")
  cache = os.path.join(str(tmp_path), "my_cache")
  result = _cli("sweep", "run", path, "--root", root, "--only", "frozen-tiny",
                "--compilation_cache", cache)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"compilation cache: {cache}\n" in result.stdout
  assert os.listdir(cache)
  first = _cache_line(os.path.join(root, GOOD.format(0), "train.log"))
  second = _cache_line(os.path.join(root, GOOD.format(1), "train.log"))
  assert first[0] == second[0] == cache
  # The first compiled and wrote; the second (same shapes, another seed)
  # loaded the train and eval steps instead of compiling them.
  assert first[1] == 0 and first[3] > 0, first
  assert second[1] >= 2 and second[2] > 0, second
  assert second[3] < first[3], (first, second)
