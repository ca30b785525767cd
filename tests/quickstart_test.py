"""The README quickstart: its synthetic tasks, its committed frozen model, and
a shortened run of its exact gin file through the real CLI."""

import collections
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import seqio

from prompt_tuning.data import pipeline
from prompt_tuning.pretrained import is_decoder_only
from prompt_tuning.pretrained import load_decoder_only
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.tasks import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.join(ROOT, "tasks", "quickstart_checkpoint")


@pytest.mark.parametrize("task_name, words, inputs, targets", [
    (quickstart.FIRST_TASK, ["happy", "cat", "awful"],
     "first: happy cat awful", "happy"),
    (quickstart.LAST_TASK, ["happy", "cat", "awful"],
     "last: happy cat awful", "awful"),
    (quickstart.SENTIMENT_TASK, ["happy", "cat", "awful", "angry"],
     "sentiment: happy cat awful angry", "negative"),
    (quickstart.SENTIMENT_TASK, ["dog", "sunny", "road"],
     "sentiment: dog sunny road", "positive"),
    (quickstart.TASKLESS_TASK, ["happy", "cat", "awful", "angry"],
     "happy cat awful angry", "negative"),
    (quickstart.TASKLESS_TASK, ["lucky", "brave", "tense", "bird", "new"],
     "lucky brave tense bird new", "positive"),
])
def test_format_example(task_name, words, inputs, targets):
  assert quickstart.format_example(task_name, words) == {
      "inputs": inputs, "targets": targets}


def test_sentiment_without_majority_is_refused():
  with pytest.raises(ValueError, match="No majority"):
    quickstart.sentiment(["happy", "cat", "awful"])
  with pytest.raises(KeyError):
    quickstart.format_example("quickstart_nope", ["cat"])


@pytest.mark.parametrize("task_name",
                         quickstart.PRETRAIN_TASKS + (quickstart.TASKLESS_TASK,))
def test_generated_splits_follow_the_documented_rules(task_name):
  polar = set(quickstart.POSITIVE_WORDS) | set(quickstart.NEGATIVE_WORDS)
  for split in ("train", "validation"):
    sentences = quickstart.sentences(task_name, split)
    assert len(sentences) == quickstart.split_sizes(task_name)[split]
    for words in sentences:
      assert 3 <= len(words) <= 7
      assert sum(w in polar for w in words) in (1, 3, 5)
    examples = quickstart.examples(task_name, split)
    for text in examples["inputs"] + examples["targets"]:
      assert len(text.encode()) + 1 <= 64 and text.isascii()  # + EOS
    if task_name in (quickstart.SENTIMENT_TASK, quickstart.TASKLESS_TASK):
      counts = collections.Counter(examples["targets"])
      assert set(counts) == set(quickstart.LABELS)
      assert abs(counts["positive"] - counts["negative"]) < 0.15 * len(
          sentences)


def test_data_are_fixed_and_the_taskless_sentences_are_new():
  # The committed checkpoint was pretrained on exactly these data: a change
  # here (or in numpy's generator) means regenerating it.
  assert [quickstart.examples(name, "validation")["inputs"][0]
          for name in quickstart.PRETRAIN_TASKS + (
              quickstart.TASKLESS_TASK,)] == [
                  "first: sunny brave brave merry super",
                  "last: house blue blue red scary",
                  "sentiment: happy merry awful bird",
                  "book lamp sweet house night blue new"]
  # The prompt-tuning task's sentences are its own, not the pretraining ones.
  taskless = {" ".join(w) for w in quickstart.sentences(
      quickstart.TASKLESS_TASK, "validation")}
  pretrain = {" ".join(w) for w in quickstart.sentences(
      quickstart.SENTIMENT_TASK, "validation")}
  assert len(taskless & pretrain) < 10


def test_postprocessor_and_metric():
  assert quickstart.postprocess_label("positive") == "positive"
  for output in ("positiv", "Positive", "happy", ""):
    assert quickstart.postprocess_label(output) == quickstart.INVALID
  task = seqio.get_mixture_or_task(quickstart.TASKLESS_TASK)
  assert task.metric_fns[0](["positive", "negative"],
                            ["positive", quickstart.INVALID]) == {
                                "accuracy": 50.0}


def test_tasks_yield_batches():
  vocabulary = quickstart.VOCABULARY
  batches = pipeline.get_dataset(
      quickstart.TASKLESS_TASK, quickstart.FEATURE_LENGTHS, split="validation",
      global_batch_size=8, shuffle=False, seed=0, repeat=False)
  batch = next(batches)
  assert batch["encoder_input_tokens"].shape == (8, 64)
  assert batch["decoder_target_tokens"].shape == (8, 16)
  expected = quickstart.examples(quickstart.TASKLESS_TASK, "validation")
  for i in range(8):
    assert vocabulary.decode(
        batch["encoder_input_tokens"][i].tolist()) == expected["inputs"][i]
    assert vocabulary.decode(
        batch["decoder_target_tokens"][i].tolist()) == expected["targets"][i]
  # validation, unshuffled: the train split's 20,000-example shuffle buffers
  # would take most of this test's time to fill.
  mixed = next(pipeline.get_dataset(
      quickstart.PRETRAIN_MIXTURE, quickstart.FEATURE_LENGTHS,
      split="validation", global_batch_size=32, shuffle=False, seed=0,
      repeat=True))
  prefixes = {vocabulary.decode(row.tolist()).split(":")[0]
              for row in mixed["encoder_input_tokens"]}
  assert prefixes == {"first", "last", "sentiment"}


def test_committed_checkpoint_is_small_and_loads():
  size = sum(os.path.getsize(os.path.join(CHECKPOINT, f))
             for f in os.listdir(CHECKPOINT))
  assert size < 2 * 1024 * 1024
  config, params = load_pretrained(CHECKPOINT)
  assert config.vocab_size == 384 and not config.logits_via_embedding
  assert tuple(config.mlp_activations) == ("gelu", "linear")
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree_util.tree_leaves(params))


def _run_shortened(gin_file: str, model_dir: str) -> str:
  """The README's train command with `gin_file`, for 20 steps: its log."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # one device, as a user's laptop
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.train",
       f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
       "--gin.TRAIN_STEPS=20", "--gin.TrainConfig.eval_period=20",
       "--gin.TrainConfig.checkpoint_period=20",
       "--gin.TrainConfig.log_period=10"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def test_quickstart_command_shortened(tmp_path):
  """runs/quickstart.gin exactly as the README runs it, for 20 steps."""
  model_dir = str(tmp_path / "quickstart")
  log = _run_shortened("runs/quickstart.gin", model_dir)
  metric = f"{quickstart.TASKLESS_TASK}/accuracy"
  assert "eval step 0: " in log and "eval step 20: " in log
  assert log.count(metric) >= 2
  assert "step 20/20 | loss" in log
  for name in ("checkpoint_20", "prompts/step_20.npy", "best.json",
               "operative_config.gin"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  prompt = np.load(os.path.join(model_dir, "prompts", "step_20.npy"))
  assert prompt.shape == (10, 64) and np.isfinite(prompt).all()
  with open(os.path.join(model_dir, "best.json")) as f:
    best = json.load(f)
  assert best["metric"] == metric and 0.0 <= best["value"] <= 100.0


DECODER_CHECKPOINT = os.path.join(ROOT, "tasks",
                                  "quickstart_decoder_checkpoint")


def test_committed_decoder_checkpoint_is_small_and_loads():
  size = sum(os.path.getsize(os.path.join(DECODER_CHECKPOINT, f))
             for f in os.listdir(DECODER_CHECKPOINT))
  assert size < 2 * 1024 * 1024
  assert is_decoder_only(DECODER_CHECKPOINT)
  config, params = load_decoder_only(DECODER_CHECKPOINT)
  assert (config.family, config.vocab_size, config.bos_id,
          config.eos_id) == ("llama", 384, None, quickstart.VOCABULARY.eos_id)
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree_util.tree_leaves(params))


def test_decoder_quickstart_command_shortened(tmp_path):
  """runs/quickstart_decoder.gin as the README runs it, for 20 steps."""
  model_dir = str(tmp_path / "quickstart_decoder")
  log = _run_shortened("runs/quickstart_decoder.gin", model_dir)
  metric = "quickstart_first_taskless/accuracy"
  assert "eval step 0: " in log and "eval step 20: " in log
  assert log.count(metric) >= 2 and "step 20/20 | loss" in log
  prompt = np.load(os.path.join(model_dir, "prompts", "step_20.npy"))
  assert prompt.shape == (10, 64) and np.isfinite(prompt).all()
  with open(os.path.join(model_dir, "best.json")) as f:
    assert json.load(f)["metric"] == metric
