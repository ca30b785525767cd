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
from typing import (Any, Dict, Iterator, NamedTuple, Optional,
                    Sequence, Tuple)

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
    # LoRA's rank is a handful of columns: never split.
    ("lora_rank", None),
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


class DataLayout(NamedTuple):
  """Which rows of the global batch this process feeds.

  Processes whose devices hold the same `data` indices (the `model` axis
  spans them) are replicas for the input: they read the same input shard and
  hand in identical rows. So there are `num_shards` distinct input shards,
  not one per process.
  """
  shard_id: int  # the input shard this process reads, 0..num_shards-1
  num_shards: int  # distinct input shards: process_count / replicas


@functools.lru_cache(maxsize=16)
def _held_data_indices(mesh: Mesh) -> Dict[int, Tuple[int, ...]]:
  """process index -> the sorted `data` indices its devices hold."""
  held: Dict[int, set] = {}
  for index in np.ndindex(mesh.devices.shape):
    held.setdefault(mesh.devices[index].process_index, set()).add(index[0])
  return {p: tuple(sorted(d)) for p, d in held.items()}


def data_layout(mesh: Mesh,
                process_index: Optional[int] = None) -> DataLayout:
  """How the processes feed `mesh`'s `data` axis (see `DataLayout`).

  The model axis may lie within each process (the usual pod layout: every
  process feeds its own rows) or span processes (the processes sharing a
  data index read identical rows). What cannot be fed is a layout where two
  processes hold overlapping but different sets of data indices, or unequal
  numbers of them: no per-process split of the rows exists then.

  Args:
    mesh: a (`data`, `model`) mesh over all processes' devices.
    process_index: default `jax.process_index()`.

  Raises:
    ValueError: (one line) for a layout that cannot be fed.
  """
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  held = _held_data_indices(mesh)
  groups = sorted(set(held.values()))
  owner = {}
  for group in groups:
    for data_index in group:
      if data_index in owner:
        raise ValueError(
            f"Mesh {dict(mesh.shape)}: data shard {data_index} lives on "
            f"processes holding different sets of data shards "
            f"({owner[data_index]} and {group}), which per-process input "
            f"cannot feed; make the model size divide or be a multiple of "
            f"{jax.local_device_count()} (one process's devices).")
      owner[data_index] = group
  if len({len(g) for g in groups}) > 1:
    raise ValueError(
        f"Mesh {dict(mesh.shape)}: processes hold unequal numbers of data "
        f"shards ({sorted({len(g) for g in groups})}); every process needs "
        f"the same number of devices.")
  if process_index not in held:
    raise ValueError(f"Mesh {dict(mesh.shape)} has no device of process "
                     f"{process_index}.")
  return DataLayout(groups.index(held[process_index]), len(groups))


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Global arrays split over `data`, from this process's rows.

  Each leaf is [b, ...]: the rows of the `data` shards this process's devices
  hold (the data layer's input shard `data_layout(mesh).shard_id`,
  b = B / num_shards; with one process, the whole batch). Processes that
  share data shards must pass identical rows. The global batch is the input
  shards in `data`-index order.

  Raises:
    ValueError: when B is not divisible by the data-parallel size, or for a
      layout that cannot be fed (`data_layout`).
  """
  shards = data_layout(mesh).num_shards if jax.process_count() > 1 else 1

  def put(x):
    x = np.asarray(x)
    rows = x.shape[0] * shards
    # Replicas of one input shard give identical rows, which is what this
    # call expects of processes holding the same slice of the global array.
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
