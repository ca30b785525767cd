"""The paper's own numbers, for drawing beside a sweep's results.

Lester, Al-Rfou & Constant (2021): SuperGLUE dev score (mean of 3 runs) of
model tuning and prompt tuning on the T5.1.1 LM-adapted checkpoints, as
tabulated in the follow-up SPoT paper's appendix, and the domain-shift
tables. Figures of the ablations give shapes only, so they have no overlay.
Keys are what a sweep file's `paper = "..."` names.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

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

# Table 1 (SQuAD -> MRQA out-of-domain F1) and Table 2 (QQP <-> MRPC), for
# summary.md; (model tuning, prompt tuning), T5.1.1-XXL.
DOMAIN_SHIFT = {
    "textbook_qa": (54.3, 66.8), "bio_asq": (77.9, 79.1), "race": (59.8, 60.7),
    "relation_extraction": (88.4, 88.8), "duo_rc": (68.9, 67.7),
    "drop": (68.9, 67.1), "squad": (94.9, 94.8),
}
PARAPHRASE = {
    "qqp_to_mrpc": {"accuracy": (73.1, 76.3), "f1": (81.2, 84.3)},
    "mrpc_to_qqp": {"accuracy": (74.9, 75.4), "f1": (70.9, 69.7)},
}
