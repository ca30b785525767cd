"""Soft prompts: parameter tree, placement, per-example prompts, initializers.

The prompted model is checked against the plain T5 run by hand on
[prompt; embedded] (an independent path through `encode_embedded`), padding
is checked not to leak into real positions, and gradients are checked to reach
the prompt only. Weights are random numpy draws on the tiny preset; only the
tree's shapes come from `init` (eval_shape), and every apply is jitted once per
shape, because compilation dominates this file's run time on CPU.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import INITIALIZERS
from prompt_tuning.prompts import Prompt
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import class_labels
from prompt_tuning.prompts import combine
from prompt_tuning.prompts import combine_mask
from prompt_tuning.prompts import from_file
from prompt_tuning.prompts import from_text
from prompt_tuning.prompts import merge_params
from prompt_tuning.prompts import random_uniform
from prompt_tuning.prompts import sampled_vocab
from prompt_tuning.prompts import split_prompt

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")
P = 3
H = CONFIG.emb_dim
ENC = np.array([[5, 6, 7, 9, 1, 0], [3, 4, 1, 0, 0, 0],
                [11, 12, 13, 14, 15, 16]], np.int32)  # last row: no EOS
DEC_IN = np.array([[0, 8, 9, 4], [0, 2, 0, 0], [0, 7, 7, 0]], np.int32)
TGT = np.array([[8, 9, 4, 1], [2, 1, 0, 0], [7, 7, 1, 0]], np.int32)


def _unbox(tree):
  return jax.tree_util.tree_map(lambda b: b.unbox(), tree,
                                is_leaf=lambda x: hasattr(x, "unbox"))


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def _abstract(model):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), ENC, DEC_IN,
                        TGT)["params"]


@functools.lru_cache(maxsize=None)
def _t5_params():
  """Random frozen T5 weights (numpy draws, scale ~ 1/sqrt(fan-in))."""
  rng = np.random.default_rng(0)
  def draw(s):
    scale = 1.0 if len(s.shape) < 2 else 1.0 / np.sqrt(s.shape[-2])
    return jnp.asarray(rng.normal(0, scale, s.shape).astype(np.float32))
  return jax.tree_util.tree_map(draw, _unbox(_abstract(T5(CONFIG))))


def _prompt(seed=1, shape=(P, H)):
  return jnp.asarray(
      np.random.default_rng(seed).uniform(-0.5, 0.5, shape), jnp.float32)


def _prompted_params(prompt):
  """T5's weights, unchanged, plus a prompt: what loading a checkpoint does."""
  return merge_params({"encoder": {"prompt": {"prompt": prompt}}},
                      _t5_params())


@functools.partial(jax.jit, static_argnums=0)
def _run(model, params, enc, prompt=None):
  """(logits [B, L, V], encoded [B, P + T, H], mask [B, P + T]) in one program.

  One jitted function for every model-level test, with the decoder inputs
  fixed, so that tests sharing an input shape share a compilation.
  """
  apply = functools.partial(model.apply, {"params": params})
  encoded, mask = apply(enc, prompt=prompt, method="encode_with_mask")
  logits = apply(enc, DEC_IN, TGT, prompt=prompt)
  return logits, encoded, mask


@jax.jit
def _t5_prefix_by_hand(params, prompt, enc):
  """Plain T5 on [prompt; embedded] with the extended mask."""
  model = T5(CONFIG)
  apply = functools.partial(model.apply, {"params": params})
  embedded = apply(enc, method="embed")  # [B, T, H]
  batch = enc.shape[0]
  x = jnp.concatenate([jnp.broadcast_to(prompt, (batch, P, H)), embedded],
                      axis=1)  # [B, P + T, H]
  mask = jnp.concatenate([jnp.ones((batch, P), bool), enc > 0], axis=1)
  encoded = apply(x, mask, method="encode_embedded")
  return apply(encoded, mask, DEC_IN, TGT, method="decode")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_param_tree_is_t5_plus_prompt(scan_layers):
  config = CONFIG.replace(scan_layers=scan_layers)
  plain = _flat(_abstract(T5(config)))
  prompted = _flat(_abstract(PromptedT5(config, P)))
  assert set(prompted) - set(plain) == {"encoder/prompt/prompt"}
  assert set(plain) <= set(prompted)
  for name, box in plain.items():
    assert prompted[name].value.shape == box.value.shape, name
    assert prompted[name].names == box.names, name
  box = prompted["encoder/prompt/prompt"]
  assert box.value.shape == (P, H)
  assert box.value.dtype == jnp.float32
  assert box.names == ("prompt", "prompt_embed")


def test_invalid_configs_are_rejected():
  with pytest.raises(ValueError, match="placement"):
    PromptedT5(CONFIG, P, placement="middle")
  with pytest.raises(ValueError, match="prompt_length"):
    PromptedT5(CONFIG, 0)


def test_prefix_matches_t5_run_by_hand_on_loaded_t5_weights():
  prompt = _prompt()
  params = _prompted_params(prompt)
  got, _, _ = _run(PromptedT5(CONFIG, P), params, ENC)
  want = _t5_prefix_by_hand(_t5_params(), prompt, ENC)
  assert got.shape == (3, 4, CONFIG.vocab_size)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The prompt matters: another prompt changes the logits.
  other, _, _ = _run(PromptedT5(CONFIG, P), _prompted_params(_prompt(seed=2)),
                     ENC)
  assert not np.allclose(got, other, atol=1e-3)


def test_encode_is_encode_with_mask_and_encode_embedded_refuses():
  model = PromptedT5(CONFIG, P)
  params = _prompted_params(_prompt())
  _, encoded, _ = _run(model, params, ENC)
  alone = jax.jit(functools.partial(model.apply, method="encode"))(
      {"params": params}, ENC)
  np.testing.assert_array_equal(alone, encoded)
  with pytest.raises(NotImplementedError, match=(
      r"^PromptedT5 needs the input tokens \(suffix placement finds EOS in "
      r"them\): call encode_with_mask\(tokens\)\.")):
    model.apply({"params": params}, jnp.zeros((1, 2, H)),
                jnp.ones((1, 2), bool), method="encode_embedded")


@pytest.mark.parametrize("placement", ["prefix", "suffix", "after_first"])
def test_padding_does_not_change_real_positions(placement):
  model = PromptedT5(CONFIG, P, placement=placement)
  params = _prompted_params(_prompt())
  padded = np.pad(ENC, ((0, 0), (0, 3)))  # row 2 has no EOS: truncated
  logits, encoded, mask = _run(model, params, ENC)
  logits_padded, encoded_padded, mask_padded = _run(model, params, padded)
  assert encoded_padded.shape == (3, P + 9, H)
  # Real tokens and the prompt come first in both placements; padding last.
  real = P + ENC.shape[1]
  np.testing.assert_array_equal(mask_padded[:, :real], mask)
  assert not mask_padded[:, real:].any()
  np.testing.assert_allclose(encoded_padded[:, :real] * mask[..., None],
                             encoded * mask[..., None], rtol=1e-5, atol=1e-5)
  # Decoder positions with padded targets attend to nothing real: skip them.
  real_targets = (TGT > 0)[..., None]
  np.testing.assert_allclose(logits_padded * real_targets,
                             logits * real_targets, rtol=1e-5, atol=1e-5)


def test_suffix_inserts_prompt_right_before_eos():
  tokens = np.array([[5, 6, 7, 1, 0, 0],   # EOS at 3
                     [3, 1, 0, 0, 0, 0],   # EOS at 1
                     [4, 5, 6, 7, 8, 9],   # truncated, full: after the end
                     [4, 5, 0, 0, 0, 0]],  # truncated, padded: after 5
                    np.int32)
  batch, length = tokens.shape
  # Row features [token, position]: every input position is recognisable.
  embedded = np.stack(
      [tokens, np.broadcast_to(np.arange(length), tokens.shape)],
      axis=-1).astype(np.float32)  # [B, T, 2]
  prompt = -np.array([[1, 1], [2, 2]], np.float32)  # [P=2, 2]
  x, mask = jax.jit(combine, static_argnames=("placement", "eos_id"))(
      prompt, embedded, tokens > 0, tokens, placement="suffix", eos_id=1)
  assert x.shape == (batch, length + 2, 2) and mask.dtype == jnp.bool_
  p1, p2 = prompt
  tok = lambda b, t: embedded[b, t]
  want = [
      [tok(0, 0), tok(0, 1), tok(0, 2), p1, p2, tok(0, 3), tok(0, 4),
       tok(0, 5)],
      [tok(1, 0), p1, p2] + [tok(1, t) for t in range(1, 6)],
      [tok(2, t) for t in range(6)] + [p1, p2],
      [tok(3, 0), tok(3, 1), p1, p2] + [tok(3, t) for t in range(2, 6)],
  ]
  np.testing.assert_array_equal(x, np.array(want))
  np.testing.assert_array_equal(mask, [
      [1, 1, 1, 1, 1, 1, 0, 0],
      [1, 1, 1, 1, 0, 0, 0, 0],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 0, 0, 0, 0]])


def test_after_first_places_the_prompt_after_the_first_token():
  """The official prefix_prompt_after_bos: [x_1; P; x_2 ...]."""
  tokens = np.array([[5, 6, 1, 0], [7, 1, 0, 0]], np.int32)
  embedded = np.stack(
      [tokens, np.broadcast_to(np.arange(4), tokens.shape)],
      axis=-1).astype(np.float32)  # [B, T, 2]
  prompt = -np.array([[1, 1], [2, 2]], np.float32)  # [P=2, 2]
  x, mask = combine(prompt, embedded, tokens > 0, tokens,
                    placement="after_first")
  p1, p2 = prompt
  want = [[embedded[b, 0], p1, p2] + [embedded[b, t] for t in range(1, 4)]
          for b in range(2)]
  np.testing.assert_array_equal(x, np.array(want))
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 0],
                                       [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(
      combine_mask(2, tokens > 0, tokens, "after_first"), mask)


def test_combine_prefix_and_casts_to_embedded_dtype():
  tokens = np.array([[5, 1, 0]], np.int32)
  embedded = jnp.ones((1, 3, 4), jnp.bfloat16)
  prompt = jnp.full((2, 4), 0.25, jnp.float32)
  x, mask = combine(prompt, embedded, tokens > 0, tokens)
  assert x.dtype == jnp.bfloat16 and x.shape == (1, 5, 4)
  np.testing.assert_array_equal(x[0, :2], 0.25)
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0]])
  with pytest.raises(ValueError, match=r"\[B, P, H\]"):
    combine(jnp.ones((2, 2, 4)), embedded, tokens > 0, tokens)


@pytest.mark.parametrize("placement", ["prefix", "suffix", "after_first"])
def test_per_example_prompts_equal_shared_runs(placement):
  model = PromptedT5(CONFIG, P, placement=placement)
  prompts = _prompt(seed=5, shape=(3, P, H))  # [B, P, H]
  batched, _, _ = _run(model, _prompted_params(_prompt()), ENC, prompts)
  for b in range(3):
    # Prompt b as the model's own (shared) prompt.
    shared, _, _ = _run(model, _prompted_params(prompts[b]), ENC)
    np.testing.assert_allclose(batched[b], shared[b], rtol=1e-5, atol=1e-5)
  # The explicit prompt overrides the learned one.
  learned, _, _ = _run(model, _prompted_params(_prompt()), ENC)
  assert not np.allclose(batched, learned, atol=1e-3)


def test_gradients_reach_the_prompt_only():
  model = PromptedT5(CONFIG, P)
  full = _prompted_params(_prompt())
  trainable, frozen = split_prompt(full)
  assert _flat(trainable).keys() == {"encoder/prompt/prompt"}
  assert _flat(frozen).keys() == _flat(_t5_params()).keys()

  @jax.jit
  def step(trainable, frozen):
    def loss(trainable):
      logits = model.apply({"params": merge_params(trainable, frozen)}, ENC,
                           DEC_IN, TGT)
      log_probs = jax.nn.log_softmax(logits)
      picked = jnp.take_along_axis(log_probs, TGT[..., None], -1)[..., 0]
      return -jnp.sum(jnp.where(TGT > 0, picked, 0.0))
    grads = jax.grad(loss)(trainable)
    return grads, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, trainable,
                                         grads)

  grads, updated = step(trainable, frozen)
  grad = grads["encoder"]["prompt"]["prompt"]
  assert grad.shape == (P, H) and np.all(np.isfinite(grad))
  assert np.abs(grad).min() > 0  # every prompt entry is read by the encoder
  assert not np.allclose(updated["encoder"]["prompt"]["prompt"],
                         trainable["encoder"]["prompt"]["prompt"])
  for name, value in _flat(frozen).items():
    np.testing.assert_array_equal(value, _flat(_t5_params())[name])
  with pytest.raises(ValueError, match="both trainable and frozen"):
    merge_params(full, frozen)
  with pytest.raises(KeyError, match="encoder/prompt/prompt"):
    split_prompt(frozen)


# ----------------------------------------------------------------- initializers

V = 40
TABLE = np.arange(V * 4, dtype=np.float32).reshape(V, 4)  # distinct rows
RNG = jax.random.PRNGKey(0)


class CharVocab:
  """Fake vocabulary: 'a' -> 2, 'b' -> 3, ...; spaces are dropped."""

  def encode(self, s):
    return [ord(c) - ord("a") + 2 for c in s if c != " "]


def _row_ids(rows):
  """Rows of TABLE -> their indices (rows are 4 consecutive integers)."""
  rows = np.asarray(rows)
  np.testing.assert_array_equal(rows, TABLE[(rows[:, 0] // 4).astype(int)])
  return (rows[:, 0] // 4).astype(int)


def _const(value):
  return lambda rng, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


def test_random_uniform_range_and_shape():
  x = random_uniform()(RNG, (50, 8))
  assert x.shape == (50, 8) and x.dtype == jnp.float32
  x = np.asarray(x)  # numpy reductions: no per-op compilation
  assert -0.5 <= x.min() < -0.4 and 0.4 < x.max() <= 0.5
  assert np.abs(random_uniform(0.1)(RNG, (50, 8))).max() <= 0.1
  assert set(INITIALIZERS) == {"random_uniform", "sampled_vocab",
                               "class_labels", "from_text", "from_file"}


def test_sampled_vocab_draws_rows_of_the_first_n():
  # Jitted as Flax's init would be; eager sampling compiles op by op (slow).
  init = jax.jit(sampled_vocab(TABLE, num_tokens=10), static_argnums=1)
  ids = _row_ids(init(RNG, (8, 4)))
  assert ids.max() < 10 and len(set(ids)) == 8  # without replacement
  many = _row_ids(init(RNG, (25, 4)))  # P > N: with replacement
  assert many.max() < 10 and len(set(many)) <= 10
  np.testing.assert_array_equal(init(RNG, (8, 4)), init(RNG, (8, 4)))
  assert not np.array_equal(init(jax.random.PRNGKey(1), (8, 4)),
                            init(RNG, (8, 4)))
  # N > V is capped at V.
  capped = jax.jit(sampled_vocab(TABLE, 10_000), static_argnums=1)
  assert len(set(_row_ids(capped(RNG, (V, 4))))) == V
  with pytest.raises(ValueError, match="width"):
    init(RNG, (8, 5))


def test_class_labels_mean_pools_and_fills_from_fallback():
  init = class_labels(TABLE, ["ab", "c"], CharVocab(), fallback=_const(-1.0))
  x = init(RNG, (4, 4))
  np.testing.assert_allclose(x[0], (TABLE[2] + TABLE[3]) / 2)  # 'a', 'b'
  np.testing.assert_allclose(x[1], TABLE[4])  # 'c'
  np.testing.assert_array_equal(x[2:], -1.0)
  # Default fallback: sampled vocabulary rows.
  default = jax.jit(class_labels(TABLE, ["ab"], CharVocab()),
                    static_argnums=1)
  _row_ids(default(RNG, (5, 4))[1:])
  with pytest.raises(ValueError, match=r"3 labels.*2 positions.*PROMPT_LENGTH"):
    class_labels(TABLE, ["a", "b", "c"], CharVocab())(RNG, (2, 4))
  with pytest.raises(ValueError, match="no tokens"):
    class_labels(TABLE, ["a", " "], CharVocab())


def test_from_text_copies_tokens_truncates_and_falls_back(caplog):
  init = from_text(TABLE, "abcdef", CharVocab(), fallback=_const(-1.0))
  with caplog.at_level(logging.WARNING):
    x = init(RNG, (4, 4))
  np.testing.assert_array_equal(_row_ids(x), [2, 3, 4, 5])
  assert "6 tokens" in caplog.text and "4" in caplog.text
  y = from_text(TABLE, "ba", CharVocab(), fallback=_const(-1.0))(RNG, (4, 4))
  np.testing.assert_array_equal(_row_ids(y[:2]), [3, 2])
  np.testing.assert_array_equal(y[2:], -1.0)


def test_from_text_edges_default_fallback_dtype_and_errors(caplog):
  # A text exactly as long as the prompt is neither truncated nor warned on.
  with caplog.at_level(logging.WARNING):
    exact = from_text(TABLE, "abcd", CharVocab(), fallback=_const(-1.0))(
        RNG, (4, 4))
  np.testing.assert_array_equal(_row_ids(exact), [2, 3, 4, 5])
  assert "from_text" not in caplog.text
  with caplog.at_level(logging.WARNING):
    from_text(TABLE, "abcde", CharVocab())(RNG, (3, 4))
  assert ("from_text: the text has 5 tokens but the prompt only 3 positions; "
          "keeping the first 3 tokens.") in caplog.text
  # Without a fallback the rest is sampled vocabulary.
  default = jax.jit(from_text(TABLE, "b", CharVocab()), static_argnums=1)
  rows = default(RNG, (5, 4))
  assert _row_ids(rows[:1]).tolist() == [3]
  _row_ids(rows[1:])
  assert from_text(TABLE, "ab", CharVocab(), fallback=_const(-1.0))(
      RNG, (4, 4), jnp.bfloat16).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=(
      r"^from_text: ' ' tokenizes to no tokens; give a non-empty text or use "
      r"another initializer\.$")):
    from_text(TABLE, " ", CharVocab())
  with pytest.raises(ValueError, match=(
      r"^from_text text 'az' tokenizes to ids outside the embedding table "
      r"\(V=20\): \[2, 27\]\.")):
    from_text(TABLE[:20], "az", CharVocab())
  with pytest.raises(ValueError, match=(
      r"^from_text: the prompt width 5 differs from the embedding table's "
      r"width 4; pass the token embedding of the frozen model\.$")):
    from_text(TABLE, "ab", CharVocab())(RNG, (4, 5))


def test_initializer_bounds_dtypes_and_messages(tmp_path):
  assert random_uniform(0.25)(RNG, (3, 4), jnp.bfloat16).dtype == jnp.bfloat16
  assert np.abs(np.asarray(random_uniform(2.0)(RNG, (50, 4)))).max() > 1.0
  for scale in (0, -1.0):
    with pytest.raises(ValueError, match=(
        rf"^random_uniform needs scale > 0; got {scale}\.$")):
      random_uniform(scale)
  # Ids 0 and V - 1 are rows of the table; V and -1 are not.
  vocab = lambda ids: type("Vocab", (), {"encode": lambda self, s: ids[s]})()
  edge = class_labels(TABLE, ["a", "b"], vocab({"a": [0], "b": [V - 1]}))
  np.testing.assert_array_equal(_row_ids(edge(RNG, (2, 4))), [0, V - 1])
  assert edge(RNG, (2, 4), jnp.bfloat16).dtype == jnp.bfloat16
  for bad in ([V], [-1]):
    with pytest.raises(ValueError, match=(
        rf"^Class label 'x' tokenizes to ids outside the embedding table "
        rf"\(V={V}\): \[{bad[0]}\]\. Is the vocabulary the one the model was "
        r"trained with\?$")):
      class_labels(TABLE, ["x"], vocab({"x": bad}))
  with pytest.raises(ValueError,
                     match=r"^class_labels needs at least one label\.$"):
    class_labels(TABLE, [], CharVocab())
  with pytest.raises(ValueError, match=(
      r"^class_labels: the prompt width 5 differs from the embedding table's "
      r"width 4; pass the token embedding of the frozen model\.$")):
    class_labels(TABLE, ["a"], CharVocab())(RNG, (2, 5))
  # A file shorter than the prompt but longer than H is lengthened too.
  saved = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  path = str(tmp_path / "p.npy")
  np.save(path, saved)
  longer = from_file(path, fallback=_const(-1.0))(RNG, (8, 4), jnp.bfloat16)
  assert longer.shape == (8, 4) and longer.dtype == jnp.bfloat16
  np.testing.assert_array_equal(longer[:6], saved.astype(jnp.bfloat16))
  np.testing.assert_array_equal(longer[6:], -1.0)
  same = from_file(path, fallback=_const(-1.0))(RNG, (6, 4), jnp.bfloat16)
  assert same.dtype == jnp.bfloat16
  np.testing.assert_array_equal(same, saved.astype(jnp.bfloat16))


def test_from_file_round_trip_and_errors(tmp_path):
  saved = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
  path = str(tmp_path / "prompt.npy")
  np.save(path, saved)
  np.testing.assert_array_equal(from_file(path)(RNG, (4, 8)), saved)
  # Through the Prompt layer: the file becomes the `prompt` param.
  variables = Prompt(4, 8, init_fn=from_file(path)).init(RNG)
  np.testing.assert_array_equal(_unbox(variables["params"])["prompt"], saved)
  with pytest.raises(ValueError) as e:
    from_file(path)(RNG, (5, 8))
  assert "(4, 8)" in str(e.value) and "(5, 8)" in str(e.value)
  assert path in str(e.value)
  # A fallback lengthens a shorter saved prompt.
  longer = from_file(path, fallback=_const(-1.0))(RNG, (6, 8))
  np.testing.assert_array_equal(longer[:4], saved)
  np.testing.assert_array_equal(longer[4:], -1.0)

  objects = str(tmp_path / "objects.npy")
  np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="not a plain numeric"):
    from_file(objects)
  ints = str(tmp_path / "ints.npy")
  np.save(ints, np.ones((4, 8), np.int32))
  with pytest.raises(ValueError, match="float"):
    from_file(ints)
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    from_file(str(tmp_path / "missing.npy"))


def test_prompt_attention_variants_are_the_official_masks():
  from prompt_tuning.prompts.layer import prompt_attention_mask  # pylint: disable=g-import-not-at-top
  full = np.asarray(prompt_attention_mask(
      2, 2, ("input->input", "input->prompt", "prompt->prompt",
             "prompt->input")))[0, 0]
  assert full.all()
  causal = np.asarray(prompt_attention_mask(
      2, 2, ("input->input", "input->prompt", "prompt->prompt",
             "prompt->prompt;causal")))[0, 0]  # causal wins, as officially
  np.testing.assert_array_equal(causal, [[1, 0, 0, 0], [1, 1, 0, 0],
                                         [1, 1, 1, 1], [1, 1, 1, 1]])
  with pytest.raises(ValueError, match="must allow"):
    prompt_attention_mask(2, 2, ("input->input",))
  with pytest.raises(ValueError, match="unknown"):
    prompt_attention_mask(2, 2, ("input->input", "input->prompt", "all"))


def test_prompt_positions_ignore_the_input_without_prompt_to_input():
  """Encoder outputs at prompt positions depend on the input tokens only
  when prompt->input is allowed; the default is the full-attention model."""
  config = t5_config("t5_1_1_tiny", dtype="float32")
  tokens = np.array([[5, 6, 7, 1, 0]], np.int32)
  other = np.array([[9, 6, 7, 1, 0]], np.int32)
  init = random_uniform(0.5)
  for attention, depends in (
      (("input->input", "input->prompt", "prompt->prompt"), False),
      (("input->input", "input->prompt", "prompt->prompt", "prompt->input"),
       True)):
    model = PromptedT5(config, 2, init, attention=attention)
    params = model.init(jax.random.PRNGKey(0), tokens, tokens[:, :2],
                        tokens[:, :2])["params"]
    encode = lambda t: np.asarray(model.apply(
        {"params": params}, t, method="encode"))[0, :2]
    assert (not np.allclose(encode(tokens), encode(other))) == depends
  default = PromptedT5(config, 2, init)
  np.testing.assert_allclose(
      np.asarray(default.apply({"params": params}, tokens, method="encode")),
      np.asarray(model.apply({"params": params}, tokens, method="encode")),
      atol=1e-6)
  with pytest.raises(ValueError, match="placement 'prefix'"):
    PromptedT5(config, 2, init, placement="suffix",
               attention=("input->input", "input->prompt")).init(
                   jax.random.PRNGKey(0), tokens, tokens, tokens)
