"""Regenerates tests/metrics/t5_expected.json: T5 0.9.4's answers on our cases.

`t5_oracle_test.py` compares our metrics and postprocessors with this file,
so the suite needs no T5. T5 cannot be a dependency of the `test` extra:
t5 0.9.4 requires `seqio-nightly` and `tfds-nightly` (and mesh-tensorflow,
pandas, transformers), and pip would install the two nightlies over seqio
0.0.20 and tensorflow-datasets 4.9.10 (same import names, older code).
Installed without its dependencies, its metric and postprocessor modules
need only packages the `test` extra already pins (scikit-learn, scipy,
sacrebleu, rouge-score, nltk, babel, editdistance, ...), so regenerating
takes one more command in the test env:

  pip install -c .ci/constraints.txt -e ".[test]"
  pip install -c .ci/constraints.txt --no-deps t5==0.9.4
  python -m tests.metrics.make_t5_fixture          # writes the fixture
  python -m tests.metrics.make_t5_fixture --check  # live diff, writes nothing

`--check` scores every case with T5 and with ours in one process and reports
every case where they differ in any bit, and where T5's answer here differs
from the committed fixture beyond the tolerance another CPU's kernels call
for (`t5_oracle_test.tolerance`); it exits 1 if there is one. T5's functions are taken from the same
tables T5's GLUE/SuperGLUE tasks use (`t5.data.glue_utils`), so e.g. CoLA's
MCC is T5's `sklearn_metrics_wrapper("matthews_corrcoef", ...)`. Importing
`t5.data` needs no network: it registers no task and loads no vocabulary.
"""

import argparse
import json
import os
import sys
import warnings
from typing import Any, Callable, Dict

from tests import float_fixtures
from tests.metrics import t5_cases

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "t5_expected.json")


def t5_functions() -> Dict[str, Callable[..., Any]]:
  """Case function name -> T5's function (T5 imported here, not at the top)."""
  # pylint: disable=g-import-not-at-top
  from t5.data import glue_utils
  from t5.data import postprocessors
  from t5.evaluation import metrics
  # pylint: enable=g-import-not-at-top
  cb = glue_utils.get_super_glue_metric("cb")
  multirc = glue_utils.get_super_glue_metric("multirc")
  return {
      "accuracy": metrics.accuracy,
      "f1_score_with_invalid": metrics.f1_score_with_invalid,
      "matthews_corrcoef": glue_utils.get_glue_metric("cola")[0],
      "mean_2class_f1": metrics.mean_multiclass_f1(num_classes=2),
      "mean_3class_f1": cb[0],
      "mean_4class_f1": metrics.mean_multiclass_f1(num_classes=4),
      "pearson_corrcoef": metrics.pearson_corrcoef,
      "spearman_corrcoef": metrics.spearman_corrcoef,
      "all_match": metrics.all_match,
      "multirc_exact_match": multirc[1],
      "multirc_exact_match_with_subgroups": metrics.mean_group_metric(
          metrics.all_match, return_subgroup_scores=True),
      "multirc_f1_over_all_answers": multirc[0],
      "squad": metrics.squad,
      "trivia_qa": metrics.trivia_qa,
      "record": glue_utils.get_super_glue_metric("record")[0],
      "post.string_to_float": postprocessors.string_to_float,
      "post.string_label_to_class_id":
          postprocessors.string_label_to_class_id,
      "post.multirc": postprocessors.multirc,
      "post.record": postprocessors.record,
      "post.qa": postprocessors.qa,
      "post.wsc_simple": postprocessors.wsc_simple,
  }


def t5_outcomes() -> Dict[str, Dict[str, Any]]:
  """case id -> {"digest", and "value" or "raises"} from T5."""
  functions = t5_functions()
  result = {}
  with warnings.catch_warnings():
    # sklearn's and scipy's warnings about undefined scores: expected here.
    warnings.simplefilter("ignore")
    for case in t5_cases.cases():
      fn = functions[case.fn]
      result[case.case_id] = {"digest": case.digest(),
                              **t5_cases.outcome(fn, case)}
  return result


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="diff T5 against ours (and the fixture) live; "
                      "write nothing")
  flags = parser.parse_args()
  import t5  # pylint: disable=g-import-not-at-top
  print(f"t5 {t5.__version__}", file=sys.stderr)
  expected = t5_outcomes()
  if not flags.check:
    with open(FIXTURE, "w", encoding="utf-8") as f:
      json.dump({"t5_version": t5.__version__, "cases": expected}, f,
                indent=0, ensure_ascii=False, allow_nan=False)
      f.write("\n")
    print(f"{FIXTURE}: {len(expected)} cases", file=sys.stderr)
    return 0
  # pylint: disable=g-import-not-at-top
  from tests.metrics import t5_oracle_test
  # pylint: enable=g-import-not-at-top
  with open(FIXTURE, encoding="utf-8") as f:
    committed = json.load(f)["cases"]
  # T5 against the committed fixture, made maybe on another CPU: within the
  # fixture tolerance (docs/t5_parity.md); ours against T5 beside it: exact.
  stale, last_bits = [], 0
  for case in t5_cases.cases():
    key = case.case_id
    if key not in committed or not float_fixtures.same(
        expected[key], committed[key], **t5_oracle_test.tolerance(case)):
      stale.append(key)
    elif key in committed:
      last_bits += float_fixtures.last_bit_differences(expected[key],
                                                       committed[key])
  stale += sorted(k for k in committed if k not in expected)
  mismatches = t5_oracle_test.mismatches(expected, exact=True)
  for line in mismatches:
    print(line)
  print(f"{len(expected)} cases; {len(mismatches)} differ from T5 in any "
        f"bit; {len(stale)} stale in the fixture{': ' if stale else ''}"
        f"{', '.join(stale[:10])}", file=sys.stderr)
  print(f"{float_fixtures.LAST_BITS} {last_bits}", file=sys.stderr)
  return 1 if mismatches or stale else 0


if __name__ == "__main__":
  sys.exit(main())
