"""A frozen decoder-only LM with a soft prompt: what prompt tuning trains.

`PromptedDecoderOnly` has exactly the LM's parameter tree plus
`decoder/prompt/prompt` [P, H] (where the official code's decoder-only
prompt lives). The prompt joins the embedded tokens

- 'prefix': before every column, padding included (what PEFT's CAUSAL_LM
  prompt tuning does), or
- 'after_first': right after each row's first real token (its BOS, for
  models whose tokenizer adds one),

Gemma 2's scaling of input rows by sqrt(H) applies to the prompt's rows
too, as HF applies it to PEFT's prompts (Gemma 3 scales inside its lookup,
so not the prompt's). Positions (so rotary angles) count the
prompt's rows: a token's
position is the number of real rows, prompt rows included, before it.
`__call__` returns the logits at the token columns only ([B, T, V], what the
loss and scoring read); `prompted` gives the combined rows for decoding
(`models.decoder_only.generate` takes embedded rows). With deep prompts
(`AdapterConfig.layer_prompt_length`), `PromptedDecoder.prompt_rows` tells
each layer where the input prompt's rows are.
"""

from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.decoder_only.model import Decoder
from prompt_tuning.models.decoder_only.model import DecoderOnlyLM
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.layer import Prompt
from prompt_tuning.prompts.layer import splice_source

Array = jax.Array

# Where a decoder-only prompt may go.
DECODER_PLACEMENTS = ("prefix", "after_first")


def input_rows(config, prompt: Array) -> Array:
  """A prompt as the stack's input rows: Gemma 2 scales every input row by
  sqrt(H), inputs_embeds too, so PEFT's prompts are scaled; ours alike.
  Gemma 3 scales inside its embedding lookup, so prompts are not."""
  if config.family == "gemma2":
    return prompt * jnp.asarray(config.emb_dim ** 0.5, prompt.dtype)
  return prompt


def prompt_space_table(config, embedding):
  """The token table [V, H] in the prompt's own units, for initialisers
  (class labels, text, sampled vocabulary) and nearest tokens: Gemma 3
  scales tokens by sqrt(H) inside its lookup but not the prompt, so its
  table rows are scaled here (PEFT's text init reads the scaled lookup);
  for the others a prompt row and a table row are alike (Gemma 2 scales
  both)."""
  if config.family == "gemma3":
    return embedding * (config.emb_dim ** 0.5)
  return embedding


class PromptedDecoder(Decoder):
  """The LM's `decoder` subtree plus its `prompt`."""

  prompt_length: int = 1
  prompt_init: initializers.Initializer = initializers.random_uniform()
  placement: str = "prefix"

  def setup(self):
    super().setup()
    self.prompt = Prompt(self.prompt_length, self.config.emb_dim,
                         self.prompt_init, self.config.param_dtype)
    ad = self.adapters
    if ad is not None and ad.layer_prompt_length not in (
        0, self.prompt_length):
      raise ValueError(
          f"Deep prompts of length {ad.layer_prompt_length} need an input "
          f"prompt of that length, not {self.prompt_length}.")

  def prompt_rows(self, mask: Array, decode_start: Optional[Array]
                  ) -> Optional[Array]:
    """The input prompt's rows: every row's padding is in front of it (or
    at the end, right-padded), so it starts at the row's first real column
    ('prefix') or the one after ('after_first'). A decoding step's chunk
    (`decode_start` > 0) holds none of it."""
    if self.adapters is None or not self.adapters.layer_prompt_length:
      return None
    head = 0 if self.placement == "prefix" else 1
    start = jnp.argmax(mask, axis=1).astype(jnp.int32) + head  # [B]
    rows = jnp.arange(mask.shape[1], dtype=jnp.int32)[None] - start[:, None]
    inside = (rows >= 0) & (rows < self.prompt_length)
    if decode_start is not None:
      inside &= decode_start == 0
    return jnp.where(inside, rows, -1)


class PromptedDecoderOnly(DecoderOnlyLM):
  """A decoder-only LM whose input carries a soft prompt."""

  # P, the number of prompt vectors.
  prompt_length: int = 1
  # Initializer of the [P, H] prompt (the paper's U[-0.5, 0.5] by default).
  prompt_init: initializers.Initializer = initializers.random_uniform()
  # 'prefix' or 'after_first' (see the module docstring).
  placement: str = "prefix"

  def make_decoder(self) -> nn.Module:
    if self.placement not in DECODER_PLACEMENTS:
      raise ValueError(f"A decoder-only prompt's placement is one of "
                       f"{DECODER_PLACEMENTS}; got {self.placement!r}.")
    if self.prompt_length < 1:
      raise ValueError(f"prompt_length must be >= 1; got "
                       f"{self.prompt_length}.")
    return PromptedDecoder(self.config, self.adapters, self.prompt_length,
                           self.prompt_init, self.placement)

  def prompted(self, tokens: Array, mask: Array,
               prompt: Optional[Array] = None
               ) -> Tuple[Array, Array, Array]:
    """The rows the stack sees.

    Args:
      tokens: [B, T] int; mask: [B, T] bool, real tokens.
      prompt: [P, H] or [B, P, H] to use instead of the learned one.

    Returns:
      (x [B, P + T, H], mask [B, P + T] bool, columns [B, T] int32: where
      each token's row went).
    """
    mask = mask.astype(bool)
    embedded = self.embed(tokens)
    prompt = self.decoder.prompt() if prompt is None else prompt
    batch, length, width = embedded.shape
    if prompt.ndim == 2:
      prompt = jnp.broadcast_to(prompt[None], (batch,) + prompt.shape)
    if prompt.shape[0] != batch or prompt.shape[2] != width:
      raise ValueError(f"A prompt must be [P, {width}] or [{batch}, P, "
                       f"{width}]; got shape {tuple(prompt.shape)}.")
    prompt = input_rows(self.config, prompt.astype(embedded.dtype))
    count = prompt.shape[1]
    if self.placement == "prefix":
      start = jnp.zeros((batch,), jnp.int32)
    else:  # after each row's first real token
      start = jnp.argmax(mask, axis=1).astype(jnp.int32) + 1
    source = splice_source(start, count, length)  # [B, P + T]
    pool = jnp.concatenate([embedded, prompt], axis=1)
    x = jnp.take_along_axis(pool, source[:, :, None], axis=1)
    mask_pool = jnp.concatenate([mask, jnp.ones((batch, count), bool)],
                                axis=1)
    full_mask = jnp.take_along_axis(mask_pool, source, axis=1)
    token = jnp.arange(length, dtype=jnp.int32)[None]
    columns = jnp.where(token < start[:, None], token, token + count)
    return x, full_mask, columns

  def __call__(self, tokens: Array, mask: Optional[Array] = None,
               positions: Optional[Array] = None,
               prompt: Optional[Array] = None) -> Array:
    """Logits [B, T, V] float32 at the token columns (each predicts the
    next token, as the LM's do)."""
    if positions is not None:
      raise ValueError("A prompted LM counts positions over its prompt "
                       "itself; do not pass positions.")
    if mask is None:
      mask = jnp.ones(tokens.shape, bool)
    x, full_mask, columns = self.prompted(tokens, mask, prompt)
    logits = self.forward_embedded(x, full_mask)  # [B, P + T, V]
    return jnp.take_along_axis(logits, columns[:, :, None], axis=1)
