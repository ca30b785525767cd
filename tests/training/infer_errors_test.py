"""A split that is missing or empty, and an OUTPUT_PATH that cannot be written,
are one `error:` line before any model loads, and leave the run untouched.

The entry points run for real in subprocesses; every one is given a frozen
checkpoint that passes the quick checks (a T5X `checkpoint` file) but cannot
be loaded, so an error about anything else proves the check ran before the
model was loaded. This module doubles as a
`--task_module`: importing it registers `tiny_empty_validation`, the tiny
classify task with an empty validation split.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import seqio

from prompt_tuning.data import custom_tasks
from prompt_tuning.data import registry
from prompt_tuning.training import evaluation
from prompt_tuning.training import loop
from tests import tiny_tasks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
EMPTY_TASK = "tiny_empty_validation"
LENGTHS = {"inputs": 32, "targets": 4}


def _empty_validation(split):
  if split == "validation":
    # Typed empty columns: an empty list would be float32 to tf.data.
    return {"inputs": np.array([], str), "targets": np.array([], str)}
  return tiny_tasks.examples("tiny_classify", split)


def register():
  registry.add_task(
      EMPTY_TASK, family="tests",
      source=custom_tasks.function_source(
          _empty_validation,
          {"train": tiny_tasks.NUM_TRAIN, "validation": 0}),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=tiny_tasks.OUTPUT_FEATURES,
      metric_fns=[tiny_tasks.accuracy])


register()


def _snapshot(directory):
  """relative path -> bytes of every file under `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


@pytest.fixture
def unloadable(tmp_path):
  """A T5X-looking checkpoint directory whose `checkpoint` file is garbage."""
  path = tmp_path / "frozen_t5" / "checkpoint_1"
  path.mkdir(parents=True)
  (path / "checkpoint").write_bytes(b"not a msgpack checkpoint")
  return str(path)


@pytest.fixture
def run_dir(tmp_path):
  """A run directory with a saved prompt (t5_1_1_tiny width) and a config."""
  path = tmp_path / "run"
  (path / "prompts").mkdir(parents=True)
  np.save(path / "prompts" / "step_4.npy",
          np.random.RandomState(0).randn(3, 32).astype(np.float32))
  (path / "config.gin").write_text("PROMPT_LENGTH = 3\n")
  return str(path)


def _error_line(command, checkpoint, *args):
  """Runs `python -m prompt_tuning.<command>`; its one `error:` line."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run(
      [sys.executable, "-m", f"prompt_tuning.{command}",
       "--task_module=tests.tiny_tasks",
       "--task_module=tests.training.infer_errors_test",
       "--gin_file=models/t5_1_1_tiny.gin", f"--gin_file=runs/{command}.gin",
       f"--gin.INITIAL_CHECKPOINT_PATH='{checkpoint}'",
       f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert checkpoint not in lines[0]
  return lines[0]


def test_infer_on_a_missing_split(tmp_path, run_dir, unloadable):
  before = _snapshot(run_dir)
  output = str(tmp_path / "predictions.jsonl")
  line = _error_line("infer", unloadable, f"--gin.PROMPT_PATH='{run_dir}'",
                     "--gin.MIXTURE_OR_TASK_NAME='tiny_classify'",
                     "--gin.SPLIT='test'", f"--gin.OUTPUT_PATH='{output}'")
  assert "'tiny_classify'" in line and "'test'" in line
  assert "train, validation" in line and "SPLIT" in line
  assert not os.path.exists(output)
  assert _snapshot(run_dir) == before


def test_infer_to_an_unwritable_output_path(tmp_path, run_dir, unloadable):
  before = _snapshot(run_dir)
  # A path under a regular file: unwritable even for root.
  blocker = tmp_path / "a_file"
  blocker.write_text("keep me\n")
  output = str(blocker / "out" / "predictions.jsonl")
  line = _error_line("infer", unloadable, f"--gin.PROMPT_PATH='{run_dir}'",
                     "--gin.MIXTURE_OR_TASK_NAME='tiny_classify'",
                     f"--gin.OUTPUT_PATH='{output}'")
  assert f"OUTPUT_PATH {output} cannot be written" in line
  assert f"{blocker} is a file" in line
  assert blocker.read_text() == "keep me\n"
  assert _snapshot(run_dir) == before


def test_eval_on_an_empty_split(tmp_path, run_dir, unloadable):
  before = _snapshot(run_dir)
  out = tmp_path / "dev"
  line = _error_line("eval", unloadable, f"--gin.PROMPT_PATH='{run_dir}'",
                     f"--gin.MIXTURE_OR_TASK_NAME='{EMPTY_TASK}'",
                     f"--gin.EVAL_OUTPUT_DIR='{out}'")
  assert f"'{EMPTY_TASK}' has an empty 'validation' split" in line
  assert not os.path.exists(out / "metrics.json")
  assert _snapshot(run_dir) == before


def test_evaluator_refuses_an_empty_split_before_any_metric():
  with pytest.raises(ValueError, match=f"'{EMPTY_TASK}' has an empty "
                     f"'validation' split"):
    evaluation.Evaluator(EMPTY_TASK, LENGTHS, batch_size=8)


def test_train_refuses_an_empty_eval_split_before_building(tmp_path, frozen):
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  (model_dir / "config.gin").write_text("kept\n")
  # A checkpoint that passes the input checks but could not be built
  # (model_config=None for a T5X checkpoint): the split is refused first.
  with pytest.raises(ValueError, match=f"'{EMPTY_TASK}' has an empty "
                     r"'validation' split.*TrainConfig\.eval_split"):
    loop.train(model_dir=str(model_dir),
               initial_checkpoint_path=frozen, model_config=None,
               mixture_or_task_name=EMPTY_TASK, task_feature_lengths=LENGTHS)
  assert _snapshot(str(model_dir)) == {"config.gin": b"kept\n"}
