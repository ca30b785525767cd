"""GLUE in T5's text-to-text formats, plain and taskless.

Names (T5's): `glue_{cola,sst2,mrpc,qqp,stsb,mnli,mnli_matched,
mnli_mismatched,qnli,rte,wnli,ax}_v002`, `glue_v002_proportional` (the
training tasks mixed in proportion to size, capped at 2**19), and
`taskless_<name>` for each, without the leading task word ('sst2 sentence:
...' -> 'sentence: ...'). SST-2 is the usual first prompt-tuning experiment.

Formats are T5's: '<task> <field>: <value> ...' with the fields sorted by
name, the label word from TFDS's class names (`<unk>` for hidden test
labels); STS-B targets are the score rounded to 0.2 ('3.8'); AX is read as
MNLI. Metrics are T5's: CoLA Matthews correlation; MRPC and QQP F1 and
accuracy; STS-B Pearson and Spearman correlation; accuracy otherwise (MNLI's
own validation is its matched/mismatched configs). Classification tasks also
report `invalid_prediction_rate`. Data: TFDS `glue/<config>:2.0.0`.
"""

import functools
from typing import Callable, List

import seqio

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

VERSION = "2.0.0"
OUTPUT_FEATURES = vocabularies.output_features(vocabularies.t5_vocabulary())
_MNLI = ("entailment", "neutral", "contradiction")
# Label word of each class id (TFDS's class names); STS-B is a regression.
LABELS = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": _MNLI, "mnli_matched": _MNLI, "mnli_mismatched": _MNLI,
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "ax": _MNLI,
}
CONFIGS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched",
           "mnli_mismatched", "qnli", "rte", "wnli", "ax")
# Training examples per task: the proportional mixture's rates.
TRAIN_SIZES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846,
               "stsb": 5749, "mnli": 392702, "qnli": 104743, "rte": 2490,
               "wnli": 635}
MIXTURE_CAP = 2**19
# TFDS splits (explicit: without downloaded data TFDS cannot list them).
_SPLITS = {
    "mnli": ("train", "validation_matched", "validation_mismatched",
             "test_matched", "test_mismatched"),
    "mnli_matched": ("validation", "test"),
    "mnli_mismatched": ("validation", "test"),
    "ax": ("test",),
}
SPLITS = ("train", "validation", "test")
FAMILY = "glue"
_COMMON = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
           seqio.preprocessors.append_eos_after_trim]


def task_name(config: str, taskless: bool = False) -> str:
  """'sst2' -> 'glue_sst2_v002' (or 'taskless_glue_sst2_v002')."""
  return f"{'taskless_' if taskless else ''}{FAMILY}_{config}_v002"


def _metrics(config: str) -> List[Callable]:
  if config == "stsb":
    return [metrics.pearson_corrcoef, metrics.spearman_corrcoef]
  per_task = {
      "cola": [metrics.matthews_corrcoef],
      "mrpc": [metrics.f1_score_with_invalid, metrics.accuracy],
      "qqp": [metrics.f1_score_with_invalid, metrics.accuracy],
      # MNLI's validation splits are the _matched/_mismatched tasks.
      "mnli": [],
      "ax": [],
  }
  found = per_task.get(config, [metrics.accuracy])
  return found + [metrics.invalid_rate(LABELS[config])] if found else []


def _register(taskless: bool) -> None:
  family = f"{'taskless_' if taskless else ''}{FAMILY}"
  for config in CONFIGS:
    if config == "stsb":
      text = [preprocessors.stsb]
      postprocess = postprocessors.string_to_float
    else:
      text = [functools.partial(
          preprocessors.glue,
          benchmark_name="mnli" if config in ("ax",) or "mnli" in config
          else config,
          label_names=LABELS[config])]
      postprocess = postprocessors.class_labels(LABELS[config])
    registry.add_task(
        task_name(config, taskless), family=family,
        description=f"GLUE {config} (T5 format"
                    f"{', no task word' if taskless else ''})",
        class_labels=LABELS.get(config, ()),
        source=seqio.TfdsDataSource(tfds_name=f"glue/{config}:{VERSION}",
                                    splits=_SPLITS.get(config, SPLITS)),
        preprocessors=text + ([preprocessors.remove_task_word] if taskless
                              else []) + _COMMON,
        output_features=OUTPUT_FEATURES,
        postprocess_fn=postprocess,
        metric_fns=_metrics(config))
  rates = [(task_name(c, taskless), float(min(n, MIXTURE_CAP)))
           for c, n in TRAIN_SIZES.items()]
  evals = [(task_name(c, taskless), 0.0)
           for c in ("mnli_matched", "mnli_mismatched")]
  registry.add_mixture(
      f"{family}_v002_proportional", rates + evals, family=family,
      description="the GLUE tasks, proportional to size")


_register(taskless=False)
_register(taskless=True)
