"""Evaluation through seqio with fake model functions, the jsonl writer, and
the checks entry points run before loading a model.

A fake `predict_batch` that returns the targets must score accuracy 1.0 (also
when junk follows the EOS), and one that returns garbage must score 0.0
without crashing; the postprocessor and metric are the tiny tasks' own.
"""

import json
import os

import numpy as np
import pytest

from prompt_tuning.training import eval_logs
from prompt_tuning.training import evaluation
from tests import tiny_tasks

LENGTHS = {"inputs": 32, "targets": 24}
BATCH = 8
# Byte id of 'q' (byte + 3): a garbage token that is not EOS or padding.
_Q = ord("q") + 3


@pytest.fixture(scope="module")
def mix_evaluator():
  tiny_tasks.register()
  return evaluation.Evaluator("tiny_mix", LENGTHS, batch_size=BATCH)


def _targets(batch):
  assert batch["decoder_target_tokens"].shape == (BATCH, LENGTHS["targets"])
  return batch["decoder_target_tokens"]


def _targets_then_junk(batch):
  tokens = _targets(batch).copy()
  tokens[tokens == 0] = _Q  # After the EOS; must be ignored.
  return tokens


def _garbage(batch):
  tokens = np.full_like(_targets(batch), _Q)
  tokens[:, 3] = 1  # 'qqq' + EOS: neither a label nor any copy target.
  return tokens


def test_perfect_predictions_score_one(mix_evaluator):
  assert set(mix_evaluator.task_names) == {"tiny_copy", "tiny_classify"}
  metrics = mix_evaluator.evaluate(_targets)
  assert metrics == {"tiny_copy": {"accuracy": 1.0},
                     "tiny_classify": {"accuracy": 1.0}}


def test_tokens_after_eos_are_ignored(mix_evaluator):
  metrics = mix_evaluator.evaluate(_targets_then_junk)
  assert metrics["tiny_copy"]["accuracy"] == 1.0
  assert metrics["tiny_classify"]["accuracy"] == 1.0


def test_garbage_predictions_score_zero(mix_evaluator):
  metrics = mix_evaluator.evaluate(_garbage)
  assert metrics["tiny_copy"]["accuracy"] == 0.0
  assert metrics["tiny_classify"]["accuracy"] == 0.0


def test_predict_batch_of_wrong_shape_is_an_error(mix_evaluator):
  with pytest.raises(ValueError, match="predict_batch must return"):
    mix_evaluator.evaluate(lambda batch: _targets(batch)[:, 0])


def test_predict_records_in_example_order(mix_evaluator):
  records = mix_evaluator.predict(_targets_then_junk)
  expected = tiny_tasks.examples("tiny_classify", "validation")
  got = records["tiny_classify"]
  assert len(got) == tiny_tasks.NUM_VALIDATION
  assert [r["inputs"] for r in got] == expected["inputs"]
  assert [r["target"] for r in got] == expected["targets"]
  assert [r["prediction"] for r in got] == expected["targets"]


def test_score_metrics_use_score_batch():
  tiny_tasks.register()
  evaluator = evaluation.Evaluator("tiny_classify_scored", LENGTHS,
                                   batch_size=BATCH)
  with pytest.raises(ValueError, match="score_batch"):
    evaluator.evaluate(_targets)
  scores = lambda batch: -np.sum(batch["decoder_loss_weights"], axis=1) * 0.5
  metrics = evaluator.evaluate(None, score_batch=scores)
  lengths = [len(t) + 1 for t in  # bytes plus EOS
             tiny_tasks.examples("tiny_classify", "validation")["targets"]]
  assert metrics["tiny_classify_scored"]["mean_log_likelihood"] == (
      pytest.approx(-0.5 * np.mean(lengths)))


def test_metrics_are_logged_to_log_dir(tmp_path):
  tiny_tasks.register()
  evaluator = evaluation.Evaluator("tiny_classify", LENGTHS, batch_size=BATCH,
                                   log_dir=str(tmp_path))
  evaluator.evaluate(_targets, step=3)
  with open(tmp_path / "tiny_classify-metrics.jsonl") as f:
    assert json.loads(f.readline()) == {"step": 3, "accuracy": 1.0}


def test_clear_after_eos():
  tokens = np.array([[5, 1, 7, 1, 9], [5, 6, 7, 8, 9], [1, 4, 0, 4, 4]])
  np.testing.assert_array_equal(
      evaluation.clear_after_eos(tokens, 1),
      [[5, 1, 0, 0, 0], [5, 6, 7, 8, 9], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(evaluation.clear_after_eos(tokens, None),
                                tokens)


def test_jsonl_round_trip_is_atomic(tmp_path):
  path = str(tmp_path / "out" / "predictions.jsonl")
  records = [{"inputs": "classify: ab cd", "prediction": "yes",
              "target": "no"},
             {"inputs": "ünïcode \"quoted\"\nnewline", "prediction": "",
              "target": "x"}]
  eval_logs.write_predictions_jsonl(path, records)
  assert eval_logs.read_predictions_jsonl(path) == records
  # Overwriting replaces the file whole and leaves no temporary behind.
  eval_logs.write_predictions_jsonl(path, records[:1])
  assert eval_logs.read_predictions_jsonl(path) == records[:1]
  assert os.listdir(os.path.dirname(path)) == ["predictions.jsonl"]


def test_failed_write_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "predictions.jsonl")
  eval_logs.write_predictions_jsonl(path, [{"a": 1}])

  def records():
    yield {"a": 2}
    raise RuntimeError("model crashed")

  with pytest.raises(RuntimeError):
    eval_logs.write_predictions_jsonl(path, records())
  assert eval_logs.read_predictions_jsonl(path) == [{"a": 1}]
  assert os.listdir(tmp_path) == ["predictions.jsonl"]


def test_check_split_names_the_splits_there_are():
  tiny_tasks.register()
  assert set(evaluation.check_split("tiny_mix", "validation", LENGTHS)) == {
      "tiny_copy", "tiny_classify"}
  with pytest.raises(ValueError, match=r"^Task 'tiny_classify' has no 'test' "
                     r"split \(it has: train, validation\); set SPLIT"):
    evaluation.check_split("tiny_classify", "test", LENGTHS)
  with pytest.raises(ValueError, match=r"No task of mixture 'tiny_mix' has a "
                     r"'test' split \(tiny_\w+: train, validation; "
                     r"tiny_\w+: .*TrainConfig.eval_split"):
    evaluation.check_split("tiny_mix", "test", LENGTHS,
                           setting="TrainConfig.eval_split")


def test_check_output_path(tmp_path):
  path = tmp_path / "new" / "dir" / "predictions.jsonl"
  evaluation.check_output_path(str(path))
  # The parents a write would create exist; the probe is gone.
  assert os.listdir(path.parent) == []
  with pytest.raises(ValueError, match="is a directory; give a file path"):
    evaluation.check_output_path(str(tmp_path))
  (tmp_path / "file").write_text("x")
  with pytest.raises(OSError, match="OUTPUT_PATH .*file/p.jsonl cannot be "
                     "written"):
    evaluation.check_output_path(str(tmp_path / "file" / "p.jsonl"))
  with pytest.raises(ValueError, match="OUTPUT_PATH is empty"):
    evaluation.check_output_path("")
