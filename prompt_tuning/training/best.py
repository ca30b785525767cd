"""The best step of a run: the one rule that picks it, and best.json.

The paper selects prompts by early stopping on dev: the evaluated step with
the best value of one metric. The rule lives here once and is used by the
training loop (`Checkpointer.record_eval`, which keeps that step's
checkpoint), by a resumed run that rebuilds a lost or stale best.json from
eval/metrics.jsonl, and by the report: all three always name the same step.

  <model_dir>/best.json   {"metric", "mode", "value", "step"}
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Mapping, Optional

from prompt_tuning import storage

BEST_FILE = "best.json"
MODES = ("max", "min")


def is_better(value: float, old: Optional[float], mode: str) -> bool:
  """Whether `value` beats the best so far (`old`; None: nothing yet).

  NaN never wins; a tie keeps the old, earlier step (training evaluates
  steps in order, so "earliest among equals" is what both see).
  """
  if math.isnan(value):
    return False
  if old is None:
    return True
  return value > old if mode == "max" else value < old


def select_step(history: Mapping[int, Mapping[str, float]], metric: str,
                mode: str = "max") -> Optional[int]:
  """The evaluated step (> 0) with the best finite `metric`; ties: earliest.

  Args:
    history: step -> that evaluation's flat metrics (records.
      read_eval_history); step 0 is the untrained baseline, never selected.
    metric: e.g. "super_glue_rte_v102/accuracy".
    mode: "max" or "min".
  """
  best_step, best_value = None, None
  for step in sorted(history):
    value = history[step].get(metric)
    if step <= 0 or value is None:
      continue
    if is_better(float(value), best_value, mode):
      best_step, best_value = step, float(value)
  return best_step


def record(metric: str, mode: str, value: float, step: int) -> Dict[str, Any]:
  """best.json's contents."""
  return {"metric": metric, "mode": mode, "value": float(value),
          "step": int(step)}


def write(model_dir: str, best: Mapping[str, Any]) -> None:
  """Replaces best.json whole (a reader never sees half of it)."""
  text = json.dumps(dict(best), indent=2, sort_keys=True) + "\n"
  storage.atomic_write(storage.join(model_dir, BEST_FILE),
                       lambda f: f.write(text.encode("utf-8")))


def read(model_dir: str) -> Optional[Dict[str, Any]]:
  """best.json of a run directory, or None before its first eval."""
  path = storage.join(model_dir, BEST_FILE)
  if not storage.exists(path):
    return None
  try:
    best = json.loads(storage.read_text(path))
    best["step"], best["value"] = int(best["step"]), float(best["value"])
    best["metric"] = str(best["metric"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a valid best.json ({e!r}); expected "
                     f"{{'metric', 'value', 'step'}}; delete it and rerun: it "
                     f"is rebuilt from eval/metrics.jsonl.") from None
  return best
