"""Extractive-QA metrics: SQuAD-style exact match and token F1, and ReCoRD.

Answers are normalised the way the official SQuAD v1.1 and TriviaQA
evaluation scripts do (and T5 after them) before comparing: lower-case, drop
punctuation, drop the articles a/an/the, collapse whitespace. Each example
may have several gold answers; its score is the best over them. Scores are
percentages under T5's keys ("em", "f1"). ReCoRD repeats a query once per
gold answer, so its metric first keeps a single copy of each (passage, query)
group (`deduplicate_metric`).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from prompt_tuning.metrics.classification import MetricFn

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SQUAD_PUNCTUATION = frozenset(string.punctuation)
# TriviaQA's script also treats typographic quotes, backtick and underscore as
# punctuation, and replaces punctuation by a space rather than deleting it.
_TRIVIA_QA_PUNCTUATION = frozenset(string.punctuation + "‘’´`_")


def _normalize_answer(text: str, punctuation: frozenset, replacement: str
                      ) -> str:
  text = text.lower()
  text = "".join(replacement if ch in punctuation else ch for ch in text)
  # After punctuation removal, so "the." and "(a)" lose their article too;
  # \b keeps words such as "theater" or "anthem" intact.
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def normalize_squad(text: str) -> str:
  """Official SQuAD normalisation: punctuation deleted ("U.S." -> "us")."""
  return _normalize_answer(text, _SQUAD_PUNCTUATION, "")


def normalize_trivia_qa(text: str) -> str:
  """Official TriviaQA normalisation: punctuation becomes a space."""
  return _normalize_answer(text, _TRIVIA_QA_PUNCTUATION, " ").strip()


def _exact_match(target: str, prediction: str) -> float:
  return float(target == prediction)


def _token_f1(target: str, prediction: str) -> float:
  """F1 of the bags of whitespace tokens (repeated tokens count repeatedly)."""
  prediction_tokens = prediction.split()
  target_tokens = target.split()
  common = (collections.Counter(prediction_tokens) &
            collections.Counter(target_tokens))
  num_same = sum(common.values())
  # Also covers an empty prediction or an empty (all-punctuation) answer.
  if num_same == 0:
    return 0.0
  precision = num_same / len(prediction_tokens)
  recall = num_same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def _qa_metrics(targets: Sequence[Sequence[str]],
                predictions: Sequence[str]) -> Dict[str, float]:
  """EM and F1 of already-normalised text, each the max over gold answers."""
  if len(targets) != len(predictions):
    raise ValueError(f"Got {len(targets)} targets but {len(predictions)} "
                     "predictions; they must pair up one to one.")
  em = np.mean([max(_exact_match(t, p) for t in golds)
                for golds, p in zip(targets, predictions)])
  f1 = np.mean([max(_token_f1(t, p) for t in golds)
                for golds, p in zip(targets, predictions)])
  return {"em": 100 * float(em), "f1": 100 * float(f1)}


def _normalized_metric(normalize: Callable[[str], str]) -> MetricFn:
  def metric(targets: Sequence[Sequence[str]],
             predictions: Sequence[str]) -> Dict[str, float]:
    return _qa_metrics([[normalize(t) for t in golds] for golds in targets],
                       [normalize(p) for p in predictions])
  return metric


def squad(targets: Sequence[Sequence[str]],
          predictions: Sequence[str]) -> Dict[str, float]:
  """SQuAD exact match and token F1 (percent), best over the gold answers.

  Args:
    targets: [N] lists of gold answer strings (at least one each).
    predictions: [N] predicted answer strings.

  Returns:
    {"em": ..., "f1": ...}.

  Raises:
    ValueError: if the numbers of targets and predictions differ.
  """
  return _normalized_metric(normalize_squad)(targets, predictions)


def trivia_qa(targets: Sequence[Sequence[str]],
              predictions: Sequence[str]) -> Dict[str, float]:
  """As `squad`, with TriviaQA's answer normalisation."""
  return _normalized_metric(normalize_trivia_qa)(targets, predictions)


def deduplicate_metric(metric_fn: MetricFn,
                       group_key: str = "group",
                       value_key: str = "value") -> MetricFn:
  """Returns a metric that scores only the first example of each group.

  ReCoRD's inputs are repeated once per gold answer, with the same
  `group` (passage, query) and the same list of golds; each query must count
  once. As in T5, the first pair of each group is kept and later ones are
  dropped (repeats have the same input, so a deterministic decoder gives them
  the same prediction anyway).

  Args:
    metric_fn: the metric to run on the kept `value_key` lists.
    group_key: target key holding the group id.
    value_key: key holding the value in targets and predictions.

  Returns:
    fn(targets, predictions) -> metric_fn's result on one pair per group.
  """
  def metric(targets: Sequence[Dict[str, Any]],
             predictions: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    seen = set()
    kept_targets: List[Any] = []
    kept_predictions: List[Any] = []
    for target, prediction in zip(targets, predictions):
      if target[group_key] in seen:
        continue
      seen.add(target[group_key])
      kept_targets.append(target[value_key])
      kept_predictions.append(prediction[value_key])
    return metric_fn(kept_targets, kept_predictions)

  return metric


def record(targets: Sequence[Dict[str, Any]],
           predictions: Sequence[Dict[str, Any]]) -> Dict[str, float]:
  """ReCoRD's SQuAD EM and F1 over one copy of each (passage, query) group.

  Args:
    targets: dicts {"value": [gold answers], "group": (passage, query)}, as
      `prompt_tuning.data.postprocessors.record` makes them.
    predictions: dicts {"value": predicted answer}.

  Returns:
    {"em": ..., "f1": ...}.
  """
  return deduplicate_metric(squad)(targets, predictions)
