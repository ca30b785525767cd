"""MRQA extractive QA for the paper's domain-shift study.

Train a prompt on SQuAD, evaluate it zero-shot on other QA domains. Every
task reads a TFDS `mrqa/<config>:1.0.0` set in one format, 'question: <q>
context: <c>' -> the first gold answer, and scores EM and token F1 with SQuAD
normalisation, max over all gold answers (T5's `squad` metric).

Names:
- `mrqa_<config>_v100` for the in-domain sets (train and validation): squad,
  news_qa, trivia_qa, search_qa, hotpot_qa, natural_questions;
- `mrqa_<config>_v100` for the out-of-domain sets: bio_asq, drop, duo_rc,
  race, relation_extraction, textbook_qa. TFDS has only their 'test' split
  (MRQA's dev sets); it is served as both 'validation' and 'test', so the
  usual validation evaluation reaches it;
- `mrqa_squad_to_<config>_v100`: mixtures that train on SQuAD only and
  evaluate on SQuAD and `<config>` (the paper's "SQuAD -> X" pairs), one per
  other set;
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
OUTPUT_FEATURES = vocabularies.output_features(vocabularies.t5_vocabulary())
IN_DOMAIN = ("squad", "news_qa", "trivia_qa", "search_qa", "hotpot_qa",
             "natural_questions")
OUT_OF_DOMAIN = ("bio_asq", "drop", "duo_rc", "race", "relation_extraction",
                 "textbook_qa")
TRAIN = "squad"
FAMILY = "mrqa"
OUT_OF_DOMAIN_MIXTURE = "mrqa_squad_to_out_of_domain_v100"


def task_name(config: str) -> str:
  """'textbook_qa' -> 'mrqa_textbook_qa_v100'."""
  return f"{FAMILY}_{config}_v100"


def pair_name(train: str, evaluate: str) -> str:
  """('squad', 'textbook_qa') -> 'mrqa_squad_to_textbook_qa_v100'."""
  return f"{FAMILY}_{train}_to_{evaluate}_v100"


def _register() -> None:
  for config in IN_DOMAIN + OUT_OF_DOMAIN:
    # The out-of-domain sets' only split is TFDS 'test' (MRQA's dev set).
    splits = (("train", "validation") if config in IN_DOMAIN else
              {"validation": "test", "test": "test"})
    registry.add_task(
        task_name(config), family=FAMILY,
        description=f"MRQA {config} ({'in' if config in IN_DOMAIN else 'out of'}"
                    f" domain), question: ... context: ... -> answer",
        source=seqio.TfdsDataSource(tfds_name=f"mrqa/{config}:{VERSION}",
                                    splits=splits),
        preprocessors=[preprocessors.mrqa, seqio.preprocessors.tokenize,
                       seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        output_features=OUTPUT_FEATURES,
        postprocess_fn=postprocessors.qa_answers,
        metric_fns=[metrics.squad])
  for config in IN_DOMAIN + OUT_OF_DOMAIN:
    if config == TRAIN:
      continue
    registry.add_mixture(
        pair_name(TRAIN, config),
        [(task_name(TRAIN), 1.0), (task_name(config), 0.0)], family=FAMILY,
        description=f"train on SQuAD, evaluate on SQuAD and {config}")
  registry.add_mixture(
      OUT_OF_DOMAIN_MIXTURE,
      [(task_name(TRAIN), 1.0)] + [(task_name(c), 0.0) for c in OUT_OF_DOMAIN],
      family=FAMILY,
      description="train on SQuAD, evaluate on SQuAD and the six "
                  "out-of-domain sets (Table 1)")


_register()
