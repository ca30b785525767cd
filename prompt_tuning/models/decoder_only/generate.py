"""Prefill-then-step decoding for the decoder-only LMs: greedy, sampling with
a temperature, beam search, and scoring.

A batch is left-padded (every row's last column is real), as for HF's
`generate`: the prompt (a soft prompt included: decoding takes embedded
rows) is written into the KV cache in one chunk, all but its last column;
then each step feeds one column, starting with that last one. Positions
continue each row's own count of real rows. The loops are the T5 decoder's
(`models.decoding.greedy_steps` / `beam_steps`), given this model's step.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from prompt_tuning.models import decoding
from prompt_tuning.models.decoder_only.model import DecoderOnlyLM
from prompt_tuning.models.decoder_only.model import default_positions

Array = jax.Array
PyTree = Any


def init_cache(model: DecoderOnlyLM, params: PyTree, batch: int,
               cache_length: int) -> PyTree:
  """An all-zero cache of `cache_length` columns (shapes only are traced)."""
  del params  # the cache's shapes follow from the config and the batch

  def init_fn():
    x = jnp.zeros((batch, 1, model.config.emb_dim), model.config.dtype)
    return model.init(jax.random.PRNGKey(0), x, jnp.ones((batch, 1), bool),
                      jnp.zeros((batch, 1), jnp.int32), jnp.int32(0),
                      cache_length, method="forward_embedded")["cache"]

  shapes = jax.eval_shape(init_fn)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def run_chunk(model: DecoderOnlyLM, params: PyTree, cache: PyTree, x: Array,
              mask: Array, positions: Array, start: Array,
              cache_length: int) -> Tuple[Array, PyTree]:
  """Columns [start, start + C) of embedded rows x [B, C, H] through the
  cached model -> (logits [B, C, V] float32, updated cache)."""
  logits, mutated = model.apply(
      {"params": params, "cache": cache}, x, mask, positions,
      jnp.asarray(start, jnp.int32), cache_length, mutable=["cache"],
      method="forward_embedded")
  return logits, mutated["cache"]


def _prepared(model, params, x, mask, max_new, copies):
  """Prefills all but the last column; returns what the steps need."""
  batch, length = x.shape[:2]
  cache_length = length + max_new
  positions = default_positions(mask)
  cache = init_cache(model, params, batch, cache_length)
  if length > 1:
    _, cache = run_chunk(model, params, cache, x[:, :-1], mask[:, :-1],
                         positions[:, :-1], 0, cache_length)
  if copies > 1:  # beams share their example's prefilled cache
    cache = jax.tree_util.tree_map(
        lambda c: jnp.repeat(c, copies, axis=0), cache)
  last_x = jnp.repeat(x[:, -1:], copies, axis=0)  # [B*copies, 1, H]
  last_position = jnp.repeat(positions[:, -1], copies, axis=0)

  def step(cache, tokens, i):
    fed = jnp.where(i == 0, last_x,
                    model.apply({"params": params}, tokens[:, None],
                                method="embed").astype(last_x.dtype))
    ones = jnp.ones((fed.shape[0], 1), bool)
    logits, cache = run_chunk(model, params, cache, fed, ones,
                              (last_position + i)[:, None], length - 1 + i,
                              cache_length)
    return logits[:, 0], cache

  return step, cache


def generate_embedded(model: DecoderOnlyLM, params: PyTree, x: Array,
                      mask: Array, max_new_tokens: int, *,
                      method: str = "greedy", eos_id: int = 1,
                      temperature: float = 1.0, rng: Optional[Array] = None,
                      beam_size: int = 4, alpha: float = 0.6) -> Array:
  """Continues left-padded embedded rows.

  Args:
    model, params: the LM and its parameters.
    x: [B, T, H] embedded rows (a soft prompt may be among them), left-padded
      so that column T - 1 is real in every row.
    mask: [B, T] bool, real rows.
    max_new_tokens: static number of tokens to produce at most.
    method: 'greedy', 'sample' (softmax(logits / temperature), needs `rng`)
      or 'beam' (the best beam is returned).
    eos_id: end-of-sequence id, kept in the output.
    temperature, rng: sampling's.
    beam_size, alpha: beam search's (T5X's length penalty).

  Returns:
    [B, max_new_tokens] int32 tokens, 0 after EOS.
  """
  batch = x.shape[0]
  start = jnp.zeros((batch,), jnp.int32)  # replaced by the last column
  if method in ("greedy", "sample"):
    step, cache = _prepared(model, params, x, mask, max_new_tokens, 1)
    return decoding.greedy_steps(
        step, cache, start, max_new_tokens, eos_id,
        temperature=temperature if method == "sample" else 0.0, rng=rng)
  if method == "beam":
    step, cache = _prepared(model, params, x, mask, max_new_tokens,
                            beam_size)
    best, _ = decoding.beam_steps(step, cache, start, max_new_tokens,
                                  beam_size, alpha, eos_id)
    return best[:, 0]
  raise ValueError(f"Unknown decoding method {method!r}: use 'greedy', "
                   "'sample' or 'beam'.")


def generate(model: DecoderOnlyLM, params: PyTree, tokens: Array,
             mask: Array, max_new_tokens: int, **kwargs) -> Array:
  """`generate_embedded` from left-padded token ids [B, T]."""
  x = model.apply({"params": params}, tokens, method="embed")
  return generate_embedded(model, params, x, mask, max_new_tokens, **kwargs)


def score(model: DecoderOnlyLM, params: PyTree, x: Array, mask: Array,
          targets: Array, target_mask: Array) -> Array:
  """Log-likelihood of each row's targets after its (embedded) context.

  Args:
    x: [B, T, H] embedded context, left-padded (column T - 1 real: it
      predicts the first target), mask [B, T].
    targets: [B, L] int, target_mask [B, L] bool (right-padded).

  Returns:
    [B] float32: sum over real targets of log p(target | context, earlier
    targets), from one teacher-forced pass over [context; targets].
  """
  embedded = model.apply({"params": params}, targets, method="embed")
  rows = jnp.concatenate([x, embedded.astype(x.dtype)], axis=1)
  full_mask = jnp.concatenate([mask, target_mask], axis=1)
  logits = model.apply({"params": params}, rows, full_mask,
                       method="forward_embedded")
  # The logits at column j predict column j + 1: targets' come from the
  # columns just before them.
  length = x.shape[1]
  log_probs = jax.nn.log_softmax(
      logits[:, length - 1:length - 1 + targets.shape[1]])
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(target_mask, picked, 0.0), axis=-1)
