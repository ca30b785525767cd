"""Speed variants compute the reference function: remat x scan x attention.

The reference is the unrolled model, no rematerialisation, plain einsum
attention. Every variant must give the same loss and the same prompt
gradient on a batch with encoder and decoder padding (so that the masks
matter), in float32: loss to rtol 1e-6, prompt gradient to 2e-6 of its
largest entry (the fused path sums in another order). The variants are a
pairwise covering set (every pair of remat policy, scan and attention
values occurs once; 8 compiles instead of 16), since each knob is
implemented independently of the others.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import t5_config
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import initializers
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import split_trainable

CONFIG = t5_config("t5_1_1_tiny", dtype="float32", dropout_rate=0.0)
PROMPT_LENGTH = 4

# (remat_policy, scan_layers, attention_impl): all pairs covered.
VARIANTS = [
    ("none", False, "fused"),
    ("none", True, "xla"),
    ("dots_saveable", False, "xla"),
    ("dots_saveable", True, "fused"),
    ("dots_with_no_batch_dims_saveable", False, "fused"),
    ("dots_with_no_batch_dims_saveable", True, "xla"),
    ("full", False, "xla"),
    ("full", True, "fused"),
]


def _batch():
  rng = np.random.default_rng(0)
  enc = rng.integers(2, CONFIG.vocab_size, (3, 6)).astype(np.int32)
  enc[:, -2:] = 0
  enc[:, -3] = 1
  enc[0, 2:] = 0  # a short row: most of it padding
  tgt = rng.integers(2, CONFIG.vocab_size, (3, 3)).astype(np.int32)
  tgt[:, -1] = 1
  tgt[1, -1] = 0  # decoder padding
  dec_in = np.pad(tgt, ((0, 0), (1, 0)))[:, :-1]
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def _model(config):
  return PromptedT5(config, PROMPT_LENGTH, initializers.random_uniform(0.5))


@functools.lru_cache(maxsize=None)
def _params():
  b = _batch()
  variables = jax.jit(_model(CONFIG).init)(
      jax.random.PRNGKey(0), b["encoder_input_tokens"],
      b["decoder_input_tokens"], b["decoder_target_tokens"])
  return jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]))


def _scanned(params):
  """Unrolled `layers_{i}` subtrees -> one `layers` subtree, stacked on 0."""
  out = dict(params)
  for stack, n in (("encoder", CONFIG.num_encoder_layers),
                   ("decoder", CONFIG.num_decoder_layers)):
    sub = dict(params[stack])
    per_layer = [sub.pop(f"layers_{i}") for i in range(n)]
    sub["layers"] = jax.tree_util.tree_map(lambda *x: np.stack(x), *per_layer)
    out[stack] = sub
  return out


def _loss_and_prompt_grad(config, params):
  trainable, frozen = split_trainable(params, "prompt")
  model = _model(config)
  batch = _batch()
  loss_fn = lambda p: step_lib.eval_step(p, frozen, batch,
                                         model=model)["loss_sum"]
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(trainable)
  return float(loss), np.asarray(grads["encoder"]["prompt"]["prompt"])


@functools.lru_cache(maxsize=None)
def _reference():
  return _loss_and_prompt_grad(CONFIG, _params())


@pytest.mark.parametrize("remat,scan,attention", VARIANTS)
def test_variant_matches_reference(remat, scan, attention):
  config = CONFIG.replace(remat_policy=remat, scan_layers=scan,
                          attention_impl=attention)
  params = _scanned(_params()) if scan else _params()
  loss, grad = _loss_and_prompt_grad(config, params)
  ref_loss, ref_grad = _reference()
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert np.abs(ref_grad).max() > 0
  # float32 sums in another order (fused softmax, scanned or rematerialised
  # layers), and XLA's CPU kernels differ by instruction set: the worst
  # variant measured 1.1e-6 (AVX2), 1.3e-6 (AVX-512) and 1.5e-6 (SSE4.2,
  # --xla_cpu_max_isa) of the largest entry. 1e-5 of it holds on any x86-64
  # CPU and still catches a wrong mask or bias (errors of order 1e-1).
  np.testing.assert_allclose(grad, ref_grad,
                             atol=1e-5 * np.abs(ref_grad).max())


def test_fused_attention_equals_reference_on_masked_rows():
  """The module alone, bfloat16, with a fully masked query row: the fused
  path gives the reference's output (a uniform average for that row)."""
  from prompt_tuning.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6, 32)), jnp.bfloat16)
  bias = jnp.asarray(rng.normal(size=(1, 4, 6, 6)), jnp.float32)
  real = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  mask = jnp.asarray(real[:, None, :, None] & real[:, None, None, :])
  outs = {}
  for impl in ("xla", "fused"):
    module = layers.MultiHeadAttention(4, 8, impl=impl)
    variables = module.init(jax.random.PRNGKey(0), x, x, bias, mask)
    outs[impl] = np.asarray(module.apply(variables, x, x, bias, mask),
                            np.float32)
  np.testing.assert_allclose(outs["fused"], outs["xla"], atol=2e-2, rtol=2e-2)


def test_unknown_attention_impl_is_an_error():
  with pytest.raises(ValueError, match="attention_impl"):
    t5_config("t5_1_1_tiny", attention_impl="flash")


def _module_outputs(impl, causal, lengths, q_len=6):
  """One attention module in float32 on right-padded rows."""
  from prompt_tuning.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, q_len, 32)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, 4, q_len, q_len)), jnp.float32)
  real = np.arange(q_len)[None, :] < np.asarray(lengths)[:, None]  # [B, T]
  mask = real[:, None, :, None] & real[:, None, None, :]
  if causal:
    mask = mask & np.tril(np.ones((q_len, q_len), bool))[None, None]
  module = layers.MultiHeadAttention(4, 8, dtype="float32", impl=impl,
                                     causal=causal)
  variables = module.init(jax.random.PRNGKey(0), x, x, bias, mask)
  n = layers.real_lengths(jnp.asarray(real))
  out = module.apply(variables, x, x, bias, jnp.asarray(mask),
                     lengths=(n, n))
  return np.asarray(out), real


@pytest.mark.parametrize("causal", [False, True])
def test_fused_lengths_equal_reference_on_real_rows(causal):
  """With lengths (the fused path's mask), every real query row equals the
  reference's dense-mask output (float32: 1e-5); padded query rows are
  left unspecified but finite."""
  lengths = [6, 4, 1]
  fused, real = _module_outputs("fused", causal, lengths)
  reference, _ = _module_outputs("xla", causal, lengths)
  np.testing.assert_allclose(fused[real], reference[real], rtol=1e-5,
                             atol=1e-5)
  assert np.isfinite(fused).all()


def test_real_lengths_counts_real_positions_at_least_one():
  from prompt_tuning.models import layers  # pylint: disable=g-import-not-at-top
  mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(layers.real_lengths(mask), [3, 1, 1])
  assert layers.real_lengths(mask).dtype == jnp.int32


def test_all_padding_row_is_finite_and_ignored_with_fused_attention():
  """Eval batches are filled up with all-padding rows: with fused attention
  (lengths) the loss stays finite and equals the reference's."""
  batch = _batch()
  for key in batch:
    batch[key] = np.concatenate([batch[key], np.zeros_like(batch[key][:1])])
  trainable, frozen = split_trainable(_params(), "prompt")
  losses = {}
  for impl in ("xla", "fused"):
    model = _model(CONFIG.replace(attention_impl=impl))
    losses[impl] = float(jax.jit(functools.partial(
        step_lib.eval_step, model=model))(trainable, frozen,
                                          batch)["loss_sum"])
  assert np.isfinite(losses["fused"])
  np.testing.assert_allclose(losses["fused"], losses["xla"], rtol=1e-6)
