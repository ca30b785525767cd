"""Building blocks of T5 in flax.linen, with T5X's parameter names and numerics.

Every parameter is created through `nn.with_logical_partitioning`, so it
carries logical axis names (`embed`, `mlp`, `joined_kv`, `vocab`, ...) that
`prompt_tuning.partitioning` maps onto the (`data`, `model`) mesh. Numerics
follow T5X (see the repo's docs): RMS layer norm in float32, unscaled
attention logits, softmax in float32, no biases anywhere.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models import adapters as adapters_lib
from prompt_tuning.models.adapters import AdapterConfig

Array = jax.Array
Initializer = Callable[..., Array]

# Large negative bias for masked attention logits (T5X's value). Finite, so a
# fully masked row (a padding query) gives a uniform softmax instead of NaN.
MASK_BIAS = -1e10


def param_with_axes(module: nn.Module, name: str, init: Initializer,
                    shape: Sequence[int], axes: Tuple[str, ...],
                    dtype) -> Array:
  """Creates a parameter annotated with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes),
                      tuple(shape), dtype)


def uniform_half(key, shape, dtype):
  """U[-0.5, 0.5]: the paper's random prompt init, for per-layer prompts."""
  return jax.random.uniform(key, shape, dtype, -0.5, 0.5)


def constrain(x: Array, axes: Tuple[str, ...]) -> Array:
  """Logical sharding constraint on an activation (no-op without a mesh)."""
  return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, computed in float32."""

  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., H] -> [..., H] in `dtype`."""
    x = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(var + self.epsilon)
    scale = param_with_axes(self, "scale", nn.initializers.ones,
                            (x.shape[-1],), ("embed",), self.param_dtype)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Dense(nn.Module):
  """Bias-free projection with a 2-D kernel `[in, out]` (T5X's stored layout).

  With `adapters`, a projection its targets name also gets LoRA (`lora_a`,
  `lora_b`) and/or an IA3 scaling (`ia3_scaling`); see `models.adapters`.
  """

  features: int
  kernel_axes: Tuple[str, str]
  kernel_init: Initializer = nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal")
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  adapters: Optional[AdapterConfig] = None
  # LoRA dropout is on only in training.
  deterministic: bool = True
  # A `bias` [out] after the kernel (T5 has none; Qwen2's q/k/v do).
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., in] -> [..., features]."""
    kernel = param_with_axes(self, "kernel", self.kernel_init,
                             (x.shape[-1], self.features), self.kernel_axes,
                             self.param_dtype)
    bias = None
    if self.use_bias:
      bias = param_with_axes(self, "bias", nn.initializers.zeros,
                             (self.features,), self.kernel_axes[1:],
                             self.param_dtype)
    ad = self.adapters
    path = tuple(self.scope.path) if ad is not None else ()
    x = x.astype(self.dtype)
    # IA3 on `wo` scales its input, the MLP's hidden units (PEFT's
    # feed-forward case); on any other projection, its output.
    ia3 = ad is not None and adapters_lib.matches(ad.ia3_targets, path)
    scale_input = ia3 and path[-1] == "wo"
    if ia3:
      axis = self.kernel_axes[0] if scale_input else self.kernel_axes[1]
      width = x.shape[-1] if scale_input else self.features
      lead, lead_axes = ad.lead(x.shape[0])
      scaling = param_with_axes(self, "ia3_scaling", nn.initializers.ones,
                                lead + (width,), lead_axes + (axis,),
                                self.param_dtype).astype(self.dtype)
      if ad.per_example:  # [B, F] -> [B, 1, ..., F]
        scaling = scaling.reshape(scaling.shape[:1] + (1,) * (x.ndim - 2) +
                                  scaling.shape[1:])
      if scale_input:
        x = x * scaling
    y = jnp.dot(x, kernel.astype(self.dtype))
    if bias is not None:
      y = y + bias.astype(self.dtype)
    if ia3 and not scale_input:
      y = y * scaling
    if ad is not None and ad.lora_rank and adapters_lib.matches(
        ad.lora_targets, path):
      y = y + self._lora(x, ad)
    return y

  def _lora(self, x: Array, ad: AdapterConfig) -> Array:
    """The low-rank update (x @ lora_a) @ lora_b * scaling: [..., out]."""
    rank = ad.lora_rank
    # PEFT's default: A ~ kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in)), B = 0,
    # so training starts from the frozen model.
    bound = 1.0 / np.sqrt(x.shape[-1])
    init_a = lambda key, shape, dtype: jax.random.uniform(
        key, shape, dtype, -bound, bound)
    lead, lead_axes = ad.lead(x.shape[0])
    lora_a = param_with_axes(self, "lora_a", init_a,
                             lead + (x.shape[-1], rank),
                             lead_axes + (self.kernel_axes[0], "lora_rank"),
                             self.param_dtype).astype(self.dtype)
    lora_b = param_with_axes(self, "lora_b", nn.initializers.zeros,
                             lead + (rank, self.features),
                             lead_axes + ("lora_rank", self.kernel_axes[1]),
                             self.param_dtype).astype(self.dtype)
    if not self.deterministic and ad.lora_dropout > 0:
      x = nn.Dropout(ad.lora_dropout)(x, deterministic=False)
    scaling = jnp.asarray(ad.lora_scaling, self.dtype)
    if ad.per_example:  # example b's own [in, r] and [r, out]
      h = jnp.einsum("b...i,bir->b...r", x, lora_a)
      return jnp.einsum("b...r,bro->b...o", h, lora_b) * scaling
    h = jnp.dot(x, lora_a)  # [..., in] -> [..., r]
    return jnp.dot(h, lora_b) * scaling


class Embed(nn.Module):
  """Token embedding table `[V, H]`, shared by encoder, decoder and tied logits."""

  num_embeddings: int
  features: int
  dtype: str = "bfloat16"
  param_dtype: str = "float32"

  def setup(self):
    self.embedding = param_with_axes(
        self, "embedding", nn.initializers.normal(stddev=1.0),
        (self.num_embeddings, self.features), ("vocab", "embed"),
        self.param_dtype)

  def __call__(self, tokens: Array) -> Array:
    """tokens: [B, T] int -> [B, T, H]. Embeddings are not scaled (T5)."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, y: Array) -> Array:
    """Tied output projection: y [B, L, H] -> [B, L, V] float32."""
    return jnp.dot(y.astype(self.dtype), self.embedding.astype(self.dtype).T,
                   preferred_element_type=jnp.float32)


def relative_position_buckets(query_length: int, key_length: int,
                              bidirectional: bool, num_buckets: int,
                              max_distance: int,
                              query_offset: int = 0) -> np.ndarray:
  """Mesh TensorFlow's relative-position bucketing, as T5X computes it.

  Computed with numpy at trace time: lengths are static, so the bucket ids are
  constants folded into the program.

  Args:
    query_length: number of query positions.
    key_length: number of key positions.
    bidirectional: encoder (True) or causal decoder (False) bucketing.
    num_buckets: total buckets (split in two halves when bidirectional).
    max_distance: distances at or beyond this share the last bucket.
    query_offset: absolute position of the first query.

  Returns:
    [query_length, key_length] int32 bucket ids.
  """
  context = np.arange(query_length, dtype=np.int32)[:, None] + query_offset
  memory = np.arange(key_length, dtype=np.int32)[None, :]
  n = -(memory - context)  # positive when the key is to the left
  ret = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore"):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact) +
                     np.finfo(np.float32).eps) /
              np.float32(np.log(max_distance / max_exact)) *
              np.float32(num_buckets - max_exact))
  val_if_large = max_exact + scaled.astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return (ret + np.where(is_small, n, val_if_large)).astype(np.int32)


class RelativePositionBias(nn.Module):
  """One relative-position bias table per stack, shared by all its layers."""

  num_heads: int
  num_buckets: int
  max_distance: int
  dtype: str = "bfloat16"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, query_length: int, key_length: int,
               bidirectional: bool, prefix: int = 0) -> Array:
    """Returns the bias [1, heads, query_length, prefix + key_length] (float32).

    With `prefix` P, P keys come first and are placed just before position 0
    (prefix slot P - 1 is next to the first real position): a query at q sees
    prefix slot j at distance q + P - j, the convention of HF T5 with a
    key/value cache of P positions (what PEFT's prefixes use).
    """
    table = param_with_axes(
        self, "rel_embedding",
        nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
        (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"),
        self.param_dtype)
    buckets = relative_position_buckets(query_length, prefix + key_length,
                                        bidirectional, self.num_buckets,
                                        self.max_distance,
                                        query_offset=prefix)
    bias = jnp.take(table.astype(jnp.float32), buckets, axis=1)  # [H, q, k]
    return bias[None]


def mask_to_bias(mask: Array) -> Array:
  """Boolean attention mask [B, 1, q, k] -> additive float32 bias."""
  return jnp.where(mask, 0.0, MASK_BIAS).astype(jnp.float32)


def real_lengths(mask: Array) -> Array:
  """[B, T] bool, True for real positions -> [B] int32 counts, at least 1.

  Read as lengths, a mask means "the first n positions are real": true of
  every right-padded row (seqio's feature converters pad on the right, and
  packing is refused). An all-padding row (eval batches are filled up with
  them) counts 1, so that attention over it stays finite.
  """
  return jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32), 1)


def _fused_attention(query: Array, key: Array, value: Array,
                     bias: Optional[Array], mask: Array,
                     lengths: Optional[Tuple[Array, Array]],
                     causal: bool) -> Array:
  """softmax(q k^T + bias, masked) v through `jax.nn.dot_product_attention`.

  With `lengths`, the mask is given as each row's number of real queries and
  keys (right padding) instead of `mask`: cuDNN then skips the padded
  blocks, while a boolean mask would be merged with the bias into a
  [B, heads, q, k] array per layer (and its gradient, just as large, in the
  backward pass). Padded query rows give unspecified (finite) outputs, which
  nothing downstream reads.

  Args:
    query: [B, q, heads, kv].
    key, value: [B, k, heads, kv].
    bias: [1, heads, q, k] float32 or None.
    mask: [B or 1, 1, q, k] bool; used when `lengths` is None.
    lengths: optional ([B] real queries, [B] real keys), int32, >= 1.
    causal: with `lengths`, also mask keys after the query (decoder
      self-attention); without, `mask` already holds the causality.

  Returns:
    [B, q, heads, kv] in the query's dtype.
  """
  if lengths is None:
    masking = dict(mask=mask)
  else:
    masking = dict(query_seq_lengths=lengths[0],
                   key_value_seq_lengths=lengths[1], is_causal=causal)
  if _fused_backend(query, key) == "cudnn":
    try:
      # cuDNN takes the bias in the operands' dtype: the position bias is
      # rounded to bfloat16, noise of the size bfloat16 scores already carry.
      return jax.nn.dot_product_attention(
          query, key, value,
          bias=None if bias is None else bias.astype(query.dtype),
          scale=1.0, implementation="cudnn", **masking)
    except (NotImplementedError, ValueError, RuntimeError) as e:
      # Raised while tracing (unsupported shape, cuDNN too old or absent):
      # the same function through XLA is still correct, only slower.
      _warn_cudnn_fallback(f"{type(e).__name__}: {e}")
  return jax.nn.dot_product_attention(query, key, value, bias=bias, scale=1.0,
                                      implementation="xla", **masking)


@functools.lru_cache(maxsize=None)
def _warn_cudnn_fallback(reason: str) -> None:
  logging.warning("attention_impl='fused': cuDNN attention unavailable here "
                  "(%s); using XLA's attention.", reason)


@functools.lru_cache(maxsize=None)
def _warn_dropout_fallback() -> None:
  # Once per process: it is decided at trace time, once per compiled step.
  logging.warning("attention_impl='fused' with attention dropout: the fused "
                  "kernels have no attention-weight dropout, so training "
                  "with dropout_rate > 0 uses the reference attention.")


def _fused_backend(query: Array, key: Array) -> str:
  """The `jax.nn.dot_product_attention` implementation for these operands.

  cuDNN's flash attention takes bfloat16/float16 only, head widths that are
  multiples of 8 up to 256, and in training even lengths; anything else,
  and every non-GPU backend, runs XLA's composition of the same math (on a
  GPU with a one-time warning saying why).
  """
  if jax.default_backend() != "gpu":
    return "xla"
  head_dim = query.shape[-1]
  if query.dtype not in (jnp.bfloat16, jnp.float16):
    reason = f"dtype {query.dtype} (cuDNN takes bfloat16 or float16)"
  elif head_dim % 8 or head_dim > 256:
    reason = f"head width {head_dim} (cuDNN takes multiples of 8 up to 256)"
  elif query.shape[1] % 2 or key.shape[1] % 2:
    reason = (f"odd length {query.shape[1]}x{key.shape[1]} (cuDNN takes "
              "even lengths; pad inputs to an even length)")
  else:
    return "cudnn"
  _warn_cudnn_fallback(reason)
  return "xla"


class MultiHeadAttention(nn.Module):
  """Multi-head attention without logit scaling, with an optional KV cache.

  In decode mode (`decode_position` given) the keys/values of the one new
  position are written into the `cache` collection at that position and the
  query attends to the whole cache; the caller's mask hides future slots.

  `impl='xla'` is the reference: einsum, float32 softmax over
  `logits + bias + mask_to_bias(mask)`, einsum (T5X's order of operations).
  `impl='fused'` computes the same function with
  `jax.nn.dot_product_attention` (scale 1: T5 folds 1/sqrt(head_dim) into the
  query initialisation), which is cuDNN flash attention on a GPU in bfloat16:
  the [B, heads, q, k] scores are never written to memory. Given `lengths`,
  it masks by each row's real length instead of `mask` (no [B, heads, q, k]
  mask-plus-bias array either), which is the same mask for right-padded rows.
  Decoding steps, `init` and attention-weight dropout (which the fused kernels
  do not expose) take the reference path, so enabling `fused` changes nothing
  but rounding on real positions.
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  impl: str = "xla"
  # Decoder self-attention: with `lengths`, the fused path masks keys after
  # the query itself (the reference reads causality from `mask`).
  causal: bool = False
  # LoRA / IA3 on the projections (see `models.adapters`); None = plain T5.
  adapters: Optional[AdapterConfig] = None
  # P learned key/value positions in front of the keys (prefix tuning); the
  # caller's `bias` must already cover them ([1, heads, q, P + k]).
  prefix_length: int = 0

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Optional[Array],
               mask: Array, decode_position: Optional[Array] = None,
               lengths: Optional[Tuple[Array, Array]] = None,
               prefix_inputs: Optional[Array] = None,
               prefix_mask: Optional[Array] = None) -> Array:
    """Attends `inputs_q` to `inputs_kv`.

    Args:
      inputs_q: [B, q, H] queries.
      inputs_kv: [B, k, H] keys/values source.
      bias: [1, heads, q, k] float32 relative-position bias, or None (cross
        attention has none).
      mask: [B or 1, 1, q, k] bool, True where a query may attend to a key.
      decode_position: scalar int; when given, q == k == 1 and the new
        key/value is cached at this position (self-attention decoding).
      lengths: optional ([B] real queries, [B] real keys) int32 >= 1, the
        same mask as `mask` for right-padded rows (the fused path uses it;
        see `_fused_attention`).
      prefix_inputs: [1 or B, P, H] normed stream rows whose keys and values
        (this attention's own projections) are the prefix, instead of
        learned `prefix_key` / `prefix_value` (decoder per-layer prompts).
      prefix_mask: [B, P], which of `prefix_inputs`' rows are real (per-example
        adapters of different lengths).

    Returns:
      [B, q, H] in `dtype`.
    """
    joined = self.num_heads * self.head_dim
    emb = inputs_q.shape[-1]
    # The 1/sqrt(head_dim) scaling lives in the query initialisation (T5X).
    base = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    query_init = lambda *a: base(*a) / np.sqrt(self.head_dim)
    proj = functools.partial(Dense, features=joined,
                             kernel_axes=("embed", "joined_kv"),
                             kernel_init=base, dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             adapters=self.adapters,
                             deterministic=self.deterministic)
    split = lambda x: x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))
    query = split(proj(kernel_init=query_init, name="query")(inputs_q))
    key_proj, value_proj = proj(name="key"), proj(name="value")
    key = split(key_proj(inputs_kv))
    value = split(value_proj(inputs_kv))
    computed = None
    if prefix_inputs is not None:
      computed = (split(key_proj(prefix_inputs)),
                  split(value_proj(prefix_inputs)))  # [1 or B, P, heads, kv]
    query = constrain(query, ("batch", "length", "heads", "kv"))
    key = constrain(key, ("batch", "length", "heads", "kv"))
    value = constrain(value, ("batch", "length", "heads", "kv"))

    if decode_position is not None:
      key, value = self._update_cache(key, value, decode_position)
    if self.prefix_length:
      key, value, mask, lengths = self._prepend_prefix(key, value, mask,
                                                       lengths, computed,
                                                       prefix_mask)

    weight_dropout = not self.deterministic and self.dropout_rate > 0
    # `init` takes the reference path: same parameters, and no cuDNN checks
    # (or warnings) on the dummy shapes it is called with.
    if (self.impl == "fused" and decode_position is None and
        not weight_dropout and not self.is_initializing()):
      out = _fused_attention(query, key, value, bias, mask, lengths,
                             self.causal)
    else:
      if self.impl == "fused" and weight_dropout:
        _warn_dropout_fallback()
      logits = jnp.einsum("bqhd,bkhd->bhqk", query, key,
                          preferred_element_type=jnp.float32)
      if bias is not None:
        logits = logits + bias
      weights = jax.nn.softmax(logits + mask_to_bias(mask), axis=-1)
      if weight_dropout:
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), value)
    out = out.reshape(out.shape[:2] + (joined,))  # [B, q, heads, kv] -> [B, q, heads*kv]
    return Dense(emb, ("joined_kv", "embed"), kernel_init=base,
                 dtype=self.dtype, param_dtype=self.param_dtype,
                 adapters=self.adapters, deterministic=self.deterministic,
                 name="out")(out)

  def _prepend_prefix(self, key: Array, value: Array, mask: Array,
                      lengths: Optional[Tuple[Array, Array]],
                      computed: Optional[Tuple[Array, Array]] = None,
                      prefix_mask: Optional[Array] = None):
    """Puts the prefix [P, heads, kv] in front of the keys/values: learned
    (`prefix_key`, `prefix_value`; [B, P, ...] and a `prefix_mask` [B, P]
    per example), or `computed` ([1 or B, P, heads, kv] keys and values,
    with the caller's `prefix_mask`).

    Every query sees every prefix position (the mask gains P True columns).
    Right-padded key lengths stay right-padded (+P); a causal attention's
    lengths cannot say "the prefix, then causal", so it falls back to the
    mask.
    """
    shape = (self.prefix_length, self.num_heads, self.head_dim)
    axes = ("prompt", "heads", "kv")
    init = nn.initializers.normal(stddev=1.0)  # PEFT's nn.Embedding init
    batch = key.shape[0]
    per_example = self.adapters is not None and self.adapters.per_example
    if computed is None:
      lead, lead_axes = self.adapters.lead(batch)
      computed = tuple(
          param_with_axes(self, name, init, lead + shape, lead_axes + axes,
                          self.param_dtype)
          for name in ("prefix_key", "prefix_value"))
      computed = computed if per_example else tuple(p[None] for p in computed)
      if per_example:
        prefix_mask = param_with_axes(
            self, "prefix_mask", nn.initializers.ones,
            (batch, self.prefix_length), ("batch", "prompt"),
            self.param_dtype)
    prefixes = [jnp.broadcast_to(p.astype(key.dtype), (batch,) + shape)
                for p in computed]
    key = jnp.concatenate([prefixes[0], key], axis=1)  # [B, k, ...] -> [B, P + k, ...]
    value = jnp.concatenate([prefixes[1], value], axis=1)
    if prefix_mask is None:
      seen = jnp.ones(mask.shape[:3] + (self.prefix_length,), bool)
    else:  # examples' own lengths: padding rows are never seen
      mask = jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
      seen = jnp.broadcast_to(prefix_mask[:, None, None, :] > 0,
                              mask.shape[:3] + (self.prefix_length,))
      lengths = None
    mask = jnp.concatenate([seen, mask], axis=-1)  # [., 1, q, k] -> [., 1, q, P + k]
    if lengths is not None:
      lengths = None if self.causal else (lengths[0],
                                          lengths[1] + self.prefix_length)
    return key, value, mask, lengths

  def _update_cache(self, key: Array, value: Array,
                    position: Array) -> Tuple[Array, Array]:
    """Writes one step's key/value [B, 1, heads, kv] into the cache.

    The cache must have been created at full length by an `init` in decode
    mode with a `[B, max_decode_length]` dummy input (see `decoding.py`).
    """
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape,
                               key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros,
                                 value.shape, value.dtype)
    if self.is_initializing():
      return key, value
    start = (0, position, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(
        cached_key.value, key.astype(cached_key.value.dtype), start)
    cached_value.value = jax.lax.dynamic_update_slice(
        cached_value.value, value.astype(cached_value.value.dtype), start)
    return cached_key.value, cached_value.value


def _activation(name: str) -> Callable[[Array], Array]:
  if name == "linear":
    return lambda x: x
  fn = getattr(nn, name, None)
  if fn is None or not callable(fn):
    raise ValueError(f"Unknown mlp activation {name!r}: use a flax.linen "
                     "function name such as 'gelu', 'relu' or 'linear'.")
  return fn


class MlpBlock(nn.Module):
  """T5 feed-forward block; gated when more than one activation is given."""

  mlp_dim: int
  activations: Tuple[str, ...]
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  # LoRA / IA3 on wi / wo (see `models.adapters`); None = plain T5.
  adapters: Optional[AdapterConfig] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, T, H] -> [B, T, H]."""
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    hidden = None
    for i, name in enumerate(self.activations):
      dense_name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      h = Dense(self.mlp_dim, ("embed", "mlp"), kernel_init=init,
                dtype=self.dtype, param_dtype=self.param_dtype,
                adapters=self.adapters, deterministic=self.deterministic,
                name=dense_name)(x)
      h = _activation(name)(h)
      hidden = h if hidden is None else hidden * h
    hidden = constrain(hidden, ("batch", "length", "mlp"))
    if not self.deterministic and self.dropout_rate > 0:
      # T5X drops whole hidden vectors per position (broadcast over length).
      hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
          hidden, deterministic=False)
    return Dense(x.shape[-1], ("mlp", "embed"), kernel_init=init,
                 dtype=self.dtype, param_dtype=self.param_dtype,
                 adapters=self.adapters, deterministic=self.deterministic,
                 name="wo")(hidden)
