"""`python -m prompt_tuning.sweep {plan,run,emit} SWEEP.toml`: run a study.

- `plan` prints every run of the sweep (name, status, gin files, bindings,
  run directory) and checks them all;
- `run` executes the unfinished runs on this machine, `--parallel N` at a
  time, each as its own `python -m prompt_tuning.train` process; finished
  runs are skipped, half-done ones resume, a failing one is reported and the
  others go on (exit 1 if any failed);
- `emit` writes the same runs for a cluster (`commands.txt`, a SLURM array
  job, a TPU VM script) under the root, without running anything.

Every run's gin config is parsed and checked before anything starts (unknown
configurables or parameters, macros nothing reads, unregistered tasks, a
best metric of another task): a typo in the seventh grid point fails at
once, in one line naming that run. The sweep file format is described in
`prompt_tuning/experiments/sweeps.py`; `gin_configs/sweeps/` has one file
per study of the paper. Then `python -m prompt_tuning.report ROOT`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
from typing import List, Optional, Sequence

# TensorFlow (imported by the task modules) must stay quiet in a CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,wrong-import-position
# Light imports only: seqio and TensorFlow (configurables, preflight) take
# seconds, and a second `sweep run` on a root is refused before them
# (validate imports them).
from prompt_tuning import compilation_cache
from prompt_tuning import storage
from prompt_tuning.experiments import emit
from prompt_tuning.experiments import runner
from prompt_tuning.experiments import sweeps
from prompt_tuning.training import run_directory

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_root(sweep: sweeps.Sweep) -> str:
  return os.path.join("/tmp", "prompt_tuning_sweeps", sweep.name)


def _tasks_of(name: str) -> List[str]:
  """A task's own name, or a mixture's tasks (recursively) and its name."""
  from prompt_tuning.data import registry
  provider = registry.get(name)
  names = [name]
  for task in getattr(provider, "tasks", []):
    names.append(task.name)
  return names


# The train parameters naming what a run reads from outside its config.
_INPUTS = ("train.initial_checkpoint_path", "train.mixture_or_task_name")


def validate(sweep: sweeps.Sweep, runs: Sequence[sweeps.Run],
             root: str, check_inputs: bool = True) -> None:
  """Checks every run's config and (with `check_inputs`) that its
  vocabulary, frozen checkpoint and TFDS data are there; raises ValueError
  naming the first bad run."""
  from prompt_tuning import configurables
  from prompt_tuning.training import preflight
  for module in sweep.task_modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f"{sweep.path}: task module {module!r} cannot be "
                       f"imported ({e}).") from None
  checked_tasks = {}
  inputs = preflight.Checker()
  for i, run in enumerate(runs, 1):
    where = f"{sweep.path}: run {i}/{len(runs)} ({run.name})"
    if run.task not in checked_tasks:
      try:
        checked_tasks[run.task] = _tasks_of(run.task)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    allowed = checked_tasks[run.task] + ["eval", "super_glue"]
    metric_task = run.best_metric.rsplit("/", 1)[0]
    if "/" not in run.best_metric or metric_task not in allowed:
      raise ValueError(
          f"{where}: best_metric {run.best_metric!r} must be '<task>/<metric>' "
          f"for a task this run evaluates ({', '.join(checked_tasks[run.task])}"
          f"), e.g. '{checked_tasks[run.task][-1]}/score'.")
    bindings = list(run.bindings) + [
        f"MODEL_DIR = {sweeps.run_dir(root, run)!r}"]
    try:
      bound = configurables.check_bindings(run.gin_files, bindings,
                                           read=_INPUTS)
      if check_inputs:
        # What the run reads besides its config, each distinct one once.
        inputs.check_run(*(bound[key] or "" for key in _INPUTS))
    except ValueError as e:  # ConfigError, PreflightError
      raise ValueError(f"{where}: {e}") from None


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.sweep",
      description="Plan, run or emit the runs of a sweep file.")
  parser.add_argument("command", choices=("plan", "run", "emit"))
  parser.add_argument("sweep_file", help="a sweep file (TOML), e.g. "
                      "gin_configs/sweeps/mini_study.toml")
  parser.add_argument("--root", default="",
                      help="where the run directories go (default: "
                      "/tmp/prompt_tuning_sweeps/<sweep name>); `emit` needs "
                      "a path every node sees")
  parser.add_argument("--parallel", type=int, default=1,
                      help="`run`: runs at a time on this machine")
  parser.add_argument("--only", action="append", default=[],
                      help="only runs whose name contains this text "
                      "(repeatable: any of them)")
  parser.add_argument("--compilation_cache", default=None,
                      help="`run`: the runs' JAX compilation cache "
                      "directory, or 'off' (default: "
                      f"${compilation_cache.ENV}, else "
                      "~/.cache/prompt_tuning/jax_compilation_cache)")
  parser.add_argument("--max_parallel", type=int, default=16,
                      help="`emit`: SLURM array tasks at a time")
  parser.add_argument("--out", default="",
                      help="`emit`: a local or shared directory for "
                      "commands.txt and the scripts (default: --root; "
                      "required when --root is gs://)")
  defaults = emit.SlurmResources()
  parser.add_argument("--slurm_time", default=defaults.time,
                      help="`emit`: each array task's time limit per attempt")
  parser.add_argument("--slurm_mem", default=defaults.mem,
                      help="`emit`: each array task's host memory")
  parser.add_argument("--slurm_cpus", type=int,
                      default=defaults.cpus_per_task,
                      help="`emit`: each array task's CPUs")
  parser.add_argument("--slurm_gpus", type=int, default=defaults.gpus,
                      help="`emit`: each array task's GPUs")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse(argv)
  with contextlib.ExitStack() as held:
    try:
      if args.parallel < 1:
        raise ValueError(f"--parallel={args.parallel} must be at least 1.")
      sweep = sweeps.load(args.sweep_file)
      all_runs = runs = sweeps.expand(sweep)
      if args.only:
        runs = [r for r in runs if any(o in r.name for o in args.only)]
        if not runs:
          raise ValueError(f"--only {args.only} matches none of the sweep's "
                           f"runs (`plan` lists them).")
      # storage.absolute keeps a gs:// root a URL (abspath would make it a
      # local directory named `gs:`).
      root = storage.absolute(args.root or default_root(sweep))
      out = os.path.abspath(args.out) if args.out else ""
      if args.command == "emit" and storage.is_remote(root) and not out:
        raise ValueError(
            f"--root {root}: `emit` writes commands.txt and launcher scripts "
            f"that sbatch and launch/tpu_vm.sh read as local files; add "
            f"--out LOCAL_DIR for them (the runs stay under {root}).")
      if out and storage.is_remote(out):
        raise ValueError(f"--out {args.out}: must be a local or mounted "
                         f"directory (sbatch and launch/tpu_vm.sh read it).")
      # `run` holds an existing root before the slow checks (a second
      # `sweep run` is refused at once); a new one is made only once every
      # config passed.
      locked = args.command == "run" and storage.isdir(root)
      if locked:
        _hold_root(root, held)
      # Every run, not only the --only ones: a typo anywhere fails now.
      validate(sweep, all_runs, root)
      if args.command == "run" and not locked:
        _hold_root(root, held)
    except ValueError as e:  # SweepError and ConfigError are ValueErrors
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
      return 2
    if args.command == "plan":  # writes nothing
      print("\n".join(runner.plan_lines(sweep, runs, root)))
      print(f"checked {len(all_runs)} runs: every config parses.")
      return 0
    # The whole sweep is described under the root (the report's view of
    # it), also when --only runs part of it.
    runner.write_plan(sweep, all_runs, root)
    if args.command == "run":
      return _run(args, sweep, runs, root)
  paths = emit.write(sweep, runs, root, _REPO, args.max_parallel,
                     emit.SlurmResources(
                         time=args.slurm_time, mem=args.slurm_mem,
                         cpus_per_task=args.slurm_cpus,
                         gpus=args.slurm_gpus), out=out)
  print(f"checked {len(runs)} runs; wrote:")
  for kind, path in paths.items():
    print(f"  {kind}: {path}")
  return 0


def _hold_root(root: str, stack: contextlib.ExitStack) -> None:
  """Holds `<root>/run.lock` (the run lock's machinery) until `stack`
  closes: one `sweep run` per root, or both would start the same runs and
  report each other's as failed.

  Raises:
    ValueError: another live `sweep run` holds it, or the root cannot be
      written (one line naming it).
  """
  try:
    storage.makedirs(root)
    stack.enter_context(run_directory.hold(root))
  except (RuntimeError, OSError) as e:
    # Its words are a run's ("MODEL_DIR ... another run"): here a sweep's.
    raise ValueError(str(e).replace("MODEL_DIR", "sweep root").replace(
        "another run", "another `sweep run`")) from None


class _Terminated(KeyboardInterrupt):
  """SIGTERM, handled as Ctrl-C is: stop the runs, release the root."""


def _on_sigterm(signum, frame) -> None:  # pylint: disable=unused-argument
  raise _Terminated()


def _run(args: argparse.Namespace, sweep: sweeps.Sweep,
         runs: Sequence[sweeps.Run], root: str) -> int:
  """`sweep run` (the root held): runs the unfinished runs."""
  env = dict(os.environ)
  if args.compilation_cache is not None:
    env[compilation_cache.ENV] = args.compilation_cache
  print(f"compilation cache: "
        f"{compilation_cache.resolve(None, env) or 'off'}", flush=True)
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  try:
    results = runner.run_all(sweep, runs, root, parallel=args.parallel,
                             env=env)
  except _Terminated:
    return 128 + signal.SIGTERM
  except KeyboardInterrupt:
    return 130
  finally:
    signal.signal(signal.SIGTERM, previous)
  print(f"report: python -m prompt_tuning.report {root}")
  return 0 if all(s == "finished" for s in results.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
