"""What a metric says when it cannot score: the message a user reads.

Written after mutmut (docs/testing.md) showed every message could be blanked
without a test noticing; the rules themselves are in metrics_test.py and the
T5 oracle tests.
"""

import re

import pytest

from prompt_tuning import metrics


@pytest.mark.parametrize("fn, targets, predictions, message", [
    (metrics.accuracy, [1, 0], [1], "Got 2 targets but 1 predictions; they "
     "must pair up one to one."),
    (metrics.accuracy, [], [], "accuracy needs at least one example; got "
     "empty targets and predictions."),
    (metrics.f1_score_with_invalid, [], [], "F1 needs at least one example; "
     "got empty targets and predictions."),
    (metrics.f1_score_with_invalid, [0, 2], [0, 1],
     "Binary F1 needs 0/1 targets, got [0 2]."),
    (metrics.matthews_corrcoef, [], [], "matthews_corrcoef needs at least one "
     "example; got empty targets and predictions."),
    (metrics.mean_multiclass_f1(3), [], [], "mean_3class_f1 needs at least "
     "one example; got empty targets and predictions."),
    (metrics.pearson_corrcoef, [1.0], [2.0],
     "A correlation needs at least 2 examples."),
    (metrics.squad, [["a"]], [], "Got 1 targets but 0 predictions; they must "
     "pair up one to one."),
])
def test_bad_inputs_say_what_is_wrong(fn, targets, predictions, message):
  # Anchored: a message with text added or lost is a different message.
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    fn(targets, predictions)


def test_a_name_with_two_superglue_tasks_is_refused():
  assert metrics.superglue_task_name("super_glue_rte_v102") == "rte"
  with pytest.raises(ValueError, match=re.escape(
      "Task name 'rte_to_cb' names several SuperGLUE tasks: ['cb', 'rte'].")):
    metrics.superglue_task_name("rte_to_cb")


def test_superglue_scores_refuse_what_cannot_be_averaged():
  with pytest.raises(ValueError, match="^No task scores to average.$"):
    metrics.superglue_average({})
  with pytest.raises(ValueError, match=re.escape(
      "Task 'rte' appears twice in the scores")):
    metrics.superglue_task_scores({"super_glue_rte_v102": {"accuracy": 1.0},
                                   "taskless_super_glue_rte_v102": {
                                       "accuracy": 2.0}})
  with pytest.raises(ValueError, match=re.escape(
      "Task 'super_glue_cb_v102' has no metric to average")):
    metrics.superglue_task_scores({"super_glue_cb_v102": {}})
  with pytest.raises(ValueError, match=re.escape("No metric to average in")):
    metrics.task_score({})
