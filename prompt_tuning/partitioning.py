"""The device mesh and the one table that maps logical axes onto it.

Parameters and activations name their axes logically (`embed`, `mlp`,
`heads`, `batch`, ...); this module alone turns those names into
`PartitionSpec`s over a mesh with axes `data` and `model`, T5X-style. Nobody
else builds specs: the train step, the checkpoint readers and the tests ask
for shardings here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any, Iterator, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
Rules = Tuple[Tuple[str, Optional[str]], ...]

MESH_AXES = ("data", "model")

# Logical axis -> mesh axis. Model parallelism splits heads, MLP and vocab
# over `model` (Megatron-style: one all-reduce per block); the batch is split
# over `data`. The prompt is tiny and read by every example: replicated.
_BASE_RULES: Rules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
    ("prompt", None),
    ("prompt_embed", None),
)


def logical_axis_rules(fsdp: bool = False) -> Rules:
  """Returns the rules table.

  Args:
    fsdp: also shard the frozen weights' `embed` axis over `data` (ZeRO-3
      style), for models whose weights do not fit `model`-way split. In
      activations `batch` claims `data` first, so `embed` stays unsplit there.
  """
  return _BASE_RULES + ((("embed", "data"),) if fsdp else (("embed", None),))


def create_mesh(mesh_shape: Sequence[int] = (-1, 1),
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Builds a (`data`, `model`) mesh; one entry may be -1 to fill.

  Args:
    mesh_shape: (data, model) sizes; e.g. (-1, 2) is 2-way model parallelism
      with the remaining devices data-parallel.
    devices: defaults to all devices of all processes.

  Raises:
    ValueError: one clear line when the shape does not fit the devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(mesh_shape)
  if len(shape) != 2:
    raise ValueError(f"mesh_shape={tuple(mesh_shape)} must have 2 entries "
                     f"(data, model).")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh_shape={tuple(mesh_shape)}: at most one entry may "
                     f"be -1.")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh_shape={tuple(mesh_shape)}: sizes must be positive "
                     f"or -1 (fill).")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(
          f"mesh_shape={tuple(mesh_shape)} does not divide the "
          f"{len(devices)} devices: {known} must divide {len(devices)}.")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"mesh_shape={tuple(mesh_shape)} needs {math.prod(shape)} devices but "
        f"{len(devices)} are available; use -1 for one axis to fill.")
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, AssertionError, NotImplementedError):
    # Topology-aware placement is a nicety; fall back to device order.
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def logical_to_spec(axes: Sequence[Optional[str]],
                    rules: Optional[Rules] = None) -> PartitionSpec:
  """Logical axis names of one array -> mesh PartitionSpec."""
  rules = logical_axis_rules() if rules is None else rules
  return nn.logical_to_mesh_axes(tuple(axes), rules)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh,
         what: str) -> PartitionSpec:
  """Replicates any dimension that its mesh axes do not divide.

  E.g. T5 with 3 heads on a `model`=2 mesh: the [heads, buckets] relpos
  table cannot be split, so it is replicated (it is tiny) instead of failing.
  """
  fitted = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    ways = math.prod(mesh.shape[n] for n in names)
    if ways > 1 and dim % ways:
      logging.warning("%s: dimension of size %d is not divisible by mesh "
                      "axes %s (%d ways); replicating it.", what, dim, names,
                      ways)
      entry = None
    fitted.append(entry)
  return PartitionSpec(*fitted)


def sharding_for(axes: Sequence[Optional[str]], mesh: Mesh,
                 rules: Optional[Rules] = None,
                 shape: Optional[Sequence[int]] = None,
                 what: str = "array") -> NamedSharding:
  """NamedSharding of one array from its logical axis names.

  With `shape`, dimensions that the mesh does not divide are replicated.
  """
  spec = logical_to_spec(axes, rules)
  if shape is not None:
    spec = _fit(spec, shape, mesh, what)
  return NamedSharding(mesh, spec)


def shardings(boxed_tree: PyTree, mesh: Mesh,
              rules: Optional[Rules] = None) -> PyTree:
  """Tree of NamedShardings for a tree of LogicallyPartitioned leaves (whose
  values are arrays or ShapeDtypeStructs, as `jax.eval_shape(init)` gives)."""
  return jax.tree_util.tree_map(
      lambda box: sharding_for(box.names, mesh, rules, box.value.shape),
      boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Optional[Rules] = None) -> Iterator[None]:
  """Activates `mesh` and the rules, so the model's logical activation
  constraints become real sharding constraints while tracing."""
  rules = logical_axis_rules() if rules is None else rules
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def _batch_sharding(mesh: Mesh, global_rows: int, ndim: int) -> NamedSharding:
  data_size = mesh.shape["data"]
  if global_rows % data_size:
    raise ValueError(
        f"Batch size {global_rows} is not divisible by the data-parallel "
        f"size {data_size} (mesh {dict(mesh.shape)}); change the batch "
        f"size or the mesh shape.")
  return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


@functools.lru_cache(maxsize=8)
def _check_data_shards_per_process(mesh: Mesh) -> None:
  """Each process's rows are its own: no `data` index may be shared by two
  processes, which happens when the `model` axis spans processes."""
  owners = {}
  for index in np.ndindex(mesh.devices.shape):
    device = mesh.devices[index]
    owners.setdefault(index[0], set()).add(device.process_index)
  shared = sorted(i for i, p in owners.items() if len(p) > 1)
  if shared:
    raise ValueError(
        f"Mesh {dict(mesh.shape)}: the model axis spans processes (data "
        f"shards {shared[:4]} live on several), which per-process input "
        f"batches cannot feed; make the model size at most "
        f"{jax.local_device_count()} (one process's devices).")


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Global arrays split over `data`, from this process's rows.

  Each leaf is [b, ...]: this process's own rows of the global batch (the
  data layer's per-host shard, b = B / process_count; with one process, the
  whole batch). The global batch is the process-ordered concatenation.

  Raises:
    ValueError: when B is not divisible by the data-parallel size.
  """
  processes = jax.process_count()
  if processes > 1:
    _check_data_shards_per_process(mesh)

  def put(x):
    x = np.asarray(x)
    rows = x.shape[0] * processes
    return jax.make_array_from_process_local_data(
        _batch_sharding(mesh, rows, x.ndim), x, (rows,) + x.shape[1:])

  return jax.tree_util.tree_map(put, batch)


def shard_global_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Global arrays split over `data`, from a batch every process holds whole.

  For batches that every process reads identically (seqio's evaluator gives
  each process the whole evaluation set): each process places only the rows
  its own devices hold.

  Raises:
    ValueError: when B is not divisible by the data-parallel size.
  """

  def put(x):
    x = np.asarray(x)
    sharding = _batch_sharding(mesh, x.shape[0], x.ndim)
    return jax.make_array_from_callback(x.shape, sharding,
                                        lambda index: x[index])

  return jax.tree_util.tree_map(put, batch)


def to_host(x: Any) -> np.ndarray:
  """The whole value of an array as numpy, on every process.

  A collective when the array is spread over several processes (every
  process must call it); a local copy otherwise.
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    # Deferred import: multihost_utils pulls in jax.experimental modules.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
