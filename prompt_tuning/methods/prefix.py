"""Prefix tuning (Li & Liang 2021): learned keys and values in every layer.

Each chosen attention of every layer sees P extra key/value positions in
front of its own (`models.adapters`). What trains is one table
`prefix/table` [P, blocks, heads, kv] (N(0, 1), PEFT's init) or, with
`hidden` > 0, Li & Liang's reparameterisation: an embedding [P, H] through
Linear(H, hidden), tanh, Linear(hidden, blocks * heads * kv) (`prefix/...`),
merged away for evaluation and serving. Block b of the table feeds one
attention's keys or values, by layout:

- 'li_liang' (the paper for encoder-decoders): prefixes for the encoder
  self-attention, the decoder self-attention and the cross-attention (any
  subset, `attentions`), two blocks (key, value) per layer of each, in that
  order. Encoder prefix positions sit just before the input for T5's
  relative position bias (slot P - 1 next to position 0); cross-attention
  has no position bias.
- 'peft' (Hugging Face PEFT's PREFIX_TUNING on T5, for interchange): the
  table is PEFT's `prompt_embeddings` [P, 2 L * heads * kv] reshaped, with
  L the encoder's layer count; only the decoder self-attention gets
  prefixes (PEFT discards the cross-attention half and gives the encoder
  none), decoder layer i reading blocks (4i mod 2L, 4i + 1 mod 2L). With an
  even L, layers i and i + L/2 therefore share one prefix and half the table
  is unused, exactly as in PEFT.

On a decoder-only LM (`DecoderConfig`) the one attention is the layers'
self-attention ('decoder_self', which must be among `attentions`) and both
layouts are PEFT's CAUSAL_LM table: [P, 2L, kv heads, head_dim], layer i
reading blocks (2i, 2i + 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp

from prompt_tuning.methods import base
from prompt_tuning.methods.base import Method
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.adapters import PREFIX_ATTENTIONS
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig

Array = jax.Array
PyTree = Any

LAYOUTS = ("li_liang", "peft")
PREFIX = "prefix"
# Where each kind of attention lives in a layer.
_ATTENTION_PATHS = {"encoder_self": ("encoder", "attention"),
                    "decoder_self": ("decoder", "self_attention"),
                    "cross": ("decoder", "encoder_decoder_attention")}


def _decoder_only(config: Any) -> bool:
  return isinstance(config, DecoderConfig)


def prefix_heads(config: Any) -> int:
  """Heads of a prefix's keys and values: T5's, or an LM's key/value heads
  (PEFT's prefix for grouped-query attention)."""
  return config.num_kv_heads if _decoder_only(config) else config.num_heads


def peft_prefix_blocks(layer: int, num_layers: int) -> Tuple[int, int]:
  """(key block, value block) of the [P, 2L, ...] table for decoder `layer`.

  PEFT doubles the table to 4L blocks for seq2seq (one copy per transformer
  submodule) and hands decoder layer i the blocks 4i..4i+3: self-attention
  key, value, then cross-attention key, value (which it discards). Block c of
  the doubled table is block c mod 2L of the saved one. For even L, layers i
  and i + L/2 share a prefix and half the blocks are never read.
  """
  return (4 * layer) % (2 * num_layers), (4 * layer + 1) % (2 * num_layers)


@dataclasses.dataclass(frozen=True)
class PrefixConfig(Method):
  """Prefix tuning's choices."""

  name: ClassVar[str] = "prefix"

  # P, prefix positions per attention.
  length: int = 10
  # Which attentions get prefixes ('li_liang' layout only).
  attentions: Tuple[str, ...] = PREFIX_ATTENTIONS
  # Width of the reparameterisation MLP; 0 trains the table directly.
  hidden: int = 0
  # 'li_liang' or 'peft' (see the module docstring).
  layout: str = "li_liang"
  # The frozen model's shape (set by `bind`).
  config: Optional[T5Config] = dataclasses.field(
      default=None, compare=False, hash=False, repr=False)

  def __post_init__(self):
    object.__setattr__(self, "attentions", tuple(self.attentions))
    if self.layout not in LAYOUTS:
      raise ValueError(f"PrefixConfig.layout = {self.layout!r} is not one of "
                       f"{LAYOUTS}.")
    if self.length < 1 or self.hidden < 0:
      raise ValueError("PrefixConfig.length must be >= 1 and hidden >= 0.")
    AdapterConfig(prefix_length=self.length,
                  prefix_attentions=self._attentions())

  def _attentions(self) -> Tuple[str, ...]:
    return ("decoder_self",) if self.layout == "peft" else self.attentions

  def bind(self, config: T5Config) -> "PrefixConfig":
    if _decoder_only(config):
      if "decoder_self" not in self._attentions():
        raise ValueError(
            f"PrefixConfig.attentions = {self.attentions!r}: a decoder-only "
            "LM has only its layers' self-attention; include "
            "'decoder_self'.")
      return dataclasses.replace(self, config=config)
    if self.layout == "peft" and (config.num_decoder_layers !=
                                  config.num_encoder_layers):
      raise ValueError(
          "PrefixConfig.layout = 'peft' needs as many decoder layers as "
          f"encoder layers (PEFT sizes its table by the encoder's); this "
          f"model has {config.num_encoder_layers} and "
          f"{config.num_decoder_layers}. Use layout = 'li_liang'.")
    return dataclasses.replace(self, config=config)

  def adapters(self, config: T5Config) -> AdapterConfig:
    attentions = (("decoder_self",) if _decoder_only(config)
                  else self._attentions())
    return AdapterConfig(prefix_length=self.length,
                         prefix_attentions=attentions)

  def blocks(self, config: T5Config) -> List[Tuple[str, int, int, int]]:
    """(attention, layer, key block, value block) for every prefixed layer."""
    out = []
    if _decoder_only(config):
      return [("decoder_self", i, 2 * i, 2 * i + 1)
              for i in range(config.num_layers)]
    if self.layout == "peft":
      for i in range(config.num_decoder_layers):
        out.append(("decoder_self", i) +
                   peft_prefix_blocks(i, config.num_encoder_layers))
      return out
    b = 0
    for kind in PREFIX_ATTENTIONS:
      if kind not in self.attentions:
        continue
      layers = (config.num_encoder_layers if kind == "encoder_self" else
                config.num_decoder_layers)
      for i in range(layers):
        out.append((kind, i, b, b + 1))
        b += 2
    return out

  def num_blocks(self, config: T5Config) -> int:
    if self.layout == "peft" and not _decoder_only(config):
      return 2 * config.num_encoder_layers
    return 2 * len(self.blocks(config))

  def reparameterisation(self, config: T5Config) -> base.ParamSpecs:
    shape = (self.length, self.num_blocks(config), prefix_heads(config),
             config.head_dim)
    if not self.hidden:
      return {f"{PREFIX}/table": (shape, ("prompt", None, "heads", "kv"),
                                  base.normal_init)}
    width, out = config.emb_dim, shape[1] * shape[2] * shape[3]
    first, second = (base.torch_linear_init(width),
                     base.torch_linear_init(self.hidden))
    return {
        f"{PREFIX}/embedding": ((self.length, width),
                                ("prompt", "prompt_embed"), base.normal_init),
        f"{PREFIX}/hidden/kernel": ((width, self.hidden), (None, None), first),
        f"{PREFIX}/hidden/bias": ((self.hidden,), (None,), first),
        f"{PREFIX}/output/kernel": ((self.hidden, out), (None, None), second),
        f"{PREFIX}/output/bias": ((out,), (None,), second),
    }

  def produced(self, config: T5Config) -> Tuple[str, ...]:
    return tuple(self._layer_params(config, None))

  def table(self, trainable: PyTree) -> Array:
    """[P, blocks, heads, kv]: the table, or the MLP's output."""
    names = base.flat(trainable)
    if f"{PREFIX}/table" in names:
      return names[f"{PREFIX}/table"]
    cfg = self._bound()
    x = names[f"{PREFIX}/embedding"].astype(jnp.float32)
    x = jnp.tanh(x @ names[f"{PREFIX}/hidden/kernel"] +
                 names[f"{PREFIX}/hidden/bias"])
    x = x @ names[f"{PREFIX}/output/kernel"] + names[f"{PREFIX}/output/bias"]
    return x.reshape(self.length, self.num_blocks(cfg), prefix_heads(cfg),
                     cfg.head_dim)

  def model_params(self, trainable: PyTree) -> PyTree:
    if not any(k.startswith(PREFIX + "/") for k in base.flat(trainable)):
      return trainable  # already merged
    cfg = self._bound()
    return base.replace_reparameterisation(
        trainable, PREFIX, self._layer_params(cfg, self.table(trainable)))

  def _bound(self) -> T5Config:
    if self.config is None:
      raise ValueError("PrefixConfig was not bound to a model (bind(config)).")
    return self.config

  def _layer_params(self, config: T5Config,
                    table: Optional[Array]) -> Dict[str, Any]:
    """Model-tree name -> [P, heads, kv] (or [L, P, heads, kv] scanned)."""
    per_layer: Dict[str, List[Any]] = {}
    scanned = getattr(config, "scan_layers", False)
    for kind, i, key_block, value_block in self.blocks(config):
      stack, attention = _ATTENTION_PATHS[kind]
      for name, block in (("prefix_key", key_block),
                          ("prefix_value", value_block)):
        value = None if table is None else table[:, block]
        if scanned:
          per_layer.setdefault(f"{stack}/layers/{attention}/{name}",
                               []).append(value)
        else:
          per_layer[f"{stack}/layers_{i}/{attention}/{name}"] = [value]
    if table is None:
      return {k: None for k in per_layer}
    return {k: (jnp.stack(v) if scanned else v[0])
            for k, v in per_layer.items()}
