"""One frozen T5, a different prompt per example: ragged prompt batches.

A batch names, per example, one prompt of a bank `[K, P_max, H]` (`prompt_ids
[B]`); prompts shorter than `P_max` are padded and masked. Where the padding
goes is what makes a mixed batch equal to running each prompt alone: T5's
relative position bias sees only offsets between positions, so the padding
rows are put after every real position (`P_i; tokens; padding`, or for
`suffix` placement `tokens; P_i; EOS; padding`), where they shift nothing.
The encoder then runs the plain `T5` stack over the combined sequence, so
the frozen params are exactly T5's tree (no `encoder/prompt` slot): the
prompt is data, not a parameter, and switching prompts never recompiles.
Decoding, beam search and rank classification reuse `models.decoding`
unchanged: they only see an encoder output and its mask.

Entries that add more than a prompt (IA3, LoRA, prefixes, per-layer prompts)
come as an `adapters` bank (`prompts.adapter_bank`): `model` is then the
bank's per-example T5, and each row's adapters are gathered by its id, for
the encoder and for every decoding row (beams included).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models import decoding
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.adapter_bank import example_params
from prompt_tuning.prompts.layer import PLACEMENTS
from prompt_tuning.prompts.layer import insert_positions

Array = jax.Array
PyTree = Any
# An adapter bank's arrays ('/'-joined name -> [K, ...]), or None.
Bank = Optional[Mapping[str, Array]]


def stack_prompts(prompts: Sequence[np.ndarray]) -> Tuple[np.ndarray,
                                                          np.ndarray]:
  """Pads prompts of one width to a bank.

  Args:
    prompts: K arrays [P_k, H].

  Returns:
    (bank [K, P_max, H] float32, zero after each prompt's rows; lengths [K]
    int32).
  """
  if not prompts:
    raise ValueError("stack_prompts needs at least one prompt.")
  widths = {int(p.shape[-1]) for p in prompts}
  if len(widths) != 1 or any(np.ndim(p) != 2 for p in prompts):
    raise ValueError(f"Prompts must all be [P, H] of one width H; got shapes "
                     f"{[tuple(np.shape(p)) for p in prompts]}.")
  lengths = np.array([p.shape[0] for p in prompts], np.int32)
  bank = np.zeros((len(prompts), int(lengths.max()), widths.pop()),
                  np.float32)
  for k, p in enumerate(prompts):
    bank[k, :p.shape[0]] = p
  return bank, lengths


def _source(start: Array, lengths: Array, prompt_length: int,
            input_length: int) -> Tuple[Array, Array, Array]:
  """Where each output position reads from, per example.

  Args:
    start: [B] int, where the prompt goes (0 for prefix).
    lengths: [B] int, each example's prompt length P_i <= P_max.
    prompt_length: P_max.
    input_length: T.

  Returns:
    (index [B, P_max + T] into [inputs (T); prompt (P_max)], is_input
    [B, P_max + T] bool, is_prompt [B, P_max + T] bool); positions that are
    neither are the trailing padding of a shorter prompt.
  """
  out = jnp.arange(prompt_length + input_length, dtype=jnp.int32)[None]
  start, lengths = start[:, None], lengths[:, None]  # [B] -> [B, 1]
  is_prompt = (out >= start) & (out < start + lengths)
  after = out >= start + lengths
  is_input = (out < start) | (after & (out - lengths < input_length))
  index = jnp.where(out < start, out,
                    jnp.where(is_prompt, input_length + out - start,
                              jnp.clip(out - lengths, 0, input_length - 1)))
  return index, is_input, is_prompt  # each [B, P_max + T]


def combine_ragged(prompts: Array, lengths: Array, embedded: Array,
                   input_mask: Array, input_tokens: Array,
                   placement: str = "prefix",
                   eos_id: int = 1) -> Tuple[Array, Array]:
  """Inserts per-example prompts of different lengths into embedded inputs.

  With every length equal to P_max this is `layer.combine` with a
  `[B, P, H]` prompt.

  Args:
    prompts: [B, P_max, H], example b's prompt in its first `lengths[b]` rows.
    lengths: [B] int.
    embedded: [B, T, H] embedded input tokens.
    input_mask: [B, T] bool, True for real tokens.
    input_tokens: [B, T] int ('suffix' finds each EOS in them).
    placement: one of `layer.PLACEMENTS`.
    eos_id: the EOS id ('suffix' only).

  Returns:
    (x [B, P_max + T, H] in `embedded.dtype`, mask [B, P_max + T] bool).
  """
  if placement not in PLACEMENTS:
    raise ValueError(f"Prompt placement {placement!r} is not one of "
                     f"{PLACEMENTS}.")
  length = embedded.shape[1]
  input_mask = input_mask.astype(bool)
  start = insert_positions(placement, input_mask, input_tokens, eos_id)
  index, is_input, is_prompt = _source(start, lengths.astype(jnp.int32),
                                       prompts.shape[1], length)
  pool = jnp.concatenate([embedded, prompts.astype(embedded.dtype)],
                         axis=1)  # [B, T + P_max, H]
  x = jnp.take_along_axis(pool, index[:, :, None], axis=1)
  # Padding rows are zeroed: they are masked everywhere, but a finite,
  # input-independent value keeps them from carrying another token's data.
  x = jnp.where((is_input | is_prompt)[:, :, None], x, 0)  # [B, P_max + T, H]
  mask_pool = jnp.concatenate(
      [input_mask, jnp.ones(prompts.shape[:2], bool)], axis=1)
  mask = jnp.take_along_axis(mask_pool, index, axis=1) & (is_input |
                                                          is_prompt)
  return x, mask


def encode(model: T5, frozen: PyTree, bank: Array, lengths: Array,
           prompt_ids: Array, tokens: Array, placement: str = "prefix",
           eos_id: int = 1, adapters: Bank = None) -> Tuple[Array, Array]:
  """Encodes a batch whose examples each name a prompt of the bank.

  Args:
    model: the plain frozen `T5` (any `PromptedT5` config works: `T5(config)`).
    frozen: its params (T5's tree; `split_prompt`'s frozen half).
    bank: [K, P_max, H] prompts, zero-padded.
    lengths: [K] int, each prompt's length.
    prompt_ids: [B] int in [0, K), the prompt of each example.
    tokens: [B, T] int, 0 = padding.
    placement: 'prefix' or 'suffix'.
    eos_id: EOS id for 'suffix'.
    adapters: the adapter bank's arrays, or None (see the module docstring).

  Returns:
    (encoded [B, P_max + T, H], mask [B, P_max + T] bool).
  """
  params = example_params(frozen, adapters, prompt_ids)
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
  embedded = apply(tokens, method="embed")  # [B, T, H]
  prompts = jnp.take(bank, prompt_ids, axis=0)  # [B, P_max, H]
  x, mask = combine_ragged(prompts, jnp.take(lengths, prompt_ids), embedded,
                           tokens > 0, tokens, placement, eos_id)
  return apply(x, mask, method="encode_embedded"), mask


def logits(model: T5, frozen: PyTree, bank: Array, lengths: Array,
           prompt_ids: Array, encoder_input_tokens: Array,
           decoder_input_tokens: Array, decoder_target_tokens: Array,
           placement: str = "prefix", eos_id: int = 1,
           adapters: Bank = None) -> Array:
  """Teacher-forced logits [B, L, V] float32 with per-example prompts."""
  encoded, mask = encode(model, frozen, bank, lengths, prompt_ids,
                         encoder_input_tokens, placement, eos_id, adapters)
  return model.apply({"params": example_params(frozen, adapters, prompt_ids)},
                     encoded, mask, decoder_input_tokens,
                     decoder_target_tokens, method="decode")


def predict(model: T5, frozen: PyTree, bank: Array, lengths: Array,
            prompt_ids: Array, tokens: Array, *, max_decode_length: int,
            method: str = "greedy", beam_size: int = 4, alpha: float = 0.6,
            eos_id: int = 1, placement: str = "prefix",
            adapters: Bank = None) -> Array:
  """Decoded tokens [B, max_decode_length] (greedy, or the best beam)."""
  encoded, mask = encode(model, frozen, bank, lengths, prompt_ids, tokens,
                         placement, eos_id, adapters)
  if method == "greedy":
    return decoding.greedy_decode_encoded(
        model, example_params(frozen, adapters, prompt_ids), encoded, mask,
        max_decode_length, eos_id)
  if method == "beam":
    # Row b * K + k of the search is beam k of example b.
    beams = example_params(frozen, adapters,
                           jnp.repeat(prompt_ids, beam_size))
    best, _ = decoding.beam_search_encoded(model, beams, encoded, mask,
                                           max_decode_length, beam_size,
                                           alpha, eos_id)
    return best[:, 0]
  raise ValueError(f"Unknown decoding method {method!r}: use 'greedy' or "
                   "'beam'.")


def rank(model: T5, frozen: PyTree, bank: Array, lengths: Array,
         prompt_ids: Array, tokens: Array, candidates: Array,
         placement: str = "prefix", eos_id: int = 1,
         adapters: Bank = None) -> Array:
  """Log-likelihood of each example's candidate targets (rank classification).

  Args:
    model, frozen, bank, lengths, prompt_ids, tokens: as in `encode`.
    candidates: [B, C, L] int, each example's own label words as EOS-ended,
      0-padded target rows (an all-zero row is an absent candidate).
    placement, eos_id, adapters: as in `encode`.

  Returns:
    [B, C] float32; absent candidates score -inf.
  """
  encoded, mask = encode(model, frozen, bank, lengths, prompt_ids, tokens,
                         placement, eos_id, adapters)
  params = example_params(frozen, adapters, prompt_ids)
  # C is small (label words): a static loop reuses one encoder pass.
  scores = jnp.stack([decoding.score_encoded(model, params, encoded, mask,
                                             candidates[:, c])
                      for c in range(candidates.shape[1])], axis=-1)
  present = jnp.any(candidates > 0, axis=-1)  # [B, C]
  return jnp.where(present, scores, -jnp.inf)
