"""Postprocessors: decoded model text (or a target) to what metrics compare.

seqio calls a task's `postprocess_fn(text, example=..., is_target=...)` on
every decoded prediction and on every target, where `example` is the
example's features as numpy values (strings as bytes). The functions here
follow the T5 library's postprocessors, so `prompt_tuning.metrics` scores them
exactly as T5 does: a class label becomes its class id, and text that is no
label becomes -1, which every metric counts as wrong. Targets can take richer
values from the example (MultiRC's question id, ReCoRD's and SQuAD's full
lists of gold answers). Inputs may be `str` or UTF-8 `bytes` (T5's take
decoded text only; docs/t5_parity.md lists this and the other small
differences, and tests/metrics/t5_oracle_test.py compares with T5's).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

# The class id of text that names no class; outside every range(num_classes).
INVALID_CLASS = -1

_WSC_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my",
    "our", "some", "that", "the", "their", "these", "this", "those", "which",
    "whose", "your"})


def _text(value: Any) -> str:
  """`str` of a str, UTF-8 bytes, or a 0-d numpy array holding either."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


def string_to_float(string: Any, default: float = -1.,
                    **unused_kwargs: Any) -> float:
  """`float(string)`, or `default` when it is not a number (STS-B)."""
  try:
    return float(string)
  except ValueError:
    return default


def string_label_to_class_id(string_label: Any,
                             label_classes: Sequence[str],
                             default: int = INVALID_CLASS,
                             **unused_kwargs: Any) -> int:
  """Index of `string_label` in `label_classes`, else `default`.

  Matching is exact (no case folding or stripping), as in T5.
  """
  label = _text(string_label)
  label_classes = list(label_classes)
  return label_classes.index(label) if label in label_classes else default


def class_labels(label_classes: Sequence[str],
                 default: int = INVALID_CLASS) -> Callable[..., int]:
  """A seqio postprocessor mapping text to its class id in `label_classes`.

  A `functools.partial` rather than a closure so the task's postprocessor is
  printable and picklable; it takes (and ignores) seqio's `example` and
  `is_target` keywords.
  """
  return functools.partial(string_label_to_class_id,
                           label_classes=tuple(label_classes), default=default)


def multirc(string_label: Any, example: Optional[Mapping[str, Any]] = None,
            is_target: bool = False) -> Dict[str, int]:
  """MultiRC: {"value": 0/1 class id (-1 invalid)} plus the target's group.

  Targets also carry "group", the question id, because MultiRC's exact match
  is computed per question (`metrics.mean_group_metric`) and predictions
  alone cannot say which question they answer.
  """
  result = {"value": string_label_to_class_id(string_label,
                                              label_classes=("False", "True"))}
  if is_target:
    result["group"] = int(example["idx/question"])
  return result


def record(answer: Any, example: Optional[Mapping[str, Any]] = None,
           is_target: bool = False) -> Dict[str, Any]:
  """ReCoRD: the answer, or for a target all golds and the (passage, query).

  The group lets `metrics.record` keep one copy of a query that the
  preprocessor repeated once per gold answer.
  """
  if is_target:
    return {"value": [_text(a) for a in example["answers"]],
            "group": (int(example["idx/passage"]), int(example["idx/query"]))}
  return {"value": _text(answer)}


def qa_answers(answer: Any, example: Optional[Mapping[str, Any]] = None,
               is_target: bool = False) -> Any:
  """SQuAD/MRQA: the answer, or for a target the list of all gold answers."""
  if is_target:
    return [_text(a) for a in example["answers"]]
  return _text(answer)


def _wsc_clean(text: Any) -> str:
  """Lower-cases and drops determiners, so "The dog" matches "dog"."""
  words = _text(text).strip().lower().split(" ")
  return " ".join(w for w in words if w not in _WSC_DETERMINERS)


def wsc_simple(prediction: Any, example: Optional[Mapping[str, Any]] = None,
               is_target: bool = False) -> int:
  """WSC: 1 if the prediction names the example's candidate, else 0.

  Each WSC example pairs a pronoun with one candidate noun phrase (the target
  text) and labels whether the candidate is the pronoun's referent; the model
  writes the referent it believes in. The prediction names the candidate when,
  ignoring case and determiners, one's word set contains the other's ("fuzzy
  bunny" for "bunny"), unless exactly one of them is possessive ("Bob" is not
  "Bob's hat"); the metric then compares this 0/1 with the label, which is
  what a target becomes. An empty prediction gives -1 (always wrong).
  """
  if is_target:
    return int(example["label"])
  # seqio keeps the target text as "targets_pretokenized"; T5's older
  # caches call it "targets_plaintext".
  candidate_key = ("targets_pretokenized" if "targets_pretokenized" in example
                   else "targets_plaintext")
  prediction = _wsc_clean(prediction)
  if not prediction:
    # An empty prediction names nobody; -1 never equals a 0/1 label, so it
    # cannot match a "not the referent" label by accident (as T5).
    return -1
  candidate = _wsc_clean(example[candidate_key])
  if ("'" in prediction) != ("'" in candidate):
    return 0
  prediction_words = set(prediction.split(" "))
  candidate_words = set(candidate.split(" "))
  return int(prediction_words <= candidate_words or
             candidate_words <= prediction_words)

