"""The report on run directories with known metrics: exact table, means,
standard deviations, SuperGLUE score, failed runs listed, a valid PNG."""

import csv
import json
import os

import numpy as np
import pytest

from prompt_tuning import report
from prompt_tuning.experiments import results
from prompt_tuning.training import records

# Short SuperGLUE names -> (task name, metrics of one evaluation).
SUPERGLUE = {
    "boolq": ["accuracy"], "cb": ["accuracy", "mean_3class_f1"],
    "copa": ["accuracy"], "multirc": ["exact_match", "f1"],
    "record": ["em", "f1"], "rte": ["accuracy"], "wic": ["accuracy"],
    "wsc": ["accuracy"],
}


def _task(short):
  return f"taskless_super_glue_{short}_v102"


def _value(model, seed, short, metric, step):
  """A known, distinct metric value per run, metric and step."""
  base = {"small": 50.0, "large": 70.0}[model]
  return (base + seed * 2.0 + len(short) + 0.5 * len(metric) +
          (3.0 if step == 20 else 0.0))


def _make_run(root, model, seed, short, *, finished=True, steps=(10, 20, 30),
              fail=False):
  task = _task(short)
  name = f"model-{model}__task-{task}__seed-{seed}"
  path = os.path.join(root, name)
  os.makedirs(path)
  records.write_json(os.path.join(path, "sweep_run.json"), {
      "run": name, "point": {"model": model}, "task": task, "seed": seed,
      "best_metric": f"{task}/score", "studies": ["size"]})
  size = {"small": 1000, "large": 9000}[model]
  records.write_parameters(path, {"total": size + 30, "trainable": 30,
                                  "trainable_percent": 0.1},
                           prompt_parameters=30, mode="prompt")
  for step in steps:
    flat = {"eval/loss": 0.5}
    values = {m: _value(model, seed, short, m, step)
              for m in SUPERGLUE[short]}
    values["invalid_prediction_rate"] = 1.0
    for metric, value in values.items():
      flat[f"{task}/{metric}"] = value
    flat[f"{task}/score"] = float(np.mean(
        [v for m, v in values.items() if m != "invalid_prediction_rate"]))
    records.append_eval(path, step, flat)
  if finished:
    records.write_summary(path, steps[-1], steps[-1], {}, {})
  if fail:
    records.write_json(os.path.join(path, "sweep_status.json"),
                       {"status": "failed", "returncode": 1,
                        "error": "error: out of memory"})
  return name


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sweep"))
  names = []
  for model in ("small", "large"):
    for seed in (0, 1):
      for short in SUPERGLUE:
        names.append(_make_run(root, model, seed, short))
  # A third seed of the small model: one task failed, one never finished.
  for short in SUPERGLUE:
    names.append(_make_run(root, "small", 2, short,
                           finished=short not in ("cb", "rte"),
                           fail=short == "cb"))
  # Left from an earlier plan of this root: listed, never averaged in.
  _make_run(root, "small", 5, "rte")
  records.write_json(os.path.join(root, "sweep.json"), {
      "name": "demo", "reproduces": "Figure 1, in a test",
      "axes": [{"name": "model", "values": ["small", "large"],
                "default": "small"}],
      "studies": [{"name": "size", "vary": {"model": ["small", "large"]},
                   "lines": None, "x": "parameters", "title": "",
                   "paper": "figure1"}],
      "runs": names + ["model-large__task-never_started__seed-0"]})
  paths = report.write_report(root)
  return root, paths


def _expected_task_score(model, seed, short):
  # Step 20 is the best evaluation (+3) of every run.
  return float(np.mean([_value(model, seed, short, m, 20)
                        for m in SUPERGLUE[short]]))


def test_results_csv_rows(sweep_root):
  root, paths = sweep_root
  with open(paths["csv"], encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 2 * 8 + 8 + 1 + 1
  row = next(r for r in rows if r["run"] ==
             f"model-large__task-{_task('cb')}__seed-1")
  assert row["status"] == "finished" and row["model"] == "large"
  assert row["seed"] == "1" and row["task"] == _task("cb")
  assert row["model_parameters"] == "9000"
  assert row["trainable_parameters"] == "30"
  assert row["selected_step"] == "20" and row["problem"] == ""
  assert float(row[f"{_task('cb')}/mean_3class_f1"]) == _value(
      "large", 1, "cb", "mean_3class_f1", 20)
  assert float(row[f"{_task('cb')}/score"]) == _expected_task_score(
      "large", 1, "cb")
  failed = next(r for r in rows if r["run"] ==
                f"model-small__task-{_task('cb')}__seed-2")
  assert failed["status"] == "failed" and "out of memory" in failed["problem"]
  partial = next(r for r in rows if r["run"] ==
                 f"model-small__task-{_task('rte')}__seed-2")
  # Its evaluations so far are shown, but it is not usable.
  assert partial["status"] == "pending" and partial["selected_step"] == "20"
  assert partial["problem"] == "not finished (pending)"
  never = next(r for r in rows if r["run"].endswith("never_started__seed-0"))
  assert never["status"] == "pending"


def test_summary_means_std_and_superglue_score(sweep_root):
  root, paths = sweep_root
  with open(paths["summary"], encoding="utf-8") as f:
    text = f.read()
  for model in ("small", "large"):
    # Seeds 0 and 1 only: seed 2 of small misses two tasks.
    per_seed = [np.mean([_expected_task_score(model, s, t)
                         for t in SUPERGLUE]) for s in (0, 1)]
    row = next(line for line in text.splitlines()
               if line.startswith(f"| {model} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "0,1" + (" (incomplete: 2)" if model == "small"
                                else "")
    assert cells[3] == (f"{np.mean(per_seed):.2f} ± "
                        f"{np.std(per_seed, ddof=1):.2f}")
    header = next(line for line in text.splitlines()
                  if line.startswith("| model |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:4] == ["model", "frozen params", "seeds",
                           "SuperGLUE score"]
    cb = [_expected_task_score(model, s, "cb") for s in (0, 1)]
    assert cells[columns.index(_task("cb"))] == (
        f"{np.mean(cb):.2f} ± {np.std(cb, ddof=1):.2f}")
  assert "| large | 9K |" in text
  # Failed, unfinished and never-started runs are listed, not averaged.
  assert f"`model-small__task-{_task('cb')}__seed-2`: failed" in text
  assert f"`model-small__task-{_task('rte')}__seed-2`: not finished" in text
  assert "never_started__seed-0`: not started" in text
  assert (f"`model-small__task-{_task('rte')}__seed-5`: not in this root's "
          f"plan") in text
  assert "Figure 1, in a test" in text


def test_figure_is_a_png(sweep_root):
  _, paths = sweep_root
  with open(paths["figure:size"], "rb") as f:
    data = f.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(paths["figure:size"])
  assert image.shape[0] > 300 and image.shape[1] > 500


def test_selection_rule_matches_best_json():
  history = {0: {"m": 99.0}, 10: {"m": 1.0}, 20: {"m": 5.0},
             30: {"m": 5.0}, 40: {"m": float("nan")}}
  assert results.select_step(history, "m") == 20  # tie: the earlier step
  assert results.select_step(history, "m", "min") == 10
  assert results.select_step(history, "other") is None


def test_eval_history_survives_a_cut_line_and_resumes(tmp_path):
  path = str(tmp_path)
  records.append_eval(path, 10, {"m": 1.0})
  records.append_eval(path, 10, {"m": 2.0})  # a resumed run re-evaluated
  with open(os.path.join(path, records.EVAL_HISTORY_FILE), "a") as f:
    f.write('{"step": 20, "metr')  # killed mid-line
  assert records.read_eval_history(path) == {10: {"m": 2.0}}


def test_best_json_disagreement_is_a_problem(tmp_path):
  root = str(tmp_path)
  name = _make_run(root, "small", 0, "rte")
  with open(os.path.join(root, name, "best.json"), "w") as f:
    json.dump({"metric": f"{_task('rte')}/score", "mode": "max",
               "value": 1.0, "step": 30}, f)
  run = results.read_run(os.path.join(root, name))
  assert not run.usable and "best.json says step 30" in run.problem


def test_report_cli_errors(tmp_path, capsys):
  assert report.main([os.path.join(str(tmp_path), "missing")]) == 2
  assert "no such directory" in capsys.readouterr().err
