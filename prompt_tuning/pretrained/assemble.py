"""Fills the T5 parameter tree from a reader's lazy per-parameter loaders.

Readers (T5X legacy, T5X orbax, Hugging Face) all yield the same thing: a map
from T5X's unscanned parameter names (`encoder/layers_0/mlp/wo/kernel`, ...)
to zero-argument loaders. This module checks that map against the tree the
model expects for a config, loads one array at a time (an XXL checkpoint is
44 GB: never all at once), stacks per-layer arrays when the model scans its
layers, casts to the param dtype and places each array straight into its
sharding. A missing, unexpected or mis-shaped weight is an error: a frozen
weight is never silently random-initialised.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning import partitioning
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5

Loader = Callable[[], np.ndarray]
PyTree = Any

_SCANNED = re.compile(r"^(encoder|decoder)/layers/(.*)$")


def abstract_params(config: T5Config) -> PyTree:
  """Boxed (LogicallyPartitioned) ShapeDtypeStructs of the model's params.

  Nothing is allocated: `jax.eval_shape` traces `init` only.
  """
  model = T5(config)
  tokens = jnp.ones((1, 1), jnp.int32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens))
  return variables["params"]


def flat_names(boxed_tree: PyTree) -> Dict[str, nn.LogicallyPartitioned]:
  """'/'-joined parameter names -> boxed leaves."""
  return traverse_util.flatten_dict(boxed_tree, sep="/")


def expected_checkpoint_params(
    config: T5Config) -> Dict[str, Tuple[Tuple[int, ...], Tuple[str, ...]]]:
  """Unscanned (checkpoint) name -> (shape, logical axes) for a config."""
  unscanned = config.replace(scan_layers=False, remat_policy="none")
  return {name: (tuple(box.value.shape), tuple(box.names))
          for name, box in flat_names(abstract_params(unscanned)).items()}


def _num_layers(config: T5Config, stack: str) -> int:
  return (config.num_encoder_layers if stack == "encoder"
          else config.num_decoder_layers)


def _load_checked(name: str, loaders: Mapping[str, Loader],
                  want: Tuple[int, ...], source: str) -> np.ndarray:
  array = np.asarray(loaders[name]())
  if tuple(array.shape) != tuple(want):
    raise ValueError(
        f"{source}: parameter {name} has shape {tuple(array.shape)} in the "
        f"checkpoint but the model config expects {tuple(want)}; pass the "
        f"T5Config that matches this checkpoint.")
  return array


def _place(array: np.ndarray, name: str, axes: Tuple[str, ...], mesh,
           rules) -> jax.Array:
  if mesh is None:
    return jnp.asarray(array)
  sharding = partitioning.sharding_for(axes, mesh, rules, array.shape, name)
  # From a callback, so that each process only transfers its own shards
  # (multi-host safe) and no device holds a full copy first.
  return jax.make_array_from_callback(array.shape, sharding,
                                      lambda index: array[index])


def assemble_params(config: T5Config, loaders: Mapping[str, Loader],
                    source: str, mesh: Optional[jax.sharding.Mesh] = None,
                    rules: Optional[partitioning.Rules] = None) -> PyTree:
  """Builds the model's parameter tree from per-parameter loaders.

  Args:
    config: the model config; decides scanned vs unscanned and param dtype.
    loaders: unscanned T5X name -> zero-argument loader of a numpy array.
    source: checkpoint path, for error messages.
    mesh: when given, every array is placed with the sharding the logical
      axis rules give it; otherwise it lands on the default device.
    rules: logical axis rules (default `partitioning.logical_axis_rules()`).

  Returns:
    Nested dict of arrays, as `T5(config).apply({'params': ...})` takes.

  Raises:
    ValueError: a missing, unexpected or mis-shaped parameter (named).
  """
  expected = expected_checkpoint_params(config)
  missing = sorted(set(expected) - set(loaders))
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise ValueError(
        f"{source}: parameter {missing[0]}{more} is missing from the "
        f"checkpoint; the config expects it (shape {expected[missing[0]][0]}). "
        f"Is the T5Config right for this checkpoint (e.g. tied vs untied "
        f"logits, gated MLP, layer counts)?")
  unexpected = sorted(set(loaders) - set(expected))
  if unexpected:
    more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
    raise ValueError(
        f"{source}: the checkpoint holds parameter {unexpected[0]}{more} that "
        f"the model config has no place for; pass the T5Config that matches "
        f"this checkpoint.")

  dtype = jnp.dtype(config.param_dtype)
  flat = {}
  for name, box in flat_names(abstract_params(config)).items():
    axes = tuple(box.names)
    match = _SCANNED.match(name)
    if match:
      stack, rest = match.groups()
      arrays = [
          _load_checked(f"{stack}/layers_{i}/{rest}", loaders,
                        expected[f"{stack}/layers_{i}/{rest}"][0], source)
          for i in range(_num_layers(config, stack))]
      array = np.stack([a.astype(dtype) for a in arrays])  # L x [...] -> [L, ...]
      del arrays
    else:
      array = _load_checked(name, loaders, expected[name][0], source)
      array = array.astype(dtype)
    flat[name] = _place(array, name, axes, mesh, rules)
    del array
  return traverse_util.unflatten_dict(flat, sep="/")
