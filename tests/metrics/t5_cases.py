"""The inputs of the T5 differential test: generated cases, the same every run.

`t5_oracle_test.py` scores these cases with our metrics and postprocessors
and compares with what T5 0.9.4 (`t5.evaluation.metrics`,
`t5.data.postprocessors`) returned on them, which `make_t5_fixture.py` saved
in `t5_expected.json`. Cases come from `np.random.RandomState` with fixed
seeds (its streams are frozen by NumPy's compatibility policy), plus
hand-picked edges: empty and one-example inputs, constant columns, NaN,
invalid predictions, unicode and punctuation-heavy answers, MultiRC and
ReCoRD groups. Each case has a digest of its inputs, so an edit here that
is not followed by regenerating the fixture fails the test instead of
comparing against stale numbers.

Not a test module itself (pytest collects `*_test.py`); imports numpy only,
so it can run both beside T5 (the fixture script) and without it (the test).
"""

import copy
import dataclasses
import hashlib
import json
import math
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

# Metric names -> the function both sides call. The fixture script and the
# test each map these names to their own implementation.
METRICS = (
    "accuracy", "f1_score_with_invalid", "matthews_corrcoef",
    "mean_2class_f1", "mean_3class_f1", "mean_4class_f1",
    "pearson_corrcoef", "spearman_corrcoef", "all_match",
    "multirc_exact_match", "multirc_exact_match_with_subgroups",
    "multirc_f1_over_all_answers", "squad", "trivia_qa", "record")
# Prefixed: "record" and "multirc" name a metric and a postprocessor.
POSTPROCESSORS = (
    "post.string_to_float", "post.string_label_to_class_id", "post.multirc",
    "post.record", "post.qa", "post.wsc_simple")


@dataclasses.dataclass(frozen=True)
class Case:
  """One call: `fn(*args, **kwargs)` for the function named `fn`.

  For a metric, args are (targets, predictions); for a postprocessor, the
  text, with `example` and `is_target` in kwargs as seqio passes them.
  """
  case_id: str
  fn: str
  args: tuple
  kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # Non-empty for a difference kept on purpose (docs/t5_parity.md lists
  # each with its reason): the test then checks that ours does differ.
  differs: str = ""

  def digest(self) -> str:
    """Short hash of the inputs, to detect a fixture made from other cases."""
    text = json.dumps(to_plain([self.fn, list(self.args), self.kwargs]),
                      sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def to_plain(value: Any) -> Any:
  """A JSON-ready copy that keeps what an exact comparison needs.

  numpy scalars and arrays become Python values and lists; bytes are tagged
  so they never equal the str of the same text; tuples become lists (JSON
  has no tuples: both sides are converted alike, so nothing is lost in the
  comparison); floats stay floats (JSON keeps 1 and 1.0 apart; Python's
  float repr round-trips exactly) and NaN and infinities are tagged, so the
  file is strict JSON.
  """
  if isinstance(value, np.ndarray):
    return [to_plain(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return to_plain(value.item())
  if isinstance(value, bytes):
    return {"bytes": value.decode("utf-8")}
  if isinstance(value, float):
    return value if math.isfinite(value) else {"float": repr(value)}
  if isinstance(value, (list, tuple)):
    return [to_plain(v) for v in value]
  if isinstance(value, dict):
    return {str(k): to_plain(v) for k, v in value.items()}
  return value


# Text pools for the QA and postprocessor cases: articles in several cases,
# words that contain an article ("theater"), unicode letters whose
# lower-casing or \b boundaries are unusual, every ASCII punctuation class,
# typographic quotes (TriviaQA-only punctuation), and unicode whitespace.
_WORDS = [
    "the", "The", "THE", "a", "A", "an", "An", "cat", "Cat", "theater",
    "anthem", "Paris", "paris", "café", "CAFÉ", "naïve", "Ünïcödé", "東京",
    "中国", "İstanbul", "ß", "ΣΑΣ", "ﬁne", "Ⅻ", "🙂", "42", "4.2", "U.S.",
    "rock'n'roll", "‘quoted’", "`tick`", "snake_case", "(a)", "the.", "a,",
    "...", "!!!", "-", "—", "–", "«", "»", "¿", "¡", "l'a", "'s", "x",
    "x-y", "#1", "$5", "%", "&", "*", "+", "/", ":", ";", "<", "=", ">", "?",
    "@", "[", "\\", "]", "^", "{", "|", "}", "~", "´", '"', "an.", "A.",
]
_SEPARATORS = [" ", " ", " ", "  ", "", "\t", "\n", "\u00a0", "\u3000"]
_LABEL_TEXTS = ["True", "False", "true", " True", "True ", "entailment",
                "not_entailment", "neutral", "contradiction", "", "é", "Trüe",
                "0", "1", "-1", "🙂"]
_FLOAT_TEXTS = ["3.5", "-2", " 7 ", "1e3", "-1e-300", "1e400", "nan", "NaN",
                "-inf", "Infinity", "1_000", "٣", "１２", "4,5", "four", "",
                "0x10", ".5", "5.", "+.5e-2", "−1", "1 2", "3.5\n"]
_WSC_WORDS = ["the", "The", "a", "his", "HIS", "Their", "every", "dog",
              "Dog", "big", "Bob", "Bob's", "hat", "hat's", "fuzzy", "bunny",
              "café", "Über", "'", "", " ", "mr.", "Mr."]


def _text(rng: np.random.RandomState, pool: List[str], max_words: int) -> str:
  words = rng.choice(pool, rng.randint(0, max_words + 1)).tolist()
  out = ""
  for i, word in enumerate(words):
    out += (_SEPARATORS[rng.randint(len(_SEPARATORS))] if i else "") + word
  # Leading or trailing whitespace now and then.
  if rng.rand() < 0.2:
    out = " " + out
  if rng.rand() < 0.2:
    out = out + "\t"
  return out


def _classification_cases() -> Iterator[Case]:
  rng = np.random.RandomState(1)
  for i in range(60):
    n = rng.randint(1, 50) if i else 2
    classes = rng.randint(2, 5)
    targets = rng.randint(0, classes, n).tolist()
    predictions = rng.randint(-1, classes + 1, n).tolist()
    for fn in ("accuracy", "matthews_corrcoef",
               "mean_%dclass_f1" % classes):
      yield Case(f"{fn}/random{i}", fn, (targets, predictions))
    binary = [t % 2 for t in targets]
    yield Case(f"f1_score_with_invalid/random{i}", "f1_score_with_invalid",
               (binary, predictions))
  # Evaluation-set sizes (CoLA 1043, CB 56, BoolQ 3270).
  for n in (56, 1043, 3270):
    targets = rng.randint(0, 3, n).tolist()
    predictions = np.where(rng.rand(n) < 0.7, targets,
                           rng.randint(-1, 3, n)).tolist()
    for fn in ("accuracy", "matthews_corrcoef", "mean_3class_f1"):
      yield Case(f"{fn}/size{n}", fn, (targets, predictions))
    binary = [t % 2 for t in targets]
    yield Case(f"f1_score_with_invalid/size{n}", "f1_score_with_invalid",
               (binary, predictions))
  # Labels that are strings (custom tasks without a class-id postprocessor).
  for i in range(10):
    n = rng.randint(1, 30)
    targets = rng.choice(_LABEL_TEXTS[:9], n).tolist()
    predictions = rng.choice(_LABEL_TEXTS, n).tolist()
    for fn in ("accuracy", "matthews_corrcoef"):
      yield Case(f"{fn}/strings{i}", fn, (targets, predictions))
  edges = {
      "empty": ([], []),
      "one_right": ([1], [1]),
      "one_wrong": ([1], [0]),
      "one_invalid": ([0], [-1]),
      "constant_targets": ([1] * 6, [1, 0, 1, 1, 0, 1]),
      "constant_predictions": ([0, 1, 1, 0, 1], [1] * 5),
      "both_constant_same": ([0] * 4, [0] * 4),
      "both_constant_other": ([0] * 4, [1] * 4),
      "all_invalid": ([0, 1, 1, 0], [-1] * 4),
      "all_zero_targets_invalid": ([0, 0, 0], [-1, 5, 0]),
      "no_positive": ([0, 0, 0], [0, 0, 0]),
      "perfect": ([0, 1, 0, 1, 1], [0, 1, 0, 1, 1]),
      "inverted": ([0, 1, 0, 1, 1], [1, 0, 1, 0, 0]),
      "numpy": (np.array([0, 1, 1, 0, 1, 0]), np.array([0, 1, 0, 0, -1, 1])),
      "length_mismatch": ([0, 1], [0]),
  }
  for name, (targets, predictions) in edges.items():
    for fn in ("accuracy", "f1_score_with_invalid", "matthews_corrcoef",
               "mean_2class_f1", "mean_3class_f1"):
      differs = ""
      if name == "length_mismatch" and fn == "f1_score_with_invalid":
        differs = ("T5's invalid-prediction fix-up indexes with a mask of "
                   "the wrong length (IndexError); ours says the lengths "
                   "differ (ValueError)")
      yield Case(f"{fn}/{name}", fn, (targets, predictions), differs=differs)
  # sklearn also checks the kind of labels; ours compares any labels.
  label_kinds = {
      "mixed_types": ([0, 1, 1], ["0", "1", 1]),
      "continuous": ([0.5, 1.5, 2.0], [0.5, 2.5, 2.0]),
  }
  for name, (targets, predictions) in label_kinds.items():
    for fn in ("accuracy", "matthews_corrcoef"):
      yield Case(f"{fn}/{name}", fn, (targets, predictions), differs=(
          "sklearn rejects labels that mix strings and numbers or are "
          "non-integer floats (ValueError); ours compares them with =="))
  # Targets outside the binary label set: both sides must refuse.
  yield Case("f1_score_with_invalid/target_2", "f1_score_with_invalid",
             ([0, 1, 2], [0, 1, 1]))
  yield Case("f1_score_with_invalid/target_minus_1", "f1_score_with_invalid",
             ([-1, 0, 0], [0, 0, 1]))
  # Absent classes: class 2 (and 3) neither occurs nor is predicted.
  yield Case("mean_3class_f1/absent_class", "mean_3class_f1",
             ([0, 1, 1, 0], [0, 1, 0, 0]))
  yield Case("mean_4class_f1/absent_classes", "mean_4class_f1",
             ([0, 1], [1, 1]))
  # A target outside range(num_classes) is no class of the metric's.
  yield Case("mean_2class_f1/target_outside", "mean_2class_f1",
             ([0, 1, 2, 2], [0, 2, 2, 1]))


def _correlation_cases() -> Iterator[Case]:
  rng = np.random.RandomState(2)
  for i in range(40):
    n = rng.randint(3, 60)
    kind = i % 4
    if kind == 0:  # STS-B-like: scores 0..5 in steps of 0.2, many ties.
      targets = (rng.randint(0, 26, n) / 5).tolist()
      predictions = (rng.randint(0, 26, n) / 5).tolist()
    elif kind == 1:  # Continuous, correlated.
      targets = rng.randn(n).tolist()
      predictions = (np.asarray(targets) + rng.randn(n)).tolist()
    elif kind == 2:  # Integers with heavy ties and the -1 of unparsable text.
      targets = rng.randint(0, 4, n).tolist()
      predictions = rng.randint(-1, 3, n).tolist()
    else:  # Wide dynamic range.
      targets = (rng.randn(n) * 10.0 ** rng.randint(-150, 150)).tolist()
      predictions = (rng.randn(n) * 10.0 ** rng.randint(-150, 150)).tolist()
    for fn in ("pearson_corrcoef", "spearman_corrcoef"):
      yield Case(f"{fn}/random{i}", fn, (targets, predictions))
  # STS-B's validation size and a few others past BLAS kernels' block sizes.
  for n in (31, 32, 33, 257, 1500):
    targets = (rng.randint(0, 26, n) / 5).tolist()
    predictions = (np.asarray(targets) + 2 * rng.rand(n) - 1).tolist()
    for fn in ("pearson_corrcoef", "spearman_corrcoef"):
      yield Case(f"{fn}/size{n}", fn, (targets, predictions))
  nan, inf = float("nan"), float("inf")
  edges = {
      "empty": ([], []),
      "one": ([1.0], [2.0]),
      "two_up": ([1.0, 2.0], [3.0, 5.0]),
      "two_down": ([1.0, 3.0], [5.0, 2.0]),
      "two_tied": ([1.0, 1.0], [5.0, 2.0]),
      "three": ([0.2, 0.4, 4.6], [1.0, 0.0, 5.0]),
      "constant_targets": ([2.0] * 5, [1.0, 2.0, 3.0, 5.0, 4.0]),
      "constant_predictions": ([1.0, 2.0, 3.0, 4.0], [-1.0] * 4),
      "both_constant": ([3.0] * 3, [3.0] * 3),
      "constant_with_negative_zero": ([0.0, -0.0, 0.0], [1.0, 2.0, 3.0]),
      "ints": ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]),
      "nan_prediction": ([1.0, 2.0, 3.0, 4.0], [1.0, nan, 2.0, 3.0]),
      "all_nan": ([1.0, 2.0, 3.0], [nan, nan, nan]),
      "nan_in_both": ([nan, 2.0, 3.0], [1.0, 2.0, nan]),
      "inf_prediction": ([1.0, 2.0, 3.0], [1.0, inf, 2.0]),
      "nearly_constant": ([1.0, 1.0 + 2e-16, 1.0 + 4e-16, 1.0],
                          [0.1, 0.3, 0.2, 0.5]),
      "huge": ([-5e210, 5e210, 3e200, -3e200], [1.0, 2.0, 3.0, 4.0]),
      "tiny": ([1e-300, 2e-300, 4e-300, 3e-300], [1.0, 3.0, 2.0, 4.0]),
      "monotone_not_linear": ([1.0, 2.0, 3.0, 4.0], [1.0, 10.0, 1e3, 1e6]),
      "float_ties": ([0.1 + 0.2, 0.3, 0.3], [1.0, 2.0, 3.0]),
      "length_mismatch": ([1.0, 2.0, 3.0], [1.0, 2.0]),
  }
  for name, (targets, predictions) in edges.items():
    for fn in ("pearson_corrcoef", "spearman_corrcoef"):
      yield Case(f"{fn}/{name}", fn, (targets, predictions))
  targets = np.array([0.2, 0.4, 4.6, 3.0], np.float32)
  predictions = np.array([1.0, 0.0, 5.0, 2.5], np.float32)
  yield Case("pearson_corrcoef/float32", "pearson_corrcoef",
             (targets, predictions), differs=(
                 "scipy keeps float32 input in float32; ours computes in "
                 "float64 (seqio passes Python floats)"))
  yield Case("spearman_corrcoef/float32", "spearman_corrcoef",
             (targets, predictions))


def _multirc_pairs(rng: np.random.RandomState, n: int, string_groups: bool
                   ) -> tuple:
  num_questions = rng.randint(1, max(2, n // 2))
  groups = rng.randint(0, num_questions, n)
  targets, predictions = [], []
  for g in groups.tolist():
    group = f"q{g}-ü" if string_groups else g
    targets.append({"value": int(rng.randint(0, 2)), "group": group})
    predictions.append({"value": int(rng.randint(-1, 3))})
  return targets, predictions


def _multirc_cases() -> Iterator[Case]:
  rng = np.random.RandomState(3)
  fns = ("multirc_exact_match", "multirc_exact_match_with_subgroups",
         "multirc_f1_over_all_answers")
  for i in range(30):
    args = _multirc_pairs(rng, rng.randint(1, 40), string_groups=i % 3 == 0)
    for fn in fns:
      yield Case(f"{fn}/random{i}", fn, args)
  # Every answer right within each question / all questions wrong / empty.
  right = ([{"value": v, "group": g} for g, v in
            [(0, 1), (0, 0), (1, 1), (2, 0), (1, 0)]],
           [{"value": v} for v in (1, 0, 1, 0, 0)])
  wrong = ([{"value": 1, "group": 5}, {"value": 0, "group": 6}],
           [{"value": -1}, {"value": 1}])
  for name, args in (("all_right", right), ("all_wrong", wrong),
                     ("empty", ([], []))):
    for fn in fns:
      yield Case(f"{fn}/{name}", fn, args)
  # One prediction short: the last question loses an answer in T5's zip.
  short = (right[0], right[1][:-1])
  for fn in fns[:2]:
    yield Case(f"{fn}/length_mismatch", fn, short, differs=(
        "T5's zip drops unpaired targets and scores the rest; ours "
        "raises ValueError (a missing prediction changes a question's "
        "exact match)"))
  yield Case(f"{fns[2]}/length_mismatch", fns[2], short, differs=(
      "as f1_score_with_invalid: IndexError in T5, ValueError here"))
  for i in range(20):
    n = rng.randint(0, 6)
    targets = rng.randint(0, 2, n).tolist()
    predictions = (rng.randint(0, 2, n + rng.randint(0, 2))).tolist()
    if rng.rand() < 0.5:
      predictions = list(targets)
    yield Case(f"all_match/random{i}", "all_match", (targets, predictions))


def _qa_cases() -> Iterator[Case]:
  rng = np.random.RandomState(4)
  for i in range(60):
    n = rng.randint(1, 12)
    targets = [[_text(rng, _WORDS, 5) for _ in range(rng.randint(1, 4))]
               for _ in range(n)]
    predictions = []
    for golds in targets:
      choice = rng.rand()
      if choice < 0.3:  # A gold with its case, spacing or punctuation changed.
        gold = golds[rng.randint(len(golds))]
        predictions.append(gold.upper() if rng.rand() < 0.5 else
                           "  " + gold.replace(" ", " , ") + ".")
      elif choice < 0.6:  # Overlapping words.
        gold = golds[rng.randint(len(golds))].split()
        predictions.append(" ".join(gold[:rng.randint(0, len(gold) + 1)] +
                                    rng.choice(_WORDS, 2).tolist()))
      else:
        predictions.append(_text(rng, _WORDS, 5))
    for fn in ("squad", "trivia_qa"):
      yield Case(f"{fn}/random{i}", fn, (targets, predictions))
  edges = {
      "empty": ([], []),
      "empty_prediction": ([["the cat"]], [""]),
      "punctuation_only": ([["!!!"]], [""]),
      "articles_only": ([["The a an"]], ["an"]),
      "repeated_tokens": ([["the cat sat on the mat"]], ["cat cat sat"]),
      "unicode_quotes": ([["‘rock_n_roll’"]], ["rock n roll"]),
      "no_golds": ([[]], ["x"]),
      "length_mismatch": ([["a"], ["b"]], ["a"]),
  }
  for name, args in edges.items():
    for fn in ("squad", "trivia_qa"):
      yield Case(f"{fn}/{name}", fn, args)


def _record_cases() -> Iterator[Case]:
  rng = np.random.RandomState(5)
  for i in range(30):
    targets, predictions = [], []
    for query in range(rng.randint(1, 8)):
      golds = [_text(rng, _WORDS, 3) for _ in range(rng.randint(1, 4))]
      group = (int(rng.randint(0, 3)), query)
      # The preprocessor repeats a query once per gold answer; the copies
      # may be interleaved with other queries' and get other predictions.
      for _ in range(len(golds)):
        targets.append({"value": golds, "group": group})
        predictions.append({"value": golds[rng.randint(len(golds))]
                                     if rng.rand() < 0.5 else
                                     _text(rng, _WORDS, 3)})
    order = rng.permutation(len(targets))
    targets = [targets[j] for j in order]
    predictions = [predictions[j] for j in order]
    yield Case(f"record/random{i}", "record", (targets, predictions))
  yield Case("record/empty", "record", ([], []))


def _postprocessor_cases() -> Iterator[Case]:
  rng = np.random.RandomState(6)
  for text in _FLOAT_TEXTS:
    fn = "post.string_to_float"
    yield Case(f"{fn}/{text!r}", fn, (text,))
    yield Case(f"{fn}/{text!r}/default0", fn, (text,), {"default": 0.0})
  fn = "post.string_label_to_class_id"
  label_sets = [("False", "True"), ("entailment", "not_entailment"),
                ("entailment", "neutral", "contradiction"), ("é", "🙂")]
  for labels in label_sets:
    for text in _LABEL_TEXTS:
      yield Case(f"{fn}/{labels}/{text!r}", fn, (text,),
                 {"label_classes": labels})
  yield Case(f"{fn}/default7", fn, ("maybe",),
             {"label_classes": ("no", "yes"), "default": 7})
  bytes_reason = ("T5 expects decoded text (seqio decodes); bytes are no "
                  "label there (-1) and stay bytes, ours decodes them")
  yield Case(f"{fn}/bytes", fn, (b"True",),
             {"label_classes": ("False", "True")}, differs=bytes_reason)
  yield Case("post.string_to_float/bytes", "post.string_to_float", (b"2.5",))
  fn = "post.multirc"
  for i, text in enumerate(_LABEL_TEXTS):
    example = {"idx/question": np.int32(i), "idx/answer": np.int32(2 * i),
               "idx/paragraph": np.int32(0)}
    for is_target in (False, True):
      yield Case(f"{fn}/{text!r}/{is_target}", fn, (text,),
                 {"example": example, "is_target": is_target})
  for i in range(15):
    answers = [_text(rng, _WORDS, 3) for _ in range(rng.randint(1, 4))]
    example = {"answers": np.array([a.encode("utf-8") for a in answers],
                                   dtype=object),
               "idx/passage": np.int64(rng.randint(100)),
               "idx/query": np.int64(rng.randint(100))}
    prediction = _text(rng, _WORDS, 3)
    for fn in ("post.record", "post.qa"):
      for is_target in (False, True):
        yield Case(f"{fn}/random{i}/{is_target}", fn, (prediction,),
                   {"example": example, "is_target": is_target})
  yield Case("post.multirc/bytes", "post.multirc", (b"True",),
             {"example": {"idx/question": np.int32(3)}, "is_target": False},
             differs=bytes_reason)
  yield Case("post.record/bytes", "post.record", (b"Obama",),
             {"example": {}, "is_target": False}, differs=bytes_reason)
  yield Case("post.qa/bytes", "post.qa", (b"Paris",),
             {"example": {}, "is_target": False}, differs=bytes_reason)
  fn = "post.wsc_simple"
  yield Case(f"{fn}/bytes", fn, (b"The big DOG",),
             {"example": {"targets_pretokenized": b"big dog",
                          "label": np.int64(0)}, "is_target": False})
  yield Case(f"{fn}/targets_plaintext", fn, ("dog",),
             {"example": {"targets_plaintext": b"The dog",
                          "label": np.int64(1)}, "is_target": False},
             differs=("T5 reads only `targets_pretokenized` (KeyError "
                      "here); ours falls back to the `targets_plaintext` of "
                      "T5's older cached datasets"))
  for i in range(80):
    candidate = _wsc_phrase(rng)
    prediction = _wsc_phrase(rng) if rng.rand() < 0.7 else candidate.upper()
    example = {"targets_pretokenized": candidate.encode("utf-8"),
               "label": np.int64(rng.randint(0, 2))}
    yield Case(f"{fn}/random{i}", fn, (prediction,),
               {"example": example, "is_target": False})
  example = {"targets_pretokenized": b"The big dog", "label": np.int64(1)}
  for name, prediction in (("empty", ""), ("only_determiners", "the a his"),
                           ("spaces", "   "), ("target", "ignored")):
    yield Case(f"{fn}/{name}", fn, (prediction,),
               {"example": example, "is_target": name == "target"})


def _wsc_phrase(rng: np.random.RandomState) -> str:
  words = rng.choice(_WSC_WORDS, rng.randint(0, 4)).tolist()
  return " ".join(words)


def cases() -> List[Case]:
  """Every case, in a fixed order; case ids are unique."""
  result = [*_classification_cases(), *_correlation_cases(),
            *_multirc_cases(), *_qa_cases(), *_record_cases(),
            *_postprocessor_cases()]
  ids = [c.case_id for c in result]
  assert len(ids) == len(set(ids)), "case ids must be unique"
  assert {c.fn for c in result} == set(METRICS) | set(POSTPROCESSORS)
  return result


def outcome(fn: Any, case: Case) -> Dict[str, Any]:
  """What a call returned ({"value": plain}) or raised ({"raises": name}).

  The call gets a deep copy of the inputs: T5's F1 rewrites a numpy
  predictions array in place, which must not leak into the next case.
  """
  args, kwargs = copy.deepcopy((case.args, case.kwargs))
  try:
    value = fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    return {"raises": type(e).__name__}
  return {"value": to_plain(value)}


def find(case_id: str) -> Optional[Case]:
  """The case with this id (for debugging a single mismatch)."""
  return next((c for c in cases() if c.case_id == case_id), None)
