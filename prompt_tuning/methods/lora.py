"""LoRA (Hu et al. 2021): a trainable low-rank update of chosen kernels.

Each targeted projection gets `lora_a` [in, r] (PEFT's kaiming-uniform init)
and `lora_b` [r, out] (zeros), and computes `x @ W + (x @ lora_a) @ lora_b *
scaling` with scaling alpha / r (alpha / sqrt(r) with rslora). The defaults
are PEFT's for T5: r = 8, alpha = 8, no dropout, `q` and `v` in every
attention (encoder self, decoder self and cross). For serving, `merge` folds
the update into the kernels, so the served model is plain T5 at plain T5's
cost. Per-example LoRA in a mixed batch is not offered: it would cost a
[B, in, r] and [B, r, out] gather per projection and rules out merging.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Tuple

import jax.numpy as jnp

from prompt_tuning.methods import base
from prompt_tuning.methods.base import Method
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.config import T5Config

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LoraConfig(Method):
  """LoRA's choices, with PEFT's defaults."""

  name: ClassVar[str] = "lora"

  # Rank r of the update.
  rank: int = 8
  # Scale numerator: the update is multiplied by alpha / r.
  alpha: float = 8.0
  # Dropout on the LoRA branch's input while training.
  dropout: float = 0.0
  # alpha / sqrt(r) instead of alpha / r (rank-stabilised LoRA).
  rslora: bool = False
  # Projections to adapt (names or whole-path regexes; see models.adapters).
  targets: Tuple[str, ...] = ("query", "value")

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if self.rank < 1:
      raise ValueError(f"LoraConfig.rank must be >= 1; got {self.rank}.")
    self.adapters(None)  # checks targets and dropout

  def adapters(self, config: T5Config) -> AdapterConfig:
    del config
    return AdapterConfig(lora_rank=self.rank, lora_alpha=self.alpha,
                         lora_dropout=self.dropout, lora_rslora=self.rslora,
                         lora_targets=self.targets)


def merge(params: PyTree, scaling: float) -> PyTree:
  """Folds every LoRA update into its kernel: W + scaling * lora_a @ lora_b.

  Works on unscanned and scanned ([layers, ...]) trees; the result is plain
  T5's tree (no lora_a / lora_b), in the kernels' dtype.
  """
  names = base.flat(params)
  out: Dict[str, Any] = {}
  for name, value in names.items():
    if name.endswith(("/lora_a", "/lora_b")):
      continue
    stem = name[:-len("kernel")]
    if name.endswith("/kernel") and stem + "lora_a" in names:
      a = jnp.asarray(names[stem + "lora_a"], jnp.float32)
      b = jnp.asarray(names[stem + "lora_b"], jnp.float32)
      delta = jnp.matmul(a, b) * scaling  # [.., in, r] @ [.., r, out]
      value = (jnp.asarray(value, jnp.float32) + delta).astype(value.dtype)
    out[name] = value
  return base.nested(out)
