"""Autoregressive decoding and scoring for the T5 encoder-decoder.

Greedy decoding and T5X-style beam search run one decoder position per
`lax.while_loop` iteration against a key/value cache, so both are jit-able
with static lengths. Scoring sums teacher-forced log-probabilities of given
targets (rank classification). The core functions (`*_encoded`) start from an
encoder output and its mask rather than from tokens: a soft prompt changes only
what is encoded, so the same decoding serves the plain and the prompted model.
The thin token wrappers (`greedy_decode`, `beam_search`, `score`) run the
encoder once and call them. The loops themselves (`greedy_steps`, which also
samples with a temperature, and `beam_steps`) take any model's step
function, so decoder-only LMs (`models.decoder_only.generate`) share them. To jit a wrapper, mark the model and the lengths
static, e.g. `jax.jit(greedy_decode, static_argnames=('model',
'max_decode_length', 'eos_id'))`: the model is a hashable flax module.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any

# "Effective -inf" for beam scores (T5X's value): finite, so that sums and
# divisions by the length penalty never produce NaN.
NEG_INF = -1.0e7


def shift_right(targets: Array) -> Array:
  """targets: [B, L] int -> decoder inputs [B, L], starting with id 0."""
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # [B, L] -> [B, L]


def encode(model: nn.Module, params: PyTree,
           encoder_input_tokens: Array) -> Tuple[Array, Array]:
  """Runs the encoder once.

  Args:
    model: a `T5` or `PromptedT5` module.
    params: its parameter tree.
    encoder_input_tokens: [B, T] int, 0 = padding.

  Returns:
    (encoded [B, T', H], encoder_mask [B, T'] bool); T' = T, or P + T with a
    prompt (whose positions the mask marks visible).
  """
  return model.apply({"params": params}, encoder_input_tokens,
                     method="encode_with_mask")


def cache_batch_axis(model: nn.Module) -> int:
  """Axis of the batch in every cache leaf: scanned layers stack in front."""
  return 1 if model.config.scan_layers else 0


def init_cache(model: nn.Module, params: PyTree, encoded: Array,
               encoder_mask: Array, max_decode_length: int) -> PyTree:
  """An all-zero key/value cache of full length for `decode_step`.

  Only the shapes of an `init` in decode mode are traced (`jax.eval_shape`):
  no parameters are initialised and no forward pass runs.

  Args:
    model: a `T5` module.
    params: unused; the cache's shapes follow from the config and the batch.
      Kept so that every decoding entry point takes the same arguments.
    encoded: [B, T, H] encoder output (only its shape is read).
    encoder_mask: [B, T] bool (only its shape is read).
    max_decode_length: number of decoder positions the cache holds.

  Returns:
    The `cache` collection: leaves [B, max_decode_length, heads, head_dim],
    with a leading layers axis when `config.scan_layers`.
  """
  del params
  batch = encoded.shape[0]

  def init_fn(encoded, encoder_mask):
    # A full-length dummy input sizes the cache; init does not write into it.
    dummy = jnp.zeros((batch, max_decode_length), jnp.int32)
    variables = model.init(
        {"params": jax.random.PRNGKey(0)}, encoded, encoder_mask, dummy,
        decode_position=jnp.zeros((), jnp.int32),
        max_decode_length=max_decode_length, method="decode")
    return variables["cache"]

  shapes = jax.eval_shape(init_fn, encoded, encoder_mask)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_step(model: nn.Module, params: PyTree, cache: PyTree,
                encoded: Array, encoder_mask: Array, tokens: Array,
                position: Array,
                max_decode_length: int) -> Tuple[Array, PyTree]:
  """Decodes one position with the key/value cache.

  Args:
    model: a `T5` module.
    params: its parameter tree.
    cache: from `init_cache` or the previous step.
    encoded: [B, T, H] encoder output.
    encoder_mask: [B, T] bool.
    tokens: [B] int, the decoder input at `position` (0 at position 0).
    position: scalar int32, 0-based position being decoded.
    max_decode_length: the cache's length.

  Returns:
    (logits [B, V] float32 for the token after `position`, updated cache).
  """
  logits, mutated = model.apply(
      {"params": params, "cache": cache}, encoded, encoder_mask,
      tokens[:, None], decode_position=position,
      max_decode_length=max_decode_length, mutable=["cache"],
      method="decode")
  return logits[:, 0], mutated["cache"]


class _GreedyState(NamedTuple):
  position: Array  # scalar int32: the decoder position fed next
  tokens: Array  # [B, L] int32 output so far, 0 beyond `position`
  last: Array  # [B] int32 decoder input at `position`
  done: Array  # [B] bool: EOS already emitted
  cache: PyTree
  rng: Array  # sampling's key (unused by argmax)


# One decoding step: (cache, tokens [B] fed at `position`, position) ->
# (logits [B, V] float32 for the next token, updated cache).
StepFn = Callable[[PyTree, Array, Array], Tuple[Array, PyTree]]


def greedy_steps(step: StepFn, cache: PyTree, start_tokens: Array,
                 max_decode_length: int, eos_id: int = 1,
                 temperature: float = 0.0,
                 rng: Optional[Array] = None) -> Array:
  """Argmax (or, with `temperature` > 0, sampled) decoding of any model
  whose step is `step` (T5's decoder, a decoder-only LM's cached chunk).

  Args:
    step: see `StepFn`.
    cache: the model's cache before the first step.
    start_tokens: [B] int32, what is fed at position 0 (T5: 0; a
      decoder-only LM: the prompt's last token).
    max_decode_length: static number of tokens to produce at most.
    eos_id: end-of-sequence id; it is kept in the output.
    temperature: 0 takes the argmax; else tokens are drawn from
      softmax(logits / temperature).
    rng: the sampling key (required with a temperature).

  Returns:
    [B, max_decode_length] int32 tokens; positions after EOS are 0.
  """
  if temperature and rng is None:
    raise ValueError("Sampling with a temperature needs an rng key.")
  batch = start_tokens.shape[0]
  init = _GreedyState(
      position=jnp.zeros((), jnp.int32),
      tokens=jnp.zeros((batch, max_decode_length), jnp.int32),
      last=start_tokens.astype(jnp.int32),
      done=jnp.zeros((batch,), bool),
      cache=cache,
      rng=rng if rng is not None else jax.random.PRNGKey(0))

  def cond(state: _GreedyState) -> Array:
    return (state.position < max_decode_length) & ~jnp.all(state.done)

  def body(state: _GreedyState) -> _GreedyState:
    logits, cache = step(state.cache, state.last, state.position)
    rng, key = jax.random.split(state.rng)
    if temperature:
      token = jax.random.categorical(key, logits / temperature, axis=-1)
    else:
      token = jnp.argmax(logits, axis=-1)
    token = token.astype(jnp.int32)
    # Finished rows keep decoding (the batch moves together) but emit padding.
    token = jnp.where(state.done, 0, token)
    return _GreedyState(
        position=state.position + 1,
        tokens=state.tokens.at[:, state.position].set(token),
        last=token,
        done=state.done | (token == eos_id),
        cache=cache, rng=rng)

  return lax.while_loop(cond, body, init).tokens


def _t5_step(model: nn.Module, params: PyTree, encoded: Array,
             encoder_mask: Array, max_decode_length: int) -> StepFn:
  return lambda cache, tokens, position: decode_step(
      model, params, cache, encoded, encoder_mask, tokens, position,
      max_decode_length)


def greedy_decode_encoded(model: nn.Module, params: PyTree, encoded: Array,
                          encoder_mask: Array, max_decode_length: int,
                          eos_id: int = 1) -> Array:
  """Greedy (argmax) decoding from an encoder output.

  Args:
    model: a `T5` module.
    params: its parameter tree.
    encoded: [B, T, H] encoder output.
    encoder_mask: [B, T] bool, True for real encoder positions.
    max_decode_length: static number of tokens to produce at most.
    eos_id: end-of-sequence id; it is kept in the output.

  Returns:
    [B, max_decode_length] int32 tokens; positions after EOS are 0.
  """
  cache = init_cache(model, params, encoded, encoder_mask, max_decode_length)
  return greedy_steps(
      _t5_step(model, params, encoded, encoder_mask, max_decode_length),
      cache, jnp.zeros((encoded.shape[0],), jnp.int32), max_decode_length,
      eos_id)


def brevity_penalty(alpha: float, length: Array) -> Array:
  """T5X's length normalisation ((5 + length) / 6) ** alpha, as float32."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: Array, indices: Array) -> Array:
  """x: [B, K, ...], indices: [B, N] into K -> [B, N, ...]."""
  return jax.vmap(lambda row, idx: row[idx])(x, indices)


class _BeamState(NamedTuple):
  position: Array  # scalar int32: the decoder position fed next
  # Sequences carry a leading start slot (the start token), so slot i is the input
  # at position i and slot i + 1 receives the token chosen there.
  alive_seqs: Array  # [B, K, L + 1] int32, none has emitted EOS
  alive_log_probs: Array  # [B, K] float32, sorted best first
  finished_seqs: Array  # [B, K, L + 1] int32, 0 after EOS
  finished_scores: Array  # [B, K] length-penalised, sorted best first
  finished_flags: Array  # [B, K] bool: slot holds a real finished sequence
  cache: PyTree  # batch axis B * K, row b * K + k is beam k of example b


def beam_search_encoded(model: nn.Module, params: PyTree, encoded: Array,
                        encoder_mask: Array, max_decode_length: int,
                        beam_size: int = 4, alpha: float = 0.6,
                        eos_id: int = 1) -> Tuple[Array, Array]:
  """Beam search from an encoder output, with T5X's semantics
  (`beam_steps`).

  Args:
    model: a `T5` module.
    params: its parameter tree.
    encoded: [B, T, H] encoder output.
    encoder_mask: [B, T] bool, True for real encoder positions.
    max_decode_length: static number of tokens to produce at most.
    beam_size: K, the beams kept alive and returned.
    alpha: length-penalty exponent; 0 ranks by raw log-probability.
    eos_id: end-of-sequence id; it is kept in the output.

  Returns:
    (tokens [B, K, max_decode_length] int32 with 0 after EOS, scores [B, K]
    float32), both sorted best first.
  """
  k = beam_size
  # Beams are flattened into the batch, example-major, for the decoder.
  flat_encoded = jnp.repeat(encoded, k, axis=0)  # [B, T, H] -> [B*K, T, H]
  flat_mask = jnp.repeat(encoder_mask, k, axis=0)  # [B, T] -> [B*K, T]
  cache = init_cache(model, params, flat_encoded, flat_mask,
                     max_decode_length)
  return beam_steps(
      _t5_step(model, params, flat_encoded, flat_mask, max_decode_length),
      cache, jnp.zeros((encoded.shape[0],), jnp.int32), max_decode_length,
      beam_size, alpha, eos_id, cache_batch_axis(model))


def beam_steps(step: StepFn, cache: PyTree, start_tokens: Array,
               max_decode_length: int, beam_size: int = 4,
               alpha: float = 0.6, eos_id: int = 1,
               cache_axis: int = 0) -> Tuple[Array, Array]:
  """Beam search over any model's decoding step, with T5X's semantics.

  Each step extends the alive beams, keeps the 2K best candidates, moves those
  ending in EOS into the finished set (scored log-prob / brevity_penalty(alpha,
  length), length counting EOS) and keeps the K best others alive. The search
  stops at `max_decode_length` or once no alive beam, even at the largest
  length penalty, could beat the worst of K finished beams. An example with no
  finished beam returns its alive beams with their raw log-probs; when fewer
  than K beams finished, the empty slots score about NEG_INF.

  Args:
    step: see `StepFn`; its batch is B * K rows (row b * K + k is beam k of
      example b).
    cache: the model's cache for those B * K rows.
    start_tokens: [B] int32 fed at position 0 (every beam of an example).
    max_decode_length: static number of tokens to produce at most.
    beam_size: K, the beams kept alive and returned.
    alpha: length-penalty exponent; 0 ranks by raw log-probability.
    eos_id: end-of-sequence id; it is kept in the output.
    cache_axis: the batch axis of the cache's leaves.

  Returns:
    (tokens [B, K, max_decode_length] int32 with 0 after EOS, scores [B, K]
    float32), both sorted best first.
  """
  batch, k, length = start_tokens.shape[0], beam_size, max_decode_length
  axis = cache_axis
  start = jnp.zeros((batch, k, length + 1), jnp.int32).at[:, :, 0].set(
      start_tokens.astype(jnp.int32)[:, None])
  # Only beam 0 starts alive: K identical beams would fill the set with copies.
  first = jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32)
  init = _BeamState(
      position=jnp.zeros((), jnp.int32),
      alive_seqs=start,
      alive_log_probs=jnp.tile(first, (batch, 1)),
      finished_seqs=jnp.zeros((batch, k, length + 1), jnp.int32),
      finished_scores=jnp.full((batch, k), NEG_INF, jnp.float32),
      finished_flags=jnp.zeros((batch, k), bool),
      cache=cache)

  def cond(state: _BeamState) -> Array:
    # Log-probs only fall as a beam grows and the penalty only grows with
    # length, so best_alive / penalty(max length) bounds any future score.
    best_alive = state.alive_log_probs[:, 0] / brevity_penalty(alpha, length)
    worst_finished = jnp.where(jnp.all(state.finished_flags, axis=1),
                               state.finished_scores[:, -1], NEG_INF)
    converged = jnp.all(worst_finished > best_alive)
    return (state.position < length) & ~converged

  def body(state: _BeamState) -> _BeamState:
    i = state.position
    tokens = state.alive_seqs[:, :, i].reshape(batch * k)  # [B, K] -> [B*K]
    logits, cache = step(state.cache, tokens, i)
    vocab = logits.shape[-1]
    log_probs = (jax.nn.log_softmax(logits).reshape(batch, k, vocab) +
                 state.alive_log_probs[:, :, None])  # [B, K, V]
    # 2K candidates: at most K of them (one per beam) end in EOS, so K stay
    # alive whatever happens.
    cand_log_probs, cand_index = lax.top_k(
        log_probs.reshape(batch, k * vocab), 2 * k)  # [B, 2K]
    cand_beam = cand_index // vocab
    cand_token = cand_index % vocab
    cand_seqs = _gather_beams(state.alive_seqs, cand_beam)  # [B, 2K, L+1]
    cand_seqs = cand_seqs.at[:, :, i + 1].set(cand_token)
    ended = cand_token == eos_id

    alive_log_probs, pick = lax.top_k(
        jnp.where(ended, NEG_INF, cand_log_probs), k)  # [B, K]
    alive_seqs = _gather_beams(cand_seqs, pick)
    # Each new alive beam continues the cache row of the beam it extends.
    origin = _gather_beams(cand_beam, pick)  # [B, K] in [0, K)
    rows = (jnp.arange(batch)[:, None] * k + origin).reshape(batch * k)
    cache = jax.tree_util.tree_map(lambda x: jnp.take(x, rows, axis=axis),
                                   cache)

    new_scores = jnp.where(
        ended, cand_log_probs / brevity_penalty(alpha, i + 1), NEG_INF)
    pool_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    finished_scores, pick = lax.top_k(pool_scores, k)  # [B, 3K] -> [B, K]
    finished_seqs = _gather_beams(
        jnp.concatenate([state.finished_seqs, cand_seqs], axis=1), pick)
    finished_flags = _gather_beams(
        jnp.concatenate([state.finished_flags, ended], axis=1), pick)
    return _BeamState(i + 1, alive_seqs, alive_log_probs, finished_seqs,
                      finished_scores, finished_flags, cache)

  state = lax.while_loop(cond, body, init)
  any_finished = jnp.any(state.finished_flags, axis=1)  # [B]
  seqs = jnp.where(any_finished[:, None, None], state.finished_seqs,
                   state.alive_seqs)
  scores = jnp.where(any_finished[:, None], state.finished_scores,
                     state.alive_log_probs)
  return seqs[:, :, 1:], scores  # drop the start slot


def score_encoded(model: nn.Module, params: PyTree, encoded: Array,
                  encoder_mask: Array, decoder_target_tokens: Array) -> Array:
  """Teacher-forced log-probability of each target sequence.

  Args:
    model: a `T5` module.
    params: its parameter tree.
    encoded: [B, T, H] encoder output.
    encoder_mask: [B, T] bool, True for real encoder positions.
    decoder_target_tokens: [B, L] int, 0 = padding (not scored).

  Returns:
    [B] float32 sum of log-probabilities of the non-padding targets.
  """
  targets = decoder_target_tokens
  logits = model.apply({"params": params}, encoded, encoder_mask,
                       shift_right(targets), targets, method="decode")
  log_probs = jax.nn.log_softmax(logits)  # [B, L, V]
  token_log_probs = jnp.take_along_axis(
      log_probs, targets[:, :, None], axis=-1)[:, :, 0]  # [B, L]
  return jnp.sum(jnp.where(targets > 0, token_log_probs, 0.0), axis=-1)


def greedy_decode(model: nn.Module, params: PyTree,
                  encoder_input_tokens: Array, max_decode_length: int,
                  eos_id: int = 1) -> Array:
  """encoder_input_tokens: [B, T] -> [B, max_decode_length]; see
  `greedy_decode_encoded`."""
  encoded, mask = encode(model, params, encoder_input_tokens)
  return greedy_decode_encoded(model, params, encoded, mask,
                               max_decode_length, eos_id)


def beam_search(model: nn.Module, params: PyTree,
                encoder_input_tokens: Array, max_decode_length: int,
                beam_size: int = 4, alpha: float = 0.6,
                eos_id: int = 1) -> Tuple[Array, Array]:
  """encoder_input_tokens: [B, T] -> (tokens [B, K, max_decode_length],
  scores [B, K]) best first; see `beam_search_encoded`."""
  encoded, mask = encode(model, params, encoder_input_tokens)
  return beam_search_encoded(model, params, encoded, mask, max_decode_length,
                             beam_size, alpha, eos_id)


def score(model: nn.Module, params: PyTree, encoder_input_tokens: Array,
          decoder_target_tokens: Array) -> Array:
  """encoder_input_tokens: [B, T], decoder_target_tokens: [B, L] -> [B]
  log-probabilities; see `score_encoded`."""
  encoded, mask = encode(model, params, encoder_input_tokens)
  return score_encoded(model, params, encoded, mask, decoder_target_tokens)


def decode(model: nn.Module, params: PyTree, encoder_input_tokens: Array,
           max_decode_length: int, method: str = "greedy",
           **kwargs) -> Array:
  """One decoded sequence per example: [B, T] -> [B, max_decode_length].

  Args:
    model: a `T5` module.
    params: its parameter tree.
    encoder_input_tokens: [B, T] int, 0 = padding.
    max_decode_length: static number of tokens to produce at most.
    method: 'greedy' or 'beam' (the best beam is returned).
    **kwargs: `eos_id`, and for 'beam' also `beam_size`, `alpha`.

  Returns:
    [B, max_decode_length] int32 tokens, 0 after EOS.
  """
  if method == "greedy":
    return greedy_decode(model, params, encoder_input_tokens,
                         max_decode_length, **kwargs)
  if method == "beam":
    tokens, _ = beam_search(model, params, encoder_input_tokens,
                            max_decode_length, **kwargs)
    return tokens[:, 0]
  raise ValueError(f"Unknown decoding method {method!r}: use 'greedy' or "
                   "'beam'.")
