"""SuperGLUE v1.0.2 in T5's text-to-text formats, plain and taskless.

Names (T5's, so results line up with T5 and the paper):
- `super_glue_{boolq,cb,copa,multirc,record,rte,wic}_v102`;
- `super_glue_axb_v102`, `super_glue_axg_v102`: the diagnostics, cast as RTE
  (test split only; run them with a prompt trained on RTE);
- `super_glue_wsc_v102_simple_train` (train split, correct referents only)
  and `super_glue_wsc_v102_simple_eval` (validation and test, all
  candidates), and the mixture `super_glue_wsc_v102_simple` of the two
  (trains on the first, evaluates on the second);
- `dpr_v001_simple`: Definite Pronoun Resolution (TFDS
  `definite_pronoun_resolution:1.1.0`, train and test) in the WSC form, which
  T5 trains on beside WSC;
- `super_glue_v102_proportional`: T5's mixture, member by member and rate by
  rate (the training examples of each task, DPR 1,322, WSC's simple train
  form 259; WSC's eval form and the diagnostics evaluated only);
- `taskless_<name>` for each of the above: the same examples with the
  leading task word removed ('rte hypothesis: ...' -> 'hypothesis: ...'),
  the paper's setting where only the prompt says which task is wanted.

Formats ('<task> <field>: <value> ...' -> label word, fields sorted by name
unless T5 fixes an order) and metrics are T5's, task by task: accuracy; CB
3-class macro F1 and accuracy; MultiRC F1 over all answers and per-question
exact match; ReCoRD max-over-answers EM/F1 (deduplicated per query); WSC
accuracy of "did it name the referent"; DPR accuracy of the candidate's text;
AX-b and AX-g none (only test sets, labels hidden). Classification tasks
with metrics also report `invalid_prediction_rate` (not in T5: a diagnostic
that changes no T5 number). Data: TFDS `super_glue/<config>:1.0.2`;
vocabulary: T5's SentencePiece model, or $HF_TOKENIZER's (`prompt_tuning.data.vocabularies`).
Importing this module registers everything, once per process.
"""

import functools
from typing import Callable, List, Sequence

import seqio

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

VERSION = "1.0.2"
SPLITS = ("train", "validation", "test")
OUTPUT_FEATURES = vocabularies.output_features(vocabularies.task_vocabulary())
# Label word of each class id (TFDS's class names).
LABELS = {
    "boolq": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"),
    "multirc": ("False", "True"),
    "rte": ("entailment", "not_entailment"),
    "wic": ("False", "True"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}
# Text fields in order, where T5 does not simply sort them by name.
_FEATURE_NAMES = {
    "multirc": ("question", "answer", "paragraph"),
    # WiC's start/end indices of the word are left out, as in T5.
    "wic": ("sentence1", "sentence2", "word"),
}
# The DPR task's name (T5's; not a SuperGLUE config).
DPR = "dpr_v001_simple"
DPR_TFDS_NAME = "definite_pronoun_resolution:1.1.0"
# T5's `super_glue_v102_proportional`, member by member: training examples
# after formatting (ReCoRD: one per answer; WSC: correct referents only) as
# T5 records them (t5 0.9.4, t5/data/glue_utils.py,
# SUPER_GLUE_WEIGHT_MAPPING); 0 = evaluated, never trained. No cap applies.
MIXTURE_RATES = {
    DPR: 1_322.,
    "super_glue_wsc_v102_simple_train": 259.,
    "super_glue_wsc_v102_simple_eval": 0.,
    "super_glue_boolq_v102": 9_427.,
    "super_glue_cb_v102": 250.,
    "super_glue_copa_v102": 400.,
    "super_glue_multirc_v102": 27_243.,
    "super_glue_record_v102": 138_854.,
    "super_glue_rte_v102": 2_490.,
    "super_glue_wic_v102": 5_428.,
    "super_glue_axb_v102": 0.,
    "super_glue_axg_v102": 0.,
}
FAMILY = "super_glue"
TASKLESS = "taskless_"
_COMMON = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
           seqio.preprocessors.append_eos_after_trim]


def task_name(config: str, taskless: bool = False) -> str:
  """'rte' -> 'super_glue_rte_v102' (or 'taskless_super_glue_rte_v102');
  'wsc_v102_simple_eval' -> 'super_glue_wsc_v102_simple_eval'; 'dpr' ->
  'dpr_v001_simple'."""
  if config == "dpr":
    base = DPR
  else:
    suffix = "" if config.startswith("wsc") else "_v102"
    base = f"{FAMILY}_{config}{suffix}"
  return f"{TASKLESS if taskless else ''}{base}"


def _source(config: str, splits: Sequence[str] = SPLITS
            ) -> seqio.TfdsDataSource:
  # Splits are explicit: without downloaded data TFDS cannot list them.
  return seqio.TfdsDataSource(tfds_name=f"super_glue/{config}:{VERSION}",
                              splits=splits)


def text_preprocessors(config: str) -> List[Callable]:
  """T5's text preprocessors of a GLUE-style SuperGLUE config, e.g. 'boolq'
  (everything before tokenization; the input-pipeline benchmark reuses it)."""
  steps = []
  if config == "axb":
    # AX-b has sentence1/sentence2; read as RTE's premise/hypothesis.
    steps.append(functools.partial(
        preprocessors.rekey, key_map={"premise": "sentence1",
                                      "hypothesis": "sentence2",
                                      "label": "label", "idx": "idx"}))
  steps.append(functools.partial(
      preprocessors.glue,
      benchmark_name="rte" if config in ("axb", "axg") else config,
      label_names=LABELS[config],
      feature_names=_FEATURE_NAMES.get(config)))
  return steps


def _metrics(config: str) -> List[Callable]:
  """T5's metrics of a SuperGLUE task (`glue_utils.SUPERGLUE_METRICS`), plus
  the invalid-prediction rate wherever there is a metric."""
  if config == "record":
    return [metrics.record]
  if config in ("axb", "axg"):
    # Only a test split, with hidden labels: nothing to score.
    return []
  per_task = {
      "cb": [metrics.mean_multiclass_f1(num_classes=3), metrics.accuracy],
      "multirc": [metrics.multirc_f1_over_all_answers,
                  metrics.mean_group_metric(metrics.all_match)],
  }
  return per_task.get(config, [metrics.accuracy]) + [
      metrics.invalid_rate(LABELS[config])]


def _postprocessor(config: str) -> Callable:
  if config == "multirc":
    return postprocessors.multirc
  if config == "record":
    return postprocessors.record
  return postprocessors.class_labels(LABELS[config])


def _register(taskless: bool) -> None:
  taskless_step = [preprocessors.remove_task_word] if taskless else []
  family = f"{TASKLESS if taskless else ''}{FAMILY}"
  for config in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic",
                 "axb", "axg"):
    text = ([preprocessors.record] if config == "record" else
            text_preprocessors(config))
    registry.add_task(
        task_name(config, taskless), family=family,
        description=f"SuperGLUE {config.upper()} (T5 format"
                    f"{', no task word' if taskless else ''})",
        class_labels=LABELS.get(config, ()),
        source=_source(config, ("test",) if config in ("axb", "axg")
                       else SPLITS),
        preprocessors=text + taskless_step + _COMMON,
        output_features=OUTPUT_FEATURES,
        postprocess_fn=_postprocessor(config),
        metric_fns=_metrics(config))
  for split_kind, splits, correct_only in (
      ("train", ["train"], True), ("eval", ["validation", "test"], False)):
    registry.add_task(
        task_name(f"wsc_v102_simple_{split_kind}", taskless), family=family,
        description=f"SuperGLUE WSC, T5's simple format ({split_kind})",
        source=_source("wsc.fixed", splits),
        preprocessors=[functools.partial(
            preprocessors.wsc_simple, correct_referent_only=correct_only)]
        + taskless_step + _COMMON,
        output_features=OUTPUT_FEATURES,
        postprocess_fn=postprocessors.wsc_simple,
        metric_fns=[] if correct_only else [metrics.accuracy])
  registry.add_task(
      task_name("dpr", taskless), family=family,
      description="Definite Pronoun Resolution in T5's simple WSC format",
      source=seqio.TfdsDataSource(tfds_name=DPR_TFDS_NAME,
                                  splits=("train", "test")),
      preprocessors=[preprocessors.dpr_simple] + taskless_step + _COMMON,
      output_features=OUTPUT_FEATURES,
      # No postprocessor, as in T5: the decoded text is compared with the
      # correct candidate's text as it is.
      metric_fns=[metrics.accuracy])
  wsc_train = task_name("wsc_v102_simple_train", taskless)
  wsc_eval = task_name("wsc_v102_simple_eval", taskless)
  registry.add_mixture(
      task_name("wsc_v102_simple", taskless), [(wsc_train, 1.0),
                                               (wsc_eval, 0.0)],
      family=family, description="WSC: trains on simple_train, evaluates "
                                 "simple_eval")
  prefix = TASKLESS if taskless else ""
  registry.add_mixture(
      f"{family}_v102_proportional",
      [(prefix + name, rate) for name, rate in MIXTURE_RATES.items()],
      family=family, description="T5's SuperGLUE mixture: the tasks, DPR "
                                 "and WSC at T5's rates (their sizes)")


_register(taskless=False)
_register(taskless=True)
