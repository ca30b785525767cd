"""One frozen decoder-only LM, a different prompt per row: ragged batches.

The decoder-only counterpart of `prompts.mixed`. Rows are left-padded token
ids (decoding continues after the last column) and each names a prompt of a
bank `[K, P_max, H]` (`prompt_ids [B]`, lengths [K]). Every row is laid out
as `padding; P_i; tokens` ('prefix') or `padding; first token; P_i; rest`
('after_first'), with all of its padding in front: positions then count
real rows only and, since the sliding windows of Mistral and Gemma 2 count
columns, no padding sits between real rows either. So each row equals its
prompt run alone (`PromptedDecoderOnly` with that prompt), and the bank is
data, not a parameter: switching prompts never recompiles.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp

from prompt_tuning.models.decoder_only import generate as generate_lib
from prompt_tuning.models.decoder_only.model import DecoderOnlyLM
from prompt_tuning.prompts.decoder_model import DECODER_PLACEMENTS
from prompt_tuning.prompts.decoder_model import input_rows

Array = jax.Array
PyTree = Any


def combine(prompts: Array, lengths: Array, embedded: Array, mask: Array,
            placement: str = "prefix") -> Tuple[Array, Array]:
  """Splices each row's prompt into left-padded embedded rows.

  Args:
    prompts: [B, P_max, H], row b's prompt in its first `lengths[b]` rows.
    lengths: [B] int.
    embedded: [B, T, H] embedded tokens, left-padded.
    mask: [B, T] bool, real tokens (each row's last ones).
    placement: 'prefix' or 'after_first'.

  Returns:
    (x [B, P_max + T, H], mask [B, P_max + T] bool), every row's padding in
    front.
  """
  if placement not in DECODER_PLACEMENTS:
    raise ValueError(f"A decoder-only prompt's placement is one of "
                     f"{DECODER_PLACEMENTS}; got {placement!r}.")
  prompt_max, length = prompts.shape[1], embedded.shape[1]
  real = jnp.sum(mask.astype(jnp.int32), axis=1)[:, None]  # [B, 1]
  count = lengths.astype(jnp.int32)[:, None]  # [B, 1]
  first = length - real  # the column of each row's first real token
  head = jnp.zeros_like(real) if placement == "prefix" else jnp.minimum(
      real, 1)  # real tokens before the prompt
  out = jnp.arange(prompt_max + length, dtype=jnp.int32)[None]
  start = prompt_max + length - real - count  # where each row's content starts
  offset = out - start  # [B, P_max + T], the content index
  is_head = (offset >= 0) & (offset < head)
  is_prompt = (offset >= head) & (offset < head + count)
  is_tail = (offset >= head + count) & (offset < real + count)
  # Sources in [tokens (T); prompt (P_max)].
  index = jnp.where(is_head, first + offset,
                    jnp.where(is_prompt, length + offset - head,
                              jnp.where(is_tail, first + offset - count, 0)))
  pool = jnp.concatenate([embedded, prompts.astype(embedded.dtype)], axis=1)
  x = jnp.take_along_axis(pool, index[:, :, None], axis=1)
  keep = is_head | is_prompt | is_tail
  return jnp.where(keep[:, :, None], x, 0), keep


def _rows(model: DecoderOnlyLM, params: PyTree, bank: Array, lengths: Array,
          prompt_ids: Array, tokens: Array, mask: Array,
          placement: str) -> Tuple[Array, Array]:
  embedded = model.apply({"params": params}, tokens, method="embed")
  prompts = input_rows(model.config, jnp.take(bank, prompt_ids, axis=0))
  return combine(prompts, jnp.take(lengths, prompt_ids), embedded,
                 mask.astype(bool), placement)


def generate(model: DecoderOnlyLM, params: PyTree, bank: Array,
             lengths: Array, prompt_ids: Array, tokens: Array, mask: Array,
             max_new_tokens: int, placement: str = "prefix",
             **kwargs) -> Array:
  """[B, max_new_tokens] continuations, each row with its own prompt
  (`generate.generate_embedded`'s methods and options)."""
  x, full_mask = _rows(model, params, bank, lengths, prompt_ids, tokens,
                       mask, placement)
  return generate_lib.generate_embedded(model, params, x, full_mask,
                                        max_new_tokens, **kwargs)


def score(model: DecoderOnlyLM, params: PyTree, bank: Array, lengths: Array,
          prompt_ids: Array, tokens: Array, mask: Array, targets: Array,
          target_mask: Array, placement: str = "prefix") -> Array:
  """[B] log-likelihood of each row's targets after its prompt and tokens
  (rank classification)."""
  x, full_mask = _rows(model, params, bank, lengths, prompt_ids, tokens,
                       mask, placement)
  return generate_lib.score(model, params, x, full_mask, targets,
                            target_mask)
