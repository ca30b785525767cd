"""Classification and correlation metrics for GLUE/SuperGLUE, numpy only.

Every function follows seqio's metric convention, `fn(targets, predictions)
-> {name: value}`, with values in percent (x100) and metric names exactly as
the T5 library reports them, so scores can be compared with published T5 and
prompt-tuning numbers. The definitions reproduce T5's, which call sklearn and
scipy: F1 scores follow `sklearn.metrics.f1_score`/`fbeta_score` (a class
with no true and no predicted examples scores 0), the Matthews correlation
follows sklearn's multiclass formula, and Pearson/Spearman follow
`scipy.stats`, step for step, so the numbers agree to the last bit. Undefined
cases follow T5 too: no examples raise a ValueError (as sklearn does), and a
correlation of a constant or NaN-holding column is NaN (as scipy's is);
docs/t5_parity.md lists what is compared with T5 and the few differences
kept on purpose. Predictions arriving here are already postprocessed (see
`prompt_tuning.data.postprocessors`): a class id, or -1 for an output that names no
class, which these metrics count as wrong. MultiRC's helpers live here too:
its targets are `{"value": class_id, "group": question_id}` dicts.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

# seqio's metric signature: (targets, predictions) -> {metric name: value}.
MetricFn = Callable[[Sequence[Any], Sequence[Any]], Dict[str, float]]


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"Got {len(targets)} targets but {len(predictions)} "
                     "predictions; they must pair up one to one.")


def _check_not_empty(name: str, targets: Sequence[Any],
                     predictions: Sequence[Any]) -> None:
  """Pairs up targets and predictions and refuses an empty evaluation.

  A score of nothing is undefined; T5's sklearn calls raise a ValueError
  here too, rather than report a 0 that reads like a real result.
  """
  _check_lengths(targets, predictions)
  if len(targets) == 0:
    raise ValueError(f"{name} needs at least one example; got empty targets "
                     "and predictions.")


def _f1_from_counts(tp: int, fp: int, fn: int) -> float:
  """F1 = 2TP / (2TP + FP + FN); 0.0 when the class never occurs at all.

  sklearn returns 0 (with a warning) for the undefined case by default, and
  T5's scores inherit that.
  """
  denominator = 2 * tp + fp + fn
  return 2 * tp / denominator if denominator else 0.0


def accuracy(targets: Sequence[Any],
             predictions: Sequence[Any]) -> Dict[str, float]:
  """Percentage of predictions equal to their target (ints or strings).

  Raises:
    ValueError: if the lengths differ or there are no examples.
  """
  _check_not_empty("accuracy", targets, predictions)
  correct = sum(bool(t == p) for t, p in zip(targets, predictions))
  return {"accuracy": 100 * (correct / len(targets))}


def f1_score_with_invalid(targets: Sequence[int],
                          predictions: Sequence[int]) -> Dict[str, float]:
  """Binary F1 of the positive class 1; a prediction not in {0, 1} is wrong.

  An invalid prediction is first replaced by `1 - target`, so it costs a false
  negative when the target is 1 and a false positive when it is 0.

  Args:
    targets: [N] gold labels, each 0 or 1.
    predictions: [N] predicted class ids, any integer (-1 for invalid).

  Returns:
    {"f1": 100 * F1 of class 1}.

  Raises:
    ValueError: if the lengths differ, there are no examples, or a target is
      not 0 or 1.
  """
  _check_not_empty("F1", targets, predictions)
  targets = np.asarray(targets)
  # A copy: the caller's array must not be rewritten by the invalid fix-up.
  predictions = np.array(predictions)
  if not np.all((targets == 0) | (targets == 1)):
    raise ValueError(f"Binary F1 needs 0/1 targets, got {np.unique(targets)}.")
  invalid = (predictions != 0) & (predictions != 1)
  predictions = np.where(invalid, 1 - targets, predictions)
  tp = int(np.sum((targets == 1) & (predictions == 1)))
  fp = int(np.sum((targets != 1) & (predictions == 1)))
  fn = int(np.sum((targets == 1) & (predictions != 1)))
  return {"f1": 100 * _f1_from_counts(tp, fp, fn)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Returns a metric giving the unweighted mean of the per-class F1 scores.

  Classes are 0..num_classes-1 (sklearn's `labels=range(num_classes)`,
  `average="macro"`). A prediction outside that range (-1 for invalid) is a
  false negative for the true class and a false positive for no class; a
  class that neither occurs nor is predicted contributes an F1 of 0.

  Args:
    num_classes: how many classes the task has (CB: 3).

  Returns:
    fn(targets, predictions) -> {"mean_<num_classes>class_f1": 100 * mean F1},
    which raises ValueError on no examples.
  """
  name = "mean_%dclass_f1" % num_classes

  def metric(targets: Sequence[int],
             predictions: Sequence[int]) -> Dict[str, float]:
    _check_not_empty(name, targets, predictions)
    targets_arr, predictions_arr = np.asarray(targets), np.asarray(predictions)
    scores = []
    for c in range(num_classes):
      is_target, is_prediction = targets_arr == c, predictions_arr == c
      tp = int(np.sum(is_target & is_prediction))
      fp = int(np.sum(~is_target & is_prediction))
      fn = int(np.sum(is_target & ~is_prediction))
      scores.append(_f1_from_counts(tp, fp, fn))
    return {name: 100 * float(np.mean(np.asarray(scores, np.float64)))}

  return metric


def matthews_corrcoef(targets: Sequence[Any],
                      predictions: Sequence[Any]) -> Dict[str, float]:
  """Matthews correlation (x100), sklearn's multiclass generalisation.

  With t_k / p_k the number of targets / predictions equal to label k, c the
  number of correct predictions and s the number of examples:
  MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)),
  and 0 when the denominator is 0 (e.g. every prediction the same label).
  For two labels this is the usual (TP*TN - FP*FN) / sqrt(...) formula. An
  invalid prediction (-1) is just one more label, never equal to a target.

  Raises:
    ValueError: if the lengths differ or there are no examples.
  """
  _check_not_empty("matthews_corrcoef", targets, predictions)
  target_counts = collections.Counter(targets)
  prediction_counts = collections.Counter(predictions)
  # Integer-valued float64 sums are exact (below 2**53), so label order does
  # not change the result.
  labels = set(target_counts) | set(prediction_counts)
  t_sum = np.array([target_counts[k] for k in labels], np.float64)
  p_sum = np.array([prediction_counts[k] for k in labels], np.float64)
  correct = float(sum(bool(t == p) for t, p in zip(targets, predictions)))
  samples = float(len(targets))
  cov_tp = correct * samples - np.dot(t_sum, p_sum)
  cov_pp = samples**2 - np.dot(p_sum, p_sum)
  cov_tt = samples**2 - np.dot(t_sum, t_sum)
  if cov_pp * cov_tt == 0:
    return {"matthews_corrcoef": 0.0}
  return {"matthews_corrcoef": 100 * float(cov_tp / np.sqrt(cov_tt * cov_pp))}


# scipy computes Pearson's r with the array-API `vecdot`, which is numpy's
# `vecdot` ufunc from numpy 2.0 on and a 1-D matmul before it.
_vecdot = getattr(np, "vecdot", np.matmul)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson r of two float64 vectors, with scipy 1.17's `pearsonr` steps.

  The same operations in the same order, so r agrees to the last bit on one
  machine (the dot products' last bits depend on the CPU's BLAS kernel, for
  scipy as for us): centre, scale each vector by its largest magnitude
  before taking the norm (no overflow or underflow at 1e200 or 1e-300),
  divide by the norm, dot, clip to [-1, 1] against rounding; two points
  round r to exactly +-1. A constant input has no correlation: NaN, like a
  NaN input.
  """
  if len(x) < 2:
    raise ValueError("A correlation needs at least 2 examples.")
  if np.all(x == x[0]) or np.all(y == y[0]):
    return float("nan")
  with np.errstate(invalid="ignore", divide="ignore"):
    xm, ym = x - np.mean(x), y - np.mean(y)
    x_max, y_max = np.max(np.abs(xm)), np.max(np.abs(ym))
    # `axis=-1`, as scipy passes it: numpy's norm then sums squares with
    # add.reduce, while without an axis it calls dot, rounding differently.
    x_norm = x_max * np.linalg.norm(xm / x_max, axis=-1)
    y_norm = y_max * np.linalg.norm(ym / y_max, axis=-1)
    r = np.clip(_vecdot(xm / x_norm, ym / y_norm), -1.0, 1.0)
  if len(x) == 2:
    r = np.round(r)
  return float(r)


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks; tied values share the mean of the ranks they span."""
  order = np.argsort(values, kind="stable")
  ranks = np.empty(len(values), np.float64)
  start = 0
  sorted_values = values[order]
  while start < len(values):
    end = start + 1
    while end < len(values) and sorted_values[end] == sorted_values[start]:
      end += 1
    # Positions start..end-1 hold ranks start+1..end; their mean (exact: a
    # half-integer far below 2**53, as scipy's rankdata computes it):
    ranks[order[start:end]] = (start + 1 + end) / 2
    start = end
  return ranks


def pearson_corrcoef(targets: Sequence[float],
                     predictions: Sequence[float]) -> Dict[str, float]:
  """Pearson correlation (x100) of two real-valued sequences (STS-B).

  NaN when either side is constant or holds a NaN, as in T5 (scipy).

  Raises:
    ValueError: if the lengths differ or there are fewer than 2 examples
      (scipy's `pearsonr` refuses those too).
  """
  _check_lengths(targets, predictions)
  r = _pearson(np.asarray(targets, np.float64),
               np.asarray(predictions, np.float64))
  return {"pearson_corrcoef": 100 * r}


def spearman_corrcoef(targets: Sequence[float],
                      predictions: Sequence[float]) -> Dict[str, float]:
  """Spearman rank correlation (x100); ties get their average rank.

  Undefined cases are NaN, never an error, as in T5 (scipy's `spearmanr`):
  fewer than 2 examples, a constant side, or a NaN anywhere (a NaN has no
  rank; ranking it last would make up a correlation).

  Raises:
    ValueError: if the lengths differ.
  """
  _check_lengths(targets, predictions)
  nan = {"spearman_corrcoef": float("nan")}
  if len(targets) < 2:
    return nan
  t, p = np.asarray(targets, np.float64), np.asarray(predictions, np.float64)
  if np.all(t == t[0]) or np.all(p == p[0]) or np.isnan(t).any() or (
      np.isnan(p).any()):
    return nan
  # scipy ranks the columns of an [N, 2] array and takes np.corrcoef of its
  # columns; the same layout gives the same BLAS call and the same bits
  # (correlating two separate vectors rounds differently).
  ranks = np.column_stack((_average_ranks(t), _average_ranks(p)))  # [N, 2]
  return {"spearman_corrcoef": 100 * float(
      np.corrcoef(ranks, rowvar=False)[1, 0])}


def all_match(targets: Sequence[Any],
              predictions: Sequence[Any]) -> Dict[str, float]:
  """100 if every prediction equals its target, else 0 (MultiRC's EM).

  Used per question through `mean_group_metric`: a question scores only if
  all of its candidate answers are labelled right. Compared as arrays, like
  T5's `np.array_equal`, so sequences of different lengths never match.
  """
  return {"exact_match": 100 * float(np.array_equal(targets, predictions))}


def mean_group_metric(metric_fn: MetricFn,
                      group_key: str = "group",
                      value_key: str = "value",
                      return_subgroup_scores: bool = False) -> MetricFn:
  """Returns a metric that averages `metric_fn` over groups of examples.

  Targets and predictions are dicts; pairs are grouped by
  `target[group_key]` (in order of first appearance), `metric_fn` runs on the
  `value_key` lists of each group, and each metric is averaged over groups.
  Only meaningful on whole groups: a random subsample that splits a group
  gives a different number.

  Args:
    metric_fn: the per-group metric, e.g. `all_match`.
    group_key: target key holding the group id (MultiRC: the question).
    value_key: key holding the label in targets and predictions.
    return_subgroup_scores: also report each group's score as
      "<group>-<metric>".

  Returns:
    fn(targets, predictions) -> {metric: mean over groups}.
  """
  def metric(targets: Sequence[Dict[str, Any]],
             predictions: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    _check_lengths(targets, predictions)
    groups: Dict[Any, Tuple[List[Any], List[Any]]] = {}
    for target, prediction in zip(targets, predictions):
      group_targets, group_predictions = groups.setdefault(
          target[group_key], ([], []))
      group_targets.append(target[value_key])
      group_predictions.append(prediction[value_key])
    scores: Dict[str, List[float]] = {}
    for group, (group_targets, group_predictions) in groups.items():
      for name, score in metric_fn(group_targets, group_predictions).items():
        scores.setdefault(name, []).append(score)
        if return_subgroup_scores:
          scores.setdefault("%s-%s" % (group, name), []).append(score)
    return {name: float(np.mean(values)) for name, values in scores.items()}

  return metric


def multirc_f1_over_all_answers(
    targets: Sequence[Dict[str, Any]],
    predictions: Sequence[Dict[str, Any]]) -> Dict[str, float]:
  """MultiRC's F1a: binary F1 over every candidate answer of every question.

  Unwraps the `"value"` of MultiRC's target/prediction dicts and applies
  `f1_score_with_invalid`, so the key is "f1".
  """
  return f1_score_with_invalid([t["value"] for t in targets],
                               [p["value"] for p in predictions])


def invalid_rate(labels: Sequence[str]) -> MetricFn:
  """Returns a metric: the percentage of predictions that name no class.

  Not a T5 metric; it tells how often a prompt makes the frozen model answer
  outside the label set, which accuracy alone hides. A prediction is invalid
  when it is a class id outside 0..len(labels)-1 (postprocessors map such
  outputs to -1), a string that is not one of `labels` (a task without a
  class-id postprocessor), or a MultiRC-style dict whose `"value"` is either.
  An empty evaluation has no invalid predictions: 0.

  Args:
    labels: the task's label strings, in class-id order.

  Returns:
    fn(targets, predictions) -> {"invalid_prediction_rate": percent}.
  """
  label_set = frozenset(labels)
  num_classes = len(labels)

  def is_invalid(prediction: Any) -> bool:
    if isinstance(prediction, dict):
      prediction = prediction["value"]
    if isinstance(prediction, bytes):
      prediction = prediction.decode("utf-8")
    if isinstance(prediction, str):
      return prediction not in label_set
    return prediction not in range(num_classes)

  def metric(targets: Sequence[Any],
             predictions: Sequence[Any]) -> Dict[str, float]:
    del targets  # Validity depends on the prediction alone.
    if not predictions:
      return {"invalid_prediction_rate": 0.0}
    invalid = sum(is_invalid(p) for p in predictions)
    return {"invalid_prediction_rate": 100 * (invalid / len(predictions))}

  return metric
