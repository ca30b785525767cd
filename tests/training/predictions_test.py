"""Every evaluation's predictions: one JSONL line per example holding what the
metric functions saw, and a TensorBoard text sample.

Fake model functions on the tiny tasks check the records against the metrics
they produced; one short training run and one standalone evaluation (both
in-process, the tiny T5) check that the two real paths write them.
"""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.models import t5_config
from prompt_tuning.training import eval_logs
from prompt_tuning.training import evaluation
from prompt_tuning.training import loop
from prompt_tuning.training import records
from prompt_tuning.training import runs
from prompt_tuning.training import setup
from prompt_tuning.training.inference import DecodeConfig
from tests import tiny_tasks

LENGTHS = {"inputs": 32, "targets": 24}
BATCH = 8
_Q = ord("q") + 3  # byte id of 'q': neither EOS nor padding


def _half_right(batch):
  """The targets on even rows, 'qqq' + EOS on odd ones."""
  tokens = batch["decoder_target_tokens"].copy()
  tokens[1::2] = _Q
  tokens[1::2, 3:] = 0
  tokens[1::2, 3] = 1
  return tokens


def _rows(path):
  return eval_logs.read_predictions_jsonl(path)


def _text_summaries(directory):
  """(tag, step) -> markdown of every text summary in `directory`."""
  found = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        text = tf.make_ndarray(value.tensor).item().decode("utf-8")
        found[(value.tag, event.step)] = text
  return found


def test_jsonl_holds_what_the_metrics_saw(tmp_path):
  tiny_tasks.register()
  evaluator = evaluation.Evaluator("tiny_mix", LENGTHS, batch_size=BATCH,
                                   log_dir=str(tmp_path))
  metrics = evaluator.evaluate(_half_right, step=3)
  for task in ("tiny_copy", "tiny_classify"):
    rows = _rows(tmp_path / "predictions" / task / "step_3.jsonl")
    expected = tiny_tasks.examples(task, "validation")
    assert len(rows) == tiny_tasks.NUM_VALIDATION
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert {(r["task"], r["step"]) for r in rows} == {(task, 3)}
    assert [r["inputs"] for r in rows] == expected["inputs"]
    assert [r["target"] for r in rows] == expected["targets"]
    # Batches hold 8 rows, so even example indices are the right ones.
    assert [r["prediction"] for r in rows] == [
        t if i % 2 == 0 else "qqq" for i, t in enumerate(expected["targets"])]
    hits = np.mean([r["metric_target"] == r["metric_prediction"]
                    for r in rows])
    assert metrics[task]["accuracy"] == pytest.approx(hits)
    assert "score" not in rows[0] and "label_scores" not in rows[0]
  # The postprocessor's output is what the metric compared.
  classify = _rows(tmp_path / "predictions" / "tiny_classify" / "step_3.jsonl")
  assert classify[1]["metric_prediction"] == tiny_tasks.INVALID

  text = _text_summaries(str(tmp_path))[("tiny_copy/predictions", 3)]
  lines = text.splitlines()
  assert lines[0] == "| inputs | target | prediction |"
  assert len(lines) == 2 + eval_logs.TENSORBOARD_SAMPLE
  first = _rows(tmp_path / "predictions" / "tiny_copy" / "step_3.jsonl")[0]
  assert lines[2] == (f"| {first['inputs']} | {first['target']} | "
                      f"{first['prediction']} |")

  # A later evaluation gets its own file; nothing temporary is left behind.
  evaluator.evaluate(_half_right, step=4)
  assert sorted(os.listdir(tmp_path / "predictions" / "tiny_copy")) == [
      "step_3.jsonl", "step_4.jsonl"]


def test_scores_and_label_scores_are_recorded(tmp_path):
  tiny_tasks.register()
  scored = evaluation.Evaluator("tiny_classify_scored", LENGTHS,
                                batch_size=BATCH, log_dir=str(tmp_path))
  score = lambda batch: -np.sum(batch["decoder_loss_weights"], axis=1) * 0.5
  metrics = scored.evaluate(None, score_batch=score)
  rows = _rows(records.predictions_path(str(tmp_path),
                                        "tiny_classify_scored", None))
  assert len(rows) == tiny_tasks.NUM_VALIDATION and rows[0]["step"] is None
  assert [r["score"] for r in rows] == [-0.5 * (len(r["target"]) + 1)
                                        for r in rows]
  assert "prediction" not in rows[0]
  assert metrics["tiny_classify_scored"]["mean_log_likelihood"] == (
      pytest.approx(np.mean([r["score"] for r in rows])))

  ranked = evaluation.Evaluator("tiny_classify", LENGTHS, batch_size=BATCH,
                                log_dir=str(tmp_path))
  # 'no' (label 1) wins on even batch rows, 'yes' on odd ones.
  flip = np.where(np.arange(BATCH) % 2 == 0, 1.0, -1.0)
  rank = lambda batch, labels: np.stack([-flip, flip], axis=-1)
  metrics = ranked.evaluate(None, step=7, rank_batch=rank)
  rows = _rows(tmp_path / "predictions" / "tiny_classify" / "step_7.jsonl")
  assert [r["prediction"] for r in rows] == [
      "no" if i % 2 == 0 else "yes" for i in range(len(rows))]
  assert all(max(r["label_scores"], key=r["label_scores"].get) ==
             r["prediction"] for r in rows)
  assert metrics["tiny_classify"]["accuracy"] == pytest.approx(
      np.mean([r["metric_target"] == r["metric_prediction"] for r in rows]))
  # Decoding again: the ranked pass's scores are not carried over.
  ranked.evaluate(_half_right, step=8)
  rows = _rows(tmp_path / "predictions" / "tiny_classify" / "step_8.jsonl")
  assert "label_scores" not in rows[0]


def test_only_the_writing_process_writes(tmp_path):
  tiny_tasks.register()
  evaluator = evaluation.Evaluator("tiny_classify", LENGTHS, batch_size=BATCH,
                                   log_dir=str(tmp_path),
                                   write_predictions=False)
  evaluator.evaluate(_half_right, step=1)
  # Neither predictions nor the metric log: one process writes a run's
  # files (two writers of one metric log lose lines).
  assert os.listdir(tmp_path) == []


def test_training_and_standalone_eval_write_predictions(tmp_path, frozen):
  tiny_tasks.register()
  model_dir = str(tmp_path / "run")
  lengths = {"inputs": 32, "targets": 4}
  config = t5_config("t5_1_1_tiny", dtype="float32")
  # No steps, only the baseline evaluation: the loop's own evaluation path
  # without compiling a train step.
  loop.train(
      model_dir=model_dir, initial_checkpoint_path=frozen,
      model_config=config, mixture_or_task_name="tiny_classify",
      task_feature_lengths=lengths,
      prompt=setup.PromptConfig(length=3, init="sampled_vocab"),
      schedule=loop.TrainConfig(train_steps=0, batch_size=8,
                                eval_at_start=True))
  rows = _rows(os.path.join(model_dir, "eval", "predictions", "tiny_classify",
                            "step_0.jsonl"))
  assert len(rows) == tiny_tasks.NUM_VALIDATION
  with open(os.path.join(model_dir, "eval", "metrics.jsonl")) as f:
    logged = json.loads(f.readlines()[-1])
  assert logged["step"] == 0
  assert logged["metrics"]["tiny_classify/accuracy"] == pytest.approx(
      np.mean([r["metric_target"] == r["metric_prediction"] for r in rows]))
  assert ("tiny_classify/predictions", 0) in _text_summaries(
      os.path.join(model_dir, "eval"))

  out = str(tmp_path / "dev")
  flat = runs.evaluate(
      prompt_path=model_dir, initial_checkpoint_path=frozen,
      model_config=config, mixture_or_task_name="tiny_classify",
      task_feature_lengths=lengths, batch_size=8,
      decode=DecodeConfig(rank_classification=True), output_dir=out)
  rows = _rows(records.predictions_path(out, "tiny_classify", None))
  assert len(rows) == tiny_tasks.NUM_VALIDATION
  assert {r["prediction"] for r in rows} <= set(tiny_tasks.LABELS)
  assert flat["tiny_classify/accuracy"] == pytest.approx(
      np.mean([r["metric_target"] == r["metric_prediction"] for r in rows]))
