"""The paper's own numbers, for drawing beside a sweep's results.

Lester, Al-Rfou & Constant (2021): SuperGLUE dev score (mean of 3 runs) of
model tuning and prompt tuning on the T5.1.1 LM-adapted checkpoints, as
tabulated in the follow-up SPoT paper's appendix, and the domain-shift
tables (Table 1: SQuAD -> MRQA F1; Table 2: QQP <-> MRPC accuracy and F1),
which the report shows beside a study's own numbers wherever it evaluated
those sets. Figures of the ablations give shapes only, so they have no
overlay. Overlay keys are what a sweep file's `paper = "..."` names.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

# Frozen-model sizes the paper's x axis uses (T5.1.1 Small ... XXL).
MODEL_PARAMETERS = (77e6, 248e6, 783e6, 2.85e9, 11.1e9)


def _series(values: Sequence[float]) -> Tuple[Tuple[float, float], ...]:
  return tuple(zip(MODEL_PARAMETERS, values))


# overlay name -> line label -> ((x, y), ...); x = parameters or an axis value.
OVERLAYS: Dict[str, Mapping[str, Tuple[Tuple[float, float], ...]]] = {
    # Figure 1: SuperGLUE score vs model size.
    "figure1": {
        "model tuning": _series((62.8, 73.7, 81.3, 83.1, 89.9)),
        "prompt tuning": _series((59.8, 63.1, 74.5, 79.2, 88.8)),
        "GPT-3 prompt design": _series((40.6, 43.4, 45.1, 47.8, 52.8)),
    },
}

# Overlays that are a SuperGLUE score (the mean over its 8 tasks): drawn only
# beside a study that evaluated all 8.
SUPERGLUE_OVERLAYS = frozenset({"figure1"})


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One number pair of the paper's domain-shift tables (T5.1.1-XXL
  LM-adapted, mean of 3 runs), and where a run's metrics hold ours."""
  table: str  # "Table 1" or "Table 2"
  label: str  # the paper's row name
  # What our runs trained on (None: any) and evaluated, and the metric key.
  trained_on: Optional[str]
  evaluated: str
  metric: str
  model_tuning: float
  prompt_tuning: float

  def paper(self, mode: str) -> Optional[float]:
    """The paper's number for a run of `mode` ('model' / 'prompt')."""
    return {"model": self.model_tuning,
            "prompt": self.prompt_tuning}.get(mode)


def _mrqa(config: str) -> str:
  return f"mrqa_{config}_v100"  # tasks/mrqa.py's names


def _paraphrase(train: str, evaluate: str) -> str:
  return f"paraphrase_{train}_to_{evaluate}_v002"  # tasks/paraphrase.py's


# Table 1: train on SQuAD, evaluate zero-shot on MRQA's out-of-domain dev
# sets; F1 (the paper's metric, not the mean of EM and F1).
# Table 2: QQP <-> MRPC zero-shot; accuracy and F1 of the target task.
DOMAIN_SHIFT = (
    TableRow("Table 1", "SQuAD (in-domain)", None, "squad_v010_allanswers",
             "f1", 94.9, 94.8),
    TableRow("Table 1", "TextbookQA", None, _mrqa("textbook_qa"), "f1",
             54.3, 66.8),
    TableRow("Table 1", "BioASQ", None, _mrqa("bio_asq"), "f1", 77.9, 79.1),
    TableRow("Table 1", "RACE", None, _mrqa("race"), "f1", 59.8, 60.7),
    TableRow("Table 1", "RE", None, _mrqa("relation_extraction"), "f1",
             88.4, 88.8),
    TableRow("Table 1", "DuoRC", None, _mrqa("duo_rc"), "f1", 68.9, 67.7),
    TableRow("Table 1", "DROP", None, _mrqa("drop"), "f1", 68.9, 67.1),
    TableRow("Table 2", "QQP -> MRPC", _paraphrase("qqp", "mrpc"),
             "paraphrase_mrpc_v002", "accuracy", 73.1, 76.3),
    TableRow("Table 2", "QQP -> MRPC", _paraphrase("qqp", "mrpc"),
             "paraphrase_mrpc_v002", "f1", 81.2, 84.3),
    TableRow("Table 2", "MRPC -> QQP", _paraphrase("mrpc", "qqp"),
             "paraphrase_qqp_v002", "accuracy", 74.9, 75.4),
    TableRow("Table 2", "MRPC -> QQP", _paraphrase("mrpc", "qqp"),
             "paraphrase_qqp_v002", "f1", 70.9, 69.7),
)
PAPER_MODEL = "T5.1.1-XXL LM-adapted"

# Evaluated task -> the metric the paper reports for it, where that is one
# metric rather than the mean of the task's metrics.
TABLE_METRIC: Mapping[str, str] = {
    row.evaluated: row.metric for row in DOMAIN_SHIFT if row.table ==
    "Table 1"}
