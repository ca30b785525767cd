"""Reading run directories: what each run was, and the step early stopping picks.

A run directory is anything under the report's root holding a
`parameters.json` or a `sweep_run.json` (written by `train` and by the sweep
runner, see `training.records`). For each one this reads the grid point,
task and seed (from `sweep_run.json`; for a run started by hand, from its
`config.gin`), the parameter counts, every evaluation (`eval/metrics.jsonl`)
and whether it finished. The selected step is the paper's early stopping on
the dev set: the evaluation (after step 0) with the best `best_metric`
(default `<task>/score`, the mean of the task's metrics), the earliest one on
a tie, NaN never; the same rule as `best.json`, which it is checked against.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional

from prompt_tuning import storage
from prompt_tuning.experiments import runner
from prompt_tuning.training import best as best_lib
from prompt_tuning.training import records


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One run directory, read."""
  name: str
  path: str
  # 'finished', 'failed', 'partial' (stopped midway) or 'pending'.
  status: str
  # axis -> value name ({} for a run not started by a sweep).
  point: Mapping[str, str]
  task: str
  seed: Optional[int]
  studies: tuple
  best_metric: str
  # The frozen T5's own parameters, and what trained.
  model_parameters: Optional[int]
  trainable_parameters: Optional[int]
  mode: str
  # The frozen model as the run bound it (its operative config): the
  # checkpoint path, after the model preset's name when one is bound ('' when
  # the run wrote no config).
  frozen_model: str
  # Early stopping's step and every dev metric there (None / {}: no eval).
  selected_step: Optional[int]
  metrics: Mapping[str, float]
  # Why it is not usable ('' when it is).
  problem: str = ""

  @property
  def usable(self) -> bool:
    return not self.problem

  @property
  def trainable_share(self) -> Optional[float]:
    """Trainable parameters as a percentage of the frozen model's own
    (parameters.json's trainable / model; the paper's Figure 4), or None
    when either count is missing."""
    if not self.trainable_parameters or not self.model_parameters:
      return None
    return 100.0 * self.trainable_parameters / self.model_parameters

  def task_metrics(self, task: str) -> Dict[str, float]:
    """`task`'s metrics at the selected step, without the task prefix."""
    prefix = f"{task}/"
    return {k[len(prefix):]: v for k, v in self.metrics.items()
            if k.startswith(prefix) and k != f"{task}/score"}


# The one rule, shared with training's best.json (tests call it here).
select_step = best_lib.select_step


def _gin_value(config_text: str, key: str) -> Optional[str]:
  """`key`'s value in a gin file (a scoped binding `SCOPE/key` too), a
  `%MACRO` reference resolved, quotes kept."""
  match = re.search(rf"^(?:[\w.]+/)?{re.escape(key)}\s*=\s*(.+)$",
                    config_text, re.M)
  if not match:
    return None
  value = match.group(1).strip()
  if re.fullmatch(r"%\w+", value) and value[1:] != key:
    return _gin_value(config_text, value[1:])
  return value


def _frozen_model(path: str) -> str:
  """What the run froze, from its operative config (else its config.gin)."""
  for name in ("operative_config.gin", "config.gin"):
    try:
      text = storage.read_text(storage.join(path, name))
    except (OSError, ValueError):
      continue
    checkpoint = (_gin_value(text, "train.initial_checkpoint_path") or
                  _gin_value(text, "INITIAL_CHECKPOINT_PATH") or "")
    preset = (_gin_value(text, "model_config.name") or
              _gin_value(text, "decoder_model_config.name") or "")
    checkpoint, preset = checkpoint.strip("'\""), preset.strip("'\"")
    if checkpoint in ("", "None"):
      checkpoint = "random initialisation"
    return f"{preset} from {checkpoint}" if preset else checkpoint
  return ""


def _from_config(path: str) -> Dict[str, Any]:
  """Task, seed and best metric of a run started by hand (its config.gin)."""
  try:
    text = storage.read_text(storage.join(path, "config.gin"))
  except (OSError, ValueError):
    return {}
  out: Dict[str, Any] = {}
  task = _gin_value(text, "MIXTURE_OR_TASK_NAME") or _gin_value(
      text, "train.mixture_or_task_name")
  if task:
    out["task"] = task.strip("'\"")
  seed = _gin_value(text, "TrainConfig.seed")
  if seed and seed.isdigit():
    out["seed"] = int(seed)
  best = _gin_value(text, "TrainConfig.best_metric")
  if best and best.strip("'\""):
    out["best_metric"] = best.strip("'\"")
  return out


def read_run(path: str) -> RunResult:
  """Reads one run directory (never raises for a damaged or partial one)."""
  described = records.read_json(storage.join(path, runner.RUN_FILE)) or {}
  if not described:
    described = _from_config(path)
  task = str(described.get("task", ""))
  best_metric = str(described.get("best_metric") or
                    (f"{task}/score" if task else ""))
  parameters = records.read_json(storage.join(path, records.PARAMETERS_FILE))
  status = runner.status(path)
  history = records.read_eval_history(path)
  best = records.read_json(storage.join(path, best_lib.BEST_FILE)) or {}
  mode = str(best.get("mode", "max")) if best.get(
      "metric") == best_metric else "max"
  step = select_step(history, best_metric, mode) if best_metric else None
  problem = ""
  if status != "finished":
    problem = runner.failure(path) or f"not finished ({status})"
    problem = f"{status}: {problem}" if status == "failed" else problem
  elif not task:
    problem = "no task recorded (no sweep_run.json or config.gin)"
  elif step is None:
    problem = (f"no evaluation after step 0 reports {best_metric!r}"
               if history else "no evaluations (eval/metrics.jsonl)")
  elif best.get("metric") == best_metric and int(best["step"]) != step:
    problem = (f"best.json says step {best['step']} but the evaluations "
               f"select step {step}")
  seed = described.get("seed")
  return RunResult(
      name=str(described.get("run") or storage.basename(path)), path=path,
      status=status, point=dict(described.get("point") or {}), task=task,
      seed=int(seed) if seed is not None else None,
      studies=tuple(described.get("studies") or ()),
      best_metric=best_metric,
      model_parameters=_count(parameters, "model"),
      trainable_parameters=_count(parameters, "trainable"),
      mode=str(parameters.get("mode", "")) if parameters else "",
      frozen_model=_frozen_model(path),
      selected_step=step,
      metrics=dict(history.get(step, {})) if step is not None else {},
      problem=problem)


def _count(parameters: Optional[Mapping[str, Any]], key: str
           ) -> Optional[int]:
  """A count of parameters.json (None: no file, or a file without it)."""
  value = (parameters or {}).get(key)
  return None if value is None else int(value)


def _is_run_dir(path: str) -> bool:
  return any(storage.exists(storage.join(path, name)) for name in
             (runner.RUN_FILE, records.PARAMETERS_FILE))


def read_root(root: str) -> List[RunResult]:
  """Every run directory under `root` (any depth), sorted by name."""
  if not storage.isdir(root):
    raise FileNotFoundError(f"{root}: no such directory (the sweep's root, "
                            f"e.g. the one `sweep run --root` used).")
  found = []
  for folder, subfolders, _ in storage.walk(root):
    if _is_run_dir(folder):
      found.append(read_run(folder))
      subfolders[:] = []  # a run's own folders hold no runs
    else:
      subfolders[:] = sorted(d for d in subfolders
                             if not d.startswith("checkpoint_"))
  return sorted(found, key=lambda r: r.name)
