"""Frozen T5 with a soft prompt in its encoder: the model prompt tuning trains.

`PromptedT5` has exactly T5's parameter tree plus `encoder/prompt/prompt`
[P, H], so a pretrained T5 checkpoint loads into it unchanged and the prompt
is the only new weight. The prompt joins the input right after the token
embedding lookup and before the encoder's embedding dropout (which the stack
applies), as in T5X's prompt-tuning layers. The decoder cross-attends to all
P + T encoder positions, prompt included. A prompt may also be passed at call
time ([P, H], or [B, P, H] to serve a different task per example); the learned
`prompt` parameter is still created and must be present in the params, but is
then unused. Packing is not supported: `suffix` placement and the prompt's
fixed position assume one example per row (the data layer raises on packing
for prompt tuning). `split_prompt` / `merge_params` separate the prompt from
the frozen weights so that gradients are taken for the prompt only.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
from flax import traverse_util

from prompt_tuning.models.t5 import Encoder
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.layer import FULL_ATTENTION
from prompt_tuning.prompts.layer import PLACEMENTS
from prompt_tuning.prompts.layer import Prompt
from prompt_tuning.prompts.layer import check_prompt_attention
from prompt_tuning.prompts.layer import combine
from prompt_tuning.prompts.layer import combine_mask
from prompt_tuning.prompts.layer import prompt_attention_mask

Array = jax.Array
PyTree = Any

# Where the trainable prompt lives in a PromptedT5 parameter tree.
prompt_param_path = ("encoder", "prompt", "prompt")


def _validate(prompt_length: int, placement: str,
              attention: Tuple[str, ...] = FULL_ATTENTION) -> None:
  if placement not in PLACEMENTS:
    raise ValueError(f"Prompt placement {placement!r} is not one of "
                     f"{PLACEMENTS}.")
  if prompt_length < 1:
    raise ValueError(f"prompt_length must be >= 1; got {prompt_length}.")
  check_prompt_attention(attention)
  if set(attention) != set(FULL_ATTENTION) and placement != "prefix":
    raise ValueError("Prompt attention variants assume the prompt in front: "
                     "use placement 'prefix' with them.")


class PromptedEncoder(Encoder):
  """T5 encoder that inserts a prompt into its embedded inputs."""

  # P, the number of learned prompt vectors.
  prompt_length: int
  # Initializer of the [P, H] prompt; see `prompts.initializers`.
  prompt_init: initializers.Initializer = initializers.random_uniform()
  # 'prefix' (the paper's), 'suffix' (right before each example's EOS) or
  # 'after_first' (after the first token).
  placement: str = "prefix"
  # EOS id that 'suffix' inserts before.
  eos_id: int = 1
  # Allowed attention types (prompts.layer.PROMPT_ATTENTION); the default
  # lets every real position see every real position.
  attention: Tuple[str, ...] = FULL_ATTENTION

  # mutmut's trampoline turns a method into class-level helpers; flax wraps
  # those as scoped methods, which __post_init__ (run before a scope exists)
  # cannot be.
  def __post_init__(self):  # pragma: no mutate block
    _validate(self.prompt_length, self.placement, self.attention)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, input_mask: Array, input_tokens: Array,
               enable_dropout: bool = False,
               prompt: Optional[Array] = None) -> Array:
    """Encodes embedded inputs with the prompt inserted.

    Args:
      x: [B, T, H] embedded input tokens (no dropout applied yet).
      input_mask: [B, T] bool, True for real tokens.
      input_tokens: [B, T] int, to find EOS for 'suffix'.
      enable_dropout: training-mode dropout.
      prompt: optional [P', H] or [B, P', H] prompt used instead of the
        learned one (serving saved prompts); the learned param still exists.

    Returns:
      [B, P + T, H] encoder output (P' + T with an explicit prompt).
    """
    cfg = self.config
    learned = Prompt(self.prompt_length, x.shape[-1], self.prompt_init,
                     cfg.param_dtype, name="prompt")()  # [P, H]
    prompt = learned if prompt is None else prompt
    length = x.shape[1]
    x, mask = combine(prompt, x, input_mask, input_tokens, self.placement,
                      self.eos_id)  # [B, T, H] -> [B, P + T, H]
    attention = None
    if set(self.attention) != set(FULL_ATTENTION):
      attention = prompt_attention_mask(prompt.shape[-2], length,
                                        self.attention)
    return self.run_stack(x, mask, enable_dropout, attention)


class PromptedT5(T5):
  """T5 whose encoder input carries a soft prompt.

  `apply(..., encoder_input_tokens, decoder_input_tokens,
  decoder_target_tokens)` -> logits [B, L, V] float32, like `T5`, whose
  submodules and parameter names it keeps (`embed`, `decode` are T5's).
  """

  # P, the number of prompt vectors (the paper: 100 for most runs).
  prompt_length: int
  # Initializer of the [P, H] prompt; random U[-0.5, 0.5] as in the paper.
  prompt_init: initializers.Initializer = initializers.random_uniform()
  # 'prefix' (the paper's), 'suffix' (right before each example's EOS) or
  # 'after_first' (after the first token).
  placement: str = "prefix"
  # EOS id that 'suffix' inserts before (1 in T5's SentencePiece vocabularies).
  eos_id: int = 1
  # Allowed attention types in the encoder (prompts.layer.PROMPT_ATTENTION).
  attention: Tuple[str, ...] = FULL_ATTENTION

  # No mutants: see PromptedEncoder.__post_init__.
  def __post_init__(self):  # pragma: no mutate block
    _validate(self.prompt_length, self.placement, self.attention)
    super().__post_init__()

  def make_encoder(self) -> nn.Module:
    return PromptedEncoder(self.config, self.prompt_length, self.prompt_init,
                           self.placement, self.eos_id,
                           tuple(self.attention))

  def encode_with_mask(self, encoder_input_tokens: Array,
                       enable_dropout: bool = False,
                       prompt: Optional[Array] = None) -> Tuple[Array, Array]:
    """Encodes tokens with the prompt.

    Args:
      encoder_input_tokens: [B, T] int, 0 = padding.
      enable_dropout: training-mode dropout.
      prompt: optional [P', H] or [B, P', H] prompt replacing the learned one.

    Returns:
      (encoded [B, P + T, H], mask [B, P + T] bool): the mask is what the
      decoder must cross-attend with (prompt positions True).
    """
    tokens = encoder_input_tokens
    input_mask = tokens > 0
    encoded = self.encoder(self.embed(tokens), input_mask, tokens,
                           enable_dropout, prompt)
    length = self.prompt_length if prompt is None else prompt.shape[-2]
    mask = combine_mask(length, input_mask, tokens, self.placement,
                        self.eos_id)  # [B, T] -> [B, P + T]
    return encoded, mask

  def encode(self, encoder_input_tokens: Array,
             enable_dropout: bool = False) -> Array:
    """[B, T] tokens -> [B, P + T, H]; use `encode_with_mask` for the mask."""
    return self.encode_with_mask(encoder_input_tokens, enable_dropout)[0]

  def encode_embedded(self, x: Array, input_mask: Array,
                      enable_dropout: bool = False) -> Array:
    raise NotImplementedError(
        "PromptedT5 needs the input tokens (suffix placement finds EOS in "
        "them): call encode_with_mask(tokens).")

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, enable_dropout: bool = False,
               prompt: Optional[Array] = None) -> Array:
    """Teacher-forced logits.

    Args:
      encoder_input_tokens: [B, T] int, 0 = padding.
      decoder_input_tokens: [B, L] int, targets shifted right (starts at 0).
      decoder_target_tokens: [B, L] int, 0 = padding.
      enable_dropout: training-mode dropout (needs a 'dropout' rng).
      prompt: optional [P', H] or [B, P', H] prompt replacing the learned one.

    Returns:
      [B, L, V] float32 logits.
    """
    encoded, mask = self.encode_with_mask(encoder_input_tokens,
                                          enable_dropout, prompt)
    return self.decode(encoded, mask, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout)


def split_prompt(params: PyTree) -> Tuple[PyTree, PyTree]:
  """Splits a PromptedT5 param tree into (prompt, frozen) nested dicts.

  Args:
    params: the `params` collection (plain or boxed leaves).

  Returns:
    ({'encoder': {'prompt': {'prompt': [P, H]}}}, everything else).
  """
  flat = traverse_util.flatten_dict(params)
  if prompt_param_path not in flat:
    raise KeyError(f"No prompt at {'/'.join(prompt_param_path)} in the "
                   f"params; were they initialised by PromptedT5?")
  prompt = {prompt_param_path: flat.pop(prompt_param_path)}
  return (traverse_util.unflatten_dict(prompt),
          traverse_util.unflatten_dict(flat))


def merge_params(trainable: PyTree, frozen: PyTree) -> PyTree:
  """Inverse of `split_prompt`: one nested dict for `model.apply`.

  A path present in both is an error: silently preferring one would hide a
  frozen weight being trained (or a prompt being ignored).
  """
  flat_frozen = traverse_util.flatten_dict(frozen) if frozen else {}
  flat_trainable = traverse_util.flatten_dict(trainable) if trainable else {}
  both = sorted("/".join(k) for k in flat_frozen.keys() & flat_trainable)
  if both:
    raise ValueError(f"Parameters both trainable and frozen: {both}.")
  return traverse_util.unflatten_dict({**flat_frozen, **flat_trainable})
