"""Our task definitions against T5's own, on the same generated examples.

A differential test with the T5 library (t5 0.9.4, whose tasks produced the
paper's and T5's numbers) as the oracle, through what T5 made of the
examples of `t5_format_cases` (`t5_format_expected.json`, written by
`make_t5_format_fixture.py`: T5 cannot be installed by the `test` extra, see
docs/t5_parity.md). It reads the fixture with the standard library and
never skips. For every GLUE, SuperGLUE, WSC, DPR, SQuAD and MRQA task, plain
and taskless, it checks:
- formats: our text preprocessors turn the examples into exactly T5's rows,
  every feature equal (a taskless twin: T5's task, then the official
  prompt-tuning `remove_first_text_token`; MRQA, which T5 lacks: T5's
  `squad` formatting under the official `mrqa`'s keys);
- postprocessors and metrics: on T5's rows and the recorded predictions,
  our postprocessor and metric list give T5's metric names and values (ours
  add `invalid_prediction_rate`, a diagnostic T5 lacks, and nothing else);
- definitions: the TFDS dataset and version (and the splits where T5 names
  them), and the GLUE and SuperGLUE mixtures' members and rates.
"""

import json
import os

import pytest
import seqio

from prompt_tuning.data import registry
from tests import float_fixtures
from tests.data import t5_format_cases as cases
from tests.data.make_t5_format_fixture import SCORE_FLOOR

registry.import_builtin(("glue", "mrqa", "super_glue"))
from prompt_tuning.tasks import mrqa  # pylint: disable=g-import-not-at-top,g-bad-import-order

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "t5_format_expected.json")
REGENERATE = ("regenerate it: pip install -c .ci/constraints.txt --no-deps "
              "t5==0.9.4 && python -m tests.data.make_t5_format_fixture")
with open(FIXTURE, encoding="utf-8") as _f:
  EXPECTED = json.load(_f)
_IDS = [c.name for c in cases.CASES]
# Invalid-prediction rate: ours only, wherever the task has a metric.
_OURS_ONLY = "invalid_prediction_rate"


def _task(name):
  return seqio.get_mixture_or_task(name)


def test_fixture_is_t5s_answer_on_todays_examples():
  assert EXPECTED["t5_version"] == "0.9.4"
  assert sorted(EXPECTED["cases"]) == sorted(_IDS), REGENERATE
  assert sorted(EXPECTED["mrqa"]) == sorted(cases.MRQA_CONFIGS), REGENERATE
  for case in cases.CASES:
    assert EXPECTED["cases"][case.name]["examples"] == cases.digest(
        cases.examples(case.dataset)), f"{case.name}: {REGENERATE}"
  for config in cases.MRQA_CONFIGS:
    assert EXPECTED["mrqa"][config]["examples"] == cases.digest(
        cases.examples(f"mrqa/{config}")), f"mrqa/{config}: {REGENERATE}"


def test_cases_cover_every_task_t5_defines_too():
  families = ("glue", "taskless_glue", "super_glue", "taskless_super_glue")
  tasks = {i.name for i in registry.infos() if i.family in families and
           i.kind == "task"}
  assert tasks | {mrqa.SQUAD} == set(_IDS)
  assert cases.MRQA_CONFIGS == mrqa.IN_DOMAIN + mrqa.OUT_OF_DOMAIN


@pytest.mark.parametrize("case", cases.CASES, ids=_IDS)
def test_formats_equal_t5(case):
  expected = EXPECTED["cases"][case.name]["rows"]
  actual = cases.run(cases.text_steps(_task(case.name)),
                     cases.examples(case.dataset))
  assert len(actual) == len(expected)
  for got, want in zip(actual, expected):
    assert got == want


@pytest.mark.parametrize("config", cases.MRQA_CONFIGS)
def test_mrqa_format_equals_t5_squad_format(config):
  expected = EXPECTED["mrqa"][config]["rows"]
  actual = cases.run(cases.text_steps(_task(mrqa.task_name(config))),
                     cases.examples(f"mrqa/{config}"))
  assert len(actual) == len(expected)
  for got, want in zip(actual, expected):
    assert got == want


def _assert_scores_equal(actual, expected):
  extra = {_OURS_ONLY} if expected else set()
  assert set(actual) - extra == set(expected)
  # The fixture's scores come from T5 on another CPU: within the fixture
  # tolerance (correlations' last bits depend on the CPU's kernels).
  for key, value in expected.items():
    assert float_fixtures.same(float(actual[key]), float(value),
                               abs_=SCORE_FLOOR), (key, actual[key], value)


@pytest.mark.parametrize("case", cases.CASES, ids=_IDS)
def test_postprocessors_and_metrics_equal_t5(case):
  recorded = EXPECTED["cases"][case.name]
  rows = cases.scored(recorded["rows"])
  _assert_scores_equal(
      cases.scores(_task(case.name), rows, recorded["predictions"]),
      recorded["scores"])


@pytest.mark.parametrize("config", cases.MRQA_CONFIGS)
def test_mrqa_metrics_equal_t5_squad(config):
  recorded = EXPECTED["mrqa"][config]
  actual = cases.scores(_task(mrqa.task_name(config)), recorded["rows"],
                        recorded["predictions"])
  assert set(actual) == set(recorded["scores"])
  _assert_scores_equal(actual, recorded["scores"])


@pytest.mark.parametrize("case", cases.CASES, ids=_IDS)
def test_data_source_is_t5s(case):
  recorded = EXPECTED["cases"][case.name]
  source = _task(case.name).source
  assert source.tfds_dataset.name == recorded["tfds_name"]
  if recorded["splits"] is not None:
    assert list(source.splits) == recorded["splits"]


def _rates(mixture):
  return {t.name: mixture.get_rate(t) for t in mixture.tasks}


@pytest.mark.parametrize("mixture", sorted(EXPECTED["mixtures"]))
def test_mixture_members_and_rates_are_t5s(mixture):
  expected = EXPECTED["mixtures"][mixture]
  assert _rates(_task(mixture)) == expected
  taskless = _rates(_task("taskless_" + mixture))
  assert {k[len("taskless_"):]: v for k, v in taskless.items()} == expected
