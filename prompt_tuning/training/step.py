"""The train and eval steps: pure functions of (state, frozen, batch).

`train_step(state, frozen, batch)` takes gradients with respect to
`state.params` only (the prompt, or every weight in model tuning); `frozen`
is a separate argument that is never differentiated, never given optimizer
state and never donated. Microbatching accumulates gradients over equal
slices of the batch with `lax.scan`, so a batch that does not fit still
takes one optimizer step with the same result up to float summation order.
Every step also reports the health of the state it returns (all finite, the
largest trainable magnitude), computed on the device next to the update, so
the loop can refuse a bad state before it is adopted or saved at the cost of
one reduction over what trains.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.methods import Method
from prompt_tuning.prompts import merge_params
from prompt_tuning.training import losses
from prompt_tuning.training import state as state_lib
from prompt_tuning.training.state import TrainState

PyTree = Any
Batch = Mapping[str, jax.Array]
# The feature that marks a decoder-only LM's batch (its real columns).
DECODER_ONLY_FEATURE = "decoder_mask"


def _loss_and_metrics(model: nn.Module, params: PyTree, batch: Batch,
                      dropout_rng: Optional[jax.Array], z_loss: float,
                      loss_normalizing_factor: Optional[float],
                      prompt: Optional[jax.Array] = None):
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  # A per-example prompt [B, P, H] (multitask prompts) replaces the model's.
  extra = {} if prompt is None else {"prompt": prompt}
  if DECODER_ONLY_FEATURE in batch:
    # A decoder-only LM's rows (`data.decoder_features`): logits at the
    # token columns, each predicting the next token (the shifted targets).
    logits = model.apply({"params": params}, batch["decoder_input_tokens"],
                         batch[DECODER_ONLY_FEATURE], rngs=rngs, **extra)
  else:
    logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                         batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"],
                         enable_dropout=dropout_rng is not None, rngs=rngs,
                         **extra)
  return losses.cross_entropy_with_z_loss(
      logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
      z_loss, loss_normalizing_factor)


def _split_microbatches(batch: Batch, num: int) -> Batch:
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f"Batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num}.")
    return x.reshape((num, x.shape[0] // num) + x.shape[1:])  # [B, ...] -> [k, B/k, ...]
  return jax.tree_util.tree_map(split, batch)


def state_health(params: PyTree, opt_state: PyTree) -> Dict[str, jax.Array]:
  """`state_finite`: params and optimizer state hold no NaN or infinity;
  `params_max_abs`: the largest |x| over the params."""
  return {"state_finite": state_lib.all_finite((params, opt_state)),
          "params_max_abs": state_lib.max_abs(params)}


def train_step(state: TrainState, frozen: PyTree, batch: Batch, *,
               model: nn.Module, tx: optax.GradientTransformation,
               z_loss: float = 1e-4,
               loss_normalizing_factor: Optional[float] = None,
               num_microbatches: int = 1,
               enable_dropout: bool = True,
               method: Optional[Method] = None) -> Tuple[TrainState,
                                                         Dict[str, jax.Array]]:
  """One optimizer step on the trainable params.

  Args:
    state: trainable params, optimizer state, step, rng.
    frozen: the frozen params (empty in model tuning).
    batch: `encoder_input_tokens` [B, T], `decoder_input_tokens` [B, L],
      `decoder_target_tokens` [B, L], `decoder_loss_weights` [B, L]; or a
      decoder-only LM's rows (`data.decoder_features`: `decoder_input_tokens`,
      `decoder_target_tokens`, `decoder_loss_weights`, `decoder_mask`).
    model: T5 / PromptedT5 module, or a decoder-only LM (static).
    tx: the optax transformation (static).
    z_loss: T5X z-loss coefficient.
    loss_normalizing_factor: see `losses.cross_entropy_with_z_loss`.
    num_microbatches: gradient accumulation slices of the batch.
    enable_dropout: dropout on (training) or off.
    method: turns the trainable tree into model parameters (a
      reparameterisation) and may add a penalty to the loss that is
      differentiated (not to the metrics); None: prompt or model tuning.

  Returns:
    (new state, metrics: the summed loss_sum, z_loss_sum, correct, tokens;
    grad_norm; and the new state's `state_health` (state_finite,
    params_max_abs), which are not sums: the loop checks them every step).
  """
  rng, step_rng = jax.random.split(state.rng)

  def grad_fn(trainable, micro, micro_rng):
    def loss_fn(p):
      loss, metrics = _loss_and_metrics(
          model, full_params(method, p, frozen), micro,
          micro_rng if enable_dropout else None, z_loss,
          loss_normalizing_factor, example_prompt(method, p, micro))
      extra = None if method is None else method.penalty(p)
      if extra is not None:
        # Once per step: each of the k microbatches adds 1/k of it.
        loss = loss + extra / num_microbatches
      return loss, metrics
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return grads, metrics

  if num_microbatches == 1:
    grads, metrics = grad_fn(state.params, batch, step_rng)
  else:
    micro = _split_microbatches(batch, num_microbatches)

    def body(carry, xs):
      index, mb = xs
      g, m = grad_fn(state.params, mb, jax.random.fold_in(step_rng, index))
      return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

    zeros = jax.eval_shape(grad_fn, state.params,
                           jax.tree_util.tree_map(lambda x: x[0], micro),
                           step_rng)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   zeros)
    (grads, metrics), _ = jax.lax.scan(
        body, zeros, (jnp.arange(num_microbatches), micro))

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                 **state_health(params, opt_state))
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, rng=rng), metrics


def eval_step(params: PyTree, frozen: PyTree, batch: Batch, *,
              model: nn.Module, z_loss: float = 1e-4,
              method: Optional[Method] = None) -> Dict[str, jax.Array]:
  """Teacher-forced summed loss and token accuracy (no dropout)."""
  _, metrics = _loss_and_metrics(
      model, full_params(method, params, frozen), batch,
      None, z_loss, None, example_prompt(method, params, batch))
  return metrics


def full_params(method: Optional[Method], trainable: PyTree,
                frozen: PyTree) -> PyTree:
  """The model's whole tree: the method's model params (a
  reparameterisation merged; the trainable tree itself without a method)
  and the frozen weights. Every step and decoding function uses this."""
  model_params = (trainable if method is None else
                  method.model_params(trainable))
  return merge_params(model_params, frozen)


def example_prompt(method: Optional[Method], trainable: PyTree,
                   batch: Batch) -> Optional[jax.Array]:
  """[B, P, H] the method's per-example prompt for `batch`, or None."""
  return None if method is None else method.example_prompt(trainable, batch)


def jit_train_step(model: nn.Module, tx: optax.GradientTransformation,
                   state_shardings: PyTree, frozen_shardings: PyTree,
                   batch_sharding: Any, **step_kwargs) -> Callable:
  # step_kwargs may carry `method` (see train_step).
  """`train_step` jitted with explicit shardings; only the state is donated
  (the frozen weights are reused every step)."""
  step = functools.partial(train_step, model=model, tx=tx, **step_kwargs)
  return jax.jit(step,
                 in_shardings=(state_shardings, frozen_shardings,
                               batch_sharding),
                 out_shardings=(state_shardings, None),
                 donate_argnums=(0,))
