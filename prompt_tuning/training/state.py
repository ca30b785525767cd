"""The train state: what trains, and nothing else.

Prompt tuning trains `encoder/prompt/prompt` and leaves the pretrained T5
frozen; model tuning (the paper's baseline) trains every parameter through the
same loop. The state holds only the trainable part (and its optimizer state,
step and rng), so checkpoints never re-save a frozen 44 GB model; the frozen
part travels separately and is never donated (it is reused every step).
"""

from __future__ import annotations

from typing import Any, Mapping, Tuple

import flax
import jax
import optax

from prompt_tuning.prompts import prompt_param_path
from prompt_tuning.prompts import split_prompt

PyTree = Any

MODES = ("prompt", "model")
# Where the prompt lives in a PromptedT5 tree (T5X prompt-tuning's path).
PROMPT_PATH = prompt_param_path


@flax.struct.dataclass
class TrainState:
  """Trainable params, their optimizer state, the step and the rng.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: trainable params only (prompt mode: `{'encoder': {'prompt':
      {'prompt': [P, H]}}}`; model mode: the whole tree).
    opt_state: optax state of `params`.
    rng: uint32[2] raw PRNG key; split every step (dropout), checkpointed so
      a resumed run draws the same dropout masks.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  rng: jax.Array


def create_train_state(params: PyTree, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  """A step-0 state for trainable `params`."""
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    opt_state=tx.init(params), rng=rng)


def split_trainable(params: PyTree, mode: str) -> Tuple[PyTree, PyTree]:
  """Splits a full tree into (trainable, frozen) for a tuning mode.

  Raises:
    ValueError: unknown mode, or prompt mode on a tree without a prompt.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown tuning mode {mode!r}; use one of {MODES}.")
  if mode == "model":
    return params, {}
  try:
    return split_prompt(params)
  except KeyError:
    raise ValueError(f"Prompt tuning needs a parameter at "
                     f"{'/'.join(PROMPT_PATH)}; build the model with "
                     f"PromptedT5.") from None


def all_finite(tree: PyTree) -> jax.Array:
  """bool scalar: no NaN or infinity in any floating leaf (traceable; integer
  leaves such as step counts cannot overflow and are skipped)."""
  floats = [x for x in jax.tree_util.tree_leaves(tree)
            if jax.numpy.issubdtype(jax.numpy.result_type(x),
                                    jax.numpy.inexact)]
  if not floats:
    return jax.numpy.array(True)
  return jax.numpy.all(jax.numpy.stack(
      [jax.numpy.all(jax.numpy.isfinite(x)) for x in floats]))


def max_abs(tree: PyTree) -> jax.Array:
  """float32 scalar: the largest |x| over the leaves (traceable)."""
  leaves = [jax.numpy.max(jax.numpy.abs(x)).astype(jax.numpy.float32)
            for x in jax.tree_util.tree_leaves(tree) if jax.numpy.size(x)]
  if not leaves:
    return jax.numpy.array(0.0, jax.numpy.float32)
  return jax.numpy.max(jax.numpy.stack(leaves))


def count_params(tree: PyTree) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def parameter_summary(trainable: PyTree, frozen: PyTree) -> Mapping[str, Any]:
  """Total / trainable counts and the trainable percentage (logged at start)."""
  n_train, n_frozen = count_params(trainable), count_params(frozen)
  total = n_train + n_frozen
  return {"total": total, "trainable": n_train,
          "trainable_percent": 100.0 * n_train / max(total, 1)}
