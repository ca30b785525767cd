"""Deep prompts: a prompt before every encoder layer, not only the input.

The official code's per-layer prompts (`extended/train/per_layer.py`) and the
encoder half of deep prompt tuning (P-tuning v2, Liu et al. 2022): besides the
input prompt of `PromptConfig.length` P, every encoder layer owns a [P, H]
`layer_prompt` that either replaces the stream at the prompt's positions
before the layer ('replace', the official default; the input prompt is then
overwritten by layer 0's and receives no gradient) or is added to it ('add').
Unlike prefix tuning, the per-layer prompt goes through the frozen layer
norm and key/value projections. Decoder-side per-layer prompts are not
offered: the decoder has no prompt positions (prefix tuning's
`decoder_self` prefixes are the way to prompt the decoder).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from prompt_tuning.methods.prompt import PromptTuning
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.adapters import LAYER_PROMPT_MODES
from prompt_tuning.models.config import T5Config


@dataclasses.dataclass(frozen=True)
class DeepPromptConfig(PromptTuning):
  """Per-layer encoder prompts of the input prompt's length."""

  name: ClassVar[str] = "deep_prompt"

  # 'replace' the prompt positions before each layer, or 'add' to them.
  mode: str = "replace"

  def __post_init__(self):
    super().__post_init__()
    if self.mode not in LAYER_PROMPT_MODES:
      raise ValueError(f"DeepPromptConfig.mode = {self.mode!r} is not one of "
                       f"{LAYER_PROMPT_MODES}.")
    if self.placement != "prefix":
      raise ValueError(
          "Deep prompts act on the first P positions, so the input prompt "
          "must be placed in front: set PromptConfig.placement = 'prefix'.")

  def adapters(self, config: T5Config) -> AdapterConfig:
    del config
    return AdapterConfig(layer_prompt_length=self.length,
                         layer_prompt_mode=self.mode)
