"""Mixed-prompt serving on a frozen decoder-only LM (`serving.mixed`'s rows).

The decoder-only counterpart of `frozen.MixedRunner`, with the same calls:
`layout` turns each row's input ids into the LM's context (`[BOS] inputs`,
left-padded, with a mask: id 0 is a real token in these vocabularies), and
`predict` / `rank` decode or score every row with its own prompt of the
library's bank (`prompts.decoder_mixed`: each row laid out as its prompt run
alone). The bank is an argument of the jitted functions, so any mix of
prompts runs on one compilation. Libraries of prompts only: entries that add
adapters (LoRA, IA3, ... runs) are refused in one line.
"""

from __future__ import annotations

import functools
from typing import List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import partitioning
from prompt_tuning.data import decoder_features
from prompt_tuning.prompts import decoder_mixed
from prompt_tuning.prompts.decoder_model import DECODER_PLACEMENTS
from prompt_tuning.prompts.library import PromptLibrary
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.training import decoder_inference
from prompt_tuning.training.inference import DecodeConfig


def _predict(frozen, bank, lengths, prompt_ids, tokens, mask, *, model,
             decode, length, placement):
  return decoder_mixed.generate(
      model, frozen, bank, lengths, prompt_ids, tokens, mask, length,
      placement=placement, method=decode.method, eos_id=decode.eos_id,
      beam_size=decode.beam_size, alpha=decode.alpha)


def _rank(frozen, bank, lengths, prompt_ids, tokens, mask, candidates, *,
          model, placement):
  """[B, C] log-likelihoods of candidates [B, C, L] (EOS-terminated,
  0-padded after it; an all-zero candidate is absent: -inf)."""
  real = decoder_inference.candidate_mask(candidates)
  scores = [decoder_mixed.score(model, frozen, bank, lengths, prompt_ids,
                                tokens, mask, candidates[:, c], real[:, c],
                                placement)
            for c in range(candidates.shape[1])]
  scores = jnp.stack(scores, axis=-1)
  return jnp.where(jnp.any(real, axis=-1), scores, -jnp.inf)


class DecoderMixedRunner:
  """Jitted mixed-prompt decoding and scoring for one frozen decoder-only
  LM and a library of prompts."""

  def __init__(self, frozen, library: PromptLibrary,
               decode: DecodeConfig = DecodeConfig(),
               placement: str = "prefix", max_decode_length: int = 8):
    if library.has_adapters:
      raise ValueError(
          "The library has entries that add adapters (LoRA, IA3, ... runs); "
          "mixed serving of decoder-only LMs takes prompts only: evaluate or "
          "infer those runs on their own.")
    if placement not in DECODER_PLACEMENTS:
      raise ValueError(f"placement={placement!r}: a decoder-only LM's "
                       f"prompts go at one of {DECODER_PLACEMENTS}.")
    decode = decoder_inference.model_eos(decode, frozen.config)
    self.frozen = frozen
    self.library = library
    self.decode = decode
    self.max_decode_length = decode.max_decode_length or max_decode_length
    self._bank, self._lengths = frozen_lib.placed_bank(frozen, library)
    self._predict = jax.jit(functools.partial(
        _predict, model=frozen.model, decode=decode,
        length=self.max_decode_length, placement=placement))
    self._rank = jax.jit(functools.partial(
        _rank, model=frozen.model, placement=placement))

  def feature_converter(self) -> decoder_features.DecoderOnlyConverter:
    """Evaluation batches are the LM's rows (`data.decoder_features`)."""
    return decoder_features.DecoderOnlyConverter(self.frozen.config.bos_id)

  def context(self, batch: Mapping[str, np.ndarray]
              ) -> Tuple[np.ndarray, np.ndarray]:
    """An evaluation batch's contexts, left-padded: (tokens, mask)."""
    tokens, mask = decoder_inference.left_padded_context(
        {k: jnp.asarray(v) for k, v in batch.items()})
    return np.asarray(tokens), np.asarray(mask)

  def layout(self, encoded: Sequence[List[int]], length: int
             ) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's context `[BOS] ids`, left-padded to `length` (+ 1 with a
    BOS) columns -> (tokens [B, T] int32, mask [B, T] bool)."""
    bos = self.frozen.config.bos_id
    width = length + (bos is not None)
    tokens = np.zeros((len(encoded), width), np.int32)
    mask = np.zeros((len(encoded), width), bool)
    for i, ids in enumerate(encoded):
      row = ([bos] if bos is not None else []) + list(ids)
      tokens[i, width - len(row):] = row
      mask[i, width - len(row):] = True
    return tokens, mask

  def _shard(self, *arrays: np.ndarray):
    return partitioning.shard_global_batch(tuple(arrays), self.frozen.mesh)

  def predict(self, tokens: np.ndarray, prompt_ids: np.ndarray,
              mask: Optional[np.ndarray] = None) -> np.ndarray:
    """tokens, mask [B, T] (`layout`), prompt_ids [B] -> [B, L] int32."""
    with partitioning.mesh_context(self.frozen.mesh, self.frozen.rules):
      args = self._shard(np.asarray(tokens, np.int32),
                         np.asarray(prompt_ids, np.int32),
                         np.asarray(mask, bool))
      out = self._predict(self.frozen.params, self._bank, self._lengths,
                          args[1], args[0], args[2])
    return partitioning.to_host(out)

  def rank(self, tokens: np.ndarray, prompt_ids: np.ndarray,
           candidates: np.ndarray, mask: Optional[np.ndarray] = None
           ) -> np.ndarray:
    """As `predict`, with candidates [B, C, L] -> [B, C] scores (host)."""
    with partitioning.mesh_context(self.frozen.mesh, self.frozen.rules):
      args = self._shard(np.asarray(tokens, np.int32),
                         np.asarray(prompt_ids, np.int32),
                         np.asarray(mask, bool),
                         np.asarray(candidates, np.int32))
      out = self._rank(self.frozen.params, self._bank, self._lengths,
                       args[1], args[0], args[2], args[3])
    return partitioning.to_host(out)
