"""Running a sweep's runs on this machine: N at a time, resumable, robust.

Each run is its own `python -m prompt_tuning.train` process (the same command
`emit` writes for clusters), logging to `<run_dir>/train.log`. Before it
starts, the run directory gets `sweep_run.json` (the grid point, task, seed,
studies, bindings and command: what the report groups by). A finished run
(`summary.json` says it reached its last step) is skipped; any other run is
started and `train` itself resumes a half-done one from its newest
checkpoint. A run that fails is recorded in `sweep_status.json` with its
exit code and its last `error:` line, and the others go on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from prompt_tuning import storage
from prompt_tuning.experiments import sweeps
from prompt_tuning.training import records

RUN_FILE = "sweep_run.json"
STATUS_FILE = "sweep_status.json"
SWEEP_FILE = "sweep.json"
LOG_FILE = "train.log"
STATUSES = ("finished", "failed", "partial", "pending")


def train_command(run: sweeps.Run, root: str,
                  task_modules: Sequence[str],
                  python: str = "python") -> List[str]:
  return [python, "-m", "prompt_tuning.train"] + sweeps.train_args(
      run, root, task_modules)


def shell_command(run: sweeps.Run, root: str,
                  task_modules: Sequence[str]) -> str:
  """One line a shell runs: the run-command format every launcher shares."""
  return shlex.join(train_command(run, root, task_modules))


def describe_run(sweep: sweeps.Sweep, run: sweeps.Run,
                 root: str) -> Dict[str, object]:
  return {"sweep": sweep.name, "run": run.name, "point": dict(run.point),
          "task": run.task, "seed": run.seed, "best_metric": run.best_metric,
          "studies": list(run.studies), "gin_files": list(run.gin_files),
          "bindings": list(run.bindings),
          "command": shell_command(run, root, sweep.task_modules)}


def write_plan(sweep: sweeps.Sweep, runs: Sequence[sweeps.Run],
               root: str) -> None:
  """ROOT/sweep.json and each run's sweep_run.json (what the report reads)."""
  storage.makedirs(root)
  records.write_json(storage.join(root, SWEEP_FILE), dict(
      sweep.describe(), runs=[r.name for r in runs]))
  for run in runs:
    records.write_json(storage.join(sweeps.run_dir(root, run), RUN_FILE),
                       describe_run(sweep, run, root))


def status(run_directory: str) -> str:
  """'finished', 'failed' (last attempt), 'partial' (has checkpoints) or
  'pending'."""
  if records.is_finished(run_directory):
    return "finished"
  recorded = records.read_json(storage.join(run_directory, STATUS_FILE))
  if recorded and recorded.get("status") == "failed":
    return "failed"
  try:
    names = storage.listdir(run_directory)
  except OSError:
    return "pending"
  if any(n.startswith("checkpoint_") for n in names):
    return "partial"
  return "pending"


def failure(run_directory: str) -> str:
  """Why the last attempt failed ('' if it did not)."""
  recorded = records.read_json(storage.join(run_directory, STATUS_FILE)) or {}
  return str(recorded.get("error", "")) if recorded.get(
      "status") == "failed" else ""


def _last_error(log_path: str) -> str:
  """The last `error: ...` line of a log (the CLI's one-line errors), else
  its last non-empty line."""
  try:
    with open(log_path, encoding="utf-8", errors="replace") as f:
      lines = [line.strip() for line in f.readlines()[-400:]]
  except OSError:
    return ""
  errors = [line for line in lines if line.startswith("error:")]
  if errors:
    return errors[-1]
  lines = [line for line in lines if line]
  return lines[-1][:300] if lines else ""


@dataclasses.dataclass
class _Active:
  run: sweeps.Run
  process: subprocess.Popen
  log: object
  started: float
  # The log's local directory: the run directory itself, or for a gs://
  # one a local copy uploaded when the run ends (a child's stdout must be a
  # local file).
  mirror: storage.LocalMirror


def run_all(sweep: sweeps.Sweep, runs: Sequence[sweeps.Run], root: str, *,
            parallel: int = 1, python: str = sys.executable,
            env: Optional[Mapping[str, str]] = None,
            echo: Callable[[str], None] = functools.partial(
                print, flush=True)) -> Dict[str, str]:
  """Runs every unfinished run; returns run name -> final status.

  The caller writes the plan first (`write_plan`, for the whole sweep).

  One failing run is reported and the others continue. Interrupting
  (Ctrl-C) stops the active runs; rerunning resumes them.
  """
  results: Dict[str, str] = {}
  todo = []
  for run in runs:
    if status(sweeps.run_dir(root, run)) == "finished":
      results[run.name] = "finished"
    else:
      todo.append(run)
  echo(f"sweep {sweep.name}: {len(runs)} runs, {len(runs) - len(todo)} "
       f"already finished, {len(todo)} to run, {parallel} at a time, "
       f"under {root}")
  active: List[_Active] = []
  queue = list(todo)
  done_count, start = 0, time.time()
  try:
    while queue or active:
      while queue and len(active) < parallel:
        run = queue.pop(0)
        directory = sweeps.run_dir(root, run)
        storage.makedirs(directory)
        mirror = storage.LocalMirror(directory)
        log = open(os.path.join(mirror.path, LOG_FILE), "a", encoding="utf-8")
        log.write(f"\n=== sweep {sweep.name}: {time.ctime()} ===\n")
        log.flush()
        process = subprocess.Popen(
            train_command(run, root, sweep.task_modules, python),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None)
        active.append(_Active(run, process, log, time.time(), mirror))
        echo(f"[start] {run.name}")
      time.sleep(0.2)
      for item in list(active):
        code = item.process.poll()
        if code is None:
          continue
        active.remove(item)
        item.log.close()
        item.mirror.sync()
        done_count += 1
        results[item.run.name] = _finish(root, item, code, echo, done_count,
                                         len(todo), start)
  except KeyboardInterrupt:
    for item in active:
      item.process.terminate()
    for item in active:
      item.process.wait()
      item.log.close()
      item.mirror.sync()
    echo("interrupted: rerun the same command to resume the unfinished runs")
    raise
  failed = sorted(n for n, s in results.items() if s != "finished")
  echo(f"sweep {sweep.name}: {len(results) - len(failed)}/{len(runs)} runs "
       f"finished" + (f"; failed: {', '.join(failed)}" if failed else ""))
  return results


def _finish(root: str, item: _Active, code: int,
            echo: Callable[[str], None], done: int, total: int,
            start: float) -> str:
  directory = sweeps.run_dir(root, item.run)
  seconds = time.time() - item.started
  finished = code == 0 and records.is_finished(directory)
  if finished:
    record = {"status": "finished", "returncode": code, "seconds": seconds}
    outcome = _early_stopped(directory, item.run.best_metric)
  else:
    error = _last_error(os.path.join(item.mirror.path, LOG_FILE))
    if code == 0:
      error = f"exited 0 before its last step. {error}".strip()
    record = {"status": "failed", "returncode": code, "seconds": seconds,
              "error": error}
    outcome = f"FAILED (exit {code}): {error}"
  records.write_json(storage.join(directory, STATUS_FILE), record)
  elapsed = time.time() - start
  eta = elapsed / done * (total - done)
  echo(f"[{done}/{total}] {item.run.name}: {outcome} ({seconds:.0f}s; "
       f"ETA {eta / 60:.1f} min)")
  return "finished" if finished else "failed"


def _early_stopped(directory: str, metric: str) -> str:
  """The run's value at the step early stopping selected (what the report
  averages), not its last evaluation's."""
  # results reads run directories and imports this module for their status.
  from prompt_tuning.experiments import results  # pylint: disable=g-import-not-at-top
  run = results.read_run(directory)
  value = run.metrics.get(metric)
  if not isinstance(value, (int, float)):
    return "done"
  return (f"{metric} {value:.2f} at step {run.selected_step} (early "
          f"stopping's pick)")


def plan_lines(sweep: sweeps.Sweep, runs: Sequence[sweeps.Run],
               root: str) -> List[str]:
  """What `plan` prints: one block per run (name, status, bindings, dir)."""
  lines = [f"sweep {sweep.name} ({sweep.path}): {len(runs)} runs, root {root}"]
  if sweep.reproduces:
    lines.append(f"reproduces: {sweep.reproduces}")
  if sweep.checkpoints:
    lines.append(f"expects: {sweep.checkpoints}")
  for i, run in enumerate(runs, 1):
    directory = sweeps.run_dir(root, run)
    lines.append(f"[{i}] {run.name}  ({status(directory)}; studies: "
                 f"{', '.join(run.studies)})")
    lines.append(f"    dir: {directory}")
    lines.append(f"    gin files: {', '.join(run.gin_files) or '-'}")
    for binding in run.bindings:
      lines.append(f"    {binding}")
  return lines


def dump_json(value: object) -> str:
  return json.dumps(value, indent=2, sort_keys=True)
