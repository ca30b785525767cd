"""The T5 encoder-decoder (T5.1.0 / T5.1.1 / mT5) with T5X's parameter tree.

Top-level names: `token_embedder`, `encoder` (`relpos_bias`, `layers_{i}`,
`encoder_norm`), `decoder` (`relpos_bias`, `layers_{i}`, `decoder_norm`,
`logits_dense` when untied). With `scan_layers` the per-layer subtrees become
one `layers` subtree whose arrays have a leading `layers` axis; checkpoint
readers fill either form.

`encode` takes token ids; `encode_embedded` takes already-embedded inputs and
a mask, which is where a soft prompt is concatenated (the prompt layer reuses
these submodules, so the frozen tree loads unchanged).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models import layers
from prompt_tuning.models import remat
from prompt_tuning.models.config import T5Config

Array = jax.Array

def _dropout(rate: float, deterministic: bool, x: Array) -> Array:
  if deterministic or rate == 0:
    return x
  # Broadcast over length, as T5X does for residual-branch dropout.
  return nn.Dropout(rate, broadcast_dims=(-2,))(x, deterministic=False)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block of the encoder."""

  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, bias: Array, mask: Array,
               lengths: Optional[Tuple[Array, Array]] = None
               ) -> Tuple[Array, None]:
    """One encoder layer.

    Args:
      x: [B, T, H] encoder stream.
      bias: [1, heads, T, T] float32 relative-position bias.
      mask: [B, 1, T, T] bool attention mask.
      lengths: the same mask as ([B], [B]) real lengths, for fused attention.

    Returns:
      ([B, T, H], None): the (carry, output) pair lets the same module run
      under nn.scan.
    """
    cfg = self.config
    ad = cfg.adapters
    if ad.layer_prompt_length:
      x = self._layer_prompt(x, ad)
    norm = lambda name: layers.RMSNorm(cfg.dtype, cfg.param_dtype, name=name)
    y = norm("pre_attention_layer_norm")(x)
    y = layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, self.deterministic,
        cfg.dtype, cfg.param_dtype, cfg.attention_impl, adapters=ad,
        prefix_length=ad.prefix_for("encoder_self"),
        name="attention")(y, y, bias, mask, lengths=lengths)
    x = x + _dropout(cfg.dropout_rate, self.deterministic, y)
    y = norm("pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(cfg.mlp_dim, tuple(cfg.mlp_activations),
                        cfg.dropout_rate, self.deterministic, cfg.dtype,
                        cfg.param_dtype, adapters=ad, name="mlp")(y)
    x = x + _dropout(cfg.dropout_rate, self.deterministic, y)
    return layers.constrain(x, ("batch", "length", "embed")), None

  def _layer_prompt(self, x: Array, ad) -> Array:
    """This layer's prompt [P, H] replaces, or is added to, positions [0, P).

    Those are the input prompt's positions (prefix placement), so the
    per-layer prompt needs an input prompt of the same length in front.
    """
    length = ad.layer_prompt_length
    prompt, rows = _layer_prompt_params(self, ad, length, x.shape[0],
                                        x.shape[-1])
    prompt = jnp.broadcast_to(prompt.astype(x.dtype),
                              (x.shape[0], length, x.shape[-1]))
    if ad.layer_prompt_mode == "add":
      prompt = prompt + x[:, :length]
    if rows is not None:  # an example's prompt may be shorter than P
      prompt = jnp.where(rows[:, :, None] > 0, prompt, x[:, :length])
    return jnp.concatenate([prompt, x[:, length:]], axis=1)


def _layer_prompt_params(module: nn.Module, ad, length: int, batch: int,
                         width: int) -> Tuple[Array, Optional[Array]]:
  """A layer's `layer_prompt` ([1, P, H], or [B, P, H] per example) and,
  per example, its `layer_prompt_mask` [B, P] (else None)."""
  lead, lead_axes = ad.lead(batch)
  prompt = layers.param_with_axes(
      module, "layer_prompt", layers.uniform_half, lead + (length, width),
      lead_axes + ("prompt", "prompt_embed"), module.config.param_dtype)
  if not ad.per_example:
    return prompt[None], None
  rows = layers.param_with_axes(module, "layer_prompt_mask",
                                nn.initializers.ones, (batch, length),
                                ("batch", "prompt"), module.config.param_dtype)
  return prompt, rows


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention + cross-attention + MLP block."""

  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array,
               self_mask: Array, cross_mask: Array,
               decode_position: Optional[Array] = None,
               self_lengths: Optional[Tuple[Array, Array]] = None,
               cross_lengths: Optional[Tuple[Array, Array]] = None
               ) -> Tuple[Array, None]:
    """One decoder layer.

    Args:
      x: [B, L, H] decoder stream (L == 1 while decoding).
      encoded: [B, T, H] encoder output.
      self_bias: [1, heads, L, L or max_decode_length] float32 relative
        position bias.
      self_mask: [B or 1, 1, L, L or max_decode_length] bool (causal and
        padding).
      cross_mask: [B, 1, L, T] bool.
      decode_position: scalar int while decoding with a KV cache, else None.
      self_lengths, cross_lengths: the masks as ([B], [B]) real lengths, for
        fused attention (teacher forcing only).

    Returns:
      ([B, L, H], None).
    """
    cfg = self.config
    ad = cfg.adapters
    norm = lambda name: layers.RMSNorm(cfg.dtype, cfg.param_dtype, name=name)
    attention = lambda name, kind, causal=False: layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, self.deterministic,
        cfg.dtype, cfg.param_dtype, cfg.attention_impl, causal, adapters=ad,
        prefix_length=ad.prefix_for(kind), name=name)
    self_norm = norm("pre_self_attention_layer_norm")
    y = self_norm(x)
    prompt = rows = None
    if ad.decoder_layer_prompt_length:
      prompt, rows = _layer_prompt_params(
          self, ad, ad.decoder_layer_prompt_length, x.shape[0], x.shape[-1])
      # The replaced positions' layer input is the prompt itself.
      prompt = self_norm(prompt.astype(x.dtype))
    y = attention("self_attention", "decoder_self", causal=True)(
        y, y, self_bias, self_mask, decode_position, lengths=self_lengths,
        prefix_inputs=prompt, prefix_mask=rows)
    x = x + _dropout(cfg.dropout_rate, self.deterministic, y)
    y = norm("pre_cross_attention_layer_norm")(x)
    y = attention("encoder_decoder_attention", "cross")(
        y, encoded, None, cross_mask, lengths=cross_lengths)
    x = x + _dropout(cfg.dropout_rate, self.deterministic, y)
    y = norm("pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(cfg.mlp_dim, tuple(cfg.mlp_activations),
                        cfg.dropout_rate, self.deterministic, cfg.dtype,
                        cfg.param_dtype, adapters=ad, name="mlp")(y)
    x = x + _dropout(cfg.dropout_rate, self.deterministic, y)
    return layers.constrain(x, ("batch", "length", "embed")), None


def _run_stack(parent: nn.Module, layer_cls, num_layers: int,
               config: T5Config, deterministic: bool, x: Array,
               *broadcast_args) -> Array:
  """Applies `num_layers` layers, unrolled (`layers_{i}`) or scanned (`layers`).

  Must be called from within `parent`'s compact method so the layers become
  its children.
  """
  # Under scan the loop body is already a barrier, so CSE cannot undo remat.
  layer_cls = remat.remat(layer_cls, config.remat_policy,
                           prevent_cse=not config.scan_layers)
  if config.scan_layers:
    scanned = nn.scan(
        layer_cls,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(broadcast_args),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(config, deterministic, name="layers")(x, *broadcast_args)
    return x
  for i in range(num_layers):
    x, _ = layer_cls(config, deterministic, name=f"layers_{i}")(
        x, *broadcast_args)
  return x


# Where `_run_stack` puts a scanned stack's layers ([num_layers, ...] leaves).
_SCANNED_PREFIXES = ("encoder/layers/", "decoder/layers/")


def unscan_params(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """A scanned model's params -> the unrolled model's, by '/'-joined name.

  `<stack>/layers/<rest>` [num_layers, ...] becomes `<stack>/layers_<i>/<rest>`
  [...] for every layer i; other names are kept. Works on numpy or JAX
  arrays.
  """
  out = {}
  for name, array in flat.items():
    prefix = next((p for p in _SCANNED_PREFIXES if name.startswith(p)), None)
    if prefix is None:
      out[name] = array
      continue
    stack, rest = prefix.split("/")[0], name[len(prefix):]
    for i, layer in enumerate(array):  # [L, ...] -> L x [...]
      out[f"{stack}/layers_{i}/{rest}"] = layer
  return out


class Encoder(nn.Module):
  """T5 encoder stack over embedded inputs."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, input_mask: Array,
               enable_dropout: bool = False) -> Array:
    """Encodes embedded inputs.

    Args:
      x: [B, T, H] embedded inputs.
      input_mask: [B, T] bool, True for real (non-padding) positions.
      enable_dropout: training-mode dropout.

    Returns:
      [B, T, H] encoder output in `dtype`.
    """
    return self.run_stack(x, input_mask, enable_dropout)

  def run_stack(self, x: Array, input_mask: Array,
                enable_dropout: bool,
                attention_mask: Optional[Array] = None) -> Array:
    """The encoder body; called from a compact `__call__` (this one or a
    subclass's that first prepends a prompt), so its children
    (`relpos_bias`, `layers_{i}`, `encoder_norm`) keep their names.

    `attention_mask` [B, 1, T, T] bool, when given, replaces "every real
    position sees every real position" (prompt attention variants)."""
    cfg = self.config
    deterministic = not enable_dropout
    length = x.shape[1]
    relpos = layers.RelativePositionBias(
        cfg.num_heads, cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.dtype, cfg.param_dtype,
        name="relpos_bias")(length, length, bidirectional=True,
                            prefix=cfg.adapters.prefix_for("encoder_self"))
    # Position bias and mask stay separate ([1, heads, T, T] and
    # [B, 1, T, T]): their sum would be a [B, heads, T, T] float32 array
    # that every layer re-reads.
    mask = input_mask[:, None, :, None] & input_mask[:, None, None, :]
    lengths = None
    if attention_mask is not None:
      mask = mask & attention_mask  # lengths cannot say it: the mask path
    elif cfg.attention_impl == "fused":
      n = layers.real_lengths(input_mask)  # [B]
      lengths = (n, n)
    x = _dropout(cfg.dropout_rate, deterministic, x)
    x = layers.constrain(x.astype(cfg.dtype), ("batch", "length", "embed"))
    x = _run_stack(self, EncoderLayer, cfg.num_encoder_layers, cfg,
                   deterministic, x, relpos, mask, lengths)
    x = layers.RMSNorm(cfg.dtype, cfg.param_dtype, name="encoder_norm")(x)
    return _dropout(cfg.dropout_rate, deterministic, x)


class Decoder(nn.Module):
  """T5 decoder stack producing vocabulary logits."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, encoder_mask: Array,
               decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None,
               enable_dropout: bool = False,
               decode_position: Optional[Array] = None,
               max_decode_length: Optional[int] = None) -> Array:
    """Decodes teacher-forced (all positions) or one cached step.

    Args:
      encoded: [B, T, H] encoder output.
      encoder_mask: [B, T] bool, True for real encoder positions.
      decoder_input_tokens: [B, L] int (L == 1 while decoding).
      decoder_target_tokens: [B, L] int; its padding (0) masks decoder
        attention. Required unless decoding.
      enable_dropout: training-mode dropout.
      decode_position: scalar int position of the single step being decoded
        with the KV cache; None for teacher forcing.
      max_decode_length: cache length; required with `decode_position`.

    Returns:
      [B, L, V] float32 logits.
    """
    cfg = self.config
    deterministic = not enable_dropout
    self_lengths = cross_lengths = None
    prefix = cfg.adapters.prefix_for("decoder_self")
    relpos_module = layers.RelativePositionBias(
        cfg.num_heads, cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.dtype, cfg.param_dtype,
        name="relpos_bias")
    if decode_position is None:
      if decoder_target_tokens is None:
        raise ValueError("Decoder needs decoder_target_tokens for teacher "
                         "forcing (its padding masks attention).")
      length = decoder_input_tokens.shape[1]
      relpos = relpos_module(length, length, bidirectional=False,
                             prefix=prefix)
      real = decoder_target_tokens > 0
      causal = jnp.tril(jnp.ones((length, length), bool))
      self_mask = (causal[None, None] & real[:, None, :, None] &
                   real[:, None, None, :])
      cross_mask = real[:, None, :, None] & encoder_mask[:, None, None, :]
      if cfg.attention_impl == "fused":
        n = layers.real_lengths(real)  # [B]
        self_lengths = (n, n)
        cross_lengths = (n, layers.real_lengths(encoder_mask))
    else:
      if max_decode_length is None:
        raise ValueError("max_decode_length is required when decoding.")
      full = relpos_module(max_decode_length, max_decode_length,
                           bidirectional=False, prefix=prefix)
      relpos = jax.lax.dynamic_slice_in_dim(full, decode_position, 1, axis=2)
      keys = jnp.arange(max_decode_length)
      self_mask = (keys <= decode_position)[None, None, None, :]
      cross_mask = jnp.broadcast_to(
          encoder_mask[:, None, None, :],
          (encoded.shape[0], 1, 1, encoded.shape[1]))
    y = self.shared_embedding(decoder_input_tokens)
    y = _dropout(cfg.dropout_rate, deterministic, y)
    y = layers.constrain(y, ("batch", "length", "embed"))
    y = _run_stack(self, DecoderLayer, cfg.num_decoder_layers, cfg,
                   deterministic, y, encoded, relpos, self_mask, cross_mask,
                   decode_position, self_lengths, cross_lengths)
    y = layers.RMSNorm(cfg.dtype, cfg.param_dtype, name="decoder_norm")(y)
    y = _dropout(cfg.dropout_rate, deterministic, y)
    if cfg.logits_via_embedding:
      # T5 1.0 ties the output projection and rescales by 1/sqrt(H).
      logits = self.shared_embedding.attend(y) / jnp.sqrt(
          jnp.float32(y.shape[-1]))
    else:
      logits = _LogitsDense(cfg, name="logits_dense")(y)
    return layers.constrain(logits, ("batch", "length", "vocab"))


class _LogitsDense(nn.Module):
  """Untied output projection `decoder/logits_dense/kernel` [H, V]."""

  config: T5Config

  @nn.compact
  def __call__(self, y: Array) -> Array:
    cfg = self.config
    kernel = layers.param_with_axes(
        self, "kernel",
        nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
        (y.shape[-1], cfg.vocab_size), ("embed", "vocab"), cfg.param_dtype)
    return jnp.dot(y.astype(cfg.dtype), kernel.astype(cfg.dtype),
                   preferred_element_type=jnp.float32)


class T5(nn.Module):
  """T5 encoder-decoder. `apply(..., encoder_input_tokens, decoder_input_tokens,
  decoder_target_tokens)` -> logits [B, L, V] float32."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.dtype,
                                       cfg.param_dtype)
    self.encoder = self.make_encoder()
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def make_encoder(self) -> nn.Module:
    """The encoder stack; a prompted model returns its prompted encoder."""
    return Encoder(self.config)

  def embed(self, tokens: Array) -> Array:
    """tokens: [B, T] int -> [B, T, H] (the shared token embedding)."""
    return self.token_embedder(tokens)

  def encode_embedded(self, x: Array, input_mask: Array,
                      enable_dropout: bool = False) -> Array:
    """x: [B, T, H] embedded inputs, input_mask: [B, T] bool -> [B, T, H]."""
    return self.encoder(x, input_mask, enable_dropout)

  def encode(self, encoder_input_tokens: Array,
             enable_dropout: bool = False) -> Array:
    """encoder_input_tokens: [B, T] int (0 = padding) -> [B, T, H]."""
    return self.encoder(self.embed(encoder_input_tokens),
                        encoder_input_tokens > 0, enable_dropout)

  def encode_with_mask(self, encoder_input_tokens: Array,
                       enable_dropout: bool = False) -> Tuple[Array, Array]:
    """Encoder output and the mask decoding needs: ([B, T, H], [B, T] bool).

    Decoding calls this on any model, so that a prompted model (whose mask
    also covers the prompt positions) decodes through the same code.
    """
    mask = encoder_input_tokens > 0
    return self.encode(encoder_input_tokens, enable_dropout), mask

  def decode(self, encoded: Array, encoder_mask: Array,
             decoder_input_tokens: Array,
             decoder_target_tokens: Optional[Array] = None,
             enable_dropout: bool = False,
             decode_position: Optional[Array] = None,
             max_decode_length: Optional[int] = None) -> Array:
    """Decoder logits [B, L, V] float32; see `Decoder.__call__`.

    encoder_mask: [B, T] bool (for a plain model `encoder_input_tokens > 0`;
    with a prompt, the prompt positions are True).
    """
    return self.decoder(encoded, encoder_mask, decoder_input_tokens,
                        decoder_target_tokens, enable_dropout,
                        decode_position, max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array,
               enable_dropout: bool = False) -> Array:
    """Teacher-forced logits.

    Args:
      encoder_input_tokens: [B, T] int, 0 = padding.
      decoder_input_tokens: [B, L] int, targets shifted right (starts at 0).
      decoder_target_tokens: [B, L] int, 0 = padding.
      enable_dropout: training-mode dropout (needs a 'dropout' rng).

    Returns:
      [B, L, V] float32 logits.
    """
    encoded, mask = self.encode_with_mask(encoder_input_tokens,
                                          enable_dropout)
    return self.decode(encoded, mask, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout)
