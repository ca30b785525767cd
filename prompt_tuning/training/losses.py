"""T5's training loss: token cross-entropy with z-loss, and its metrics.

Matches T5X's `compute_weighted_cross_entropy`: per-token
`logsumexp(logits) - logit[target]` plus `z_loss * logsumexp(logits)**2`
(which keeps the softmax normaliser near 1, helping bfloat16), weighted by
`decoder_loss_weights` and summed over the batch. The sum (not the mean) is
T5X's default; Adafactor normalises update magnitudes, so the choice barely
matters for optimisation, but it keeps the numbers comparable with T5X logs.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_with_z_loss(
    logits: Array, targets: Array, weights: Array, z_loss: float = 1e-4,
    loss_normalizing_factor: Optional[float] = None
) -> Tuple[Array, Dict[str, Array]]:
  """Weighted token cross-entropy.

  Args:
    logits: [B, L, V] float32.
    targets: [B, L] int target ids.
    weights: [B, L] loss weights (0 on padding).
    z_loss: coefficient of the log-partition penalty (T5X: 1e-4).
    loss_normalizing_factor: divide the summed loss by this (None: T5X's
      default of no normalisation, i.e. the sum over target tokens).

  Returns:
    (loss scalar, metrics) where metrics hold sums for exact aggregation
    across steps and hosts: `loss_sum`, `z_loss_sum`, `correct`, `tokens`.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, L, V] -> [B, L]
  target_logit = jnp.take_along_axis(logits, targets[..., None],
                                     axis=-1)[..., 0]  # [B, L]
  token_loss = log_z - target_logit
  token_z = z_loss * jnp.square(log_z)
  total = jnp.sum((token_loss + token_z) * weights)
  if loss_normalizing_factor is not None:
    total = total / loss_normalizing_factor
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = {
      "loss_sum": jnp.sum(token_loss * weights),
      "z_loss_sum": jnp.sum(token_z * weights),
      "correct": jnp.sum(correct * weights),
      "tokens": jnp.sum(weights),
  }
  return total, metrics


def summarize(metrics: Dict[str, Array]) -> Dict[str, float]:
  """Turns summed metrics into per-token loss and token accuracy."""
  tokens = max(float(metrics["tokens"]), 1.0)
  return {
      "loss": float(metrics["loss_sum"]) / tokens,
      "z_loss": float(metrics["z_loss_sum"]) / tokens,
      "token_accuracy": float(metrics["correct"]) / tokens,
      "tokens": float(metrics["tokens"]),
  }
