"""GLUE in T5's text-to-text formats, plain and taskless.

Names (T5's): `glue_{cola,sst2,mrpc,qqp,stsb,mnli,mnli_matched,
mnli_mismatched,qnli,rte,wnli,ax}_v002`, `glue_v002_proportional` (T5's
mixture: the training tasks at T5's rates, MNLI's matched/mismatched dev sets
and AX evaluated only, WNLI left out as T5 does), and `taskless_<name>` for
each, without the leading task word ('sst2 sentence: ...' -> 'sentence:
...'). SST-2 is the usual first prompt-tuning experiment.

Formats are T5's: '<task> <field>: <value> ...' with the fields sorted by
name, the label word from TFDS's class names (`<unk>` for hidden test
labels); STS-B targets are the score rounded to 0.2 ('3.8'); AX is read as
MNLI. Metrics are T5's task by task: CoLA Matthews correlation; MRPC and QQP
F1 and accuracy; STS-B Pearson and Spearman correlation; AX none (its labels
are hidden); accuracy otherwise. Classification tasks with metrics also
report `invalid_prediction_rate` (not in T5: a diagnostic that changes no
T5 number). Data: TFDS `glue/<config>:1.0.0`, the version T5's `_v002`
tasks read (2.0.0 re-sourced QQP, whose training set then has 3 fewer pairs).
"""

import functools
from typing import Callable, List

import seqio

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

VERSION = "1.0.0"
OUTPUT_FEATURES = vocabularies.output_features(vocabularies.task_vocabulary())
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
# T5's `glue_v002_proportional`, task by task: the number of training
# examples of TFDS glue/*:1.0.0 as T5 records it (t5 0.9.4,
# t5/data/glue_utils.py, GLUE_WEIGHT_MAPPING); 0 = evaluated, never trained.
# WNLI is not a member (T5 trains on WSC/DPR instead); no cap applies.
MIXTURE_RATES = {
    "glue_cola_v002": 8_551.,
    "glue_sst2_v002": 67_349.,
    "glue_mrpc_v002": 3_668.,
    "glue_qqp_v002": 363_849.,
    "glue_stsb_v002": 5_749.,
    "glue_mnli_v002": 392_702.,
    "glue_qnli_v002": 104_743.,
    "glue_rte_v002": 2_490.,
    "glue_mnli_mismatched_v002": 0.,
    "glue_mnli_matched_v002": 0.,
    "glue_ax_v002": 0.,
}
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
  """T5's metrics of a GLUE task (`glue_utils.GLUE_METRICS`), plus the
  invalid-prediction rate wherever there is a metric."""
  if config == "stsb":
    return [metrics.pearson_corrcoef, metrics.spearman_corrcoef]
  per_task = {
      "cola": [metrics.matthews_corrcoef],
      "mrpc": [metrics.f1_score_with_invalid, metrics.accuracy],
      "qqp": [metrics.f1_score_with_invalid, metrics.accuracy],
      # Only a test split, with hidden labels: nothing to score.
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
  registry.add_mixture(
      f"{family}_v002_proportional",
      [(("taskless_" if taskless else "") + name, rate)
       for name, rate in MIXTURE_RATES.items()],
      family=family, description="T5's GLUE mixture: the tasks at T5's "
                                 "rates (their sizes), WNLI left out")


_register(taskless=False)
_register(taskless=True)
