"""Decoding: KV-cached greedy and beam search against uncached references.

Every reference recomputes from scratch with teacher forcing on the unscanned
model, so a wrong cache write, mask or beam reorder shows up as a mismatch;
the scanned model (same weights, restacked) is checked against the same
references. The model is the tiny preset with random weights; a stand-in
decoder with a fixed next-token table checks beam-search outcomes worked out
by hand and counts the steps the loops take. Each jitted function compiles
once per static configuration, and the tests share those configurations:
compilation is most of this file's run time.
"""

import functools
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import decoding
from prompt_tuning.models import T5
from prompt_tuning.models import T5Config
from prompt_tuning.models import t5_config

ENC = np.array([[5, 6, 7, 9, 1, 0], [3, 4, 1, 0, 0, 0],
                [11, 12, 13, 14, 15, 1]], np.int32)
LENGTH = 8
ALPHA = 0.6

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
_encode = jax.jit(decoding.encode, static_argnames=("model",))


@functools.partial(jax.jit, static_argnums=0)
def _teacher_logits(model, params, encoded, mask, decoder_input_tokens):
  """Uncached logits [B, L, V] with every decoder position real."""
  return model.apply({"params": params}, encoded, mask, decoder_input_tokens,
                     jnp.ones_like(decoder_input_tokens), method="decode")


@functools.partial(jax.jit, static_argnums=0)
def _encode_prompted(model, params, prompt, tokens):
  """Prompt [B, P, H] before the embedded tokens [B, T] -> [B, P + T, H]."""
  embedded = model.apply({"params": params}, tokens, method="embed")
  x = jnp.concatenate([prompt, embedded], axis=1)
  mask = jnp.concatenate(
      [jnp.ones(prompt.shape[:2], bool), tokens > 0], axis=1)
  return model.apply({"params": params}, x, mask, method="encode_embedded")


def _stack_layers(tree):
  """Unscanned {'layers_0': t, 'layers_1': t, ...} -> scanned {'layers': t}."""
  names = sorted(n for n in tree if n.startswith("layers_"))
  out = {n: v for n, v in tree.items() if not n.startswith("layers_")}
  out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                         *[tree[n] for n in names])
  return out


def _random_params(config, seed=0):
  """Random weights at the initialisers' scales, drawn with numpy.

  Only the tree's shapes come from `init` (eval_shape): compiling the real
  initialisers would cost several seconds on CPU.
  """
  abstract = jax.eval_shape(T5(config).init, jax.random.PRNGKey(0), ENC,
                            ENC[:, :4], ENC[:, :4])["params"]
  abstract = jax.tree_util.tree_map(lambda b: b.unbox(), abstract,
                                    is_leaf=lambda x: hasattr(x, "unbox"))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    if names[-1] == "scale":
      return jnp.ones(leaf.shape, jnp.float32)
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    if names[-1] == "kernel":
      x /= np.sqrt(leaf.shape[-2])  # fan-in
      if names[-2] == "query":
        x /= np.sqrt(config.head_dim)
      if names[-2] == "logits_dense":
        # Peaked distributions: random logits over many ids are nearly
        # uniform, and argmax margins would approach float noise.
        x *= 4.0
        # Like a trained T5, never favour the pad id 0 (a generated 0 would
        # read as padding when rescored): its logit is pinned at 0, the
        # median of the others, far below the few candidates a beam keeps.
        x[:, 0] = 0.0
    return jnp.asarray(x)

  return jax.tree_util.tree_map_with_path(draw, abstract)


@functools.lru_cache(maxsize=None)
def _model_and_params(scan_layers=False):
  """The tiny model; the scanned variant gets the same weights restacked."""
  config = t5_config("t5_1_1_tiny", dtype="float32")
  params = _random_params(config)
  if scan_layers:
    config = config.replace(scan_layers=True)
    params = dict(params, encoder=_stack_layers(params["encoder"]),
                  decoder=_stack_layers(params["decoder"]))
  return T5(config), params


def _free_greedy():
  """Unscanned greedy output with an EOS id that never occurs."""
  return np.array(_greedy(*_model_and_params(), ENC,
                          max_decode_length=LENGTH, eos_id=-1))


@functools.lru_cache(maxsize=None)
def _stop_id():
  """An id emitted in the most rows, used as EOS so that rows stop mid-way.

  The random weights rarely favour id 1; declaring a common id the EOS
  exercises stopping (and beams finishing) without distorting the model.
  """
  rows = np.zeros(_model_and_params()[0].config.vocab_size, int)
  for row in _free_greedy():
    rows[np.unique(row)] += 1
  return int(np.argmax(rows))  # ties go to the lowest id


def _eos_biased(params, eos_id):
  """Params whose every decoder step prefers `eos_id` by a wide margin.

  A large constant in embedding dim 0 dominates the residual stream, so the
  final RMS norm outputs about sqrt(H) * e_0; the output kernel's row 0 then
  acts as a logit bias, set to favour EOS only.
  """
  params = jax.tree_util.tree_map(lambda x: x, params)  # fresh containers
  embed = params["token_embedder"]["embedding"]
  params["token_embedder"]["embedding"] = embed.at[:, 0].set(1000.0)
  kernel = params["decoder"]["logits_dense"]["kernel"]
  params["decoder"]["logits_dense"]["kernel"] = (
      kernel.at[0, :].set(0.0).at[0, eos_id].set(10.0))
  return params


def _stepwise_greedy(encoded, mask, eos_id):
  """Greedy by re-running teacher forcing on the whole prefix at each step.

  The prefix sits in a fixed [B, LENGTH] buffer (one compilation): causal
  attention keeps the zeros after it from reaching position i.
  """
  model, params = _model_and_params()
  batch = encoded.shape[0]
  inputs = np.zeros((batch, LENGTH), np.int32)  # slot 0: the start token
  out = np.zeros((batch, LENGTH), np.int32)
  done = np.zeros(batch, bool)
  for i in range(LENGTH):
    logits = np.asarray(
        _teacher_logits(model, params, encoded, mask, inputs))[:, i]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    # The comparison is only meaningful if argmax is not a float-noise tie.
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-4)
    token = np.where(done, 0, logits.argmax(-1)).astype(np.int32)
    out[:, i] = token
    done |= token == eos_id
    if done.all() or i + 1 == LENGTH:
      break
    inputs[:, i + 1] = token
  return out


def _brevity_penalty(alpha, length):
  return ((5.0 + length) / 6.0) ** alpha


@pytest.mark.parametrize("scan_layers", [False, True])
def test_greedy_equals_stepwise_teacher_forced_argmax(scan_layers):
  eos_id = _stop_id()
  expected = _stepwise_greedy(*_encode(*_model_and_params(), ENC), eos_id)
  # Not a degenerate case: varied tokens, and some row stops early.
  assert len(np.unique(expected)) > 3
  assert (expected[:, -1] == 0).any()
  got = _greedy(*_model_and_params(scan_layers), ENC,
                max_decode_length=LENGTH, eos_id=eos_id)
  assert got.shape == (3, LENGTH) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)


def test_greedy_from_precomputed_encoding_with_prompt():
  """Decoding from (encoded, mask), as a soft prompt will supply them."""
  model, params = _model_and_params()
  prompt = jax.random.normal(jax.random.PRNGKey(1),
                             (3, 2, model.config.emb_dim))
  encoded = _encode_prompted(model, params, prompt, ENC)  # [B, P + T, H]
  mask = jnp.concatenate([jnp.ones((3, 2), bool), ENC > 0], axis=1)
  expected = _stepwise_greedy(encoded, mask, _stop_id())
  got = _greedy_encoded(model, params, encoded, mask,
                        max_decode_length=LENGTH, eos_id=_stop_id())
  np.testing.assert_array_equal(got, expected)
  # The prompt matters: decoding differs from the unprompted one.
  assert not np.array_equal(
      got, _greedy(model, params, ENC, max_decode_length=LENGTH,
                   eos_id=_stop_id()))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_step_logits_equal_teacher_forced_logits(scan_layers):
  encoded, mask = _encode(*_model_and_params(), ENC)
  targets = jax.random.randint(jax.random.PRNGKey(2), (3, LENGTH), 1,
                               _model_and_params()[0].config.vocab_size)
  inputs = decoding.shift_right(targets)
  expected = _teacher_logits(*_model_and_params(), encoded, mask, inputs)
  model, params = _model_and_params(scan_layers)
  cache = decoding.init_cache(model, params, encoded, mask, LENGTH)
  for leaf in jax.tree_util.tree_leaves(cache):
    layers = (2,) if scan_layers else ()
    assert leaf.shape == layers + (3, LENGTH, model.config.num_heads,
                                   model.config.head_dim)
    assert decoding.cache_batch_axis(model) == len(layers)
  for i in range(LENGTH):
    logits, cache = _step(model, params, cache, encoded, mask, inputs[:, i],
                          jnp.int32(i), max_decode_length=LENGTH)
    np.testing.assert_allclose(logits, expected[:, i], atol=1e-5, rtol=1e-5)


def test_greedy_stops_at_eos_and_pads_after_it():
  model, params = _model_and_params()
  eos_id = _stop_id()
  # Every row emits EOS at once: EOS, then padding only.
  biased = _greedy(model, _eos_biased(params, eos_id), ENC,
                   max_decode_length=LENGTH, eos_id=eos_id)
  expected = np.zeros((3, LENGTH), np.int32)
  expected[:, 0] = eos_id
  np.testing.assert_array_equal(biased, expected)

  # The path does not depend on eos_id until EOS is emitted: each row is the
  # free-running output cut after its first EOS, then padding.
  expected = _free_greedy()
  for row in expected:
    hits = np.flatnonzero(row == eos_id)
    if hits.size:
      row[hits[0] + 1:] = 0
  got = _greedy(model, params, ENC, max_decode_length=LENGTH, eos_id=eos_id)
  np.testing.assert_array_equal(got, expected)


def test_beam_size_one_equals_greedy():
  model, params = _model_and_params()
  free = _free_greedy()
  logits = _teacher_logits(model, params, *_encode(model, params, ENC),
                           decoding.shift_right(free))
  # T5X's beam search also finishes a beam whose second-best token is EOS, so
  # K=1 equals greedy only if EOS never ranks in the top two: pick such an id.
  top2 = set(np.asarray(jax.lax.top_k(logits, 2)[1]).ravel().tolist())
  eos_id = min(set(range(2, model.config.vocab_size)) - top2)
  tokens, scores = _beam(model, params, ENC, max_decode_length=LENGTH,
                         beam_size=1, alpha=ALPHA, eos_id=eos_id)
  np.testing.assert_array_equal(tokens[:, 0], free)
  # No beam finished, so scores are raw log-probs.
  np.testing.assert_allclose(scores[:, 0], _score(model, params, ENC, free),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_beam_scores_equal_rescored_sequences_and_are_sorted(scan_layers):
  beams, eos_id = 4, _stop_id()
  tokens, scores = _beam(*_model_and_params(scan_layers), ENC,
                         max_decode_length=LENGTH, beam_size=beams,
                         alpha=ALPHA, eos_id=eos_id)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (3, beams, LENGTH) and scores.shape == (3, beams)
  assert np.all(np.diff(scores, axis=1) <= 0)
  real = scores > decoding.NEG_INF / 2  # empty finished slots score ~NEG_INF
  assert real[:, 0].all()
  # Rescoring without the cache checks every cache reorder along the way.
  rescored = np.stack([_score(*_model_and_params(), ENC, tokens[:, k])
                       for k in range(beams)], axis=1)  # [B, K]
  finished = 0
  for b in range(3):
    for k in np.flatnonzero(real[b]):
      seq = tokens[b, k]
      hits = np.flatnonzero(seq == eos_id)
      end = hits[0] + 1 if hits.size else LENGTH
      assert np.all(seq[:end] > 0), "a pad id inside a beam"
      assert np.all(seq[end:] == 0)
      if hits.size:
        expected = rescored[b, k] / _brevity_penalty(ALPHA, end)
        finished += 1
      else:  # only when the row has no finished beam at all
        expected = rescored[b, k]
      np.testing.assert_allclose(scores[b, k], expected, rtol=1e-5,
                                 atol=1e-5)
    # Beams are distinct hypotheses.
    assert len({tuple(s) for s in tokens[b][real[b]]}) == real[b].sum()
  # Beams finish at several lengths, so the length penalty is exercised.
  assert finished >= 3


def _reference_beam_search(next_log_probs, batch, length, beams, alpha,
                           eos_id):
  """T5X's beam search written per example over Python lists, no cache.

  Runs all `length` steps (no early stopping), which must not change the
  result: the vectorised search only stops when nothing could improve.

  Args:
    next_log_probs: (example b, inputs [beams, length], position i) ->
      [beams, V] log-probs of the token after position i, uncached.
    batch: number of examples.
    length: maximum decode length.
    beams: K.
    alpha: length-penalty exponent.
    eos_id: end-of-sequence id.

  Returns:
    Per example, [(tokens, score)] best first.
  """
  results = []
  for b in range(batch):
    alive = [((), 0.0)]  # (tokens, log-prob)
    finished = []  # (tokens, penalised score)
    for i in range(length):
      inputs = np.zeros((beams, length), np.int32)
      for k, (seq, _) in enumerate(alive):
        inputs[k, 1:i + 1] = seq
      log_probs = np.asarray(next_log_probs(b, inputs, i), np.float64)
      candidates = sorted(
          ((seq + (v,), lp + log_probs[k, v])
           for k, (seq, lp) in enumerate(alive)
           for v in range(log_probs.shape[-1])),
          key=lambda c: -c[1])[:2 * beams]
      alive = [c for c in candidates if c[0][-1] != eos_id][:beams]
      finished += [(seq, lp / _brevity_penalty(alpha, i + 1))
                   for seq, lp in candidates if seq[-1] == eos_id]
      finished = sorted(finished, key=lambda c: -c[1])[:beams]
    results.append(finished or alive)
  return results


def _assert_beams_equal(tokens, scores, expected):
  for b, hypotheses in enumerate(expected):
    assert np.sum(scores[b] > decoding.NEG_INF / 2) == len(hypotheses)
    for k, (seq, score) in enumerate(hypotheses):
      np.testing.assert_array_equal(tokens[b, k, :len(seq)], seq)
      np.testing.assert_array_equal(tokens[b, k, len(seq):], 0)
      np.testing.assert_allclose(scores[b, k], score, rtol=1e-5, atol=1e-5)


def test_beam_search_matches_reference_search():
  model, params = _model_and_params()
  beams, eos_id = 4, _stop_id()
  tokens, scores = _beam(model, params, ENC, max_decode_length=LENGTH,
                         beam_size=beams, alpha=ALPHA, eos_id=eos_id)
  encoded, mask = _encode(model, params, ENC)

  def next_log_probs(b, inputs, i):
    logits = _teacher_logits(
        model, params, jnp.repeat(encoded[b:b + 1], beams, axis=0),
        jnp.repeat(mask[b:b + 1], beams, axis=0), inputs)
    return jax.nn.log_softmax(logits[:, i])

  _assert_beams_equal(tokens, scores, _reference_beam_search(
      next_log_probs, 3, LENGTH, beams, ALPHA, eos_id))


class _TableDecoder(nn.Module):
  """A stand-in decoder whose next-token distribution is a fixed table.

  probs[i][v] is P(v | position i), whatever the prefix, which makes beam
  outcomes computable by hand. Each cached step reports its position through
  a debug callback, so tests can count the steps a decoder took.
  """

  probs: Tuple[Tuple[float, ...], ...]  # [L, V], hashable for jit
  config: T5Config = t5_config("t5_1_1_tiny")  # read for scan_layers only

  @nn.compact
  def decode(self, encoded, encoder_mask, decoder_input_tokens,
             decoder_target_tokens=None, enable_dropout=False,
             decode_position=None, max_decode_length=None):
    del encoder_mask, decoder_target_tokens, enable_dropout, max_decode_length
    batch, length = decoder_input_tokens.shape
    # A cache entry so the decoding loop has something to carry and reorder.
    self.variable("cache", "steps", jnp.zeros, (batch,), jnp.int32)
    log_probs = jnp.log(jnp.asarray(self.probs, jnp.float32))  # [L, V]
    if decode_position is None:  # teacher forcing: [B, L, V]
      return jnp.broadcast_to(log_probs[:length], (batch,) + log_probs.shape)
    if not self.is_initializing():
      jax.debug.callback(_STEPS.append, decode_position)
    return jnp.broadcast_to(log_probs[decode_position],
                            (batch, 1, log_probs.shape[-1]))


_STEPS = []  # positions decoded by _TableDecoder since the last reset


def _run_counting_steps(fn, *args, **kwargs):
  """Runs fn, returning (its result, the decoder positions it stepped)."""
  _STEPS.clear()
  out = jax.block_until_ready(fn(*args, **kwargs))
  jax.effects_barrier()
  return out, sorted({int(p) for p in _STEPS})


# Ids: 0 pad, 1 EOS, 2 and 3 words. EOS is half the mass at positions 0-1
# and nearly certain from position 2 on. Pad gets a negligible probability
# (finite, as a real softmax would give).
_TABLE = ((1e-9, .5, .3, .2), (1e-9, .5, .3, .2), (1e-9, .99, .005, .005),
          (1e-9, .99, .005, .005))


def test_beam_search_stops_early_only_when_nothing_can_improve():
  model = _TableDecoder(_TABLE)
  encoded, mask = jnp.zeros((1, 1, 4)), jnp.ones((1, 1), bool)
  search = functools.partial(
      jax.jit(decoding.beam_search_encoded,
              static_argnames=("model", "max_decode_length", "beam_size",
                               "alpha", "eos_id")),
      model, {}, encoded, mask, max_decode_length=4, beam_size=2, eos_id=1)
  table = np.log(np.asarray(_TABLE, np.float64))
  next_log_probs = lambda b, inputs, i: np.tile(table[i], (len(inputs), 1))
  # By hand, alpha 3: after step 1 the finished set is [1] (ln .5) and [2 1]
  # (ln .15 / (7/6)^3 = -1.195); alive [2 2] (ln .09) could still reach
  # ln .09 / (9/6)^3 = -0.71 at the maximum length, so search goes on and
  # finds [2 2 1] (ln .0891 / (8/6)^3 = -1.020). After step 2 the best alive
  # beam is hopeless, so position 3 is never decoded.
  (tokens, scores), steps = _run_counting_steps(search, alpha=3.0)
  assert steps == [0, 1, 2]
  np.testing.assert_array_equal(tokens[0], [[1, 0, 0, 0], [2, 2, 1, 0]])
  np.testing.assert_allclose(
      scores[0], [np.log(.5), np.log(.3 * .3 * .99) / (8 / 6) ** 3],
      rtol=1e-5)
  _assert_beams_equal(tokens, scores, _reference_beam_search(
      next_log_probs, 1, 4, 2, 3.0, 1))
  # Without a length penalty [2 1] wins and the search ends after step 1.
  (tokens, scores), steps = _run_counting_steps(search, alpha=0.0)
  assert steps == [0, 1]
  np.testing.assert_array_equal(tokens[0], [[1, 0, 0, 0], [2, 1, 0, 0]])
  _assert_beams_equal(tokens, scores, _reference_beam_search(
      next_log_probs, 1, 4, 2, 0.0, 1))


def test_greedy_loop_ends_once_every_row_has_emitted_eos():
  # Ids 2 then EOS: every row is done after position 1, of 4.
  table = ((1e-9, .1, .8, .1), (1e-9, .8, .1, .1)) + _TABLE[2:]
  tokens, steps = _run_counting_steps(
      jax.jit(decoding.greedy_decode_encoded,
              static_argnames=("model", "max_decode_length", "eos_id")),
      _TableDecoder(table), {}, jnp.zeros((2, 1, 4)), jnp.ones((2, 1), bool),
      max_decode_length=4, eos_id=1)
  assert steps == [0, 1]
  np.testing.assert_array_equal(tokens, [[2, 1, 0, 0], [2, 1, 0, 0]])


def test_score_sums_teacher_forced_log_probs_ignoring_padding():
  model, params = _model_and_params()
  targets = np.zeros((3, LENGTH), np.int32)
  targets[0, :4] = [8, 9, 4, 1]
  targets[1, :2] = [2, 1]  # mostly padding
  targets[2, :] = [7, 7, 7, 5, 6, 2, 3, 1]
  got = _score(model, params, ENC, targets)
  inputs = decoding.shift_right(targets)
  np.testing.assert_array_equal(inputs[1, :4], [0, 2, 1, 0])
  # Real positions precede padding, so causal logits there do not depend on
  # the padding mask: the all-real teacher-forced logits serve.
  log_probs = np.asarray(jax.nn.log_softmax(_teacher_logits(
      model, params, *_encode(model, params, ENC), inputs)))
  expected = [sum(log_probs[b, i, t] for i, t in enumerate(targets[b]) if t)
              for b in range(3)]
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_decode_dispatches_on_method(monkeypatch):
  # Stubs: the decoders themselves are tested above; this checks the routing
  # without compiling them again.
  monkeypatch.setattr(decoding, "greedy_decode",
                      lambda *args, **kwargs: ("greedy", args, kwargs))
  beams = np.arange(12).reshape(1, 3, 4)
  monkeypatch.setattr(decoding, "beam_search",
                      lambda *args, **kwargs: (beams, None))
  got = decoding.decode("m", "p", ENC, LENGTH, eos_id=5)
  assert got == ("greedy", ("m", "p", ENC, LENGTH), {"eos_id": 5})
  best = decoding.decode("m", "p", ENC, LENGTH, method="beam", beam_size=3)
  np.testing.assert_array_equal(best, beams[:, 0])
  with pytest.raises(ValueError, match="greedy"):
    decoding.decode("m", "p", ENC, LENGTH, method="sample")
