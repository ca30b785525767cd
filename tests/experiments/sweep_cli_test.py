"""The sweep command for real: a small sweep through the CLI on the tiny
frozen model, rerun (finished runs skipped), a failing run reported while the
others finish, every config checked before any run starts, the report read
back against the run directories, and the cluster files."""

import csv
import json
import os
import socket
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
  # 96 of the frozen model's 74,368 parameters.
  assert "| tiny | 74.4K | 96 (0.129%) | 0,1 |" in summary
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


def test_progress_lines_show_the_early_stopped_value(swept):
  _, root, first, _ = swept
  for seed in (0, 1):
    name = f"frozen-tiny__task-tiny_classify__seed-{seed}"
    with open(os.path.join(root, name, "best.json")) as f:
      best = json.load(f)
    with open(os.path.join(root, name, "eval", "metrics.jsonl")) as f:
      evals = {e["step"]: e["metrics"] for e in map(json.loads, f)}
    value = evals[best["step"]]["tiny_classify/score"]
    assert (f"{name}: tiny_classify/score {value:.2f} at step "
            f"{best['step']} (early stopping's pick)") in first.stdout


def test_report_names_the_frozen_model_the_runs_bound(swept, frozen):
  _, root, _, _ = swept
  assert _cli("report", root).returncode == 0
  with open(os.path.join(root, "summary.md"), encoding="utf-8") as f:
    summary = f.read()
  assert f"- `t5_1_1_tiny from {frozen}` (74.4K parameters): 2 run(s), " \
      "frozen=tiny" in summary


# --- Inputs checked by `plan` (and run/emit) before anything starts. --------

_INPUTS_SWEEP = """
[sweep]
name = "inputs"
reproduces = "nothing: a test"
gin_files = ["models/t5_1_1_tiny.gin", "runs/prompt_tune.gin"]
bindings = ["TASK_FEATURE_LENGTHS = {{'inputs': 32, 'targets': 4}}",
            "INITIAL_CHECKPOINT_PATH = '{checkpoint}'",
            "CLASS_LABELS = ['yes', 'no']"]
task_modules = ["{module}"]
tasks = ["{task}"]
seeds = [0, 1]
"""


def _plan_inputs(tmp_path, checkpoint, module, task, env_update=(),
                 unset=()):
  path = os.path.join(str(tmp_path), "inputs.toml")
  with open(path, "w", encoding="utf-8") as f:
    f.write(textwrap.dedent(_INPUTS_SWEEP.format(
        checkpoint=checkpoint, module=module, task=task)))
  root = os.path.join(str(tmp_path), "runs")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3", **dict(env_update))
  for name in unset:
    env.pop(name, None)
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.sweep", "plan", path, "--root",
       root], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, (
      result.stderr[-2000:])
  assert errors[0].startswith(f"error: {path}: run 1/2 ("), errors[0]
  assert not os.path.exists(root)
  return errors[0]


def test_plan_refuses_a_missing_checkpoint(tmp_path):
  missing = os.path.join(str(tmp_path), "no_such_checkpoint")
  line = _plan_inputs(tmp_path, missing, "tests.tiny_tasks", "tiny_classify")
  assert f"INITIAL_CHECKPOINT_PATH {missing}: no such file or directory" in (
      line)


def test_plan_refuses_an_unreachable_gs_checkpoint(tmp_path):
  with socket.socket() as s:  # a port nothing listens on: "network down"
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  line = _plan_inputs(tmp_path, "gs://no-such-bucket/t5x", "tests.tiny_tasks",
                      "tiny_classify",
                      {"STORAGE_EMULATOR_HOST": f"127.0.0.1:{port}"})
  assert "INITIAL_CHECKPOINT_PATH gs://no-such-bucket/t5x is unreachable" in (
      line)


def test_plan_refuses_unprepared_tfds_data(tmp_path, frozen):
  data_dir = os.path.join(str(tmp_path), "tensorflow_datasets")
  os.makedirs(data_dir)
  line = _plan_inputs(tmp_path, frozen, "prompt_tuning.tasks.super_glue",
                      "super_glue_rte_v102", {"TFDS_DATA_DIR": data_dir})
  assert "TFDS dataset super_glue/rte:1.0.2 is not prepared" in line
  assert data_dir in line
  assert "`python -m prompt_tuning.data prepare super_glue_rte_v102`" in line


def test_plan_refuses_a_missing_vocabulary(tmp_path, frozen):
  missing = os.path.join(str(tmp_path), "sentencepiece.model")
  line = _plan_inputs(tmp_path, frozen, "prompt_tuning.tasks.custom_example",
                      "custom_example_sentiment",
                      {"T5_VOCABULARY": missing})
  assert f"Vocabulary T5_VOCABULARY={missing}: no such file" in line


def test_plan_names_the_gin_file_and_line_of_a_wrong_type(tmp_path, frozen):
  gin_file = os.path.join(str(tmp_path), "fast.gin")
  with open(gin_file, "w", encoding="utf-8") as f:
    f.write("include 'runs/prompt_tune.gin'\n"
            "AdafactorConfig.learning_rate = 'fast'\n")
  text = SWEEP.replace('"runs/prompt_tune.gin"', f'"{gin_file}"')
  path = _sweep_file(tmp_path, frozen, text)
  result = _cli("sweep", "plan", path, "--root",
                os.path.join(str(tmp_path), "runs"))
  assert result.returncode == 2
  error = result.stderr.strip().splitlines()[-1]
  assert (f"AdafactorConfig.learning_rate = 'fast': must be a number "
          f"(float); set in {gin_file}:2.") in error, error
