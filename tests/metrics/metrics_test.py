"""Metrics against numbers worked out by hand, with T5's definitions.

Each expected value is derived in a comment next to its case, so a reader can
check the definition (invalid predictions, ties, articles, first-of-group,
undefined cases) without running sklearn, scipy or T5. A randomized test
also compares the classification metrics with the sklearn and scipy calls T5
makes; `t5_oracle_test.py` compares everything with T5 itself.
"""

import math

import numpy as np
import pytest

from prompt_tuning import metrics


def test_accuracy_ints_and_strings():
  # 2 of 4 equal; the invalid -1 is simply wrong.
  assert metrics.accuracy([0, 1, 2, 1], [0, 2, 2, -1]) == {"accuracy": 50.0}
  assert metrics.accuracy(["yes", "no", "no"], ["yes", "no", "maybe"]) == {
      "accuracy": pytest.approx(200 / 3)}
  with pytest.raises(ValueError):
    metrics.accuracy([0, 1], [0])


def test_f1_with_invalid_prediction_on_a_negative_is_a_false_positive():
  targets = [1, 0, 1, 1, 0]
  predictions = np.array([1, -1, 0, 1, 0])
  # The -1 (target 0) becomes 1: a false positive.
  # TP = idx 0, 3 -> 2; FP = idx 1 -> 1; FN = idx 2 -> 1.
  # F1 = 2*2 / (2*2 + 1 + 1) = 2/3.
  assert metrics.f1_score_with_invalid(targets, predictions)["f1"] == (
      pytest.approx(200 / 3))
  # The caller's array is not rewritten.
  np.testing.assert_array_equal(predictions, [1, -1, 0, 1, 0])


def test_f1_with_invalid_prediction_on_a_positive_is_a_false_negative():
  # [1, 5] -> [1, 0]: TP 1, FN 1, FP 0 -> 2 / (2 + 1) = 2/3.
  assert metrics.f1_score_with_invalid([1, 1], [1, 5])["f1"] == (
      pytest.approx(200 / 3))
  # Only -1 instead of 0 everywhere: all false positives, F1 0.
  assert metrics.f1_score_with_invalid([0, 0], [-1, -1]) == {"f1": 0.0}


def test_f1_without_positives_is_zero():
  # TP + FP + FN = 0: undefined, 0 like sklearn's default.
  assert metrics.f1_score_with_invalid([0, 0, 0], [0, 0, 0]) == {"f1": 0.0}
  with pytest.raises(ValueError):
    metrics.f1_score_with_invalid([0, 2], [0, 1])


def test_mean_multiclass_f1_with_invalid_prediction():
  targets = [0, 0, 1, 1, 2, 2]
  predictions = [0, 1, 1, -1, 2, 0]
  # Class 0: TP idx0; FP idx5 (pred 0, target 2); FN idx1 -> 2/(2+1+1) = 1/2.
  # Class 1: TP idx2; FP idx1; FN idx3 (the -1) -> 2/(2+1+1) = 1/2.
  # Class 2: TP idx4; FP none; FN idx5 -> 2/(2+0+1) = 2/3.
  # The -1 is a false positive for no class. Mean = (1/2 + 1/2 + 2/3)/3 = 5/9.
  result = metrics.mean_multiclass_f1(3)(targets, predictions)
  assert list(result) == ["mean_3class_f1"]
  assert result["mean_3class_f1"] == pytest.approx(500 / 9)


def test_mean_multiclass_f1_counts_absent_class_as_zero():
  # Classes 0 and 1 perfect; class 2 never occurs nor is predicted: F1 0.
  assert metrics.mean_multiclass_f1(3)([0, 1], [0, 1]) == {
      "mean_3class_f1": pytest.approx(200 / 3)}
  assert metrics.mean_multiclass_f1(2)([0, 1], [0, 1]) == {
      "mean_2class_f1": 100.0}


def test_matthews_binary():
  targets = [1, 1, 1, 0, 0, 0, 1, 0]
  predictions = [1, 1, 0, 0, 0, 1, 1, 0]
  # TP 3 (idx 0, 1, 6), FN 1 (idx 2), TN 3 (idx 3, 4, 7), FP 1 (idx 5).
  # (3*3 - 1*1) / sqrt(4 * 4 * 4 * 4) = 8 / 16.
  assert metrics.matthews_corrcoef(targets, predictions) == {
      "matthews_corrcoef": pytest.approx(50.0)}


def test_matthews_three_classes():
  targets = [0, 0, 1, 1, 2, 2]
  predictions = [0, 1, 1, 2, 2, 0]
  # c = 3 correct, s = 6, t = p = (2, 2, 2).
  # (3*6 - 12) / sqrt((36 - 12) * (36 - 12)) = 6 / 24.
  assert metrics.matthews_corrcoef(targets, predictions) == {
      "matthews_corrcoef": pytest.approx(25.0)}


def test_matthews_invalid_prediction_and_constant_prediction():
  # Labels {0, 1, 2, -1}: t = (1, 1, 1, 0), p = (1, 1, 0, 1); c = 2, s = 3.
  # (2*3 - 2) / sqrt((9 - 3) * (9 - 3)) = 4 / 6.
  assert metrics.matthews_corrcoef([0, 1, 2], [0, 1, -1]) == {
      "matthews_corrcoef": pytest.approx(200 / 3)}
  # Every prediction the same: s^2 - sum p^2 = 0, defined as 0.
  assert metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == {
      "matthews_corrcoef": 0.0}


def test_pearson():
  # dx = (-1.5, -.5, .5, 1.5), dy = (-3, -1, 0, 4): Sxy = 11, Sxx = 5,
  # Syy = 26 -> r = 11 / sqrt(130).
  result = metrics.pearson_corrcoef([1, 2, 3, 4], [2, 4, 5, 9])
  assert result["pearson_corrcoef"] == pytest.approx(100 * 11 / math.sqrt(130))
  assert metrics.pearson_corrcoef([1., 3.], [5., 2.]) == {
      "pearson_corrcoef": -100.0}
  assert math.isnan(metrics.pearson_corrcoef([1, 1, 1], [1, 2, 3])[
      "pearson_corrcoef"])


def test_spearman_with_ties():
  # Ranks: x = (1, 2, 2, 3) -> (1, 2.5, 2.5, 4); y = (1, 3, 2, 4) as is.
  # dx = (-1.5, 0, 0, 1.5), dy = (-1.5, .5, -.5, 1.5): Sxy = 4.5, Sxx = 4.5,
  # Syy = 5 -> rho = 4.5 / sqrt(22.5) = sqrt(0.9).
  result = metrics.spearman_corrcoef([1, 2, 2, 3], [10, 30, 20, 40])
  assert result["spearman_corrcoef"] == pytest.approx(100 * math.sqrt(0.9))
  # Monotone but not linear: rank correlation 1.
  assert metrics.spearman_corrcoef([1, 2, 3], [1, 10, 1000]) == {
      "spearman_corrcoef": pytest.approx(100.0)}


def test_spearman_undefined_cases_are_nan_not_errors():
  # As scipy.stats.spearmanr (T5): no examples, one example, a constant
  # side, a NaN anywhere (a NaN has no rank; ranking it last would make up
  # a correlation: 40 for the NaN case below).
  for targets, predictions in [([], []), ([1.0], [2.0]),
                               ([2, 2, 2], [1, 2, 3]), ([1, 2, 3], [0, 0, 0]),
                               ([1, 2, 3, 4], [1, float("nan"), 2, 3]),
                               ([1, float("nan"), 2, 3], [1, 2, 3, 4])]:
    result = metrics.spearman_corrcoef(targets, predictions)
    assert math.isnan(result["spearman_corrcoef"]), (targets, predictions)
  with pytest.raises(ValueError):
    metrics.spearman_corrcoef([1, 2, 3], [1, 2])


def test_pearson_needs_two_examples():
  # scipy.stats.pearsonr (T5) refuses fewer than 2; NaN propagates.
  for n in (0, 1):
    with pytest.raises(ValueError):
      metrics.pearson_corrcoef([1.0] * n, [2.0] * n)
  assert math.isnan(metrics.pearson_corrcoef(
      [1, 2, 3], [1, float("nan"), 2])["pearson_corrcoef"])


@pytest.mark.parametrize("metric", [
    metrics.accuracy, metrics.f1_score_with_invalid,
    metrics.matthews_corrcoef, metrics.mean_multiclass_f1(3)])
def test_classification_metrics_refuse_empty_input(metric):
  # No examples has no score; T5's sklearn calls raise ValueError too
  # (0.0 would read like a real result).
  with pytest.raises(ValueError, match="at least one example"):
    metric([], [])
  with pytest.raises(ValueError, match="at least one example"):
    metric(np.array([], np.int64), np.array([], np.int64))


def test_multirc_on_empty_input():
  # F1a raises like F1; EM averages over no question: no metric at all, as
  # T5's mean_group_metric returns.
  with pytest.raises(ValueError, match="at least one example"):
    metrics.multirc_f1_over_all_answers([], [])
  assert metrics.mean_group_metric(metrics.all_match)([], []) == {}


def test_all_match():
  assert metrics.all_match([1, 0, 1], [1, 0, 1]) == {"exact_match": 100.0}
  assert metrics.all_match([1, 0, 1], [1, 0, 0]) == {"exact_match": 0.0}
  assert metrics.all_match([1, 0, 1], [1, 0]) == {"exact_match": 0.0}


def _multirc(question, target, prediction):
  return {"value": target, "group": question}, {"value": prediction}


def test_multirc_exact_match_per_question_and_f1a():
  pairs = [
      _multirc(7, 1, 1), _multirc(9, 1, 1), _multirc(7, 0, 0),
      _multirc(9, 1, 0), _multirc(9, 0, -1),
  ]
  targets, predictions = zip(*pairs)
  # Question 7: (1, 0) vs (1, 0) -> 100. Question 9: (1, 1, 0) vs
  # (1, 0, -1) -> 0. Mean over questions: 50.
  em = metrics.mean_group_metric(metrics.all_match)(targets, predictions)
  assert em == {"exact_match": 50.0}
  with_groups = metrics.mean_group_metric(
      metrics.all_match, return_subgroup_scores=True)(targets, predictions)
  assert with_groups["7-exact_match"] == 100.0
  assert with_groups["9-exact_match"] == 0.0
  # F1a over all answers: targets (1, 1, 0, 1, 0), predictions
  # (1, 1, 0, 0, -1 -> 1): TP 2, FN 1, FP 1 -> 4/6.
  assert metrics.multirc_f1_over_all_answers(targets, predictions) == {
      "f1": pytest.approx(200 / 3)}


def test_normalize_squad():
  assert metrics.normalize_squad("The cat") == "cat"
  assert metrics.normalize_squad("an apple") == "apple"
  assert metrics.normalize_squad("U.S.") == "us"
  assert metrics.normalize_squad("  many \t\n  spaces ") == "many spaces"
  # Articles only as whole words.
  assert metrics.normalize_squad("Theater and anthem") == "theater and anthem"
  assert metrics.normalize_squad("Anthem of the Nation") == "anthem of nation"
  # Punctuation goes first, so "(A)" is a bare article and disappears.
  assert metrics.normalize_squad("(A)") == ""
  assert metrics.normalize_squad("?!...") == ""


def test_normalize_trivia_qa():
  # Punctuation becomes a space (and typographic quotes, ` and _ count).
  assert metrics.normalize_trivia_qa("U.S.") == "u s"
  assert metrics.normalize_trivia_qa("‘The rock_n_roll’") == "rock n roll"
  assert metrics.normalize_trivia_qa(" The  End. ") == "end"


def test_squad_max_over_golds():
  targets = [["The Eiffel Tower", "Eiffel"], ["cat"]]
  predictions = ["eiffel!", "a dog"]
  # Example 1 equals the second gold after normalisation: EM 1, F1 1.
  # Example 2: "dog" vs "cat": EM 0, F1 0. Means: 50 and 50.
  assert metrics.squad(targets, predictions) == {"em": 50.0, "f1": 50.0}


def test_squad_partial_overlap_with_duplicate_tokens():
  # Gold -> "cat sat on mat" (4 tokens); prediction "cat cat sat" (3 tokens).
  # Common bag: cat min(2, 1) = 1, sat 1 -> 2. P = 2/3, R = 2/4.
  # F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7.
  result = metrics.squad([["the cat sat on the mat"]], ["cat cat sat"])
  assert result["em"] == 0.0
  assert result["f1"] == pytest.approx(400 / 7)


def test_squad_punctuation_only_answer():
  # Both normalise to "": equal strings (EM 1) but no common token (F1 0).
  assert metrics.squad([["!!!"]], [""]) == {"em": 100.0, "f1": 0.0}
  with pytest.raises(ValueError):
    metrics.squad([["a"], ["b"]], ["a"])


def test_trivia_qa():
  # "U.S." -> "u s" on both sides.
  assert metrics.trivia_qa([["U.S."]], ["u. s."]) == {"em": 100.0, "f1": 100.0}


def _record(group, answers, prediction):
  return {"value": answers, "group": group}, {"value": prediction}


def test_record_keeps_first_copy_of_each_query():
  pairs = [
      _record((0, 0), ["Barack Obama", "Obama"], "obama"),
      _record((0, 1), ["the U.S."], "US"),
      _record((0, 0), ["Barack Obama", "Obama"], "Michelle"),  # Dropped.
      _record((1, 0), ["Paris"], "Paris France"),
      _record((1, 0), ["Paris"], "Paris"),  # Dropped.
  ]
  targets, predictions = zip(*pairs)
  # (0, 0): "obama" equals gold 2 -> EM 1, F1 1. (0, 1): "us" == "us" -> 1, 1.
  # (1, 0): "paris france" vs "paris": EM 0; P 1/2, R 1 -> F1 2/3.
  # EM = 2/3; F1 = (1 + 1 + 2/3) / 3 = 8/9.
  result = metrics.record(targets, predictions)
  assert result["em"] == pytest.approx(200 / 3)
  assert result["f1"] == pytest.approx(800 / 9)


def test_deduplicate_metric_passes_one_value_per_group():
  seen = {}

  def capture(targets, predictions):
    seen["args"] = (list(targets), list(predictions))
    return {"n": float(len(targets))}

  targets = [{"g": "a", "v": 1}, {"g": "b", "v": 2}, {"g": "a", "v": 3}]
  predictions = [{"v": 10}, {"v": 20}, {"v": 30}]
  result = metrics.deduplicate_metric(capture, "g", "v")(targets, predictions)
  assert result == {"n": 2.0}
  assert seen["args"] == ([1, 2], [10, 20])


def test_invalid_rate():
  rate = metrics.invalid_rate(("False", "True"))
  assert rate([0, 1, 1, 0], [0, 1, -1, 2]) == {"invalid_prediction_rate": 50.0}
  assert rate([{"value": 0}] * 2, [{"value": -1}, {"value": 1}]) == {
      "invalid_prediction_rate": 50.0}
  assert rate(["True"] * 4, ["True", "maybe", b"False", "false"]) == {
      "invalid_prediction_rate": 50.0}
  assert rate([], []) == {"invalid_prediction_rate": 0.0}
  # Rates other than 50% tell the invalid count from the valid one.
  assert rate([0] * 4, [0, 1, 1, 7]) == {"invalid_prediction_rate": 25.0}
  assert rate(["True"] * 4, ["True", "False", "True", "no"]) == {
      "invalid_prediction_rate": 25.0}


def test_superglue_average_averages_within_tasks_first():
  scores = {
      "super_glue_cb_v102": {"accuracy": 90.0, "mean_3class_f1": 80.0,
                             "invalid_prediction_rate": 5.0},
      "taskless_super_glue_multirc_v102": {"f1": 70.0, "exact_match": 30.0},
      "super_glue_record_v102": {"em": 60.0, "f1": 62.0},
      "boolq": {"accuracy": 85.0, "loss": 2.0},
  }
  # Per task: CB 85, MultiRC 50, ReCoRD 61, BoolQ 85 -> 281 / 4 = 70.25.
  # (A flat mean of the seven metrics would give 477 / 7 = 68.14.)
  assert metrics.superglue_task_scores(scores, ignore=("loss",)) == {
      "cb": 85.0, "multirc": 50.0, "record": 61.0, "boolq": 85.0}
  assert metrics.superglue_average(scores, ignore=("loss",)) == 70.25
  # Without ignoring it, the loss is averaged into BoolQ: (85 + 2) / 2.
  assert metrics.superglue_average(scores) == pytest.approx(
      (85 + 50 + 61 + 43.5) / 4)


def test_superglue_task_names():
  assert len(metrics.SUPERGLUE_TASKS) == 8
  assert metrics.superglue_task_name("super_glue_wsc.fixed_v102") == "wsc"
  assert metrics.superglue_task_name("super_glue_axb_v102") == "axb"
  assert metrics.superglue_task_name("glue_mrpc_v002") is None
  with pytest.raises(ValueError):
    metrics.superglue_average({"cb": {"accuracy": 1.0},
                               "super_glue_cb_v102": {"accuracy": 2.0}})
  with pytest.raises(ValueError):
    metrics.superglue_average({})


def test_classification_metrics_agree_with_sklearn_and_scipy():
  # Test-only references (the `test` extra); the metrics need numpy only.
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  for _ in range(20):
    n = rng.randint(2, 40)
    targets = rng.randint(0, 3, n)
    predictions = rng.randint(-1, 3, n)
    expected = 100 * sklearn_metrics.fbeta_score(
        targets, predictions, beta=1, labels=range(3), average="macro",
        zero_division=0)
    assert metrics.mean_multiclass_f1(3)(targets, predictions)[
        "mean_3class_f1"] == pytest.approx(expected)
    expected = 100 * sklearn_metrics.matthews_corrcoef(targets, predictions)
    assert metrics.matthews_corrcoef(targets, predictions)[
        "matthews_corrcoef"] == pytest.approx(expected, abs=1e-9)
    binary = targets % 2
    fixed = np.where((predictions == 0) | (predictions == 1), predictions,
                     1 - binary)
    expected = 100 * sklearn_metrics.f1_score(binary, fixed, zero_division=0)
    assert metrics.f1_score_with_invalid(binary, predictions)[
        "f1"] == pytest.approx(expected)
    x, y = rng.randint(0, 5, n).astype(float), rng.randn(n)
    if len(set(x)) > 1:
      assert metrics.pearson_corrcoef(x, y)["pearson_corrcoef"] == (
          pytest.approx(100 * scipy_stats.pearsonr(x, y)[0]))
      assert metrics.spearman_corrcoef(x, y)["spearman_corrcoef"] == (
          pytest.approx(100 * scipy_stats.spearmanr(x, y)[0]))
