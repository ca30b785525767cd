"""`python -m prompt_tuning.report ROOT`: tables and figures of a sweep.

Reads every run directory under ROOT (what `train` writes: parameters.json,
operative_config.gin, eval/metrics.jsonl, summary.json, best.json; and what
the sweep command adds: sweep.json, sweep_run.json) and writes, into ROOT
(or `--out`):

- `results.csv`: one row per run: grid keys, task, seed, the frozen model
  as the run bound it, frozen-model and trainable parameter counts, the step
  early stopping selected, every dev metric there, and the run's status;
- `summary.md`: the frozen models the runs bound (checkpoint and preset,
  from each run's operative config); per study, mean +- std over seeds per
  grid cell of each task's score and of the mean over tasks (the SuperGLUE
  score only when the study evaluated all 8 SuperGLUE tasks; otherwise the
  title names the tasks it did evaluate), the paper's Table 1 (MRQA, F1)
  and Table 2 (QQP <-> MRPC) numbers beside ours where the study evaluated
  those sets, and the runs that failed or did not finish (never averaged
  in);
- `<study>.png`: the study's figure (score vs frozen-model size on a log
  axis, or vs an axis; one line per value of its `lines` axis; error bars:
  std over seeds; the paper's numbers dashed where the sweep names them and
  they measure what the study measured);
- `parameter_share.md` / `.png`: the paper's Figure 4, every method's
  trainable parameters as a share of T5.1.1 Small ... XXL, counted from the
  configs (`experiments.parameter_share`), with the runs' own shares marked.
  `--parameter_share` prints that table without any run directory.

A ROOT without run directories (empty, not a sweep's, or planned but not
started) is refused in one line, and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning import storage
from prompt_tuning.experiments import figures
from prompt_tuning.experiments import paper
from prompt_tuning.experiments import parameter_share
from prompt_tuning.experiments import results as results_lib
from prompt_tuning.experiments import runner
from prompt_tuning.experiments import summary
from prompt_tuning.training import records


def _description(root: str, runs: Sequence[results_lib.RunResult]
                 ) -> Dict[str, Any]:
  """ROOT/sweep.json, or one study over what the run directories say."""
  described = records.read_json(storage.join(root, runner.SWEEP_FILE))
  if described:
    return described
  axes = sorted({a for r in runs for a in r.point})
  values = {a: sorted({r.point[a] for r in runs if a in r.point})
            for a in axes}
  return {"name": storage.basename(os.path.normpath(root)),
          "axes": [{"name": a, "values": values[a], "default": values[a][0]}
                   for a in axes],
          "studies": [{"name": "all", "vary": values,
                       "lines": axes[0] if axes else None,
                       "x": "parameters", "title": "", "paper": ""}],
          "runs": [r.name for r in runs]}


def _in_study(run: results_lib.RunResult, study: Mapping[str, Any],
              defaults: Mapping[str, str]) -> bool:
  if run.studies:
    return study["name"] in run.studies
  vary = study.get("vary") or {}
  return all(run.point.get(a) in (vary[a] if a in vary else [defaults[a]])
             for a in defaults)


def _order(study_cells: List[summary.Cell],
           axes: Sequence[Mapping[str, Any]]) -> List[summary.Cell]:
  def key(cell):
    # Grid order; a value the plan does not name goes after its values.
    return tuple(list(a["values"]).index(cell.point.get(a["name"]))
                 if cell.point.get(a["name"]) in a["values"]
                 else len(a["values"]) for a in axes)
  return sorted(study_cells, key=key)


def _title_and_overlay(study: Mapping[str, Any], evaluated: Sequence[str],
                       superglue: bool) -> Tuple[str, Optional[Any],
                                                 List[str]]:
  """The study's title, its paper overlay and notes on them: "SuperGLUE"
  (and the paper's SuperGLUE curve) only when the study evaluated all 8 of
  its tasks, else the tasks it did evaluate."""
  title = study.get("title") or ""
  key = study.get("paper") or ""
  overlay = paper.OVERLAYS.get(key)
  if superglue or not evaluated:
    return title, overlay, []
  names = summary.task_names(evaluated)
  notes = []
  if "SuperGLUE" in title:
    title = title.replace("SuperGLUE score", f"Mean score on {names}")
    title = title.replace("SuperGLUE", names)
  if key in paper.SUPERGLUE_OVERLAYS:
    overlay = None
    notes = [f"The paper's curve ({key}) is not drawn: it is the SuperGLUE "
             f"score, the mean over its 8 tasks, and this study evaluated "
             f"{names}.", ""]
  return title, overlay, notes


def write_report(root: str, out: Optional[str] = None) -> Dict[str, str]:
  """Writes results.csv, summary.md and one PNG per study; returns paths."""
  out = out or root
  runs = results_lib.read_root(root)
  if not runs:
    # Checked before anything is written: a report of nothing would read
    # as "0 runs, all finished".
    planned = records.read_json(storage.join(root, runner.SWEEP_FILE))
    raise ValueError(
        f"{root}: no run directories under it (none holds "
        f"{runner.RUN_FILE} or {records.PARAMETERS_FILE})" +
        ("; its sweep.json plans runs that have not started: `python -m "
         "prompt_tuning.sweep run` them first" if planned else
         ": not a sweep's root (give the --root of `sweep run`, or a "
         "directory of train runs)") + "; nothing written.")
  described = _description(root, runs)
  planned = set(described.get("runs") or [])
  # A run directory left from an earlier plan of this root (e.g. an axis
  # value since removed) is listed, never averaged into today's studies.
  unplanned = {r.name for r in runs if planned and r.name not in planned}
  runs = [dataclasses.replace(r, problem=r.problem or (
      f"not in this root's plan ({runner.SWEEP_FILE}): left from an "
      f"earlier plan")) if r.name in unplanned else r for r in runs]
  missing = sorted(planned - {r.name for r in runs})
  runs = runs + [results_lib.RunResult(
      name=n, path=storage.join(root, n), status="pending", point={},
      task="", seed=None, studies=(), best_metric="", model_parameters=None,
      trainable_parameters=None, mode="", frozen_model="",
      selected_step=None, metrics={},
      problem="not started (no run directory)") for n in missing]
  axes = described.get("axes") or []
  axis_names = [a["name"] for a in axes]
  defaults = {a["name"]: a["default"] for a in axes}
  # matplotlib and open() write local files: for a gs:// `out` they write a
  # local mirror, uploaded at the end.
  mirror = storage.LocalMirror(out)
  local = mirror.path
  os.makedirs(local, exist_ok=True)
  paths = {"csv": os.path.join(local, "results.csv"),
           "summary": os.path.join(local, "summary.md")}
  with open(paths["csv"], "w", encoding="utf-8") as f:
    f.write(summary.csv_text(runs, axis_names))
  sections = []
  for study in described.get("studies") or []:
    members = [r for r in runs if r.name not in unplanned and
               _in_study(r, study, defaults)]
    if not members:
      continue
    tasks = sorted({r.task for r in members if r.task})
    evaluated = [t for r in members if r.usable
                 for t in summary.evaluated_tasks(r)]
    superglue = summary.is_superglue(evaluated)
    study_cells = _order(summary.cells(members, axis_names), axes)
    varied = [a for a in axis_names if a in (study.get("vary") or {})]
    title, overlay, notes = _title_and_overlay(study, evaluated, superglue)
    heading = f"Study `{study['name']}`" + (f": {title}" if title else "")
    lines = ([f"Tasks: {', '.join(tasks)}.", ""] + notes +
             summary.study_table(study_cells, varied, superglue))
    compared = summary.paper_table(study_cells, varied)
    if compared:
      lines += [""] + compared
    figure_path = os.path.join(local, f"{study['name']}.png")
    x = study.get("x") or "parameters"
    lines_axis = study.get("lines")
    by_name = {a["name"]: a for a in axes}
    x_values = by_name[x]["values"] if x in by_name else []
    line_values = by_name[lines_axis]["values"] if lines_axis else []
    drawn, numeric = figures.study_lines(study_cells, x, lines_axis,
                                         list(x_values), list(line_values))
    figures.draw(
        figure_path, title or f"{described['name']}: {study['name']}",
        drawn, x=x, numeric_x=numeric, x_values=list(x_values),
        y_label=("SuperGLUE score" if superglue else
                 "dev score (mean over tasks)"),
        overlay=overlay)
    paths[f"figure:{study['name']}"] = figure_path
    lines += ["", f"Figure: `{os.path.basename(figure_path)}`."]
    sections.append((heading, lines))
  sections.append(_parameter_share(local, paths, runs))
  header = []
  for key, label in (("reproduces", "Reproduces"),
                     ("checkpoints", "The sweep file expects"),
                     ("description", "About")):
    if described.get(key):
      header.append(f"{label}: {described[key]}")
  frozen = summary.frozen_model_lines(
      [r for r in runs if r.name not in unplanned], axis_names)
  if frozen:
    header += ["", "Frozen models, as the runs bound them (their "
               "operative_config.gin):", ""] + frozen
  with open(paths["summary"], "w", encoding="utf-8") as f:
    f.write(summary.markdown(f"Sweep `{described['name']}`", header,
                             sections, runs))
  mirror.sync()
  return {kind: storage.join(out, os.path.relpath(path, local))
          for kind, path in paths.items()}


def _parameter_share(local: str, paths: Dict[str, str],
                     runs: Sequence[results_lib.RunResult]
                     ) -> Tuple[str, List[str]]:
  """Writes parameter_share.md and .png into `local`; returns the section of
  summary.md that points to them."""
  shares = parameter_share.table()
  paths["parameter_share"] = os.path.join(local, "parameter_share.md")
  with open(paths["parameter_share"], "w", encoding="utf-8") as f:
    f.write(parameter_share.text(shares))
  paths["figure:parameter_share"] = os.path.join(local, "parameter_share.png")
  parameter_share.draw(
      paths["figure:parameter_share"], shares, parameter_share.run_points(
          [(r.mode, r.model_parameters, r.trainable_parameters)
           for r in runs]))
  return ("Parameter usage (cf. the paper's Figure 4)", [
      "What each run trained as a share of its frozen model: the column "
      "`trainable (% of frozen)` above and `trainable_percent_of_frozen` in "
      "results.csv (trainable / model of its parameters.json). Every method "
      "on T5.1.1 Small ... XXL, counted from the configs: "
      "`parameter_share.md`; figure, these runs marked: "
      "`parameter_share.png`."])


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.report",
      description="results.csv, summary.md and figures of a sweep's runs.")
  parser.add_argument("root", nargs="?", default="",
                      help="the sweep's root (its run directories)")
  parser.add_argument("--out", default="",
                      help="where to write (default: the root)")
  parser.add_argument(
      "--parameter_share", action="store_true",
      help="print every method's trainable parameters as a share of T5.1.1 "
           "Small ... XXL (the paper's Figure 4), counted from the configs; "
           "needs no run directory")
  parser.add_argument(
      "--family", choices=("t5", "decoder"), default="t5",
      help="--parameter_share's models: T5.1.1, or the decoder-only "
           "Qwen2.5 0.5B ... 72B presets")
  args = parser.parse_args(argv)
  if args.parameter_share:
    presets = (parameter_share.QWEN_PRESETS if args.family == "decoder"
               else parameter_share.PRESETS)
    print(parameter_share.text(parameter_share.table(presets)), end="")
    if not args.root:
      return 0
  elif not args.root:
    parser.error("give the sweep's root (or --parameter_share)")
  try:
    paths = write_report(args.root, args.out or None)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  for kind, path in paths.items():
    print(f"{kind}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
