"""Decoding: KV-cached greedy and beam search against uncached references.

Every reference here recomputes from scratch with teacher forcing (no cache),
so a wrong cache write, mask or beam reorder shows up as a mismatch. The model
is the tiny preset with random weights; its output kernel is scaled up so the
next-token distributions are peaked and argmax margins are well above float
noise.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import T5
from prompt_tuning.models import decoding
from prompt_tuning.models import t5_config

ENC = np.array([[5, 6, 7, 9, 1, 0], [3, 4, 1, 0, 0, 0],
                [11, 12, 13, 14, 15, 1]], np.int32)
LENGTH = 8
EOS = 1

_greedy = jax.jit(decoding.greedy_decode,
                  static_argnames=("model", "max_decode_length", "eos_id"))
_greedy_encoded = jax.jit(
    decoding.greedy_decode_encoded,
    static_argnames=("model", "max_decode_length", "eos_id"))
_beam = jax.jit(decoding.beam_search,
                static_argnames=("model", "max_decode_length", "beam_size",
                                 "alpha", "eos_id"))
_score = jax.jit(decoding.score, static_argnames=("model",))
_step = jax.jit(decoding.decode_step,
                static_argnames=("model", "max_decode_length"))


def _stack_layers(tree):
  """Unscanned {'layers_0': t, 'layers_1': t, ...} -> scanned {'layers': t}."""
  names = sorted(n for n in tree if n.startswith("layers_"))
  out = {n: v for n, v in tree.items() if not n.startswith("layers_")}
  out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                         *[tree[n] for n in names])
  return out


@functools.lru_cache(maxsize=None)
def _model_and_params(scan_layers=False):
  """The tiny model; the scanned variant gets the same weights restacked."""
  config = t5_config("t5_1_1_tiny", dtype="float32")
  variables = T5(config).init(jax.random.PRNGKey(0), ENC, ENC[:, :4],
                              ENC[:, :4])
  params = jax.tree_util.tree_map(
      lambda b: b.unbox(), variables["params"],
      is_leaf=lambda x: hasattr(x, "unbox"))
  # Peaked distributions: random logits over 128 ids are nearly uniform.
  params["decoder"]["logits_dense"]["kernel"] *= 4.0
  if scan_layers:
    config = config.replace(scan_layers=True)
    params = dict(params, encoder=_stack_layers(params["encoder"]),
                  decoder=_stack_layers(params["decoder"]))
  return T5(config), params


def _eos_biased(params):
  """Params whose every decoder step prefers EOS by a wide margin.

  A large constant in embedding dim 0 dominates the residual stream, so the
  final RMS norm outputs about sqrt(H) * e_0; the output kernel's row 0 then
  acts as a logit bias, set to favour EOS only.
  """
  params = jax.tree_util.tree_map(lambda x: x, params)
  embed = params["token_embedder"]["embedding"]
  params["token_embedder"]["embedding"] = embed.at[:, 0].set(1000.0)
  kernel = params["decoder"]["logits_dense"]["kernel"]
  params["decoder"]["logits_dense"]["kernel"] = (
      kernel.at[0, :].set(0.0).at[0, EOS].set(10.0))
  return params


@functools.partial(jax.jit, static_argnums=0)
def _teacher_logits(model, params, encoded, mask, decoder_input_tokens):
  """Uncached logits [B, L, V] with every decoder position real."""
  return model.apply({"params": params}, encoded, mask, decoder_input_tokens,
                     jnp.ones_like(decoder_input_tokens), method="decode")


def _stepwise_greedy(model, params, encoded, mask, length, eos_id):
  """Greedy by re-running teacher forcing on the whole prefix at each step.

  The prefix sits in a fixed [B, length] buffer (one compilation): causal
  attention keeps the zeros after it from reaching position i.
  """
  batch = encoded.shape[0]
  inputs = np.zeros((batch, length), np.int32)  # slot 0: the start token
  out = np.zeros((batch, length), np.int32)
  done = np.zeros(batch, bool)
  for i in range(length):
    logits = np.asarray(
        _teacher_logits(model, params, encoded, mask, inputs))[:, i]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    # The comparison is only meaningful if argmax is not a float-noise tie.
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-4)
    token = np.where(done, 0, logits.argmax(-1)).astype(np.int32)
    out[:, i] = token
    done |= token == eos_id
    if done.all() or i + 1 == length:
      break
    inputs[:, i + 1] = token
  return out


def _brevity_penalty(alpha, length):
  return ((5.0 + length) / 6.0) ** alpha


@pytest.mark.parametrize("scan_layers", [False, True])
def test_greedy_equals_stepwise_teacher_forced_argmax(scan_layers):
  model, params = _model_and_params(scan_layers)
  encoded, mask = decoding.encode(model, params, ENC)
  expected = _stepwise_greedy(model, params, encoded, mask, LENGTH, EOS)
  got = _greedy(model, params, ENC, max_decode_length=LENGTH, eos_id=EOS)
  assert got.shape == (3, LENGTH) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)
  # Not a degenerate model: rows and positions differ.
  assert len(np.unique(np.asarray(got))) > 3


def test_scanned_and_unscanned_decode_the_same():
  unscanned = _greedy(*_model_and_params(False), ENC,
                      max_decode_length=LENGTH, eos_id=EOS)
  scanned = _greedy(*_model_and_params(True), ENC, max_decode_length=LENGTH,
                    eos_id=EOS)
  np.testing.assert_array_equal(scanned, unscanned)


def test_greedy_from_precomputed_encoding_with_prompt():
  """Decoding from (encoded, mask) as a soft prompt will supply them."""
  model, params = _model_and_params()
  prompt = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 32))
  embedded = model.apply({"params": params}, ENC, method="embed")
  x = jnp.concatenate([prompt, embedded], axis=1)  # [B, P + T, H]
  mask = jnp.concatenate([jnp.ones((3, 2), bool), ENC > 0], axis=1)
  encoded = model.apply({"params": params}, x, mask,
                        method="encode_embedded")
  expected = _stepwise_greedy(model, params, encoded, mask, LENGTH, EOS)
  got = _greedy_encoded(model, params, encoded, mask,
                        max_decode_length=LENGTH, eos_id=EOS)
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_step_logits_equal_teacher_forced_logits(scan_layers):
  model, params = _model_and_params(scan_layers)
  encoded, mask = decoding.encode(model, params, ENC)
  targets = jax.random.randint(jax.random.PRNGKey(2), (3, LENGTH), 2, 128)
  inputs = decoding.shift_right(targets)
  expected = _teacher_logits(model, params, encoded, mask, inputs)
  cache = decoding.init_cache(model, params, encoded, mask, LENGTH)
  leaf = jax.tree_util.tree_leaves(cache)[0]
  assert leaf.shape[decoding.cache_batch_axis(model)] == 3
  for i in range(LENGTH):
    logits, cache = _step(model, params, cache, encoded, mask, inputs[:, i],
                          jnp.int32(i), max_decode_length=LENGTH)
    np.testing.assert_allclose(logits, expected[:, i], atol=1e-5, rtol=1e-5)


def test_greedy_stops_at_eos_and_pads_after_it():
  model, params = _model_and_params()
  # Every row emits EOS at once, so the loop ends after the first step.
  biased = _greedy(model, _eos_biased(params), ENC, max_decode_length=LENGTH,
                   eos_id=EOS)
  expected = np.zeros((3, LENGTH), np.int32)
  expected[:, 0] = EOS
  np.testing.assert_array_equal(biased, expected)

  # The greedy path does not depend on eos_id until it is emitted: declaring
  # row 0's third token the EOS must truncate every row at its first
  # occurrence and pad the rest.
  free = np.asarray(_greedy(model, params, ENC, max_decode_length=LENGTH,
                            eos_id=-1))
  eos_id = int(free[0, 2])
  expected = free.copy()
  for row in expected:
    hits = np.flatnonzero(row == eos_id)
    if hits.size:
      row[hits[0] + 1:] = 0
  assert (expected == 0).sum() > 0
  got = _greedy(model, params, ENC, max_decode_length=LENGTH, eos_id=eos_id)
  np.testing.assert_array_equal(got, expected)


def test_beam_size_one_equals_greedy():
  model, params = _model_and_params()
  free = _greedy(model, params, ENC, max_decode_length=LENGTH, eos_id=-1)
  encoded, mask = decoding.encode(model, params, ENC)
  logits = _teacher_logits(model, params, encoded, mask,
                           decoding.shift_right(free))
  # T5X's beam search also finishes a beam whose second-best token is EOS, so
  # K=1 equals greedy only if EOS never ranks in the top two: pick such an id.
  top2 = set(np.asarray(jax.lax.top_k(logits, 2)[1]).ravel().tolist())
  eos_id = min(set(range(2, 128)) - top2)
  tokens, scores = _beam(model, params, ENC, max_decode_length=LENGTH,
                         beam_size=1, alpha=0.6, eos_id=eos_id)
  np.testing.assert_array_equal(tokens[:, 0], free)
  # No beam finished, so scores are raw log-probs.
  np.testing.assert_allclose(scores[:, 0], _score(model, params, ENC, free),
                             rtol=1e-5, atol=1e-5)

  # Where EOS is all but certain, both stop at once.
  biased = _eos_biased(params)
  tokens, _ = _beam(model, biased, ENC, max_decode_length=LENGTH, beam_size=1,
                    alpha=0.6, eos_id=EOS)
  np.testing.assert_array_equal(
      tokens[:, 0], _greedy(model, biased, ENC, max_decode_length=LENGTH,
                            eos_id=EOS))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_beam_scores_equal_rescored_sequences_and_are_sorted(scan_layers):
  model, params = _model_and_params(scan_layers)
  alpha, beams = 0.6, 4
  tokens, scores = _beam(model, params, ENC, max_decode_length=LENGTH,
                         beam_size=beams, alpha=alpha, eos_id=EOS)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (3, beams, LENGTH) and scores.shape == (3, beams)
  assert np.all(np.diff(scores, axis=1) <= 0)
  real = scores > decoding.NEG_INF / 2
  assert real[:, 0].all()
  rescored = np.asarray(_score(model, params, np.repeat(ENC, beams, axis=0),
                               tokens.reshape(3 * beams, LENGTH)))
  rescored = rescored.reshape(3, beams)
  finished = 0
  for b in range(3):
    for k in np.flatnonzero(real[b]):
      seq = tokens[b, k]
      hits = np.flatnonzero(seq == EOS)
      if hits.size:
        length = hits[0] + 1
        assert np.all(seq[length:] == 0)
        expected = rescored[b, k] / _brevity_penalty(alpha, length)
        finished += 1
      else:  # only when the row has no finished beam at all
        expected = rescored[b, k]
      np.testing.assert_allclose(scores[b, k], expected, rtol=1e-5,
                                 atol=1e-5)
    # Beams are distinct hypotheses.
    assert len({tuple(s) for s in tokens[b][real[b]]}) == real[b].sum()
  # The random model finishes some beams, so the penalty path is exercised.
  assert finished >= 3


def test_score_sums_teacher_forced_log_probs_ignoring_padding():
  model, params = _model_and_params()
  targets = np.array([[8, 9, 4, 1], [2, 1, 0, 0], [7, 7, 7, 1]], np.int32)
  got = _score(model, params, ENC, targets)
  inputs = decoding.shift_right(targets)
  np.testing.assert_array_equal(inputs[1], [0, 2, 1, 0])
  logits = model.apply({"params": params}, ENC, inputs, targets)
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  expected = [
      sum(log_probs[b, i, targets[b, i]] for i in range(4) if targets[b, i])
      for b in range(3)]
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Padding changes nothing: the padded row scores as its unpadded self.
  short = _score(model, params, ENC[1:2], targets[1:2, :2])
  np.testing.assert_allclose(short, got[1:2], rtol=1e-5)


def test_decode_dispatches_on_method():
  model, params = _model_and_params()
  decode = jax.jit(decoding.decode,
                   static_argnames=("model", "max_decode_length", "method",
                                    "beam_size"))
  greedy = decode(model, params, ENC, max_decode_length=LENGTH)
  np.testing.assert_array_equal(
      greedy, _greedy(model, params, ENC, max_decode_length=LENGTH,
                      eos_id=EOS))
  best = decode(model, params, ENC, max_decode_length=LENGTH, method="beam",
                beam_size=4)
  tokens, _ = _beam(model, params, ENC, max_decode_length=LENGTH, beam_size=4,
                    alpha=0.6, eos_id=EOS)
  np.testing.assert_array_equal(best, tokens[:, 0])
  with pytest.raises(ValueError, match="greedy"):
    decoding.decode(model, params, ENC, LENGTH, method="sample")
