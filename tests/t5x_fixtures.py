"""Writers of tiny T5X checkpoints, byte-format faithful, for reader tests.

Tests cannot download a public T5X checkpoint, so this module writes the same
on-disk formats from a small `{name: array}` dict: the legacy msgpack +
TensorStore layout in its two generations (current T5X and the older
flaxformer era, which differ in which leaves are inline and in the spec
fields), and the orbax layout of T5X's `OrbaxCheckpointManagerInterface`.
Only tests import it; it deliberately shares no code with the readers so that a
misunderstanding of the format cannot cancel out.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

import ml_dtypes
import msgpack
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

_EXT_NDARRAY = 1


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: Dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _pack_default(obj: Any) -> Any:
  """msgpack hook: numpy arrays/scalars become flax's ext type 1."""
  if isinstance(obj, (np.ndarray, np.generic)):
    arr = np.asarray(obj)
    payload = msgpack.packb(
        [list(arr.shape), arr.dtype.name, arr.tobytes("C")], use_bin_type=True)
    return msgpack.ExtType(_EXT_NDARRAY, payload)
  raise TypeError(f"cannot msgpack {type(obj).__name__}")


def _edge_padded_chunks(shape) -> list[int]:
  # More than half of each dim: two chunks per dim, the second one padded,
  # which is what T5X's 64 MiB chunks do to real edge chunks.
  return [d // 2 + 1 if d > 1 else 1 for d in shape]


def _write_zarr(directory: str, arr: np.ndarray, zarr_dtype: str) -> list[int]:
  chunks = _edge_padded_chunks(arr.shape)
  store = ts.open({
      "driver": "zarr",
      "kvstore": {"driver": "file", "path": directory + "/"},
      "metadata": {
          "shape": list(arr.shape),
          "chunks": chunks,
          "dtype": zarr_dtype,
          "compressor": {"id": "gzip", "level": 1},
      },
  }, create=True).result()
  store.write(arr).result()
  return chunks


def _zarr_dtype(arr: np.ndarray) -> str:
  return "bfloat16" if arr.dtype == ml_dtypes.bfloat16 else arr.dtype.str


def _is_inline_in_flaxformer(name: str) -> bool:
  # Flaxformer-era T5X kept unpartitioned leaves in the msgpack file.
  return name.endswith("/scale") or "relpos_bias" in name


def write_t5x_legacy(model_dir: str,
                     step: int,
                     params: Mapping[str, np.ndarray],
                     style: str = "current",
                     dtype: Optional[str] = None) -> str:
  """Writes `<model_dir>/checkpoint_<step>/` in T5X's legacy format.

  Args:
    model_dir: parent directory (created if missing).
    step: the step, in the directory name and in `state/step`.
    params: '/'-joined parameter names to arrays.
    style: 'current' (every target leaf in TensorStore, kvstore 'file' with a
      trailing '/', top-level spec dtype; step and factored Adafactor stats
      inline) or 'flaxformer' (scales and relpos tables inline, kernels in
      TensorStore with kvstore 'gfile', no trailing '/', dtype only in the zarr
      metadata; all optimizer state inline).
    dtype: None keeps each array's dtype; 'bfloat16' saves the target as
      bfloat16 (zarr dtype "bfloat16", inline dtype name 'bfloat16').

  Returns:
    The checkpoint directory.
  """
  if style not in ("current", "flaxformer"):
    raise ValueError(f"unknown style {style!r}")
  ckpt_dir = os.path.join(os.path.abspath(model_dir), f"checkpoint_{step}")
  os.makedirs(ckpt_dir)

  def spec(dotted: str, arr: np.ndarray, chunks: list[int]) -> Dict[str, Any]:
    metadata = {"chunks": chunks, "compressor": {"id": "gzip", "level": 1},
                "shape": list(arr.shape)}
    if style == "current":
      return {"driver": "zarr", "dtype": np.dtype(arr.dtype).name,
              "kvstore": {"driver": "file", "path": dotted + "/"},
              "metadata": metadata}
    metadata["dtype"] = _zarr_dtype(arr)
    return {"driver": "zarr", "kvstore": {"driver": "gfile", "path": dotted},
            "metadata": metadata}

  def store(dotted: str, arr: np.ndarray) -> Dict[str, Any]:
    chunks = _write_zarr(os.path.join(ckpt_dir, dotted), arr, _zarr_dtype(arr))
    return spec(dotted, arr, chunks)

  target, param_states = {}, {}
  for name, value in params.items():
    arr = np.asarray(value)
    if dtype is not None:
      arr = arr.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    dotted = name.replace("/", ".")
    if style == "flaxformer" and _is_inline_in_flaxformer(name):
      target[name] = arr
    else:
      target[name] = store("target." + dotted, arr)
    # Adafactor without momentum: factored second moments for matrices,
    # a full one for vectors; 'm' is a placeholder of shape [1].
    f32 = np.float32
    if arr.ndim >= 2:
      states = {"m": np.zeros([1], f32), "v": np.zeros([1], f32),
                "v_row": np.full(arr.shape[:-1], 0.5, f32),
                "v_col": np.full(arr.shape[-1:], 0.25, f32)}
    else:
      v = np.full(arr.shape, 0.75, f32)
      if style == "current":
        v = store(f"state.param_states.{dotted}.v", v)
      states = {"m": np.zeros([1], f32), "v": v,
                "v_row": np.zeros([1], f32), "v_col": np.zeros([1], f32)}
    param_states[name] = states

  contents = {
      "version": 3,
      "optimizer": {
          "target": _nest(target),
          "state": {"step": np.asarray(step, np.int32),
                    "param_states": _nest(param_states)},
      },
  }
  write_checkpoint_file(ckpt_dir, contents)
  return ckpt_dir


def read_checkpoint_file(ckpt_dir: str) -> Any:
  """The msgpack contents of `ckpt_dir/checkpoint`; arrays stay ExtType."""
  with open(os.path.join(ckpt_dir, "checkpoint"), "rb") as f:
    return msgpack.unpackb(f.read(), raw=False, strict_map_key=False)


def write_checkpoint_file(ckpt_dir: str, contents: Any) -> None:
  """(Over)writes `ckpt_dir/checkpoint`; numpy arrays become ext type 1."""
  with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
    f.write(msgpack.packb(contents, default=_pack_default, use_bin_type=True))


def write_t5x_orbax(model_dir: str,
                    step: int,
                    params: Mapping[str, np.ndarray],
                    layout: str = "state",
                    use_ocdbt: bool = True) -> str:
  """Writes an orbax T5X checkpoint `{'target': ..., 'state': {'step': ...}}`.

  Args:
    model_dir: parent directory (created if missing).
    step: the step number.
    params: '/'-joined parameter names to arrays.
    layout: 'state' writes what T5X's OrbaxCheckpointManagerInterface writes
      (a CheckpointManager with step_prefix 'checkpoint' and one item 'state':
      `checkpoint_<step>/state/`); 'root' saves the PyTree directly into
      `checkpoint_<step>/`.
    use_ocdbt: OCDBT storage (orbax's default) or per-leaf zarr directories
      (what T5X's manager used in 2023).

  Returns:
    The checkpoint (step) directory.
  """
  model_dir = os.path.abspath(model_dir)
  tree = {"target": _nest({k: np.asarray(v) for k, v in params.items()}),
          "state": {"step": np.asarray(step, np.int32)}}
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt)
  if layout == "state":
    options = ocp.CheckpointManagerOptions(step_prefix="checkpoint",
                                           create=True)
    with ocp.CheckpointManager(model_dir, item_names=("state",),
                               item_handlers={"state": handler},
                               options=options) as manager:
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(tree)))
      manager.wait_until_finished()
  elif layout == "root":
    with ocp.Checkpointer(handler) as checkpointer:
      checkpointer.save(os.path.join(model_dir, f"checkpoint_{step}"),
                        args=ocp.args.PyTreeSave(tree))
  else:
    raise ValueError(f"unknown layout {layout!r}")
  return os.path.join(model_dir, f"checkpoint_{step}")
