"""Rematerialisation of a model's layers, by the config's `remat_policy`.

One table for T5 (`models.t5`) and the decoder-only LMs: a policy name
(models.config.REMAT_POLICIES) becomes the layer class wrapped in
`nn.remat`, which recomputes the layer in the backward pass instead of
keeping its activations.
"""

from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax

# A model config's remat_policy -> jax.checkpoint's policy.
_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(layer_cls, policy: str, prevent_cse: bool = True,
          static_argnums: Tuple[int, ...] = ()):
  """`layer_cls` rematerialised in the backward pass under the named policy
  (models.config.REMAT_POLICIES); 'none' returns it unchanged."""
  if policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=_REMAT_POLICIES[policy],
                  prevent_cse=prevent_cse, static_argnums=static_argnums)
