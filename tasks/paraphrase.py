"""QQP <-> MRPC zero-shot paraphrase transfer (the paper's domain shift).

Both datasets are cast in one format so that a prompt trained on one applies
to the other unchanged: no task word, the same field labels, the same label
words.

- `paraphrase_mrpc_v002`: 'sentence1: <s1> sentence2: <s2>' -> 'equivalent'
  or 'not_equivalent' (MRPC's own words);
- `paraphrase_qqp_v002`: QQP's question1/question2 shown as sentence1 /
  sentence2, and its labels mapped to MRPC's words: duplicate ->
  'equivalent', not_duplicate -> 'not_equivalent';
- `paraphrase_qqp_to_mrpc_v002` / `paraphrase_mrpc_to_qqp_v002`: mixtures
  that train on the first and evaluate on both.

Metrics as T5 reports MRPC and QQP: F1 of the positive class
('equivalent') and accuracy, plus `invalid_prediction_rate`. Data: TFDS
`glue/mrpc:2.0.0` and `glue/qqp:2.0.0` (QQP's validation set is 40k pairs).
"""

import functools

import seqio

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

VERSION = "2.0.0"
OUTPUT_FEATURES = vocabularies.output_features(vocabularies.task_vocabulary())
# One label set for both: class 0 = not a paraphrase, 1 = a paraphrase.
LABELS = ("not_equivalent", "equivalent")
FIELDS = ("sentence1", "sentence2")
# QQP's class ids mean the same as MRPC's (0 not_duplicate, 1 duplicate).
QQP_TO_MRPC = (0, 1)
FAMILY = "paraphrase"


def task_name(dataset: str) -> str:
  """'qqp' -> 'paraphrase_qqp_v002'."""
  return f"{FAMILY}_{dataset}_v002"


def pair_name(train: str, evaluate: str) -> str:
  """('qqp', 'mrpc') -> 'paraphrase_qqp_to_mrpc_v002'."""
  return f"{FAMILY}_{train}_to_{evaluate}_v002"


def _register() -> None:
  common = [functools.partial(preprocessors.glue, benchmark_name=None,
                              label_names=LABELS, feature_names=FIELDS),
            seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]
  renames = {
      "mrpc": [],
      "qqp": [functools.partial(
          preprocessors.rekey, key_map={"sentence1": "question1",
                                        "sentence2": "question2",
                                        "label": "label", "idx": "idx"}),
              functools.partial(preprocessors.map_labels,
                                mapping=QQP_TO_MRPC)],
  }
  for dataset, steps in renames.items():
    registry.add_task(
        task_name(dataset), family=FAMILY,
        description=f"{dataset.upper()} as 'sentence1: .. sentence2: ..' -> "
                    "MRPC's label words",
        class_labels=LABELS,
        source=seqio.TfdsDataSource(tfds_name=f"glue/{dataset}:{VERSION}",
                                    splits=("train", "validation", "test")),
        preprocessors=steps + common,
        output_features=OUTPUT_FEATURES,
        postprocess_fn=postprocessors.class_labels(LABELS),
        metric_fns=[metrics.f1_score_with_invalid, metrics.accuracy,
                    metrics.invalid_rate(LABELS)])
  for train, evaluate in (("qqp", "mrpc"), ("mrpc", "qqp")):
    registry.add_mixture(
        pair_name(train, evaluate),
        [(task_name(train), 1.0), (task_name(evaluate), 0.0)],
        family=FAMILY,
        description=f"train on {train.upper()}, evaluate zero-shot on "
                    f"{evaluate.upper()} (and {train.upper()})")


_register()
