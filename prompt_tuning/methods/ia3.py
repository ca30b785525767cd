"""IA3 (Liu et al. 2022): learned vectors rescaling keys, values and the MLP.

Each targeted projection gets `ia3_scaling`, initialised to ones (the frozen
model at step 0): keys and values are scaled on their output ([heads * kv]),
the MLP's `wo` on its input (the [mlp] hidden units). The default targets are
PEFT's for T5 (`k`, `v`, `wo`, in every attention of both stacks), which are
also the places the official `extended/train/ia3.py` scales; mT5 in PEFT
scales `wi_1` instead of `wo` (`IA3Config.targets = ('key', 'value', 'wi_1')`).
Mergeable: a scaled projection is the kernel with rows or columns scaled
(`merge`).
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
class IA3Config(Method):
  """IA3's one choice: which projections it scales."""

  name: ClassVar[str] = "ia3"

  # Projections to scale (names or whole-path regexes; see models.adapters).
  targets: Tuple[str, ...] = ("key", "value", "wo")

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if not self.targets:
      raise ValueError("IA3Config.targets is empty: name the projections to "
                       "scale, e.g. ('key', 'value', 'wo').")
    AdapterConfig(ia3_targets=self.targets)  # checks the names

  def adapters(self, config: T5Config) -> AdapterConfig:
    del config
    return AdapterConfig(ia3_targets=self.targets)


def merge(params: PyTree) -> PyTree:
  """Folds every `ia3_scaling` into its kernel; the result is plain T5's tree.

  Output scaling multiplies the kernel's columns (and a bias, where the
  projection has one), `wo`'s input scaling its rows (kernels are
  [in, out]).
  """
  names = base.flat(params)
  out: Dict[str, Any] = {}
  for name, value in names.items():
    if name.endswith("/ia3_scaling"):
      continue
    stem = name[:name.rfind("/") + 1]
    if (name.endswith("/bias") and stem + "ia3_scaling" in names and
        not name.endswith("/wo/bias")):
      # An output scaling scales the bias too (Qwen2's q/k/v; as PEFT).
      value = value * jnp.asarray(names[stem + "ia3_scaling"], value.dtype)
    scale_name = name[:-len("kernel")] + "ia3_scaling"
    if name.endswith("/kernel") and scale_name in names:
      scale = jnp.asarray(names[scale_name], value.dtype)
      on_input = name.endswith("/wo/kernel")
      value = value * (scale[..., :, None] if on_input else
                       scale[..., None, :])
    out[name] = value
  return base.nested(out)
