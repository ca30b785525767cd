"""The soft prompt: one trainable [P, H] parameter and how it joins the input.

`Prompt` owns the only parameter prompt tuning trains (`prompt`, logical axes
`prompt`, `prompt_embed`). `combine` inserts a prompt into a batch of embedded
inputs, either in front (`prefix`, the paper's choice) or right before each
example's EOS (`suffix`), and extends the attention mask so that prompt
positions are always visible while padding stays masked. The prompt may be
shared ([P, H]) or differ per example ([B, P, H]), so one batch can serve
requests for many tasks against the same frozen model. All shapes are static,
so both placements jit.
"""

from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models import layers
from prompt_tuning.prompts import initializers

Array = jax.Array

# 'prefix': [P; X] (the paper); 'suffix': right before each example's EOS;
# 'after_first': after the first token, [x_1; P; x_2..] (the official code's
# prefix_prompt_after_bos, for inputs that start with a BOS or task token).
PLACEMENTS = ("prefix", "suffix", "after_first")


class Prompt(nn.Module):
  """A learned prompt of `length` vectors of width `embed_dim`."""

  # P, the number of prompt vectors (the paper's sweet spot is 20-100).
  length: int
  # H, the frozen model's embedding width.
  embed_dim: int
  # Flax initializer (rng, shape, dtype) -> [P, H]; see `initializers`.
  init_fn: initializers.Initializer = initializers.random_uniform()
  # Storage dtype: float32 even for bfloat16 models, as the optimizer wants.
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self) -> Array:
    """Returns the prompt [P, H] in `param_dtype`."""
    return layers.param_with_axes(self, "prompt", self.init_fn,
                                  (self.length, self.embed_dim),
                                  ("prompt", "prompt_embed"), self.param_dtype)


def _batched(prompt: Array, batch: int, width: int) -> Array:
  """[P, H] or [B, P, H] -> [B, P, H], checking it fits the inputs."""
  if prompt.ndim == 2:
    prompt = jnp.broadcast_to(prompt[None], (batch,) + prompt.shape)
  elif prompt.ndim != 3 or prompt.shape[0] != batch:
    raise ValueError(
        f"A prompt must be [P, H] (shared) or [B, P, H] with B={batch} (one "
        f"per example); got shape {tuple(prompt.shape)}.")
  if prompt.shape[-1] != width:
    raise ValueError(
        f"The prompt width {prompt.shape[-1]} differs from the embedding "
        f"width {width}.")
  return prompt


def suffix_positions(input_mask: Array, input_tokens: Array,
                     eos_id: int = 1) -> Array:
  """Where the suffix prompt starts in each example.

  Args:
    input_mask: [B, T] bool, True for real tokens.
    input_tokens: [B, T] int.
    eos_id: the EOS token id.

  Returns:
    [B] int32: the index of the first real EOS, or, for an example without
    one (truncated), the index just after its last real token.
  """
  length = input_tokens.shape[1]
  positions = jnp.arange(length, dtype=jnp.int32)
  is_eos = (input_tokens == eos_id) & input_mask  # [B, T]
  first_eos = jnp.argmax(is_eos, axis=1).astype(jnp.int32)  # [B]
  after_last = jnp.max(jnp.where(input_mask, positions + 1, 0), axis=1)  # [B]
  return jnp.where(jnp.any(is_eos, axis=1), first_eos, after_last)


# Who may attend to whom in a prompted encoder (the official code's
# extended/masks.py types). The paper, and the default: all but the causal
# variant, i.e. every real position sees every real position.
PROMPT_ATTENTION = ("input->input", "input->prompt", "prompt->prompt",
                    "prompt->prompt;causal", "prompt->input")
FULL_ATTENTION = ("input->input", "input->prompt", "prompt->prompt",
                  "prompt->input")


def check_prompt_attention(allowed) -> tuple:
  """The allowed attention types, checked; input->input and input->prompt
  are always on (the official code forces them too, with a warning)."""
  allowed = tuple(allowed)
  unknown = sorted(set(allowed) - set(PROMPT_ATTENTION))
  if unknown:
    raise ValueError(f"Prompt attention types {unknown} unknown; use some of "
                     f"{PROMPT_ATTENTION}.")
  missing = [t for t in ("input->input", "input->prompt") if t not in allowed]
  if missing:
    raise ValueError(f"Prompt attention must allow {missing}: the inputs "
                     f"always see themselves and the prompt.")
  return allowed


def prompt_attention_mask(prompt_length: int, length: int,
                          allowed) -> Array:
  """[1, 1, P + T, P + T] bool: which query may see which key, for a prompt
  in front ('prefix' placement), from the allowed types.

  Prompt->prompt: all ('prompt->prompt'), lower-triangular
  ('prompt->prompt;causal', which wins when both are given, as officially),
  or each prompt position itself only (neither). Padding is masked
  separately.
  """
  allowed = check_prompt_attention(allowed)
  total = prompt_length + length
  is_prompt = jnp.arange(total) < prompt_length
  q, k = is_prompt[:, None], is_prompt[None, :]
  mask = ~q & ~k  # input->input
  mask = mask | (~q & k)  # input->prompt
  if "prompt->input" in allowed:
    mask = mask | (q & ~k)
  if "prompt->prompt;causal" in allowed:
    block = jnp.tril(jnp.ones((total, total), bool))
  elif "prompt->prompt" in allowed:
    block = jnp.ones((total, total), bool)
  else:
    block = jnp.eye(total, dtype=bool)
  mask = mask | (q & k & block)
  return mask[None, None]


def insert_positions(placement: str, input_mask: Array, input_tokens: Array,
                     eos_id: int = 1) -> Array:
  """[B] int32: where each example's prompt starts, for any placement."""
  batch = input_tokens.shape[0]
  if placement == "prefix":
    return jnp.zeros((batch,), jnp.int32)
  if placement == "after_first":
    return jnp.ones((batch,), jnp.int32)
  return suffix_positions(input_mask, input_tokens, eos_id)


def splice_source(start: Array, prompt_length: int,
                   input_length: int) -> Array:
  """Gather indices into [inputs; prompt] that splice the prompt at `start`.

  Args:
    start: [B] int, the insertion index per example.
    prompt_length: P.
    input_length: T.

  Returns:
    [B, P + T] int32: output position j reads input j before `start`, prompt
    row j - start inside the prompt, and input j - P after it.
  """
  out = jnp.arange(prompt_length + input_length, dtype=jnp.int32)[None]
  start = start[:, None]  # [B] -> [B, 1]
  in_prompt = (out >= start) & (out < start + prompt_length)
  return jnp.where(out < start, out,
                   jnp.where(in_prompt, input_length + out - start,
                             out - prompt_length))  # [B, P + T]


def combine(prompt: Array, embedded: Array, input_mask: Array,
            input_tokens: Array, placement: str = "prefix",
            eos_id: int = 1) -> Tuple[Array, Array]:
  """Inserts a prompt into embedded inputs and extends their mask.

  Example tokens `a b c EOS pad pad` become `P1..Pp a b c EOS pad pad`
  (prefix), `a b c P1..Pp EOS pad pad` (suffix) or `a P1..Pp b c EOS pad
  pad` (after_first). Relative position biases
  make the prefix result at real positions independent of trailing padding;
  the suffix one too, since padding stays after the EOS.

  Args:
    prompt: [P, H] shared, or [B, P, H] one prompt per example.
    embedded: [B, T, H] embedded input tokens.
    input_mask: [B, T] bool, True for real tokens.
    input_tokens: [B, T] int, used by 'suffix' to find each EOS.
    placement: one of PLACEMENTS.
    eos_id: the EOS token id ('suffix' only).

  Returns:
    (x [B, P + T, H] in `embedded.dtype`, mask [B, P + T] bool, True at prompt
    and real-token positions).
  """
  batch, length, width = embedded.shape
  input_mask = input_mask.astype(bool)  # callers may pass 0/1 ints
  prompt = _batched(prompt, batch, width).astype(embedded.dtype)  # [B, P, H]
  prompt_length = prompt.shape[1]
  mask = combine_mask(prompt_length, input_mask, input_tokens, placement,
                      eos_id)  # [B, T] -> [B, P + T]; checks placement
  if placement == "prefix":
    return jnp.concatenate([prompt, embedded], axis=1), mask  # [B, P + T, H]
  # A per-example gather rather than a dynamic slice: every example splices
  # at its own position, and shapes stay static.
  source = splice_source(
      insert_positions(placement, input_mask, input_tokens, eos_id),
      prompt_length, length)  # [B, P + T]
  pool = jnp.concatenate([embedded, prompt], axis=1)  # [B, T + P, H]
  x = jnp.take_along_axis(pool, source[:, :, None], axis=1)  # [B, P + T, H]
  return x, mask


def combine_mask(prompt_length: int, input_mask: Array, input_tokens: Array,
                 placement: str = "prefix", eos_id: int = 1) -> Array:
  """The mask `combine` returns, without touching embeddings.

  For callers that need the encoder mask next to an encoder output (e.g. the
  decoder's cross-attention), where the embeddings were combined elsewhere.

  Args:
    prompt_length: P.
    input_mask: [B, T] bool.
    input_tokens: [B, T] int.
    placement: one of PLACEMENTS.
    eos_id: the EOS token id.

  Returns:
    [B, P + T] bool.
  """
  if placement not in PLACEMENTS:
    raise ValueError(f"Prompt placement {placement!r} is not one of "
                     f"{PLACEMENTS}.")
  batch, length = input_tokens.shape
  input_mask = input_mask.astype(bool)  # callers may pass 0/1 ints
  prompt_mask = jnp.ones((batch, prompt_length), bool)
  if placement == "prefix":
    return jnp.concatenate([prompt_mask, input_mask], axis=1)  # [B, P + T]
  source = splice_source(
      insert_positions(placement, input_mask, input_tokens, eos_id),
      prompt_length, length)
  mask_pool = jnp.concatenate([input_mask, prompt_mask], axis=1)  # [B, T + P]
  return jnp.take_along_axis(mask_pool, source, axis=1)  # [B, P + T]
