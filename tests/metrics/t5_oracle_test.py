"""Differential test: our metrics and postprocessors give T5 0.9.4's answers.

Every case of `t5_cases.py` (about a thousand: random labels with fixed
seeds, empty and constant columns, NaN, unicode and punctuation-heavy
answers, MultiRC and ReCoRD groups) is scored by ours and compared with what
T5's `t5.evaluation.metrics` / `t5.data.postprocessors` returned on it,
saved in `t5_expected.json` by `make_t5_fixture.py` (T5 cannot be installed
by the `test` extra; that script's docstring says why and how to regenerate).
Equal means the same structure, the same Python types (int is not float,
str is not bytes) and the same bits of every float; a call T5 rejects must
raise the same exception class here. Reads the fixture with the standard
library only: it never skips.
"""

import json
import math
import os
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors
from tests.metrics import t5_cases

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "t5_expected.json")
REGENERATE = ("regenerate it (docs/t5_parity.md): pip install -c "
              ".ci/constraints.txt --no-deps t5==0.9.4 && "
              "python -m tests.metrics.make_t5_fixture")

# Case function name -> ours; `make_t5_fixture.t5_functions` is T5's side.
OURS: Dict[str, Callable[..., Any]] = {
    "accuracy": metrics.accuracy,
    "f1_score_with_invalid": metrics.f1_score_with_invalid,
    "matthews_corrcoef": metrics.matthews_corrcoef,
    "mean_2class_f1": metrics.mean_multiclass_f1(2),
    "mean_3class_f1": metrics.mean_multiclass_f1(3),
    "mean_4class_f1": metrics.mean_multiclass_f1(4),
    "pearson_corrcoef": metrics.pearson_corrcoef,
    "spearman_corrcoef": metrics.spearman_corrcoef,
    "all_match": metrics.all_match,
    "multirc_exact_match": metrics.mean_group_metric(metrics.all_match),
    "multirc_exact_match_with_subgroups": metrics.mean_group_metric(
        metrics.all_match, return_subgroup_scores=True),
    "multirc_f1_over_all_answers": metrics.multirc_f1_over_all_answers,
    "squad": metrics.squad,
    "trivia_qa": metrics.trivia_qa,
    "record": metrics.record,
    "post.string_to_float": postprocessors.string_to_float,
    "post.string_label_to_class_id": postprocessors.string_label_to_class_id,
    "post.multirc": postprocessors.multirc,
    "post.record": postprocessors.record,
    "post.qa": postprocessors.qa_answers,
    "post.wsc_simple": postprocessors.wsc_simple,
}


# Correlations are dot products, whose last bits depend on the CPU: numpy's
# OpenBLAS picks a kernel per CPU at run time, and kernels sum in different
# orders, so T5 itself differs there between machines. Against the fixture
# (made on another machine, maybe) they may differ by a reordered sum of N
# terms of unit vectors, at most N * eps in r; `make_t5_fixture --check`
# compares them live, on one machine, to the bit.
_BLAS_DEPENDENT = ("pearson_corrcoef", "spearman_corrcoef")


def _same(ours: Any, theirs: Any, float_tolerance: float = 0.0) -> bool:
  """Equality of `to_plain` values: types, structure and float bits.

  Floats may differ by `float_tolerance` (absolute); by default not at all.
  """
  if type(ours) is not type(theirs):
    return False
  if isinstance(ours, float):
    # hex() tells -0.0 from 0.0, which == does not.
    return ours.hex() == theirs.hex() or (
        float_tolerance > 0 and abs(ours - theirs) <= float_tolerance)
  if isinstance(ours, dict):
    return ours.keys() == theirs.keys() and all(
        _same(ours[k], theirs[k], float_tolerance) for k in ours)
  if isinstance(ours, list):
    return len(ours) == len(theirs) and all(
        _same(a, b, float_tolerance) for a, b in zip(ours, theirs))
  return ours == theirs


def mismatches(expected: Dict[str, Dict[str, Any]], fn: str = "",
               exact: bool = False) -> List[str]:
  """One line per case (of function `fn`, or all) where ours differs.

  Args:
    expected: case id -> T5's outcome, from the fixture or live.
    fn: only this function's cases; all when empty.
    exact: also the BLAS-dependent floats to the bit (for a live T5 on the
      same machine).
  """
  lines = []
  for case in t5_cases.cases():
    if fn and case.fn != fn:
      continue
    theirs = dict(expected[case.case_id])
    theirs.pop("digest", None)
    ours = t5_cases.outcome(OURS[case.fn], case)
    tolerance = 0.0
    if case.fn in _BLAS_DEPENDENT and not exact:
      # In percent: N * eps in r is 100 * N * eps points.
      tolerance = 100 * len(case.args[0]) * np.finfo(np.float64).eps
    same = _same(ours, theirs, tolerance)
    if case.differs and same:
      lines.append(f"{case.case_id}: documented as differing ("
                   f"{case.differs}) but equal: {ours}; update the case and "
                   "docs/t5_parity.md")
    elif not case.differs and not same:
      lines.append(f"{case.case_id}: ours {ours}, T5 {theirs}")
  return lines


def _fixture() -> Dict[str, Dict[str, Any]]:
  with open(FIXTURE, encoding="utf-8") as f:
    return json.load(f)["cases"]


def test_fixture_is_from_these_cases():
  expected = _fixture()
  cases = {c.case_id: c.digest() for c in t5_cases.cases()}
  assert sorted(expected) == sorted(cases), f"cases changed; {REGENERATE}"
  stale = [k for k, digest in cases.items()
           if expected[k]["digest"] != digest]
  assert not stale, f"inputs of {stale[:5]} changed; {REGENERATE}"


def test_every_function_is_compared():
  assert set(OURS) == set(t5_cases.METRICS) | set(t5_cases.POSTPROCESSORS)
  # Both ways of failing are exercised, not just returned values.
  outcomes = _fixture().values()
  assert sum("raises" in o for o in outcomes) >= 15
  assert sum(o.get("value", {}) == {"spearman_corrcoef": {"float": "nan"}}
             for o in outcomes) >= 5


@pytest.mark.parametrize("fn", t5_cases.METRICS + t5_cases.POSTPROCESSORS)
def test_same_as_t5(fn):
  lines = mismatches(_fixture(), fn)
  assert not lines, f"{len(lines)} cases differ from T5:\n" + "\n".join(
      lines[:20])


def test_float_comparison_is_bitwise():
  # The comparison itself: 0.0 and -0.0, 1 and 1.0, "x" and b"x" differ.
  assert not _same(0.0, -0.0)
  assert not _same(1, 1.0)
  assert not _same("x", t5_cases.to_plain(b"x"))
  assert not _same(100.0, math.nextafter(100.0, 0.0))
  assert _same(100.0, math.nextafter(100.0, 0.0), float_tolerance=1e-13)
  assert _same(t5_cases.to_plain(float("nan")), {"float": "nan"})
  assert not _same(t5_cases.to_plain(float("nan")), 0.0, float_tolerance=1.0)
