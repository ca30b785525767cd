"""Deep prompts: a prompt before every encoder (and decoder) layer.

The official code's per-layer prompts (`extended/train/per_layer.py`) and
deep prompt tuning (P-tuning v2, Liu et al. 2022): besides the input prompt
of `PromptConfig.length` P, every encoder layer owns a [P, H] `layer_prompt`
that either replaces the stream at the prompt's positions before the layer
('replace', the official default; the input prompt is then overwritten by
layer 0's and receives no gradient) or is added to it ('add'). Unlike prefix
tuning, the per-layer prompt goes through the frozen layer norm and
key/value projections.

With `stacks` including 'decoder', every decoder layer also owns a [P, H]
`layer_prompt` for P positions before the decoder's first token, replaced
before each layer. Only their keys and values reach the tokens, so they are
computed from the prompt alone (`models.adapters`); 'add' has nothing to add
to there (the decoder has no prompt positions to run), so decoder prompts
replace whatever `mode` the encoder's use.

A decoder-only LM has one stack, the one its input prompt enters: every
layer's prompt replaces (or is added to) the stream at the input prompt's
rows, in either `mode`, whichever `stacks` are named.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Tuple

from prompt_tuning.methods.prompt import PromptTuning
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.adapters import LAYER_PROMPT_MODES
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig

STACKS = ("encoder", "decoder")


@dataclasses.dataclass(frozen=True)
class DeepPromptConfig(PromptTuning):
  """Per-layer encoder prompts of the input prompt's length."""

  name: ClassVar[str] = "deep_prompt"

  # 'replace' the prompt positions before each layer, or 'add' to them.
  mode: str = "replace"
  # Which stacks get per-layer prompts: ('encoder',), ('decoder',) or both.
  stacks: Tuple[str, ...] = ("encoder",)

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "stacks", tuple(self.stacks))
    if not self.stacks or set(self.stacks) - set(STACKS) or len(
        set(self.stacks)) != len(self.stacks):
      raise ValueError(f"DeepPromptConfig.stacks = {self.stacks!r}: give one "
                       f"or both of {STACKS}, each once.")
    if self.mode not in LAYER_PROMPT_MODES:
      raise ValueError(f"DeepPromptConfig.mode = {self.mode!r} is not one of "
                       f"{LAYER_PROMPT_MODES}.")
    if self.placement != "prefix":
      raise ValueError(
          "Deep prompts act on the first P positions, so the input prompt "
          "must be placed in front: set PromptConfig.placement = 'prefix'.")

  def adapters(self, config: T5Config) -> AdapterConfig:
    if isinstance(config, DecoderConfig):
      return AdapterConfig(layer_prompt_length=self.length,
                           layer_prompt_mode=self.mode)
    on = lambda stack: self.length if stack in self.stacks else 0
    return AdapterConfig(layer_prompt_length=on("encoder"),
                         layer_prompt_mode=self.mode,
                         decoder_layer_prompt_length=on("decoder"))
