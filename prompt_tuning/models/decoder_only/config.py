"""Hyper-parameters of the frozen decoder-only LMs, from HF's config.json.

One frozen dataclass covers two families:

- 'llama': Llama 2/3.x, Mistral and Qwen2/2.5. RMSNorm, rotary positions
  (plain, linear or Llama 3 frequency scaling), SwiGLU MLP, grouped-query
  attention, optional q/k/v biases (Qwen2), tied or untied embeddings,
  optional sliding-window attention on every layer (Mistral v0.1).
- 'gemma2': Gemma 2. The embedding scaled by sqrt(H), norms that scale by
  (1 + w), a norm after attention and after the MLP as well as before, a
  GeGLU MLP (tanh GELU), attention scaled by `query_pre_attn_scalar` and
  soft-capped, the final logits soft-capped, and sliding-window attention on
  every other layer (layer 0 local).
- 'gemma3': Gemma 3's text model, Gemma 2's pieces plus an RMSNorm of each
  query and key head (`qk_norm`), local layers in a pattern (five of every
  six) with their own rotary base (`rope_local_theta`, unscaled), and the
  sqrt(H) scaling inside the embedding lookup (so a prompt given as input
  rows is not scaled, as HF does for PEFT's).

`from_hf` reads a Hugging Face `config.json` (its `model_type` picks the
family); a field this code does not implement is refused in one line rather
than silently changing the numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from prompt_tuning.models.config import REMAT_POLICIES

FAMILIES = ("llama", "gemma2", "gemma3")
ROPE_TYPES = ("default", "linear", "llama3")
# HF model_type -> family.
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama",
               "gemma2": "gemma2", "gemma3_text": "gemma3"}
# HF activation names -> flax.linen names with the same maths.
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu",
                "gelu_new": "gelu"}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """A decoder-only transformer LM (field names follow our T5Config)."""

  vocab_size: int
  # Model width H.
  emb_dim: int
  num_heads: int
  # Key/value heads (grouped-query attention: num_heads is a multiple).
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  num_layers: int
  family: str = "llama"
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # 'default', 'linear' (positions / factor) or 'llama3' (Llama 3.1).
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  # Biases on the query/key/value projections (Qwen2; Llama's attention_bias
  # also puts one on the output projection: `out_bias`).
  qkv_bias: bool = False
  out_bias: bool = False
  tie_embeddings: bool = False
  # The MLP's gate activation (flax.linen name): 'silu' or 'gelu' (tanh).
  activation: str = "silu"
  # Sliding-window attention: keys within `sliding_window` positions; which
  # layers: 'none', 'all' (Mistral), 'even' (Gemma 2: layers 0, 2, ...) or
  # 'pattern' (Gemma 3: all but every `sliding_pattern`-th layer).
  sliding_window: int = 0
  sliding_layers: str = "none"
  sliding_pattern: int = 6
  # The rotary base of the local (sliding) layers, unscaled; 0: rope_theta
  # with the config's scaling, as on global layers (Gemma 3 sets it).
  rope_local_theta: float = 0.0
  # An RMSNorm of every query and key head before the rotation (Gemma 3).
  qk_norm: bool = False
  # Gemma 2's: 0 turns each off.
  query_pre_attn_scalar: float = 0.0
  attn_softcap: float = 0.0
  final_softcap: float = 0.0
  bos_id: Optional[int] = None
  eos_id: Optional[int] = None
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  # Rematerialisation of each layer in the backward pass (runtime, like
  # dtype): one of models.config.REMAT_POLICIES, as for T5.
  remat_policy: str = "none"

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"DecoderConfig.remat_policy={self.remat_policy!r} is "
                       f"not one of {REMAT_POLICIES}.")
    if self.family not in FAMILIES:
      raise ValueError(f"Decoder-only family {self.family!r} is not one of "
                       f"{FAMILIES}.")
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_type {self.rope_type!r} is not one of "
                       f"{ROPE_TYPES}.")
    if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}.")
    if self.sliding_layers not in ("none", "all", "even", "pattern"):
      raise ValueError(f"sliding_layers {self.sliding_layers!r} is not one "
                       "of ('none', 'all', 'even', 'pattern').")

  @property
  def gemma(self) -> bool:
    """Gemma's norms, post norms, GeGLU and embedding scale (2 and 3)."""
    return self.family in ("gemma2", "gemma3")

  def replace(self, **changes: Any) -> "DecoderConfig":
    return dataclasses.replace(self, **changes)

  def sliding(self, layer: int) -> int:
    """The window of layer `layer` (0: global attention)."""
    on = (self.sliding_layers == "all" or
          (self.sliding_layers == "even" and layer % 2 == 0) or
          (self.sliding_layers == "pattern" and
           (layer + 1) % self.sliding_pattern != 0))
    return self.sliding_window if on else 0

  @property
  def query_scale(self) -> float:
    """What scores are multiplied by: head_dim^-1/2, or Gemma's scalar."""
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5


def _rope(hf: Mapping[str, Any], where: str) -> dict:
  scaling = hf.get("rope_scaling") or {}
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return {}
  if kind == "linear":
    return {"rope_type": "linear", "rope_factor": float(scaling["factor"])}
  if kind == "llama3":
    return {"rope_type": "llama3", "rope_factor": float(scaling["factor"]),
            "rope_low_freq_factor": float(scaling["low_freq_factor"]),
            "rope_high_freq_factor": float(scaling["high_freq_factor"]),
            "rope_original_max_positions": int(
                scaling["original_max_position_embeddings"])}
  raise ValueError(f"{where}: rope_scaling type {kind!r} is not implemented "
                   f"(have: {', '.join(ROPE_TYPES)}).")


def _gemma3_pattern(hf: Mapping[str, Any], where: str):
  """('pattern', N) from Gemma 3's layer_types (or sliding_window_pattern):
  every N-th layer global, the others local."""
  types = hf.get("layer_types")
  if not types:
    return "pattern", int(hf.get("sliding_window_pattern") or 6)
  for n in range(1, len(types) + 2):
    want = ["full_attention" if (i + 1) % n == 0 else "sliding_attention"
            for i in range(len(types))]
    if list(types) == want:
      return ("none" if n == 1 else "pattern"), n
  raise ValueError(f"{where}: layer_types is not 'every N-th layer global'; "
                   "other layouts are not implemented.")


def _token(value: Any) -> Optional[int]:
  if isinstance(value, (list, tuple)):  # Llama 3.x lists several EOS ids
    value = value[0] if value else None
  return None if value is None else int(value)


def from_hf(hf: Mapping[str, Any], where: str = "config.json",
            **overrides: Any) -> DecoderConfig:
  """A `DecoderConfig` from a Hugging Face config.json dict.

  Raises:
    ValueError: one line naming `where` and the field, for a model type or
      option this code does not implement.
  """
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{where}: model_type {model_type!r} is not a "
                     f"decoder-only family this code has (have: "
                     f"{', '.join(MODEL_TYPES)}).")
  family = MODEL_TYPES[model_type]
  heads = int(hf["num_attention_heads"])
  head_dim = int(hf.get("head_dim") or hf["hidden_size"] // heads)
  activation_name = hf.get("hidden_activation") or hf.get("hidden_act",
                                                           "silu")
  if activation_name not in _ACTIVATIONS:
    raise ValueError(f"{where}: activation {activation_name!r} is not "
                     f"implemented (have: {', '.join(_ACTIVATIONS)}).")
  if hf.get("mlp_bias"):
    raise ValueError(f"{where}: mlp_bias = true is not implemented.")
  if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError(f"{where}: partial_rotary_factor is not implemented.")
  window = int(hf.get("sliding_window") or 0)
  sliding, pattern = "none", 6
  if family == "gemma2":
    sliding = "even" if window else "none"
  elif family == "gemma3":
    sliding, pattern = _gemma3_pattern(hf, where)
    sliding = sliding if window else "none"
  elif model_type == "mistral":
    sliding = "all" if window else "none"
  elif model_type == "qwen2" and hf.get("use_sliding_window"):
    raise ValueError(f"{where}: Qwen2's use_sliding_window = true is not "
                     "implemented.")
  attention_bias = bool(hf.get("attention_bias", False))
  fields = dict(
      vocab_size=int(hf["vocab_size"]), emb_dim=int(hf["hidden_size"]),
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=head_dim, mlp_dim=int(hf["intermediate_size"]),
      num_layers=int(hf["num_hidden_layers"]), family=family,
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope_theta=float(hf.get("rope_theta", 10000.0)),
      qkv_bias=attention_bias or model_type == "qwen2",
      out_bias=attention_bias,
      tie_embeddings=bool(hf.get("tie_word_embeddings",
                                 family in ("gemma2", "gemma3"))),
      activation=_ACTIVATIONS[activation_name],
      sliding_window=window if sliding != "none" else 0,
      sliding_layers=sliding, sliding_pattern=pattern,
      bos_id=_token(hf.get("bos_token_id")),
      eos_id=_token(hf.get("eos_token_id")))
  fields.update(_rope(hf, where))
  if family in ("gemma2", "gemma3"):
    fields.update(
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or 0.0),
        attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(hf.get("final_logit_softcapping") or 0.0))
  if family == "gemma3":
    if hf.get("use_bidirectional_attention"):
      raise ValueError(f"{where}: use_bidirectional_attention = true is not "
                       "implemented.")
    fields.update(qk_norm=True, rope_local_theta=float(
        hf.get("rope_local_base_freq") or 10000.0))
  fields.update(overrides)
  return DecoderConfig(**fields)


def _llama3(vocab=128256, **kw) -> dict:
  return dict(vocab_size=vocab, rope_theta=500000.0, rope_type="llama3",
              rope_factor=kw.pop("rope_factor", 32.0),
              rope_original_max_positions=8192, norm_eps=1e-5,
              bos_id=128000, eos_id=128001, **kw)


def _qwen25(**kw) -> dict:
  return dict(vocab_size=kw.pop("vocab", 152064), rope_theta=1000000.0,
              norm_eps=1e-6, qkv_bias=True, eos_id=151643, **kw)


def _gemma2(**kw) -> dict:
  return dict(vocab_size=256000, family="gemma2", norm_eps=1e-6,
              head_dim=kw.pop("head_dim", 256), tie_embeddings=True,
              activation="gelu", sliding_window=4096, sliding_layers="even",
              attn_softcap=50.0, final_softcap=30.0, bos_id=2, eos_id=1,
              **kw)


# The public sizes, by the names sweeps use (architecture only).
PRESETS = {
    "llama3_2_1b": _llama3(emb_dim=2048, num_heads=32, num_kv_heads=8,
                           head_dim=64, mlp_dim=8192, num_layers=16,
                           tie_embeddings=True),
    "llama3_2_3b": _llama3(emb_dim=3072, num_heads=24, num_kv_heads=8,
                           head_dim=128, mlp_dim=8192, num_layers=28,
                           tie_embeddings=True),
    "llama3_1_8b": _llama3(emb_dim=4096, num_heads=32, num_kv_heads=8,
                           head_dim=128, mlp_dim=14336, num_layers=32,
                           rope_factor=8.0),
    "llama3_1_70b": _llama3(emb_dim=8192, num_heads=64, num_kv_heads=8,
                            head_dim=128, mlp_dim=28672, num_layers=80,
                            rope_factor=8.0),
    "qwen2_5_0_5b": _qwen25(vocab=151936, emb_dim=896, num_heads=14,
                            num_kv_heads=2, head_dim=64, mlp_dim=4864,
                            num_layers=24, tie_embeddings=True),
    "qwen2_5_1_5b": _qwen25(vocab=151936, emb_dim=1536, num_heads=12,
                            num_kv_heads=2, head_dim=128, mlp_dim=8960,
                            num_layers=28, tie_embeddings=True),
    "qwen2_5_3b": _qwen25(vocab=151936, emb_dim=2048, num_heads=16,
                          num_kv_heads=2, head_dim=128, mlp_dim=11008,
                          num_layers=36, tie_embeddings=True),
    "qwen2_5_7b": _qwen25(emb_dim=3584, num_heads=28, num_kv_heads=4,
                          head_dim=128, mlp_dim=18944, num_layers=28),
    "qwen2_5_14b": _qwen25(vocab=152064, emb_dim=5120, num_heads=40,
                           num_kv_heads=8, head_dim=128, mlp_dim=13824,
                           num_layers=48),
    "qwen2_5_32b": _qwen25(vocab=152064, emb_dim=5120, num_heads=40,
                           num_kv_heads=8, head_dim=128, mlp_dim=27648,
                           num_layers=64),
    "qwen2_5_72b": _qwen25(vocab=152064, emb_dim=8192, num_heads=64,
                           num_kv_heads=8, head_dim=128, mlp_dim=29568,
                           num_layers=80),
    "gemma2_2b": _gemma2(emb_dim=2304, num_heads=8, num_kv_heads=4,
                         mlp_dim=9216, num_layers=26,
                         query_pre_attn_scalar=256.0),
    "gemma2_9b": _gemma2(emb_dim=3584, num_heads=16, num_kv_heads=8,
                         mlp_dim=14336, num_layers=42,
                         query_pre_attn_scalar=256.0),
    "gemma2_27b": _gemma2(emb_dim=4608, num_heads=32, num_kv_heads=16,
                          head_dim=128, mlp_dim=36864, num_layers=46,
                          query_pre_attn_scalar=144.0),
    # Gemma 3 1B, the text-only size (Gemma3ForCausalLM); the larger ones
    # are multimodal checkpoints.
    "gemma3_1b": dict(
        vocab_size=262144, family="gemma3", emb_dim=1152, num_heads=4,
        num_kv_heads=1, head_dim=256, mlp_dim=6912, num_layers=26,
        norm_eps=1e-6, rope_theta=1000000.0, rope_local_theta=10000.0,
        tie_embeddings=True, activation="gelu", sliding_window=512,
        sliding_layers="pattern", sliding_pattern=6, qk_norm=True,
        query_pre_attn_scalar=256.0, bos_id=2, eos_id=1),
}


def decoder_config(name: str, **overrides: Any) -> DecoderConfig:
  """A preset by name (`PRESETS`), with field overrides (e.g. dtype)."""
  if name not in PRESETS:
    raise ValueError(f"Unknown decoder-only preset {name!r}; have: "
                     f"{', '.join(PRESETS)}.")
  return DecoderConfig(**dict(PRESETS[name], **overrides))

