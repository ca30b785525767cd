"""Mixed-prompt batches equal each prompt run alone (prompts.mixed).

The reference is `PromptedT5` with one shared `[P_i, H]` prompt per run, an
independent path (concatenation in `layer.combine`, no padding rows). Prompts
of lengths 2, 5 and 3 share one batch, in both placements; decoding and rank
classification are compared token for token.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import T5
from prompt_tuning.models import decoding
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import merge_params
from prompt_tuning.prompts import mixed

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")
H = CONFIG.emb_dim
LENGTHS = (2, 5, 3)
ENC = np.array([[5, 6, 7, 9, 1, 0], [3, 4, 1, 0, 0, 0],
                [11, 12, 13, 14, 15, 16], [8, 1, 0, 0, 0, 0]], np.int32)
PROMPT_IDS = np.array([1, 0, 2, 1], np.int32)
TGT = np.array([[8, 9, 4, 1], [2, 1, 0, 0], [7, 7, 1, 0], [5, 1, 0, 0]],
               np.int32)


@functools.lru_cache(maxsize=None)
def _frozen():
  tokens = np.ones((1, 3), np.int32)
  variables = jax.jit(T5(CONFIG).init)(jax.random.PRNGKey(0), tokens, tokens,
                                       tokens)
  rng = np.random.default_rng(0)
  # Larger-than-init weights so that every prompt changes the outputs.
  return jax.tree_util.tree_map(
      lambda b: jnp.asarray(np.asarray(b.unbox()) * 3 + rng.normal(
          0, 0.02, b.value.shape).astype(np.float32)), variables["params"],
      is_leaf=lambda x: hasattr(x, "unbox"))


def _prompts():
  rng = np.random.default_rng(1)
  return [rng.uniform(-0.5, 0.5, (p, H)).astype(np.float32) for p in LENGTHS]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _alone(model, params, enc, targets, full=True):
  logits = model.apply({"params": params}, enc,
                       decoding.shift_right(targets), targets)
  if not full:
    return logits, None, None
  tokens = decoding.greedy_decode(model, params, enc, 4)
  scores = jnp.stack([decoding.score(model, params, enc, TGT[c:c + 1])
                      for c in range(3)], axis=-1)  # [1, C]
  return logits, tokens, scores


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _mixed(model, frozen, bank, lengths, enc, placement, full=True):
  logits = mixed.logits(model, frozen, bank, lengths, PROMPT_IDS, enc,
                        decoding.shift_right(TGT), TGT, placement)
  if not full:
    return logits, None, None
  tokens = mixed.predict(model, frozen, bank, lengths, PROMPT_IDS, enc,
                         max_decode_length=4, placement=placement)
  candidates = jnp.broadcast_to(jnp.asarray(TGT[:3]), (4, 3, 4))
  scores = mixed.rank(model, frozen, bank, lengths, PROMPT_IDS, enc,
                      candidates, placement)
  return logits, tokens, scores


@pytest.mark.parametrize("placement", ["prefix", "suffix", "after_first"])
def test_mixed_batch_equals_each_prompt_alone(placement):
  frozen = _frozen()
  prompts = _prompts()
  bank, lengths = mixed.stack_prompts(prompts)
  assert bank.shape == (3, 5, H) and lengths.tolist() == list(LENGTHS)
  # Decoding and scoring only see the encoder output and mask: checked once
  # (prefix); the logits check both placements' combine.
  full = placement == "prefix"
  got_logits, got_tokens, got_scores = _mixed(T5(CONFIG), frozen, bank,
                                              lengths, ENC, placement, full)
  for row, k in enumerate(PROMPT_IDS):
    model = PromptedT5(CONFIG, LENGTHS[k], placement=placement)
    params = merge_params({"encoder": {"prompt": {"prompt": prompts[k]}}},
                          frozen)
    want_logits, want_tokens, want_scores = _alone(
        model, params, ENC[row:row + 1], TGT[row:row + 1], full)
    # Logits at padded target positions are not defined by the model.
    real = TGT[row] > 0
    np.testing.assert_allclose(got_logits[row][real], want_logits[0][real],
                               rtol=1e-5, atol=1e-4)
    if full:
      np.testing.assert_array_equal(got_tokens[row], want_tokens[0])
      np.testing.assert_allclose(got_scores[row], want_scores[0], rtol=1e-5,
                                 atol=1e-4)
  # The prompts matter: row 0 and row 3 share prompt 1, row 1 uses prompt 0.
  other = _mixed(T5(CONFIG), frozen, bank[::-1].copy(), lengths[::-1].copy(),
                 ENC, placement, full)[0]
  assert not np.allclose(other[:, :2], got_logits[:, :2], atol=1e-3)


def test_absent_candidates_score_minus_inf():
  frozen = _frozen()
  bank, lengths = mixed.stack_prompts(_prompts())
  candidates = np.zeros((4, 2, 4), np.int32)
  candidates[:, 0] = TGT[0]
  scores = jax.jit(mixed.rank, static_argnums=0)(
      T5(CONFIG), frozen, bank, lengths, PROMPT_IDS, ENC, candidates)
  assert np.all(np.isfinite(scores[:, 0])) and np.all(scores[:, 1] == -np.inf)


def test_bad_banks_are_refused():
  with pytest.raises(ValueError, match="one width"):
    mixed.stack_prompts([np.zeros((2, 4)), np.zeros((2, 5))])
  with pytest.raises(ValueError, match="at least one"):
    mixed.stack_prompts([])


def test_mixed_beam_search_equals_each_prompt_alone():
  frozen = _frozen()
  prompts = _prompts()
  bank, lengths = mixed.stack_prompts(prompts)
  got = jax.jit(functools.partial(mixed.predict, method="beam",
                                  max_decode_length=4),
                static_argnums=0)(T5(CONFIG), frozen, bank, lengths,
                                  PROMPT_IDS, ENC)
  assert got.shape == (4, 4)
  for row, k in enumerate(PROMPT_IDS):
    model = PromptedT5(CONFIG, LENGTHS[k])
    params = merge_params({"encoder": {"prompt": {"prompt": prompts[k]}}},
                          frozen)
    # T5X's defaults, spelt out: beam 4, alpha 0.6, EOS 1.
    want, _ = jax.jit(decoding.beam_search, static_argnums=(0, 3, 4, 5, 6))(
        model, params, ENC[row:row + 1], 4, 4, 0.6, 1)
    np.testing.assert_array_equal(got[row], want[0, 0])
  with pytest.raises(ValueError, match=(
      r"^Unknown decoding method 'Beam': use 'greedy' or 'beam'\.")):
    mixed.predict(T5(CONFIG), frozen, bank, lengths, PROMPT_IDS, ENC,
                  max_decode_length=4, method="Beam")
