"""results.csv and summary.md: one row per run, mean +- std per grid cell.

A study's cell is a grid point without its task and seed. For every seed of
a cell, each evaluated task's score is read at that run's selected step (the
mean of the task's metrics, `invalid_prediction_rate` left out: the
leaderboard's rule) and, when every task of the cell was evaluated once, the
cell's score is the mean over its tasks (`metrics.superglue_average`: the
SuperGLUE score when the tasks are SuperGLUE's; for SQuAD and MRQA the F1
alone, as the paper's Table 1). Means and sample standard
deviations (ddof=1) are over the seeds that have every task of the cell;
runs that failed or did not finish are listed and never averaged in.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning import metrics as metrics_lib
from prompt_tuning.experiments import paper
from prompt_tuning.experiments.results import RunResult


@dataclasses.dataclass(frozen=True)
class Stat:
  """Mean and sample std of one quantity over seeds."""
  mean: float
  std: float  # NaN for a single seed
  n: int

  def text(self) -> str:
    if self.n == 1:
      return f"{self.mean:.2f} (n=1)"
    return f"{self.mean:.2f} ± {self.std:.2f}"


def stat(values: Sequence[float]) -> Stat:
  values = [float(v) for v in values]
  std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
  return Stat(float(np.mean(values)), std, len(values))


@dataclasses.dataclass(frozen=True)
class Cell:
  """One grid point of a study, over seeds."""
  point: Mapping[str, str]
  # column (evaluated task, or 'task -> evaluated task') -> Stat
  tasks: Mapping[str, Stat]
  # The mean over tasks (None when a task is missing or evaluated twice).
  score: Optional[Stat]
  model_parameters: Optional[float]
  # Seeds with every task, and seeds with some task missing.
  seeds: Tuple[int, ...]
  incomplete_seeds: Tuple[int, ...]
  # (run task, evaluated task, metric) -> Stat over the complete seeds.
  metrics: Mapping[Tuple[str, str, str], Stat] = dataclasses.field(
      default_factory=dict)
  # 'prompt' or 'model' when every run of the cell trained that way.
  mode: str = ""
  # What trained (mean over the cell's runs), and its percentage of the
  # frozen model (None: no parameters.json says).
  trainable_parameters: Optional[float] = None
  trainable_share: Optional[float] = None


def evaluated_tasks(run: RunResult) -> List[str]:
  """Tasks with a score at the run's selected step (a mixture has several)."""
  return sorted(k[:-len("/score")] for k in run.metrics
                if k.endswith("/score") and k != "eval/score")


def _column(run: RunResult, evaluated: str, single_task: bool) -> str:
  """A task's column; where the paper reports one metric of the task (F1
  for MRQA), that metric, named."""
  name = evaluated if single_task or evaluated == run.task else (
      f"{run.task} -> {evaluated}")
  metric = paper.TABLE_METRIC.get(evaluated)
  return f"{name} ({metric})" if metric else name


def _column_value(run: RunResult, evaluated: str) -> Optional[float]:
  return run.metrics.get(
      f"{evaluated}/{paper.TABLE_METRIC.get(evaluated, 'score')}")


def cells(study_runs: Sequence[RunResult], axes: Sequence[str]
          ) -> List[Cell]:
  """The study's cells in grid order, from its usable runs."""
  usable = [r for r in study_runs if r.usable]
  all_tasks = sorted({r.task for r in study_runs})
  single_task = len(all_tasks) == 1
  grouped: Dict[Tuple[str, ...], List[RunResult]] = {}
  for run in usable:
    grouped.setdefault(tuple(run.point.get(a, "") for a in axes),
                       []).append(run)
  expected = {}  # cell -> tasks that any of its runs (usable or not) has
  for run in study_runs:
    expected.setdefault(tuple(run.point.get(a, "") for a in axes),
                        set()).add(run.task)
  out = []
  for key, runs in grouped.items():
    per_seed: Dict[int, List[RunResult]] = {}
    for run in runs:
      per_seed.setdefault(run.seed if run.seed is not None else -1,
                          []).append(run)
    complete = sorted(s for s, rs in per_seed.items()
                      if {r.task for r in rs} >= expected[key])
    incomplete = sorted(set(per_seed) - set(complete))
    columns: Dict[str, List[float]] = {}
    detail: Dict[Tuple[str, str, str], List[float]] = {}
    scores: List[float] = []
    for seed in complete:
      by_task: Dict[str, Dict[str, float]] = {}
      duplicate = False
      for run in per_seed[seed]:
        for evaluated in evaluated_tasks(run):
          value = _column_value(run, evaluated)
          if value is not None:
            columns.setdefault(_column(run, evaluated, single_task),
                               []).append(value)
          duplicate |= evaluated in by_task
          task_metrics = run.task_metrics(evaluated)
          for metric, value in task_metrics.items():
            detail.setdefault((run.task, evaluated, metric),
                              []).append(value)
          # The paper's one metric of the task where it names one (F1 for
          # MRQA), as in the task's column.
          metric = paper.TABLE_METRIC.get(evaluated)
          by_task[evaluated] = ({metric: task_metrics[metric]}
                                if metric in task_metrics else task_metrics)
      if by_task and not duplicate:
        scores.append(metrics_lib.superglue_average(by_task))
    sizes = [r.model_parameters for r in runs if r.model_parameters]
    modes = {r.mode for r in runs}
    trained = [r.trainable_parameters for r in runs if r.trainable_parameters]
    shares = [r.trainable_share for r in runs if r.trainable_share]
    out.append(Cell(
        point=dict(zip(axes, key)),
        tasks={c: stat(v) for c, v in sorted(columns.items())},
        score=stat(scores) if scores and len(scores) == len(complete)
        else None,
        model_parameters=float(np.mean(sizes)) if sizes else None,
        seeds=tuple(complete), incomplete_seeds=tuple(incomplete),
        metrics={k: stat(v) for k, v in detail.items()},
        mode=modes.pop() if len(modes) == 1 else "",
        trainable_parameters=float(np.mean(trained)) if trained else None,
        trainable_share=float(np.mean(shares)) if shares else None))
  return out


def is_superglue(tasks: Sequence[str]) -> bool:
  """True when the tasks are exactly SuperGLUE's eight (the score's name)."""
  names = set()
  for task in tasks:
    try:
      names.add(metrics_lib.superglue_task_name(task))
    except ValueError:
      return False
  return names == set(metrics_lib.SUPERGLUE_TASKS)


def task_names(tasks: Sequence[str]) -> str:
  """The tasks as a reader names them ('BoolQ, CB and RTE' for SuperGLUE's,
  else as registered)."""
  names = []
  for task in sorted(set(tasks)):
    try:
      short = metrics_lib.superglue_task_name(task)
    except ValueError:
      short = None
    names.append(_SUPERGLUE_NAMES.get(short, task))
  names = sorted(set(names))
  return (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1
          else "".join(names))


_SUPERGLUE_NAMES = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA",
                    "multirc": "MultiRC", "record": "ReCoRD", "rte": "RTE",
                    "wic": "WiC", "wsc": "WSC"}


# --- results.csv ------------------------------------------------------------

def csv_text(runs: Sequence[RunResult], axes: Sequence[str]) -> str:
  """One row per run: grid keys, seed, counts, selected step, every metric."""
  metric_names = sorted({k for r in runs for k in r.metrics})
  header = (["run", "status", "studies"] + list(axes) +
            ["task", "seed", "mode", "frozen_model", "model_parameters",
             "trainable_parameters", "trainable_percent_of_frozen",
             "best_metric", "selected_step", "problem"] + metric_names)
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(header)
  for run in runs:
    writer.writerow(
        [run.name, run.status, " ".join(run.studies)] +
        [run.point.get(a, "") for a in axes] +
        [run.task, "" if run.seed is None else run.seed, run.mode,
         run.frozen_model, _blank(run.model_parameters),
         _blank(run.trainable_parameters), _number(run.trainable_share),
         run.best_metric, _blank(run.selected_step), run.problem] +
        [_number(run.metrics.get(m)) for m in metric_names])
  return out.getvalue()


def _blank(value: Any) -> Any:
  return "" if value is None else value


def _number(value: Optional[float]) -> str:
  return "" if value is None else repr(float(value))


# --- summary.md -------------------------------------------------------------

def _size(parameters: Optional[float]) -> str:
  if not parameters:
    return "?"
  for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if parameters >= scale:
      return f"{parameters / scale:.3g}{unit}"
  return f"{parameters:.0f}"


def percent_text(value: float) -> str:
  """A percentage to 3 significant digits, never in e-notation (0.0000368%,
  0.53%, 100%)."""
  if value >= 1 or value <= 0:
    return f"{value:.3g}%"
  decimals = 2 - math.floor(math.log10(value))
  return f"{value:.{decimals}f}%"


def _trainable(cell: Cell) -> str:
  """'51.2K (0.0665%)': what trained and its share of the frozen model."""
  if not cell.trainable_parameters:
    return "?"
  share = (f" ({percent_text(cell.trainable_share)})"
           if cell.trainable_share else "")
  return _size(cell.trainable_parameters) + share


def study_table(study_cells: Sequence[Cell], varied: Sequence[str],
                superglue: bool) -> List[str]:
  """A markdown table: one row per cell."""
  columns = sorted({c for cell in study_cells for c in cell.tasks})
  score_name = "SuperGLUE score" if superglue else "score (mean over tasks)"
  header = (list(varied) + ["frozen params", "trainable (% of frozen)",
                            "seeds", score_name] + columns)
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for cell in study_cells:
    seeds = ",".join(str(s) for s in cell.seeds)
    if cell.incomplete_seeds:
      seeds += " (incomplete: " + ",".join(
          str(s) for s in cell.incomplete_seeds) + ")"
    row = ([cell.point.get(a, "") for a in varied] +
           [_size(cell.model_parameters), _trainable(cell), seeds or "-",
            cell.score.text() if cell.score else "-"] +
           [cell.tasks[c].text() if c in cell.tasks else "-"
            for c in columns])
    lines.append("| " + " | ".join(row) + " |")
  return lines


def _paper_stat(cell: Cell, row: paper.TableRow) -> Optional[Stat]:
  """Our number for one of the paper's table rows (None: not evaluated)."""
  for (trained, evaluated, metric), value in sorted(cell.metrics.items()):
    if (evaluated == row.evaluated and metric == row.metric and
        row.trained_on in (None, trained)):
      return value
  return None


def paper_table(study_cells: Sequence[Cell],
                varied: Sequence[str]) -> List[str]:
  """The paper's domain-shift numbers (Tables 1 and 2) beside ours, one row
  per number of the paper this study evaluated; [] when none."""
  rows = [row for row in paper.DOMAIN_SHIFT
          if any(_paper_stat(c, row) for c in study_cells)]
  if not rows:
    return []
  header = ["paper row", "metric"]
  for cell in study_cells:
    label = ", ".join(f"{a}={cell.point.get(a, '')}" for a in varied)
    header += [f"ours: {label or 'runs'}", "paper: " + (
        f"{cell.mode} tuning" if cell.mode in ("model", "prompt")
        else "model / prompt tuning")]
  tables = sorted({row.table for row in rows})
  lines = [f"The paper's {' and '.join(tables)} ({paper.PAPER_MODEL}, mean "
           f"of 3 runs) beside ours, in the paper's metric (F1 for MRQA, "
           f"not the mean of EM and F1): each of our cells is the mean ± std "
           f"over seeds at the step early stopping selected, on the frozen "
           f"models named above.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [f"{row.table}: {row.label}", row.metric]
    for cell in study_cells:
      ours = _paper_stat(cell, row)
      theirs = row.paper(cell.mode)
      cells += [ours.text() if ours else "-",
                f"{theirs:.1f}" if theirs is not None else
                f"{row.model_tuning:.1f} / {row.prompt_tuning:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def frozen_model_lines(runs: Sequence[RunResult],
                       axes: Sequence[str]) -> List[str]:
  """The frozen models the runs bound (their operative config), each with
  its size and the grid values of the runs that used it."""
  groups: Dict[str, List[RunResult]] = {}
  for run in runs:
    if run.frozen_model:
      groups.setdefault(run.frozen_model, []).append(run)
  lines = []
  for frozen, members in sorted(groups.items()):
    sizes = [r.model_parameters for r in members if r.model_parameters]
    where = []
    for axis in axes:
      values = sorted({r.point.get(axis) for r in members} - {None})
      everywhere = {r.point.get(axis) for r in runs} - {None}
      if values and len(values) < len(everywhere):
        where.append(f"{axis}={'/'.join(values)}")
    lines.append(f"- `{frozen}` ({_size(max(sizes) if sizes else None)} "
                 f"parameters): {len(members)} run(s)" +
                 (f", {', '.join(where)}" if where else ""))
  return lines


def problem_lines(runs: Sequence[RunResult]) -> List[str]:
  bad = [r for r in runs if not r.usable]
  if not bad:
    return ["All runs finished and were evaluated."]
  lines = [f"{len(bad)} run(s) not averaged in:", ""]
  lines += [f"- `{r.name}`: {r.problem}" for r in bad]
  return lines


def markdown(title: str, header_lines: Sequence[str],
             sections: Sequence[Tuple[str, List[str]]],
             runs: Sequence[RunResult]) -> str:
  finished = sum(r.usable for r in runs)
  parts = [f"# {title}", ""] + (list(header_lines) + [""] if header_lines
                               else []) + [
      f"{len(runs)} runs: {finished} finished and evaluated, "
      f"{len(runs) - finished} not. Each cell: mean ± sample std (ddof=1) "
      f"over seeds of the dev score at the step early stopping selected "
      f"(a task's score is the mean of its metrics, in percent; a column "
      f"that names a metric, e.g. `(f1)`, is that metric alone, the one the "
      f"paper reports).", ""]
  for heading, lines in sections:
    parts += [f"## {heading}", ""] + lines + [""]
  parts += ["## Not averaged in", ""] + problem_lines(runs) + [""]
  return "\n".join(parts)
