"""The SuperGLUE aggregate: one number from per-task metric dicts.

The SuperGLUE leaderboard scores a system by the plain mean of eight task
scores (`SUPERGLUE_TASKS`); a task reporting two metrics counts as their mean
first (CB: accuracy and macro-F1, MultiRC: F1a and exact match, ReCoRD: F1 and
EM). The diagnostics AX-b (Matthews correlation) and AX-g (gender parity and
accuracy) are reported beside the score but are not part of it. This module
averages whatever tasks it is given, so pass the eight tasks for the
leaderboard number; it accepts the short names ("cb") as well as registry
names that contain them ("super_glue_cb_v102", "taskless_super_glue_cb_v102").
"""

from __future__ import annotations

import re
from typing import Collection, Dict, Mapping, Optional

import numpy as np

# The tasks whose mean is the leaderboard's SuperGLUE score.
SUPERGLUE_TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic",
                   "wsc")
# Recognised too, though not in the score.
DIAGNOSTIC_TASKS = ("axb", "axg")
# Bookkeeping metrics that say nothing about task quality.
IGNORED_IN_SCORE = frozenset({"invalid_prediction_rate"})


def superglue_task_name(name: str) -> Optional[str]:
  """The short SuperGLUE task name inside `name`, or None if there is none.

  Names are split at every non-alphanumeric character, so "wsc.fixed" and
  "super_glue_wsc_v102_simple_eval" are WSC while "mrpc" is nothing.

  Raises:
    ValueError: if `name` contains two different task names.
  """
  known = SUPERGLUE_TASKS + DIAGNOSTIC_TASKS
  found = {w for w in re.split(r"[^a-z0-9]+", name.lower()) if w in known}
  if len(found) > 1:
    raise ValueError(f"Task name {name!r} names several SuperGLUE tasks: "
                     f"{sorted(found)}.")
  return found.pop() if found else None


def task_score(task_metrics: Mapping[str, float],
               ignore: Collection[str] = ()) -> float:
  """One task's score: the mean of its metrics (the leaderboard's rule).

  Raises:
    ValueError: no metric is left once `IGNORED_IN_SCORE` and `ignore` are
      removed.
  """
  ignored = IGNORED_IN_SCORE | frozenset(ignore)
  values = [float(v) for k, v in task_metrics.items() if k not in ignored]
  if not values:
    raise ValueError(f"No metric to average in {dict(task_metrics)}.")
  return float(np.mean(values))


def superglue_task_scores(
    scores: Mapping[str, Mapping[str, float]],
    ignore: Collection[str] = ()) -> Dict[str, float]:
  """One score per task: the mean of the task's metrics.

  Args:
    scores: task name -> {metric name: value}, as an evaluation returns them.
    ignore: metric names to leave out besides "invalid_prediction_rate"
      (e.g. a loss logged with the metrics).

  Returns:
    short task name (or the name as given, for a non-SuperGLUE task) -> score.

  Raises:
    ValueError: if two names are the same task, or a task has no metric left.
  """
  task_scores: Dict[str, float] = {}
  for name, metrics in scores.items():
    task = superglue_task_name(name) or name
    if task in task_scores:
      raise ValueError(f"Task {task!r} appears twice in the scores (as "
                       f"{name!r} and another name); pass one of them.")
    try:
      task_scores[task] = task_score(metrics, ignore)
    except ValueError:
      raise ValueError(
          f"Task {name!r} has no metric to average: {metrics}.") from None
  return task_scores


def superglue_average(scores: Mapping[str, Mapping[str, float]],
                      ignore: Collection[str] = ()) -> float:
  """The mean over the given tasks of each task's mean metric.

  Given exactly the tasks of `SUPERGLUE_TASKS` this is the leaderboard's
  SuperGLUE score (in percent when the metrics are).

  Args:
    scores: task name -> {metric name: value}.
    ignore: metric names to leave out besides "invalid_prediction_rate".

  Returns:
    The average score.

  Raises:
    ValueError: if `scores` is empty, or as `superglue_task_scores`.
  """
  if not scores:
    raise ValueError("No task scores to average.")
  return float(np.mean(list(superglue_task_scores(scores, ignore).values())))
