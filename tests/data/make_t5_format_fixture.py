"""Regenerates tests/data/t5_format_expected.json: T5 0.9.4's task outputs.

`t5_formats_oracle_test.py` compares our GLUE, SuperGLUE, WSC, DPR, SQuAD
and MRQA tasks with this file, so the suite needs no T5 (the `test` extra
cannot install it: docs/t5_parity.md). For each case of `t5_format_cases`
it records what T5's own task makes of the generated examples: the formatted
rows (T5's text preprocessors; taskless cases then the official
`remove_first_text_token`), the scores of T5's postprocessor and metric
functions on generated predictions, the TFDS dataset and the splits T5
names; for every MRQA set, T5's `squad` preprocessor on the examples under
SQuAD's keys (the official `mrqa` is exactly that) and T5's SQuAD scoring;
and the members and rates of T5's GLUE and SuperGLUE mixtures. In the test
env, with T5 added without its dependencies:

  pip install -c .ci/constraints.txt -e ".[test]"
  pip install -c .ci/constraints.txt --no-deps t5==0.9.4
  python -m tests.data.make_t5_format_fixture          # writes the fixture
  python -m tests.data.make_t5_format_fixture --check  # diff, writes nothing

`--check` compares T5's outputs here with the committed fixture: strings,
ids, labels and counts exactly, floats within `float_fixtures.REL_TOL`
(another CPU's kernels change correlations' last bits).

Importing `t5.data.tasks` / `t5.data.mixtures` needs no network (T5's
default vocabulary, on GCS, is built lazily and never used: nothing here
tokenizes). They register names equal to ours, so this script never imports
our task modules.
"""

import argparse
import json
import os
import sys
import warnings
from typing import Any, Dict

from tests import float_fixtures
from tests.data import t5_format_cases as cases

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "t5_format_expected.json")
MIXTURES = ("glue_v002_proportional", "super_glue_v102_proportional")
# Scores are percentages: an absolute floor of 1e-12 of their scale.
SCORE_FLOOR = 1e-10


def _t5_outputs() -> Dict[str, Any]:
  """The fixture's content, computed with T5."""
  # pylint: disable=g-import-not-at-top
  import seqio
  import t5
  import t5.data.mixtures  # Registers T5's tasks and mixtures.
  import t5.data.preprocessors as t5_preprocessors
  # pylint: enable=g-import-not-at-top
  out = {"t5_version": t5.__version__, "cases": {}, "mrqa": {},
         "mixtures": {}}
  with warnings.catch_warnings():
    # sklearn's warnings about undefined scores on small samples.
    warnings.simplefilter("ignore")
    for case in cases.CASES:
      task = seqio.TaskRegistry.get(case.t5_name)
      examples = cases.examples(case.dataset)
      steps = cases.text_steps(task)
      if case.taskless:
        steps.append(cases.remove_first_text_token)
      rows = cases.run(steps, examples)
      scored = cases.scored(rows)
      predicted = cases.predictions(case.name, scored)
      named = task.source._splits  # pylint: disable=protected-access
      out["cases"][case.name] = {
          "t5_task": case.t5_name, "examples": cases.digest(examples),
          "rows": rows, "predictions": predicted,
          "scores": cases.scores(task, scored, predicted),
          "tfds_name": task.source.tfds_dataset.name,
          # Empty: every TFDS split (T5 names none).
          "splits": list(named) if named else None,
      }
    squad = seqio.TaskRegistry.get("squad_v010_allanswers")
    for config in cases.MRQA_CONFIGS:
      examples = cases.examples(f"mrqa/{config}")
      rows = cases.squad_rows_as_mrqa(cases.run(
          [t5_preprocessors.squad], cases.mrqa_as_squad(examples)))
      predicted = cases.predictions(f"mrqa/{config}", rows)
      out["mrqa"][config] = {
          "examples": cases.digest(examples), "rows": rows,
          "predictions": predicted,
          "scores": cases.scores(squad, rows, predicted)}
  for name in MIXTURES:
    mixture = seqio.MixtureRegistry.get(name)
    out["mixtures"][name] = {t.name: float(mixture.get_rate(t))
                             for t in mixture.tasks}
  return out


def _dump(content: Dict[str, Any]) -> str:
  # ensure_ascii keeps every test string (tabs, NBSP, emoji) visible in diffs.
  return json.dumps(content, indent=1, sort_keys=True, ensure_ascii=True) + "\n"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="compare with the committed fixture, write nothing")
  args = parser.parse_args()
  text = _dump(_t5_outputs())
  if args.check:
    with open(FIXTURE, encoding="utf-8") as f:
      committed = json.load(f)
    fresh = json.loads(text)
    # Scores hold correlations whose last bits depend on the CPU that wrote
    # the fixture: within the fixture tolerance (docs/t5_parity.md), with a
    # floor for values near zero (percentage points: 1e-12 of 100).
    lines = float_fixtures.differences(fresh, committed, abs_=SCORE_FLOOR)
    for line in lines[:20]:
      print(line)
    last_bits = float_fixtures.last_bit_differences(fresh, committed)
    print(f"fixture is stale in {len(lines)} places: regenerate it" if lines
          else "fixture is current")
    print(f"{float_fixtures.LAST_BITS} {last_bits}")
    return int(bool(lines))
  with open(FIXTURE, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"wrote {FIXTURE} ({len(text)} bytes)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
