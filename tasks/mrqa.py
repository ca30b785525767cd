"""SQuAD and MRQA extractive QA for the paper's domain-shift study (Table 1).

Train a prompt on SQuAD, evaluate it zero-shot on other QA domains. Every
task is in T5's SQuAD format, 'question: <q> context: <c>' -> the first gold
answer, with T5's punctuation padding of question, context and answers
(`preprocessors.pad_punctuation`), and scores EM and token F1 with SQuAD
normalisation, max over all gold answers (T5's `qa` postprocessor and
`squad` metric).

Names:
- `squad_v010_allanswers`: T5's SQuAD task (TFDS `squad/v1.1:3.0.0`, train
  and validation), the paper's training set: the one that reproduces
  Table 1;
- `mrqa_<config>_v100` for MRQA's in-domain sets (train and validation):
  squad, news_qa, trivia_qa, search_qa, hotpot_qa, natural_questions.
  `mrqa_squad_v100` is MRQA's own copy of SQuAD (its contexts carry MRQA's
  [PAR]/[DOC]/[TLE] markers and its dev set is MRQA's), kept for MRQA-only
  studies; it is not what the paper trained on;
- `mrqa_<config>_v100` for the out-of-domain sets: bio_asq, drop, duo_rc,
  race, relation_extraction, textbook_qa. TFDS has only their 'test' split
  (MRQA's dev sets); it is served as 'validation', as the official tasks do,
  so the usual validation evaluation reaches it;
- `mrqa_squad_to_<config>_v100`: mixtures that train on SQuAD
  (`squad_v010_allanswers`) and evaluate on SQuAD and `<config>` (the
  paper's "SQuAD -> X" pairs), one per MRQA set but MRQA's SQuAD;
- `mrqa_squad_to_out_of_domain_v100`: trains on SQuAD once and evaluates on
  SQuAD and all six out-of-domain sets (the paper's Table 1 in one run).
"""

import seqio

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

VERSION = "1.0.0"
OUTPUT_FEATURES = vocabularies.output_features(vocabularies.task_vocabulary())
IN_DOMAIN = ("squad", "news_qa", "trivia_qa", "search_qa", "hotpot_qa",
             "natural_questions")
OUT_OF_DOMAIN = ("bio_asq", "drop", "duo_rc", "race", "relation_extraction",
                 "textbook_qa")
# The paper's (and T5's) SQuAD: the training task of every pair mixture.
SQUAD = "squad_v010_allanswers"
SQUAD_TFDS_NAME = "squad/v1.1:3.0.0"
FAMILY = "mrqa"
OUT_OF_DOMAIN_MIXTURE = "mrqa_squad_to_out_of_domain_v100"
_COMMON = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
           seqio.preprocessors.append_eos_after_trim]


def task_name(config: str) -> str:
  """'textbook_qa' -> 'mrqa_textbook_qa_v100'."""
  return f"{FAMILY}_{config}_v100"


def pair_name(train: str, evaluate: str) -> str:
  """('squad', 'textbook_qa') -> 'mrqa_squad_to_textbook_qa_v100'."""
  return f"{FAMILY}_{train}_to_{evaluate}_v100"


def _register() -> None:
  registry.add_task(
      SQUAD, family=FAMILY,
      description="SQuAD v1.1 (T5's task), question: ... context: ... -> "
                  "answer; the paper's training set",
      # Splits are explicit: without downloaded data TFDS cannot list them.
      source=seqio.TfdsDataSource(tfds_name=SQUAD_TFDS_NAME,
                                  splits=("train", "validation")),
      preprocessors=[preprocessors.squad] + _COMMON,
      output_features=OUTPUT_FEATURES,
      postprocess_fn=postprocessors.qa_answers,
      metric_fns=[metrics.squad])
  for config in IN_DOMAIN + OUT_OF_DOMAIN:
    # The out-of-domain sets' only split is TFDS 'test' (MRQA's dev set).
    splits = (("train", "validation") if config in IN_DOMAIN else
              {"validation": "test"})
    registry.add_task(
        task_name(config), family=FAMILY,
        description=f"MRQA {config} ({'in' if config in IN_DOMAIN else 'out of'}"
                    f" domain), question: ... context: ... -> answer",
        source=seqio.TfdsDataSource(tfds_name=f"mrqa/{config}:{VERSION}",
                                    splits=splits),
        preprocessors=[preprocessors.mrqa] + _COMMON,
        output_features=OUTPUT_FEATURES,
        postprocess_fn=postprocessors.qa_answers,
        metric_fns=[metrics.squad])
  for config in IN_DOMAIN + OUT_OF_DOMAIN:
    if config == "squad":
      continue
    registry.add_mixture(
        pair_name("squad", config),
        [(SQUAD, 1.0), (task_name(config), 0.0)], family=FAMILY,
        description=f"train on SQuAD, evaluate on SQuAD and {config}")
  registry.add_mixture(
      OUT_OF_DOMAIN_MIXTURE,
      [(SQUAD, 1.0)] + [(task_name(c), 0.0) for c in OUT_OF_DOMAIN],
      family=FAMILY,
      description="train on SQuAD, evaluate on SQuAD and the six "
                  "out-of-domain sets (Table 1)")


_register()
