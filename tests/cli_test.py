"""End to end through the real CLI: train a few steps, resume, evaluate,
infer; and the one-line errors a user gets for bad input."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(command, *args, check=True):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # one device, as a user's laptop
  result = subprocess.run(
      [sys.executable, "-m", f"prompt_tuning.{command}",
       "--task_module=tests.tiny_tasks", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stderr[-3000:]}")
  return result


def train_args(model_dir, frozen, steps):
  return ["--gin_file=models/t5_1_1_tiny.gin",
          "--gin_file=runs/prompt_tune.gin",
          f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.INITIAL_CHECKPOINT_PATH='{frozen}'",
          "--gin.MIXTURE_OR_TASK_NAME='tiny_classify'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
          "--gin.PROMPT_LENGTH=3", "--gin.CLASS_LABELS=['yes', 'no']",
          "--gin.TrainConfig.checkpoint_period=2",
          "--gin.TrainConfig.eval_period=4",
          "--gin.TrainConfig.log_period=1",
          "--gin.TrainConfig.best_metric='tiny_classify/accuracy'",
          "--gin.model_config.dtype='float32'"]


def test_train_resume_eval_infer(tmp_path, frozen):
  model_dir = str(tmp_path / "run")
  first = _cli("train", *train_args(model_dir, frozen, 4))
  assert "step 4/4 | loss" in first.stderr
  assert "Parameters: " in first.stderr and "trainable" in first.stderr
  assert "tiny_classify/accuracy" in first.stderr
  for name in ("checkpoint_2", "checkpoint_4", "config.gin",
               "operative_config.gin", "best.json", "prompts/step_4.npy"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  assert os.listdir(os.path.join(model_dir, "train"))  # TensorBoard events
  with open(os.path.join(model_dir, "operative_config.gin")) as f:
    assert "PROMPT_LENGTH = 3" in f.read()
  prompt4 = np.load(os.path.join(model_dir, "prompts", "step_4.npy"))
  assert prompt4.shape == (3, 32) and prompt4.dtype == np.float32

  second = _cli("train", *train_args(model_dir, frozen, 6))
  assert "Resumed from step 4 (4 batches consumed)" in second.stderr
  assert "step 5/6" in second.stderr and "step 1/6" not in second.stderr
  np.testing.assert_array_equal(
      np.load(os.path.join(model_dir, "prompts", "step_4.npy")), prompt4)

  out = str(tmp_path / "eval")
  common = [f"--gin.PROMPT_PATH='{model_dir}'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{frozen}'",
            "--gin.MIXTURE_OR_TASK_NAME='tiny_classify'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
            "--gin.BATCH_SIZE=8", "--gin_file=models/t5_1_1_tiny.gin"]
  # bf16 frozen weights for the evaluation (training used float32).
  _cli("eval", "--gin_file=runs/eval.gin", f"--gin.EVAL_OUTPUT_DIR='{out}'",
       "--gin.FROZEN_DTYPE='bfloat16'", *common)
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  assert 0.0 <= metrics["tiny_classify/accuracy"] <= 1.0
  assert "eval/loss" in metrics

  # DTYPE='float32' computes as the training did (model_config.dtype =
  # 'float32'; the preset computes in bfloat16): the evaluation of the
  # prompt best.json names is reproduced.
  out32 = str(tmp_path / "eval_float32")
  _cli("eval", "--gin_file=runs/eval.gin", f"--gin.EVAL_OUTPUT_DIR='{out32}'",
       "--gin.DTYPE='float32'", *common)
  with open(os.path.join(out32, "metrics.json")) as f:
    metrics32 = json.load(f)
  with open(os.path.join(model_dir, "best.json")) as f:
    best_step = json.load(f)["step"]
  with open(os.path.join(model_dir, "eval", "metrics.jsonl")) as f:
    trained = {r["step"]: r["metrics"] for r in map(json.loads, f)}[best_step]
  assert abs(metrics32["eval/loss"] - trained["eval/loss"]) <= 1e-5 * abs(
      trained["eval/loss"]), (metrics32, trained)
  assert metrics32["tiny_classify/accuracy"] == trained[
      "tiny_classify/accuracy"]

  predictions = str(tmp_path / "predictions.jsonl")
  _cli("infer", "--gin_file=runs/infer.gin",
       f"--gin.OUTPUT_PATH='{predictions}'",
       "--gin.DecodeConfig.rank_classification=True", *common)
  with open(predictions) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 60
  assert {"inputs", "prediction", "target", "task"} <= set(rows[0])
  # Rank classification only ever predicts a label word.
  assert {r["prediction"] for r in rows} <= {"yes", "no"}


def test_bad_input_is_one_clear_line(tmp_path, frozen):
  model_dir = str(tmp_path / "run")
  args = train_args(model_dir, frozen, 2)

  def error(*extra, base=args):
    result = _cli("train", *base, *extra, check=False)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]

  assert "Did you mean PromptConfig" in error("--gin.PromptConfg.length=4")
  assert "no_such_dir" in error(
      "--gin.INITIAL_CHECKPOINT_PATH='/no_such_dir/ckpt'")
  line = error("--gin.MIXTURE_OR_TASK_NAME='tiny_clasify'")
  assert "tiny_classify" in line
  line = error("--gin.PROMPT_LENGTH=1")  # two labels, one position
  assert "2 labels" in line and "PROMPT_LENGTH" in line
  line = error("--gin.BATCH_SIZE=6", "--gin.MESH_SHAPE=(4, 1)")
  assert "mesh_shape=(4, 1) needs 4 devices" in line
  line = error("--process_count=2", "--process_index=0")
  assert "without --multihost" in line
  assert not os.path.exists(os.path.join(model_dir, "checkpoint_2"))
