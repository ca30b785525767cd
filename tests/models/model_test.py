"""T5 model: parameter names and axes, presets, masking, scan/remat switches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.pretrained.assemble import abstract_params
from prompt_tuning.pretrained.assemble import assemble_params
from prompt_tuning.pretrained.assemble import flat_names
from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from prompt_tuning.models.layers import relative_position_buckets

ENC = np.array([[5, 6, 7, 9, 1, 0], [3, 4, 1, 0, 0, 0]], np.int32)
DEC_IN = np.array([[0, 8, 9, 4], [0, 2, 0, 0]], np.int32)
TGT = np.array([[8, 9, 4, 1], [2, 1, 0, 0]], np.int32)



def _unboxed(config, seed=0):
  variables = T5(config).init(jax.random.PRNGKey(seed), ENC, DEC_IN, TGT)
  return jax.tree_util.tree_map(
      lambda b: b.unbox(), variables["params"],
      is_leaf=lambda x: hasattr(x, "unbox"))


def _t5x_names(config):
  """The names T5X checkpoints store for this architecture, written out."""
  names = {"token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
           "encoder/encoder_norm/scale", "decoder/relpos_bias/rel_embedding",
           "decoder/decoder_norm/scale"}
  wi = (["wi"] if len(config.mlp_activations) == 1 else
        [f"wi_{i}" for i in range(len(config.mlp_activations))])
  mlp = [f"mlp/{w}/kernel" for w in wi + ["wo"]]
  attn = lambda a: [f"{a}/{p}/kernel" for p in ("query", "key", "value", "out")]
  for i in range(config.num_encoder_layers):
    for rest in (attn("attention") + mlp + ["pre_attention_layer_norm/scale",
                                            "pre_mlp_layer_norm/scale"]):
      names.add(f"encoder/layers_{i}/{rest}")
  for i in range(config.num_decoder_layers):
    for rest in (attn("self_attention") + attn("encoder_decoder_attention") +
                 mlp + ["pre_self_attention_layer_norm/scale",
                        "pre_cross_attention_layer_norm/scale",
                        "pre_mlp_layer_norm/scale"]):
      names.add(f"decoder/layers_{i}/{rest}")
  if not config.logits_via_embedding:
    names.add("decoder/logits_dense/kernel")
  return names


@pytest.mark.parametrize("name", ["t5_1_1_tiny", "t5_1_1_base", "t5_1_0_3b",
                                  "mt5_small"])
def test_param_tree_has_t5x_names_shapes_and_axes(name):
  config = t5_config(name)
  flat = flat_names(abstract_params(config))
  assert set(flat) == _t5x_names(config)
  d, hk = config.emb_dim, config.num_heads * config.head_dim
  assert flat["token_embedder/embedding"].value.shape == (config.vocab_size, d)
  assert flat["encoder/layers_0/attention/query/kernel"].value.shape == (d, hk)
  assert flat["decoder/layers_0/self_attention/out/kernel"].value.shape == (
      hk, d)
  assert flat["encoder/relpos_bias/rel_embedding"].value.shape == (
      config.num_heads, 32)
  wo = flat["decoder/layers_0/mlp/wo/kernel"]
  assert wo.value.shape == (config.mlp_dim, d)
  assert wo.names == ("mlp", "embed")
  assert flat["token_embedder/embedding"].names == ("vocab", "embed")
  for box in flat.values():
    assert len(box.names) == len(box.value.shape)
    assert box.value.dtype == jnp.float32


def test_scanned_tree_stacks_layers_with_layers_axis():
  config = t5_config("t5_1_1_tiny", scan_layers=True)
  flat = flat_names(abstract_params(config))
  kernel = flat["encoder/layers/attention/query/kernel"]
  assert kernel.value.shape == (2, 32, 32)
  assert kernel.names[0] == "layers"
  assert not any("layers_0" in n for n in flat)


def test_presets():
  xxl = t5_config("t5_1_1_xxl")
  assert (xxl.emb_dim, xxl.num_heads, xxl.head_dim, xxl.mlp_dim,
          xxl.num_encoder_layers, xxl.vocab_size) == (4096, 64, 64, 10240, 24,
                                                      32128)
  assert t5_config("t5_1_0_base").mlp_activations == ("relu",)
  assert t5_config("t5_1_0_base").logits_via_embedding
  assert t5_config("mt5_xl").vocab_size == 250112
  assert t5_config("t5_1_1_lm100k_large") == t5_config("t5_1_1_large")
  with pytest.raises(ValueError, match="Did you mean t5_1_1_base"):
    t5_config("t5_1_1_bsae")
  with pytest.raises(ValueError, match="remat_policy"):
    t5_config("t5_1_1_tiny", remat_policy="sometimes")


def test_relative_position_buckets_match_hand_values():
  # Bidirectional, 32 buckets / 128: offsets < 8 are exact, keys to the right
  # of the query land in the upper half.
  b = relative_position_buckets(1, 300, True, 32, 128, query_offset=150)[0]
  assert b[150] == 0 and b[149] == 1 and b[143] == 7  # left: n = 1..7
  assert b[151] == 17 and b[157] == 23  # right: 16 + n
  assert b[0] == 15 and b[299] == 31  # beyond max distance: last bucket
  c = relative_position_buckets(4, 4, False, 32, 128)
  assert (c[0] == [0, 0, 0, 0]).all()  # causal: future keys share bucket 0
  assert (c[3] == [3, 2, 1, 0]).all()


def test_padding_does_not_change_real_positions():
  config = t5_config("t5_1_1_tiny", dtype="float32")
  params = _unboxed(config)
  model = T5(config)
  logits = model.apply({"params": params}, ENC, DEC_IN, TGT)
  pad = lambda x, n: np.pad(x, ((0, 0), (0, n)))
  longer = model.apply({"params": params}, pad(ENC, 3), pad(DEC_IN, 2),
                       pad(TGT, 2))
  real = TGT > 0
  np.testing.assert_allclose(np.asarray(longer)[:, :4][real],
                             np.asarray(logits)[real], atol=1e-5)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 4, 384)


def _restack(config, params):
  loaders = {k: (lambda v=v: np.asarray(v))
             for k, v in flat_names(params).items()}
  return assemble_params(config, loaders, "in-memory")


@pytest.mark.parametrize("remat", ["none", "dots_saveable", "full"])
def test_scan_and_remat_compute_the_same_function(remat):
  base = t5_config("t5_1_1_tiny", dtype="float32")
  params = _unboxed(base)
  variant = base.replace(scan_layers=True, remat_policy=remat)
  scanned = _restack(variant, params)

  def loss(config, p):
    return T5(config).apply({"params": p}, ENC, DEC_IN, TGT).sum()

  np.testing.assert_allclose(loss(variant, scanned), loss(base, params),
                             rtol=1e-5)
  g_base = jax.grad(lambda p: loss(base, p))(params)
  g_var = jax.grad(lambda p: loss(variant, p))(scanned)
  # Scanned and unrolled layers sum in another order: float32 gradients of
  # size ~2 then differ by a few 1e-6 absolute (measured 3.6e-6 on one CPU,
  # 1.5e-5 on another: XLA's kernels differ by instruction set), which is
  # large relative to the entries near zero.
  np.testing.assert_allclose(
      g_var["encoder"]["layers"]["mlp"]["wo"]["kernel"][1],
      g_base["encoder"]["layers_1"]["mlp"]["wo"]["kernel"], rtol=1e-4,
      atol=2e-5)


def test_dropout_is_active_only_when_enabled():
  config = t5_config("t5_1_1_tiny", dtype="float32", dropout_rate=0.5)
  params = _unboxed(config)
  model = T5(config)
  eval_a = model.apply({"params": params}, ENC, DEC_IN, TGT)
  eval_b = model.apply({"params": params}, ENC, DEC_IN, TGT)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply({"params": params}, ENC, DEC_IN, TGT,
                      enable_dropout=True,
                      rngs={"dropout": jax.random.PRNGKey(3)})
  assert np.abs(np.asarray(train) - np.asarray(eval_a)).max() > 1e-3


def test_bfloat16_activations_stay_close_to_float32():
  config = t5_config("t5_1_1_tiny", dtype="float32")
  params = _unboxed(config)
  f32 = T5(config).apply({"params": params}, ENC, DEC_IN, TGT)
  bf16 = T5(config.replace(dtype="bfloat16")).apply({"params": params}, ENC,
                                                    DEC_IN, TGT)
  assert bf16.dtype == jnp.float32
  real = TGT > 0
  scale = np.abs(np.asarray(f32)[real]).max()
  assert np.abs(np.asarray(bf16 - f32)[real]).max() < 0.05 * scale
