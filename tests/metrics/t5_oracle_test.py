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
from tests import float_fixtures
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


# Correlations are dot products whose last bits depend on the CPU (numpy's
# OpenBLAS picks a kernel per CPU at run time, and kernels sum in different
# orders), so T5 itself differs there between machines. Near r = 0 a
# relative tolerance means nothing: a reordered sum of N terms of unit
# vectors moves r by at most N * eps, 100 * N * eps percentage points.
_BLAS_DEPENDENT = ("pearson_corrcoef", "spearman_corrcoef")


def tolerance(case: t5_cases.Case, exact: bool = False) -> Dict[str, float]:
  """`float_fixtures.differences`' tolerances for comparing this case.

  Args:
    case: the case.
    exact: bit for bit (a live T5 beside ours, on the same machine);
      otherwise within what another CPU's kernels can change (a fixture).
  """
  if exact:
    return {"rel": 0.0, "abs_": 0.0}
  floor = 0.0
  if case.fn in _BLAS_DEPENDENT:
    floor = 100 * len(case.args[0]) * np.finfo(np.float64).eps
  return {"rel": float_fixtures.REL_TOL, "abs_": floor}


def mismatches(expected: Dict[str, Dict[str, Any]], fn: str = "",
               exact: bool = False) -> List[str]:
  """One line per case (of function `fn`, or all) where ours differs.

  Args:
    expected: case id -> T5's outcome, from the fixture or live.
    fn: only this function's cases; all when empty.
    exact: every float to the bit (for a live T5 on the same machine);
      otherwise within `tolerance` (for a fixture from another machine).
  """
  lines = []
  for case in t5_cases.cases():
    if fn and case.fn != fn:
      continue
    theirs = dict(expected[case.case_id])
    theirs.pop("digest", None)
    ours = t5_cases.outcome(OURS[case.fn], case)
    same = float_fixtures.same(ours, theirs, **tolerance(case, exact))
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


def test_fixture_tolerance_is_tight_and_exact_is_bitwise():
  pearson = next(c for c in t5_cases.cases()
                 if c.fn == "pearson_corrcoef" and len(c.args[0]) > 100)
  accuracy = next(c for c in t5_cases.cases() if c.fn == "accuracy")
  n = len(pearson.args[0])
  eps = np.finfo(np.float64).eps
  assert tolerance(pearson) == {"rel": 1e-12, "abs_": 100 * n * eps}
  assert tolerance(accuracy) == {"rel": 1e-12, "abs_": 0.0}
  for case in (pearson, accuracy):
    assert tolerance(case, exact=True) == {"rel": 0.0, "abs_": 0.0}
  near = math.nextafter(27.890633016415407, 0.0)
  assert float_fixtures.same(27.890633016415407, near, **tolerance(accuracy))
  assert not float_fixtures.same(27.890633016415407, near,
                                 **tolerance(accuracy, exact=True))
  # Near r = 0 only the correlation's absolute floor accepts a reordering.
  assert float_fixtures.same(1e-15, -1e-15, **tolerance(pearson))
  assert not float_fixtures.same(1e-15, -1e-15, **tolerance(accuracy))
  assert not float_fixtures.same(27.89, 27.8901, **tolerance(pearson))
