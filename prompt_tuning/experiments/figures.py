"""PNG figures in the paper's style: score vs frozen-model size, one line each.

One figure per study: the x axis is the frozen model's parameter count on a
log scale (the paper's Figures 1 and 3) or the values of one axis; one line
per value of the study's `lines` axis, each point the mean over seeds with
a standard-deviation error bar. A paper overlay (`experiments.paper`) is
drawn dashed and grey and labelled "(paper)". matplotlib's Agg backend:
no display needed.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.experiments.summary import Cell  # pylint: disable=g-import-not-at-top,wrong-import-position

Line = Tuple[str, Sequence[Tuple[float, float, float]]]  # label, (x, y, err)


def _numeric(values: Sequence[str]) -> bool:
  try:
    [float(v) for v in values]
  except ValueError:
    return False
  return True


def study_lines(study_cells: Sequence[Cell], x: str, lines_axis: Optional[str],
                x_values: Sequence[str], line_values: Sequence[str]
                ) -> Tuple[Sequence[Line], bool]:
  """Points to draw: (lines, numeric x?). Cells without a score are skipped.

  Args:
    study_cells: the study's cells.
    x: 'parameters' or an axis name.
    lines_axis: the axis drawn as separate lines, or None.
    x_values: the x axis's values in order (for an axis x).
    line_values: the lines axis's values in order.
  """
  numeric = x == "parameters" or _numeric(x_values)
  out = []
  for label in (line_values if lines_axis else [""]):
    points = []
    for cell in study_cells:
      if cell.score is None or (lines_axis and
                                cell.point.get(lines_axis) != label):
        continue
      if x == "parameters":
        if not cell.model_parameters:
          continue
        position = cell.model_parameters
      elif numeric:
        position = float(cell.point[x])
      else:
        position = float(list(x_values).index(cell.point[x]))
      err = cell.score.std if cell.score.n > 1 else 0.0
      points.append((position, cell.score.mean, err))
    if points:
      out.append((f"{lines_axis}={label}" if lines_axis else "runs",
                  sorted(points)))
  return out, numeric


def draw(path: str, title: str, lines: Sequence[Line], *, x: str,
         numeric_x: bool, x_values: Sequence[str], y_label: str,
         overlay: Optional[Mapping[str, Sequence[Tuple[float, float]]]] = None
         ) -> None:
  """Writes one PNG figure."""
  figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  for label, points in lines:
    xs, ys, errs = zip(*points)
    axes.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
  for label, points in (overlay or {}).items():
    xs, ys = zip(*points)
    axes.plot(xs, ys, linestyle="--", marker="x", color="grey", alpha=0.8,
              label=f"{label} (paper)")
  if x == "parameters":
    axes.set_xscale("log")
    axes.set_xlabel("frozen model parameters")
  else:
    axes.set_xlabel(x)
    if numeric_x:
      values = [float(v) for v in x_values]
      if min(values) > 0 and max(values) / min(values) >= 20:
        axes.set_xscale("log")
      axes.set_xticks(values, labels=list(x_values))
    else:
      axes.set_xticks(range(len(x_values)), labels=list(x_values))
  axes.set_ylabel(y_label)
  axes.set_title(title)
  axes.grid(True, alpha=0.3)
  if lines or overlay:
    axes.legend(fontsize="small")
  figure.tight_layout()
  figure.savefig(path, format="png")
  plt.close(figure)
