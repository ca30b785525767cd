"""Fills the T5 parameter tree from a reader's lazy per-parameter loaders.

Readers (T5X legacy, T5X orbax, Hugging Face) all yield the same thing: a map
from T5X's unscanned parameter names (`encoder/layers_0/mlp/wo/kernel`, ...)
to loaders. This module checks that map against the tree the model expects
for a config, loads one array at a time (an XXL checkpoint is 44 GB: never all
at once), stacks per-layer arrays when the model scans its layers, casts to
the param dtype (announcing, in one log line, a checkpoint stored in a
narrower float than that, e.g. bfloat16 weights in a float32 run) and places
each array straight into its sharding. A missing,
unexpected or mis-shaped weight is an error: a frozen weight is never silently
random-initialised.

On a mesh, a `BlockLoader` (TensorStore and safetensors leaves) is asked only
for the blocks that this process's devices hold, each distinct block once, so
16 processes sharing a model-parallel mesh do not each read the whole model;
any other loader is read whole and sliced, as before. Either way the placed
arrays are the same bits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning import partitioning
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.models.decoder_only.model import DecoderOnlyLM
from prompt_tuning.models.t5 import T5

Loader = Callable[[], np.ndarray]
PyTree = Any
# The frozen models' configs (a decoder-only LM's has no scanned layers).
Config = Any
# A block of an array: one slice per dimension, as jax.Array shards give it.
Index = Tuple[slice, ...]


@dataclasses.dataclass(frozen=True)
class BlockLoader:
  """A loader that can also read just one block of its array.

  Called with no argument it reads the whole array, like any loader.

  Attributes:
    read: index (in the array's own layout, the one `shape` describes) or
      None -> that block, or the whole array, in the stored dtype.
    shape: the array's shape, learnt without reading its data (so a
      mis-shaped weight fails before any block is read).
  """
  read: Callable[[Optional[Index]], np.ndarray]
  shape: Callable[[], Tuple[int, ...]]

  def __call__(self, index: Optional[Index] = None) -> np.ndarray:
    return self.read(index)


@dataclasses.dataclass
class LoadStats:
  """What one process read while assembling: for the load log line."""
  arrays: int = 0
  bytes_read: int = 0  # in the stored dtype, every block this process read
  bytes_total: int = 0  # the stored size of every array it read from
  # The dtypes the checkpoint stores what was read in (before any cast).
  stored_dtypes: set = dataclasses.field(default_factory=set)
  _sized: set = dataclasses.field(default_factory=set, repr=False)

  def count(self, name: str, block: np.ndarray,
            shape: Tuple[int, ...]) -> None:
    self.bytes_read += block.nbytes
    self.stored_dtypes.add(np.dtype(block.dtype))
    if name not in self._sized:
      self._sized.add(name)
      self.bytes_total += block.dtype.itemsize * math.prod(shape)

_SCANNED = re.compile(r"^(encoder|decoder)/layers/(.*)$")


def abstract_params(config: Config) -> PyTree:
  """Boxed (LogicallyPartitioned) ShapeDtypeStructs of the model's params
  (a T5, or a decoder-only LM for a `DecoderConfig`).

  Nothing is allocated: `jax.eval_shape` traces `init` only.
  """
  tokens = jnp.ones((1, 1), jnp.int32)
  if isinstance(config, DecoderConfig):
    init = lambda: DecoderOnlyLM(config).init(jax.random.PRNGKey(0), tokens)
  else:
    init = lambda: T5(config).init(jax.random.PRNGKey(0), tokens, tokens,
                                   tokens)
  return jax.eval_shape(init)["params"]


def flat_names(boxed_tree: PyTree) -> Dict[str, nn.LogicallyPartitioned]:
  """'/'-joined parameter names -> boxed leaves."""
  return traverse_util.flatten_dict(boxed_tree, sep="/")


def expected_checkpoint_params(
    config: Config) -> Dict[str, Tuple[Tuple[int, ...], Tuple[str, ...]]]:
  """Unscanned (checkpoint) name -> (shape, logical axes) for a config."""
  unscanned = (config if isinstance(config, DecoderConfig) else
               config.replace(scan_layers=False, remat_policy="none"))
  return {name: (tuple(box.value.shape), tuple(box.names))
          for name, box in flat_names(abstract_params(unscanned)).items()}


def _num_layers(config: T5Config, stack: str) -> int:
  return (config.num_encoder_layers if stack == "encoder"
          else config.num_decoder_layers)


def _shape_error(name: str, got: Tuple[int, ...], want: Tuple[int, ...],
                 source: str) -> ValueError:
  return ValueError(
      f"{source}: parameter {name} has shape {tuple(got)} in the "
      f"checkpoint but the model config expects {tuple(want)}; pass the "
      f"T5Config that matches this checkpoint.")


def _load_checked(name: str, loaders: Mapping[str, Loader],
                  want: Tuple[int, ...], source: str,
                  stats: LoadStats) -> np.ndarray:
  array = np.asarray(loaders[name]())
  if tuple(array.shape) != tuple(want):
    raise _shape_error(name, array.shape, want, source)
  stats.count(name, array, array.shape)
  return array


def _read_block(name: str, loader: BlockLoader, shape: Tuple[int, ...],
                index: Index, stats: LoadStats) -> np.ndarray:
  """One block of a BlockLoader's array (whose `shape` was checked)."""
  block = np.asarray(loader(index))
  stats.count(name, block, shape)
  return block


def _place(shape: Tuple[int, ...], read: Callable[[Index], np.ndarray],
           name: str, axes: Tuple[str, ...], mesh, rules) -> jax.Array:
  """Places an array from its blocks: each process reads only its own.

  From a callback, so that each process only transfers its own shards
  (multi-host safe) and no device holds a full copy first. Devices that hold
  the same block (replicas over `data`) share one read.
  """
  sharding = partitioning.sharding_for(axes, mesh, rules, shape, name)
  blocks: Dict[Tuple, np.ndarray] = {}

  def callback(index: Index) -> np.ndarray:
    key = tuple((s.start, s.stop, s.step) for s in index)  # slices: unhashable
    if key not in blocks:
      blocks[key] = read(index)
    return blocks[key]

  return jax.make_array_from_callback(shape, sharding, callback)


def _layer_names(name: str, config: T5Config) -> Optional[List[str]]:
  """Checkpoint names of a scanned param's layers, in order; None if not
  scanned."""
  match = _SCANNED.match(name)
  if not match:
    return None
  stack, rest = match.groups()
  return [f"{stack}/layers_{i}/{rest}"
          for i in range(_num_layers(config, stack))]


def _assemble_one(name: str, shape: Tuple[int, ...], axes: Tuple[str, ...],
                  config: T5Config, loaders: Mapping[str, Loader],
                  expected: Mapping[str, Tuple[Tuple[int, ...], Any]],
                  source: str, mesh, rules, stats: LoadStats) -> jax.Array:
  dtype = jnp.dtype(config.param_dtype)
  layers = _layer_names(name, config)
  parts = layers if layers is not None else [name]
  if mesh is not None and all(isinstance(loaders[p], BlockLoader)
                              for p in parts):
    for p in parts:  # every part's shape, before any block is read
      got = tuple(loaders[p].shape())
      if got != tuple(expected[p][0]):
        raise _shape_error(p, got, expected[p][0], source)

    def read_part(part: str, index: Index) -> np.ndarray:
      return _read_block(part, loaders[part], tuple(expected[part][0]), index,
                         stats).astype(dtype)

    if layers is None:
      read = functools.partial(read_part, name)
    else:
      def read(index):  # an [L, ...] block from the layers' [...] blocks
        return np.stack([read_part(p, index[1:])  # L x [...] -> [L, ...]
                         for p in layers[index[0]]])
    return _place(shape, read, name, axes, mesh, rules)

  if layers is not None:
    arrays = [_load_checked(p, loaders, expected[p][0], source, stats)
              for p in layers]
    array = np.stack([a.astype(dtype) for a in arrays])  # L x [...] -> [L, ...]
    del arrays
  else:
    array = _load_checked(name, loaders, expected[name][0], source, stats)
    array = array.astype(dtype)
  if mesh is None:
    return jnp.asarray(array)
  return _place(array.shape, lambda index: array[index], name, axes, mesh,
                rules)


def announce_upcast(config: T5Config, stored_dtypes, source: str) -> None:
  """One log line when the checkpoint stores narrower floats than the run
  holds its weights in (a bfloat16 checkpoint in a float32 run): the values
  are upcast exactly but keep the stored precision, which no one asked for."""
  held = np.dtype(jnp.dtype(config.param_dtype))
  narrower = sorted(str(d) for d in stored_dtypes
                    if jnp.issubdtype(d, jnp.floating)
                    and d.itemsize < held.itemsize)
  if narrower:
    logging.warning(
        "%s stores its weights in %s; this run holds them in %s (upcast "
        "exactly, so their precision is %s's) and computes in %s.", source,
        " and ".join(narrower), held, " and ".join(narrower), config.dtype)


def assemble_params(config: Config, loaders: Mapping[str, Loader],
                    source: str, mesh: Optional[jax.sharding.Mesh] = None,
                    rules: Optional[partitioning.Rules] = None,
                    stats: Optional[LoadStats] = None) -> PyTree:
  """Builds the model's parameter tree from per-parameter loaders.

  Args:
    config: the model config; decides scanned vs unscanned and param dtype.
    loaders: unscanned T5X name -> zero-argument loader of a numpy array;
      a `BlockLoader` is read block by block when a mesh is given.
    source: checkpoint path, for error messages.
    mesh: when given, every array is placed with the sharding the logical
      axis rules give it; otherwise it lands on the default device.
    rules: logical axis rules (default `partitioning.logical_axis_rules()`).
    stats: when given, counts what this process read into it.

  Returns:
    Nested dict of arrays, as `T5(config).apply({'params': ...})` (or the
    decoder-only LM's) takes.

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

  stats = LoadStats() if stats is None else stats
  flat = {}
  for name, box in flat_names(abstract_params(config)).items():
    flat[name] = _assemble_one(name, tuple(box.value.shape), tuple(box.names),
                               config, loaders, expected, source, mesh, rules,
                               stats)
    stats.arrays += 1
  announce_upcast(config, stats.stored_dtypes, source)
  return traverse_util.unflatten_dict(flat, sep="/")
