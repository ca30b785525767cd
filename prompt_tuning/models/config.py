"""T5 model configuration and the named presets of the public T5 families.

Field names follow T5X's `T5Config` so that gin files and habits carry over. A
config is a frozen dataclass: it is hashable (usable as a static jit argument)
and cannot drift between the model that was initialised and the one restored.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Tuple

import jax.numpy as jnp

from prompt_tuning.models.adapters import AdapterConfig

REMAT_POLICIES = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "full")
ATTENTION_IMPLS = ("xla", "fused")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 encoder-decoder (T5X field names)."""

  # Size of the SentencePiece vocabulary, padded (32128 for T5, 250112 for mT5).
  vocab_size: int
  # Model width H: embeddings, residual stream, layer norms.
  emb_dim: int
  # Attention heads per layer; q/k/v kernels are [emb_dim, num_heads * head_dim].
  num_heads: int
  # Width of one head; need not equal emb_dim / num_heads (T5 1.0 3B/11B).
  head_dim: int
  # Hidden width of the feed-forward block.
  mlp_dim: int
  # Number of encoder layers.
  num_encoder_layers: int
  # Number of decoder layers.
  num_decoder_layers: int
  # flax.linen activation names; more than one means a gated MLP (wi_0, wi_1, ...).
  mlp_activations: Tuple[str, ...] = ("gelu", "linear")
  # Tied output projection (T5 1.0): logits = y @ embedding^T / sqrt(emb_dim).
  logits_via_embedding: bool = False
  # Dropout on embeddings, attention weights, sub-block outputs and MLP hidden.
  dropout_rate: float = 0.1
  # Activation / matmul dtype; bfloat16 is what T5X trains and serves in.
  dtype: str = "bfloat16"
  # Storage dtype of the parameters; checkpoints hold float32.
  param_dtype: str = "float32"
  # Relative-position buckets of the shared per-stack bias table.
  relative_attention_num_buckets: int = 32
  # Distance beyond which relative positions share the last bucket.
  relative_attention_max_distance: int = 128
  # Stack layers with nn.scan: one compiled layer body, params with a leading
  # `layers` axis (checkpoint readers stack per-layer arrays for it).
  scan_layers: bool = False
  # Rematerialisation of each layer in the backward pass: none, dots_saveable
  # (keep matmul outputs, recompute the rest),
  # dots_with_no_batch_dims_saveable (keep the projections' outputs but not
  # the [B, heads, q, k] attention scores) or full (keep only layer inputs).
  remat_policy: str = "none"
  # Attention kernel: 'xla' is the plain einsum-softmax-einsum reference;
  # 'fused' calls `jax.nn.dot_product_attention` (cuDNN flash attention on a
  # GPU in bfloat16, XLA elsewhere), masking by each row's real length: the
  # same function up to bfloat16 rounding for right-padded rows (all that
  # seqio's converters produce; a 0 token inside a row would be attended).
  attention_impl: str = "xla"
  # Hooks for parameter-efficient methods (LoRA, IA3, prefixes, per-layer
  # prompts); all off is plain T5. Set by the method, never read from a
  # checkpoint: the frozen weights load into the model without them.
  adapters: AdapterConfig = AdapterConfig()

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"T5Config.remat_policy={self.remat_policy!r} is not one of "
          f"{REMAT_POLICIES}.")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"T5Config.attention_impl={self.attention_impl!r} is not one of "
          f"{ATTENTION_IMPLS}.")
    if not self.mlp_activations:
      raise ValueError("T5Config.mlp_activations must name at least one "
                       "activation, e.g. ('gelu', 'linear').")
    # Fail on a typo now rather than at the first forward pass.
    jnp.dtype(self.dtype)
    jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "T5Config":
    """Returns a copy with `changes` applied (dataclasses.replace)."""
    return dataclasses.replace(self, **changes)


_T5_VOCAB = 32128
_MT5_VOCAB = 250112

# (emb_dim, num_heads, head_dim, mlp_dim, num_encoder_layers, num_decoder_layers)
_V1_1_SIZES = {
    "small": (512, 6, 64, 1024, 8, 8),
    "base": (768, 12, 64, 2048, 12, 12),
    "large": (1024, 16, 64, 2816, 24, 24),
    "xl": (2048, 32, 64, 5120, 24, 24),
    "xxl": (4096, 64, 64, 10240, 24, 24),
}
_V1_0_SIZES = {
    "small": (512, 8, 64, 2048, 6, 6),
    "base": (768, 12, 64, 3072, 12, 12),
    "large": (1024, 16, 64, 4096, 24, 24),
    "3b": (1024, 32, 128, 16384, 24, 24),
    "11b": (1024, 128, 128, 65536, 24, 24),
}


def _from_sizes(sizes, **kwargs) -> T5Config:
  emb, heads, head_dim, mlp, enc, dec = sizes
  return T5Config(emb_dim=emb, num_heads=heads, head_dim=head_dim, mlp_dim=mlp,
                  num_encoder_layers=enc, num_decoder_layers=dec, **kwargs)


def _build_presets():
  presets = {
      # A tiny model for tests and the quickstart, fast on 2 CPU cores; its
      # vocabulary covers seqio's ByteVocabulary (259 ids).
      "t5_1_1_tiny": T5Config(vocab_size=384, emb_dim=32, num_heads=4,
                              head_dim=8, mlp_dim=64, num_encoder_layers=2,
                              num_decoder_layers=2),
  }
  for size, sizes in _V1_1_SIZES.items():
    presets[f"t5_1_1_{size}"] = _from_sizes(sizes, vocab_size=_T5_VOCAB)
    # LM-adapted checkpoints (the paper's frozen models) share T5.1.1's shapes.
    presets[f"t5_1_1_lm100k_{size}"] = presets[f"t5_1_1_{size}"]
    presets[f"mt5_{size}"] = _from_sizes(sizes, vocab_size=_MT5_VOCAB)
  for size, sizes in _V1_0_SIZES.items():
    presets[f"t5_1_0_{size}"] = _from_sizes(
        sizes, vocab_size=_T5_VOCAB, mlp_activations=("relu",),
        logits_via_embedding=True)
  return presets


PRESETS = _build_presets()


def t5_config(name: str, **overrides) -> T5Config:
  """Returns the named preset, e.g. `t5_config('t5_1_1_base', dtype='float32')`.

  Args:
    name: a key of `PRESETS` (t5_1_1_{tiny..xxl}, t5_1_1_lm100k_*, t5_1_0_*,
      mt5_*).
    **overrides: T5Config fields to replace.
  """
  if name not in PRESETS:
    close = difflib.get_close_matches(name, PRESETS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown T5 preset {name!r}.{hint} Known presets: "
                     f"{', '.join(sorted(PRESETS))}.")
  return PRESETS[name].replace(**overrides)
