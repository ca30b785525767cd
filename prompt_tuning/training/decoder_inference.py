"""Evaluation predictions and label ranking for a decoder-only LM's run.

Evaluation batches are the training rows (`data.decoder_features`): `[BOS]
inputs targets`, right-padded, with `decoder_loss_weights` on the targets.
Decoding needs the context alone, left-padded (every row's last column
real, `models.decoder_only.generate`), with the prompt spliced in and all
of the padding in front (sliding windows count columns). So each row's
context is cut where its targets start, moved to the right, and the prompt
(the run's, or a per-example one) joined by `prompts.decoder_mixed.combine`;
the result is what the prompted LM's own forward sees, so a prediction is
what teacher forcing would pick, token by token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from prompt_tuning.models.decoder_only import generate as generate_lib
from prompt_tuning.prompts.decoder_mixed import combine
from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly
from prompt_tuning.prompts.decoder_model import input_rows

Array = jax.Array
PyTree = Any


def left_padded_context(batch: Mapping[str, Array]) -> Tuple[Array, Array]:
  """Each row's context (the columns before its first target), moved right.

  Args:
    batch: `decoder_input_tokens`, `decoder_loss_weights`, `decoder_mask`,
      each [B, L]; a row without targets (batch padding) keeps one column.

  Returns:
    (tokens [B, L] int32, mask [B, L] bool), each row's real columns last.
  """
  tokens = batch["decoder_input_tokens"]
  weights = batch["decoder_loss_weights"] > 0
  length = tokens.shape[1]
  # Column j's logits predict token j + 1: the first weighted column is the
  # context's last.
  context = jnp.where(jnp.any(weights, axis=1),
                      jnp.argmax(weights, axis=1) + 1, 1)  # [B]
  shift = (length - context)[:, None]  # [B, 1]
  column = jnp.arange(length)[None]  # [1, L]
  source = jnp.clip(column - shift, 0, length - 1)
  mask = column >= shift
  left = jnp.where(mask, jnp.take_along_axis(tokens, source, axis=1), 0)
  return left.astype(jnp.int32), mask


def context_rows(model, full: PyTree, batch: Mapping[str, Array],
                 prompt: Optional[Array] = None) -> Tuple[Array, Array]:
  """(x [B, P + L, H], mask) of every row's prompted context, left-padded.

  Args:
    model: the run's `DecoderOnlyLM` or `PromptedDecoderOnly`.
    full: its whole parameter tree.
    batch: as for `left_padded_context`.
    prompt: [B, P, H] per-example prompts instead of the learned one.
  """
  tokens, mask = left_padded_context(batch)
  embedded = model.apply({"params": full}, tokens, method="embed")
  if not isinstance(model, PromptedDecoderOnly):
    return embedded, mask
  if prompt is None:
    learned = full["decoder"]["prompt"]["prompt"]
    prompt = jnp.broadcast_to(learned[None],
                              (tokens.shape[0],) + learned.shape)
  lengths = jnp.full((tokens.shape[0],), prompt.shape[1], jnp.int32)
  return combine(input_rows(model.config, prompt), lengths, embedded, mask,
                 model.placement)


def candidate_mask(candidates: Array) -> Array:
  """[..., L] bool: a label row's real columns, those at or before its last
  nonzero id (its EOS; `training.evaluation.label_candidates` pads with 0
  after it), so a word with id 0 inside a label still counts."""
  nonzero = candidates != 0
  return jnp.flip(jnp.cumsum(jnp.flip(nonzero, -1), -1), -1) > 0


def model_eos(decode, config):
  """`decode` (a `DecodeConfig`) stopping at the decoder-only LM's own end
  of text, config.json's eos_token_id (T5's id 1 is a word in these
  vocabularies); unchanged when the config names none."""
  if config.eos_id is None:
    return decode
  return dataclasses.replace(decode, eos_id=config.eos_id)


def predict(model, full: PyTree, batch: Mapping[str, Array], *,
            length: int, method: str, eos_id: int, beam_size: int,
            alpha: float, prompt: Optional[Array] = None) -> Array:
  """[B, length] decoded continuations of each row's context."""
  x, mask = context_rows(model, full, batch, prompt)
  return generate_lib.generate_embedded(
      model, full, x, mask, length, method=method, eos_id=eos_id,
      beam_size=beam_size, alpha=alpha)


def rank(model, full: PyTree, batch: Mapping[str, Array], candidates: Array,
         prompt: Optional[Array] = None) -> Array:
  """[B, C] log-likelihood of each candidate target row after each context.

  Args:
    candidates: [C, T] label rows, each ending with its EOS and 0-padded
      after it (their real columns: `candidate_mask`).
  """
  x, mask = context_rows(model, full, batch, prompt)
  batch_size = x.shape[0]
  real = candidate_mask(candidates)
  scores = [generate_lib.score(
      model, full, x, mask,
      jnp.broadcast_to(candidates[c], (batch_size, candidates.shape[1])),
      jnp.broadcast_to(real[c], (batch_size, candidates.shape[1])))
            for c in range(candidates.shape[0])]
  return jnp.stack(scores, axis=-1)  # C x [B] -> [B, C]
