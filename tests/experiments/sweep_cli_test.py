"""The sweep command for real: a small sweep through the CLI on the tiny
frozen model, rerun (finished runs skipped), a failing run reported while the
others finish, every config checked before any run starts, the report read
back against the run directories, and the cluster files."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

SWEEP = """
[sweep]
name = "tiny"
reproduces = "nothing: a test"
gin_files = ["models/t5_1_1_tiny.gin", "runs/prompt_tune.gin"]
bindings = [
  "TASK_FEATURE_LENGTHS = {{'inputs': 32, 'targets': 4}}",
  "TRAIN_STEPS = 4", "BATCH_SIZE = 8", "PROMPT_LENGTH = 3",
  "CLASS_LABELS = ['yes', 'no']",
  "TrainConfig.checkpoint_period = 2", "TrainConfig.eval_period = 2",
  "TrainConfig.log_period = 1", "model_config.dtype = 'float32'",
]
task_modules = ["tests.tiny_tasks"]
tasks = ["tiny_classify"]
seeds = [0, 1]

[axes.frozen]
default = "tiny"
values.tiny = {{ bindings = ["INITIAL_CHECKPOINT_PATH = '{frozen}'"] }}
values.missing = {{ bindings = ["INITIAL_CHECKPOINT_PATH = '{missing}'"] }}

[studies.main]
vary = {{ frozen = ["tiny"] }}
x = "frozen"

[studies.broken]
vary = {{ frozen = ["missing"] }}
x = "frozen"
"""


def _cli(module, *args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # one device per run, as on a laptop
  return subprocess.run([sys.executable, "-m", f"prompt_tuning.{module}",
                         *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


def _sweep_file(tmp_path, frozen, text=SWEEP):
  # The "missing" model is a damaged one: it passes the sweep's up-front
  # checks (a T5X `checkpoint` file is there) and fails when a run reads it.
  damaged = os.path.join(str(tmp_path), "no_model")
  os.makedirs(damaged, exist_ok=True)
  with open(os.path.join(damaged, "checkpoint"), "wb") as f:
    f.write(b"\x93not msgpack")
  path = os.path.join(str(tmp_path), "tiny.toml")
  with open(path, "w", encoding="utf-8") as f:
    f.write(textwrap.dedent(text.format(
        frozen=frozen, missing=os.path.join(str(tmp_path), "no_model"))))
  return path


@pytest.fixture(scope="module")
def swept(frozen, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sweep_cli")
  path = _sweep_file(tmp, frozen)
  root = os.path.join(str(tmp), "runs")
  first = _cli("sweep", "run", path, "--root", root, "--parallel", "2")
  second = _cli("sweep", "run", path, "--root", root)
  return path, root, first, second


def test_run_finishes_good_runs_and_reports_the_failing_ones(swept):
  _, root, first, _ = swept
  assert first.returncode == 1, first.stderr[-2000:]
  assert "4 runs, 0 already finished, 4 to run, 2 at a time" in first.stdout
  assert "2/4 runs finished" in first.stdout
  good = [f"frozen-tiny__task-tiny_classify__seed-{s}" for s in (0, 1)]
  bad = [f"frozen-missing__task-tiny_classify__seed-{s}" for s in (0, 1)]
  for name in good:
    with open(os.path.join(root, name, "summary.json")) as f:
      assert json.load(f)["finished"]
  for name in bad:
    with open(os.path.join(root, name, "sweep_status.json")) as f:
      status = json.load(f)
    assert status["status"] == "failed" and status["returncode"] != 0
    assert status["error"].startswith("error:") and "no_model" in \
        status["error"]
    assert f"{name}: FAILED" in first.stdout


def test_rerun_skips_finished_runs(swept):
  _, _, _, second = swept
  assert "4 runs, 2 already finished, 2 to run" in second.stdout
  assert second.returncode == 1


def test_report_matches_the_run_directories(swept):
  _, root, _, _ = swept
  result = _cli("report", root)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(root, "results.csv"), encoding="utf-8") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert len(rows) == 4
  for seed in (0, 1):
    name = f"frozen-tiny__task-tiny_classify__seed-{seed}"
    row, path = rows[name], os.path.join(root, name)
    with open(os.path.join(path, "best.json")) as f:
      best = json.load(f)
    assert best["metric"] == "tiny_classify/score"
    assert row["selected_step"] == str(best["step"])
    with open(os.path.join(path, "eval", "metrics.jsonl")) as f:
      evals = {e["step"]: e["metrics"] for e in map(json.loads, f)}
    assert sorted(evals) == [2, 4]
    for key, value in evals[best["step"]].items():
      assert float(row[key]) == value, key
    assert row["seed"] == str(seed) and row["frozen"] == "tiny"
    with open(os.path.join(path, "parameters.json")) as f:
      counts = json.load(f)
    assert row["trainable_parameters"] == str(counts["trainable"])
    # The frozen model's own size: the prompt (3 x emb_dim 32) left out.
    assert counts["trainable"] == 3 * 32
    assert int(row["model_parameters"]) == counts["total"] - 3 * 32
  with open(os.path.join(root, "summary.md"), encoding="utf-8") as f:
    summary = f.read()
  scores = [float(rows[f"frozen-tiny__task-tiny_classify__seed-{s}"][
      "tiny_classify/score"]) for s in (0, 1)]
  assert "| tiny | 74.4K | 0,1 |" in summary
  assert f"{sum(scores) / 2:.2f} ±" in summary
  assert "frozen-missing__task-tiny_classify__seed-0`: failed" in summary
  with open(os.path.join(root, "main.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_emit_writes_one_command_per_run(swept):
  path, root, _, _ = swept
  result = _cli("sweep", "emit", path, "--root", root)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(root, "commands.txt")) as f:
    commands = f.read().splitlines()
  assert len(commands) == 4
  assert all(c.startswith("python -m prompt_tuning.train --gin_file=models/")
             for c in commands)
  assert "MODEL_DIR = " in commands[0] and "seed-0" in commands[0]
  with open(os.path.join(root, "slurm_array.sbatch")) as f:
    sbatch = f.read()
  assert "#SBATCH --array=0-3%4" in sbatch and "--requeue" in sbatch
  # Each run's resources (issue 25): sbatch flags override them.
  for line in ("--time=24:00:00", "--mem=64G", "--cpus-per-task=8",
               "--gpus-per-node=1"):
    assert f"#SBATCH {line}\n" in sbatch, sbatch
  # Both run commands.txt through the launchers (tests/launch_test.py).
  commands_file = os.path.join(root, "commands.txt")
  assert (f'launch/slurm.sbatch" --commands {commands_file}' in sbatch)
  with open(os.path.join(root, "tpu_vm_runs.sh")) as f:
    assert f'/launch/tpu_vm.sh "$@" --commands {commands_file}' in f.read()


def test_a_typo_anywhere_fails_before_any_run(frozen, tmp_path):
  text = SWEEP.replace(
      "values.missing = {{ bindings = [",
      "values.missing = {{ bindings = [\"TRAIN_STEPZ = 3\", ")
  path = _sweep_file(tmp_path, frozen, text)
  root = os.path.join(str(tmp_path), "runs")
  result = _cli("sweep", "run", path, "--root", root)
  assert result.returncode == 2
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith(f"error: {path}: run 3/4 "
                          "(frozen-missing__task-tiny_classify__seed-0)")
  assert "TRAIN_STEPZ" in error and "TRAIN_STEPS" in error
  assert not os.path.exists(root)
