"""Postprocessors on str and bytes, called the way seqio calls them.

Examples are dicts of numpy values as seqio hands them over (strings as
bytes, ids as numpy integers); targets must come out as plain Python values
the metrics can group and hash. The last test chains a postprocessor into
its metric.
"""

import numpy as np

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors


def test_string_label_to_class_id():
  labels = ("False", "True")
  assert postprocessors.string_label_to_class_id("True", labels) == 1
  assert postprocessors.string_label_to_class_id(b"False", labels) == 0
  # Exact match only: case and surrounding space make it invalid.
  assert postprocessors.string_label_to_class_id("true", labels) == -1
  assert postprocessors.string_label_to_class_id(" True", labels) == -1
  assert postprocessors.string_label_to_class_id("x", labels, default=7) == 7


def test_class_labels_accepts_seqio_keywords():
  postprocess = postprocessors.class_labels(["entailment", "not_entailment"])
  assert postprocess(b"not_entailment", example={}, is_target=True) == 1
  assert postprocess("entailment", example={"idx": np.int32(3)}) == 0
  assert postprocess("neutral") == postprocessors.INVALID_CLASS


def test_string_to_float():
  assert postprocessors.string_to_float("3.5") == 3.5
  assert postprocessors.string_to_float(b"2") == 2.0
  assert postprocessors.string_to_float("four") == -1.0
  assert postprocessors.string_to_float("four", default=0.0) == 0.0
  assert postprocessors.string_to_float("1", example={}, is_target=True) == 1.0


def test_multirc():
  example = {"idx/question": np.int32(4), "idx/answer": np.int32(9)}
  target = postprocessors.multirc(b"True", example=example, is_target=True)
  assert target == {"value": 1, "group": 4}
  # A Python int (numpy integers are not `int`), hashable and JSON-able.
  assert isinstance(target["group"], int)
  assert postprocessors.multirc("False", example=example) == {"value": 0}
  assert postprocessors.multirc("Maybe", example=example) == {"value": -1}


def _record_example():
  return {
      "answers": np.array([b"Obama", "Barack Obama".encode()], dtype=object),
      "idx/passage": np.int64(3),
      "idx/query": np.int64(5),
  }


def test_record():
  target = postprocessors.record(b"unused", example=_record_example(),
                                 is_target=True)
  assert target == {"value": ["Obama", "Barack Obama"], "group": (3, 5)}
  assert all(isinstance(g, int) for g in target["group"])
  assert postprocessors.record(b"Obama", example=_record_example()) == {
      "value": "Obama"}


def test_qa_answers():
  example = {"answers": np.array([b"Paris", "París".encode("utf-8")],
                                 dtype=object)}
  assert postprocessors.qa_answers("x", example=example, is_target=True) == [
      "Paris", "París"]
  assert postprocessors.qa_answers(b"Paris", example=example) == "Paris"


def test_wsc_simple():
  example = {"targets_pretokenized": b"The big dog", "label": np.int64(1)}
  def predict(text):
    return postprocessors.wsc_simple(text, example=example)
  assert postprocessors.wsc_simple("", example=example, is_target=True) == 1
  assert predict("dog") == 1  # A subset of the candidate's words.
  assert predict(b"A Big Dog") == 1  # Case and determiners ignored.
  assert predict("his big brown dog") == 1  # A superset.
  assert predict("the big dog's bone") == 0  # Possessive on one side only.
  assert predict("cat") == 0
  # Nothing left after cleaning: -1, never equal to a 0 label.
  assert predict("") == -1 and predict("  The ") == -1
  possessive = {"targets_plaintext": b"Bob's hat", "label": np.int64(0)}
  assert postprocessors.wsc_simple("bob's hat", example=possessive) == 1
  assert postprocessors.wsc_simple("Bob", example=possessive) == 0


def test_postprocessed_multirc_feeds_its_metrics():
  outputs = [("True", 1, 0), ("False", 1, 0), ("True", 1, 1), ("junk", 1, 1)]
  targets, predictions = [], []
  for output, label, question in outputs:
    example = {"idx/question": np.int64(question)}
    targets.append(postprocessors.multirc(
        ["False", "True"][label], example=example, is_target=True))
    predictions.append(postprocessors.multirc(output, example=example))
  # Question 0: (1, 1) vs (1, 0) -> 0. Question 1: (1, 1) vs (1, -1) -> 0.
  em = metrics.mean_group_metric(metrics.all_match)(targets, predictions)
  assert em == {"exact_match": 0.0}
  # F1a: predictions (1, 0, 1, -1 -> 0) on four positives: TP 2, FN 2 ->
  # 4 / (4 + 2) = 2/3.
  f1 = metrics.multirc_f1_over_all_answers(targets, predictions)["f1"]
  assert abs(f1 - 200 / 3) < 1e-9
  rate = metrics.invalid_rate(("False", "True"))(targets, predictions)
  assert rate == {"invalid_prediction_rate": 25.0}
