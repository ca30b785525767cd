"""Optimizers: the paper's Adafactor recipe for prompts and T5X's for models.

Prompt tuning (Lester et al. 2021): Adafactor, constant learning rate 0.3,
weight decay 1e-5, second-moment decay exponent 0.8, no parameter scaling,
no factoring (a [P, H] prompt is small; factoring would only add noise).
Model tuning (the paper's baseline, T5X fine-tuning): Adafactor, constant
1e-3, decay exponent 0.8, factored, no parameter scaling.
"""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class AdafactorConfig:
  """Adafactor hyper-parameters (optax.adafactor names)."""

  # Constant learning rate; the paper uses 0.3 for prompts.
  learning_rate: float = 0.3
  # beta2_t = 1 - t^-decay_rate (T5X / the paper: 0.8).
  decay_rate: float = 0.8
  # Scale updates by parameter RMS; off in the paper's recipe.
  multiply_by_parameter_scale: bool = False
  # Factor second moments of matrices; pointless for a prompt.
  factored: bool = False
  # Decoupled weight decay (lr * rate * param); the paper: 1e-5.
  weight_decay_rate: float = 1e-5
  # Clip the update's RMS at this value (Adafactor's default 1.0).
  clipping_threshold: float = 1.0
  # First-moment decay; None = no momentum (the paper and T5X).
  momentum: float | None = None


PROMPT_TUNING = AdafactorConfig()
MODEL_TUNING = AdafactorConfig(learning_rate=1e-3, factored=True,
                               weight_decay_rate=0.0)


def adafactor(config: AdafactorConfig) -> optax.GradientTransformation:
  """Builds the optax Adafactor transformation for `config`."""
  return optax.adafactor(
      learning_rate=config.learning_rate,
      decay_rate=config.decay_rate,
      multiply_by_parameter_scale=config.multiply_by_parameter_scale,
      factored=config.factored,
      weight_decay_rate=config.weight_decay_rate or None,
      clipping_threshold=config.clipping_threshold,
      momentum=config.momentum)
