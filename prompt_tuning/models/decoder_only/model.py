"""A frozen decoder-only LM (Llama, Mistral, Qwen2, Gemma 2) in flax.linen.

Parameter names follow our T5's (T5X's) decoder, so the parameter-efficient
methods' targets (`query`, `key`, `value`, `out`, `wi_0`, `wi_1`, `wo`) and
the rules table's logical axes apply unchanged:

  token_embedder/embedding                           [V, H]
  decoder/layers_i/pre_self_attention_layer_norm/scale   [H]
  decoder/layers_i/self_attention/{query,key,value}/kernel (+ bias)
  decoder/layers_i/self_attention/out/kernel
  decoder/layers_i/post_self_attention_layer_norm/scale  (Gemma 2)
  decoder/layers_i/pre_mlp_layer_norm/scale
  decoder/layers_i/mlp/{wi_0 (gate), wi_1 (up), wo (down)}/kernel
  decoder/layers_i/post_mlp_layer_norm/scale              (Gemma 2)
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                        [H, V] (untied only)

`__call__` takes token ids with an explicit mask: these vocabularies have no
padding id (Llama 3's id 0 is a real token). `embed` and `forward_embedded`
split the lookup from the stack, which is where a soft prompt joins.
Positions count real rows (a prompt's too) and rotary embeddings use them.

Prefix tuning (`AdapterConfig.prefix_length` P with 'decoder_self' among its
attentions) gives every layer's self-attention learned `prefix_key` and
`prefix_value` [P, kv heads, head_dim]: P key/value columns in front of the
rows, seen by every query, as HF's cache holds PEFT's PREFIX_TUNING
past_key_values. They are used as stored (no rotation), and the rows'
positions start at P, HF's positions after a P-column cache.

Deep prompts (`AdapterConfig.layer_prompt_length` P, on a prompted LM):
every layer owns a `layer_prompt` [P, H] that replaces (or is added to) the
stream at the input prompt's rows before the layer; the prompted decoder
says where those rows are (`Decoder.prompt_rows`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models import layers
from prompt_tuning.models import remat
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.decoder_only.config import DecoderConfig

Array = jax.Array


def inverse_frequencies(config: DecoderConfig) -> np.ndarray:
  """The rotary inverse frequencies [head_dim / 2] (float32), with the
  config's scaling (linear, or Llama 3.1's piecewise one)."""
  dim = config.head_dim
  inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32)
                                     / dim))
  inv = inv.astype(np.float32)
  if config.rope_type == "linear":
    return (inv / config.rope_factor).astype(np.float32)
  if config.rope_type == "llama3":
    factor, old = config.rope_factor, config.rope_original_max_positions
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelength = 2 * np.pi / inv
    scaled = np.where(wavelength > old / low, inv / factor, inv)
    smooth = (old / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= old / high) & (wavelength <= old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  return inv


def rotate(x: Array, positions: Array, inverse: np.ndarray) -> Array:
  """Rotary embedding of x [B, T, heads, d] at positions [B, T] (the
  rotate-half convention of HF's Llama: pairs (i, i + d/2))."""
  angles = positions.astype(jnp.float32)[..., None] * inverse  # [B, T, d/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  half = x.shape[-1] // 2
  turned = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x.astype(jnp.float32) * cos +
          turned.astype(jnp.float32) * sin).astype(x.dtype)


def softcap(x: Array, cap: float) -> Array:
  return jnp.tanh(x / cap) * cap if cap else x


class Norm(nn.Module):
  """RMSNorm in float32; Gemma's scales by (1 + scale), stored as offsets."""

  eps: float
  offset: float = 0.0
  dtype: str = "bfloat16"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) +
                          self.eps)
    scale = layers.param_with_axes(
        self, "scale", nn.initializers.zeros if self.offset else
        nn.initializers.ones, (x.shape[-1],), ("embed",), self.param_dtype)
    return (y * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)


class SelfAttention(nn.Module):
  """Causal grouped-query attention with rotary positions."""

  config: DecoderConfig
  # 0 for global attention, else the keys within this many positions.
  window: int = 0
  adapters: Optional[AdapterConfig] = None

  @nn.compact
  def __call__(self, x: Array, mask: Array, positions: Array,
               decode_start: Optional[Array] = None,
               cache_length: int = 0) -> Array:
    """x [B, T, H], mask [B, T] bool (real rows), positions [B, T] int ->
    [B, T, H].

    With `decode_start` (a scalar column), x is a chunk of the sequence at
    columns [decode_start, decode_start + T): its keys and values are written
    into the cache (`cache_length` columns, created by an `init` in this
    mode) and its queries attend to every cached column up to their own.
    Prefill is one chunk of the prompt; each decoding step a chunk of one.
    """
    cfg = self.config
    kv_heads, groups = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    dense = lambda features, name, bias: layers.Dense(
        features, ("embed", "joined_kv"), dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, adapters=self.adapters,
        use_bias=bias, name=name)
    split = lambda y, heads: y.reshape(y.shape[:2] + (heads, cfg.head_dim))
    query = split(dense(cfg.num_heads * cfg.head_dim, "query",
                        cfg.qkv_bias)(x), cfg.num_heads)
    key = split(dense(kv_heads * cfg.head_dim, "key", cfg.qkv_bias)(x),
                kv_heads)
    value = split(dense(kv_heads * cfg.head_dim, "value", cfg.qkv_bias)(x),
                  kv_heads)
    if cfg.qk_norm:  # per head, before the rotation (Gemma 3)
      query = Norm(cfg.norm_eps, 1.0, cfg.dtype, cfg.param_dtype,
                   name="query_norm")(query)
      key = Norm(cfg.norm_eps, 1.0, cfg.dtype, cfg.param_dtype,
                 name="key_norm")(key)
    prefix = self._prefix_length()
    if prefix:  # the rows come after the P prefix columns
      positions = positions + prefix
    local = self.window and cfg.rope_local_theta
    inverse = inverse_frequencies(
        cfg.replace(rope_theta=cfg.rope_local_theta, rope_type="default")
        if local else cfg)
    query, key = rotate(query, positions, inverse), rotate(key, positions,
                                                           inverse)
    length = x.shape[1]
    q = jnp.arange(length)[:, None]  # query columns
    key_mask = mask
    if decode_start is not None:
      key, value, key_mask = self._cached(key, value, mask, decode_start,
                                          cache_length)
      q = q + decode_start
    if prefix:
      key, value, key_mask = self._prepend_prefix(key, value, key_mask)
      q = q + prefix
    k = jnp.arange(key.shape[1])[None, :]  # key columns
    # [B, T, kv, groups, d]: each key/value head serves `groups` query heads.
    query = query.reshape(query.shape[:2] + (kv_heads, groups, cfg.head_dim))
    scores = jnp.einsum("bqkgd,bskd->bkgqs", query, key,
                        preferred_element_type=jnp.float32) * cfg.query_scale
    scores = softcap(scores, cfg.attn_softcap)
    allowed = k <= q
    if self.window:
      allowed &= q - k < self.window
    allowed = allowed[None] & key_mask[:, None, :]  # [B, q, k]
    scores = jnp.where(allowed[:, None, None], scores,
                       jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", weights, value)
    out = out.reshape(out.shape[:2] + (cfg.num_heads * cfg.head_dim,))
    return layers.Dense(cfg.emb_dim, ("joined_kv", "embed"), dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, adapters=self.adapters,
                        use_bias=cfg.out_bias, name="out")(out)

  def _prefix_length(self) -> int:
    a = self.adapters
    if a is None or not a.prefix_length or (
        "decoder_self" not in a.prefix_attentions):
      return 0
    if a.per_example:
      raise ValueError("Per-example prefixes (mixed adapter serving) are not "
                       "implemented for decoder-only LMs.")
    return a.prefix_length

  def _prepend_prefix(self, key: Array, value: Array, mask: Array
                      ) -> Tuple[Array, Array, Array]:
    """[B, S, kv, d] keys/values, mask [B, S] -> [B, P + S, ...], [B, P + S]
    with the learned prefix in front (always seen)."""
    cfg = self.config
    shape = (self.adapters.prefix_length, cfg.num_kv_heads, cfg.head_dim)
    init = nn.initializers.normal(stddev=1.0)  # PEFT's nn.Embedding init
    batch = key.shape[0]
    prefixes = [jnp.broadcast_to(layers.param_with_axes(
        self, name, init, shape, ("prompt", "heads", "kv"),
        cfg.param_dtype).astype(key.dtype), (batch,) + shape)
                for name in ("prefix_key", "prefix_value")]
    seen = jnp.ones((batch, shape[0]), bool)
    return (jnp.concatenate([prefixes[0], key], axis=1),
            jnp.concatenate([prefixes[1], value], axis=1),
            jnp.concatenate([seen, mask.astype(bool)], axis=1))

  def _cached(self, key: Array, value: Array, mask: Array, start: Array,
              length: int) -> Tuple[Array, Array, Array]:
    """Writes a chunk's keys/values [B, T, kv, d] and mask [B, T] at column
    `start`; returns the whole cache ([B, length, ...], mask [B, length])."""
    batch = key.shape[0]
    shape = (batch, length) + key.shape[2:]
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape,
                               key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape,
                                 value.dtype)
    cached_mask = self.variable("cache", "cached_mask", jnp.zeros,
                                (batch, length), bool)
    if self.is_initializing():
      return cached_key.value, cached_value.value, cached_mask.value
    write = lambda old, new: jax.lax.dynamic_update_slice_in_dim(
        old, new.astype(old.dtype), start, axis=1)
    cached_key.value = write(cached_key.value, key)
    cached_value.value = write(cached_value.value, value)
    cached_mask.value = write(cached_mask.value, mask.astype(bool))
    return cached_key.value, cached_value.value, cached_mask.value


class DecoderOnlyLayer(nn.Module):
  """Pre-norm attention + gated MLP; Gemma 2 also norms each branch's
  output before the residual add."""

  config: DecoderConfig
  window: int = 0
  adapters: Optional[AdapterConfig] = None

  @nn.compact
  def __call__(self, x: Array, mask: Array, positions: Array,
               decode_start: Optional[Array] = None,
               cache_length: int = 0,
               prompt_rows: Optional[Array] = None) -> Array:
    """See `SelfAttention`; `prompt_rows` [B, T] int is each row's index
    into this layer's `layer_prompt` (-1: not a prompt row), when deep
    prompts are on."""
    cfg = self.config
    if prompt_rows is not None:
      x = self._layer_prompt(x, prompt_rows)
    norm = lambda name: Norm(cfg.norm_eps, 1.0 if cfg.gemma else 0.0,
                             cfg.dtype, cfg.param_dtype, name=name)
    y = norm("pre_self_attention_layer_norm")(x)
    y = SelfAttention(cfg, self.window, self.adapters,
                      name="self_attention")(y, mask, positions, decode_start,
                                             cache_length)
    if cfg.gemma:
      y = norm("post_self_attention_layer_norm")(y)
    x = x + y
    y = norm("pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(cfg.mlp_dim, (cfg.activation, "linear"),
                        dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        adapters=self.adapters, name="mlp")(y)
    if cfg.gemma:
      y = norm("post_mlp_layer_norm")(y)
    return layers.constrain(x + y, ("batch", "length", "embed"))

  def _layer_prompt(self, x: Array, prompt_rows: Array) -> Array:
    """The stream [B, T, H] with this layer's prompt [P, H] replacing (or
    added to) the rows `prompt_rows` marks."""
    ad = self.adapters
    prompt = layers.param_with_axes(
        self, "layer_prompt", layers.uniform_half,
        (ad.layer_prompt_length, self.config.emb_dim),
        ("prompt", "prompt_embed"), self.config.param_dtype).astype(x.dtype)
    picked = jnp.take(prompt, jnp.maximum(prompt_rows, 0), axis=0)
    if ad.layer_prompt_mode == "add":
      picked = picked + x
    return jnp.where((prompt_rows >= 0)[..., None], picked, x)


class Decoder(nn.Module):
  """The layer stack, final norm and (untied) output projection: the
  `decoder` subtree, as in T5."""

  config: DecoderConfig
  adapters: Optional[AdapterConfig] = None

  def setup(self):
    cfg = self.config
    # cache_length (argument 5, self counted) shapes the cache: static.
    layer_cls = remat.remat(DecoderOnlyLayer, cfg.remat_policy,
                             static_argnums=(5,))
    self.layers = [layer_cls(cfg, cfg.sliding(i), self.adapters,
                             name=f"layers_{i}")
                   for i in range(cfg.num_layers)]
    self.decoder_norm = Norm(cfg.norm_eps, 1.0 if cfg.gemma else 0.0,
                             cfg.dtype, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.logits_dense = layers.Dense(
          cfg.vocab_size, ("embed", "vocab"), dtype=cfg.dtype,
          param_dtype=cfg.param_dtype)

  def __call__(self, x: Array, mask: Array, positions: Array,
               decode_start: Optional[Array] = None,
               cache_length: int = 0) -> Array:
    """[B, T, H] -> normed [B, T, H] (decoding: see `SelfAttention`)."""
    rows = self.prompt_rows(mask, decode_start)
    for layer in self.layers:
      x = layer(x, mask, positions, decode_start, cache_length, rows)
    return self.decoder_norm(x)

  def prompt_rows(self, mask: Array, decode_start: Optional[Array]
                  ) -> Optional[Array]:
    """[B, T] int: each row's index into the per-layer prompts, -1 where
    the row is not the input prompt's; None without deep prompts (a plain
    LM has no input prompt)."""
    del mask, decode_start
    return None

  def project(self, y: Array) -> Array:
    """[B, T, H] -> [B, T, V] with the untied output kernel."""
    return self.logits_dense(y)


class DecoderOnlyLM(nn.Module):
  """The frozen LM: tokens (and an optional embedded prefix) -> logits."""

  config: DecoderConfig
  adapters: Optional[AdapterConfig] = None

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       cfg.dtype, cfg.param_dtype)
    self.decoder = self.make_decoder()

  def make_decoder(self) -> nn.Module:
    """The `decoder` subtree (a prompted LM adds its prompt there)."""
    return Decoder(self.config, self.adapters)

  def embed(self, tokens: Array) -> Array:
    """[B, T] ids -> [B, T, H]; Gemma scales by sqrt(H), rounded to the
    compute dtype first as HF does."""
    x = self.token_embedder(tokens)
    if self.config.gemma:
      x = x * jnp.asarray(self.config.emb_dim ** 0.5, x.dtype)
    return x

  def forward_embedded(self, x: Array, mask: Array,
                       positions: Optional[Array] = None,
                       decode_start: Optional[Array] = None,
                       cache_length: int = 0) -> Array:
    """x [B, T, H] embedded rows, mask [B, T] bool -> logits [B, T, V]
    float32. Positions default to each row's count of real rows before it.
    With `decode_start`, x is a chunk at that column of a cached sequence
    (`generate`); positions must then be given."""
    if positions is None:
      positions = default_positions(mask)
    y = self.decoder(x, mask.astype(bool), positions, decode_start,
                     cache_length)
    if self.config.tie_embeddings:
      logits = self.token_embedder.attend(y)
    else:
      logits = self.decoder.project(y)
    return softcap(logits.astype(jnp.float32), self.config.final_softcap)

  def __call__(self, tokens: Array, mask: Optional[Array] = None,
               positions: Optional[Array] = None) -> Array:
    """tokens [B, T] int, mask [B, T] (None: every row real) -> [B, T, V]."""
    if mask is None:
      mask = jnp.ones(tokens.shape, bool)
    return self.forward_embedded(self.embed(tokens), mask, positions)


def default_positions(mask: Array) -> Array:
  """[B, T] int: the number of real rows before each row (left padding
  keeps real rows at 0, 1, ...; right padding is arange)."""
  mask = mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def param_shapes(config: DecoderConfig) -> Tuple[Tuple[str, Tuple[int, ...]],
                                                 ...]:
  """('/'-joined name, shape) of every parameter, from an abstract init."""
  tokens = jnp.ones((1, 1), jnp.int32)
  tree = jax.eval_shape(lambda: DecoderOnlyLM(config).init(
      jax.random.PRNGKey(0), tokens)["params"])
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]
  return tuple(("/".join(k.key for k in path), tuple(v.shape))
               for path, v in flat)
