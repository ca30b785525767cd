"""Whether a checkpoint's stored tree fits a run's train state.

Orbax's own error for a tree that does not fit names neither the parameter
nor the run; `check_fits` compares the checkpoint's metadata with the run's
state leaf by leaf first and names the first difference. Paths are orbax's:
dataclass and NamedTuple fields and dict keys become names, sequence
positions indices.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import numpy as np

PyTree = Any


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flat_paths(tree: PyTree) -> Dict[str, Any]:
  """'/'-joined leaf paths -> leaves.

  Dataclass fields, NamedTuple fields and dict keys all become names and
  sequence positions become indices, which is how orbax stores them, so a
  train state and the checkpoint's metadata tree line up.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def abstract_leaf(x: Any) -> jax.ShapeDtypeStruct:
  """The restore target for one leaf: its shape, dtype and sharding."""
  if isinstance(x, jax.ShapeDtypeStruct):
    if x.sharding is not None:
      return x
    sharding = None
  elif isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  else:
    x = np.asarray(x)
    sharding = None
  # A leaf with no placement goes where an unplaced jnp.asarray would.
  sharding = sharding or jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _stored_shape(abstract: jax.ShapeDtypeStruct) -> Tuple[int, ...]:
  # Orbax stores typed PRNG keys as their uint32 key data.
  if jax.dtypes.issubdtype(abstract.dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(
        jax.random.key_data,
        jax.ShapeDtypeStruct(abstract.shape, abstract.dtype)).shape)
  return tuple(abstract.shape)


def check_fits(metadata: PyTree, target: PyTree, where: str) -> None:
  """Raises ValueError naming the first leaf where they differ.

  Args:
    metadata: the checkpoint's state tree (orbax metadata: leaves have
      `.shape`).
    target: the run's state as restore targets (`abstract_leaf`).
    where: the checkpoint directory, for the message.
  """
  stored = flat_paths(metadata)
  wanted = flat_paths(target)
  missing = sorted(set(wanted) - set(stored))
  extra = sorted(set(stored) - set(wanted))
  for leaves, what in ((missing, "lacks {} leaf/leaves of the run's state"),
                       (extra, "has {} leaf/leaves the run's state lacks")):
    if leaves:
      raise ValueError(
          f"{where} {what.format(len(leaves))}, e.g. {leaves[0]!r}; the run's "
          f"optimizer or trainable params differ from the checkpoint's.")
  for path, abstract in wanted.items():
    have = tuple(stored[path].shape)
    want = _stored_shape(abstract)
    if have != want:
      raise ValueError(
          f"{where}: {path} has shape {have} in the checkpoint but "
          f"{want} in the run's state (e.g. a different prompt length).")
