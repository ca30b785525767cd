"""Prompt tuning (Lester et al. 2021): a [P, H] prompt before the input.

The model is `PromptedT5`; the one trainable parameter is
`encoder/prompt/prompt` (`decoder/prompt/prompt` on a decoder-only LM,
`PromptedDecoderOnly`). With `wayward_gamma` > 0 the loss also pulls the
prompt towards a discrete text prompt (`methods.wayward`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Tuple

import jax
import numpy as np

from prompt_tuning.methods import wayward
from prompt_tuning.methods.base import Method
from prompt_tuning.models.decoder_only.config import DecoderConfig

Array = jax.Array
PyTree = Any

PROMPT_PATH = ("encoder", "prompt", "prompt")
# A decoder-only LM's (`prompts.decoder_model.PromptedDecoderOnly`).
DECODER_ONLY_PROMPT_PATH = ("decoder", "prompt", "prompt")


def prompt_name(config: Any) -> str:
  """The input prompt's '/'-joined name in the tree of the model `config`
  describes: T5's encoder, or a decoder-only LM's decoder (DecoderConfig)."""
  decoder_only = isinstance(config, DecoderConfig)
  return "/".join(DECODER_ONLY_PROMPT_PATH if decoder_only else PROMPT_PATH)


def prompt_path(params: PyTree) -> Tuple[str, ...]:
  """Where the input prompt is in a model's (or trainable) tree: T5's
  encoder, else a decoder-only LM's decoder."""
  return PROMPT_PATH if "encoder" in params else DECODER_ONLY_PROMPT_PATH


@dataclasses.dataclass(frozen=True)
class PromptTuning(Method):
  """The paper's method; the others that prepend a prompt extend it."""

  name: ClassVar[str] = "prompt"

  # P, the input prompt's length.
  length: int = 100
  # 'prefix', 'suffix' or 'after_first' (see prompts.layer).
  placement: str = "prefix"
  # Weight of the wayward penalty; 0 turns it off.
  wayward_gamma: float = 0.0
  # [P, H] the embedded text the penalty pulls towards (set by the builder).
  wayward_target: Optional[np.ndarray] = dataclasses.field(
      default=None, compare=False, hash=False, repr=False)

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f"Prompt length must be >= 1, got {self.length}.")
    if self.wayward_gamma < 0:
      raise ValueError(f"wayward_gamma must be >= 0; got "
                       f"{self.wayward_gamma}.")

  def prompt_length(self) -> int:
    return self.length

  def input_prompt(self, trainable: PyTree) -> Array:
    """[P, H] the prompt the model prepends, from the trainable tree."""
    node = self.model_params(trainable)
    for name in prompt_path(node):
      node = node[name]
    return node

  def penalty(self, trainable: PyTree) -> Optional[Array]:
    if not self.wayward_gamma:
      return None
    if self.wayward_target is None:
      raise ValueError("wayward_gamma > 0 but no wayward target was built.")
    return self.wayward_gamma * wayward.squared_distance(
        self.input_prompt(trainable), self.wayward_target)
