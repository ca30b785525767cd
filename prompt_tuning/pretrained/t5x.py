"""Lazy readers for pretrained T5X checkpoints, legacy (msgpack) and orbax.

A pretrained T5 is frozen during prompt tuning, so all we need from a T5X
checkpoint is its parameter tree (`target`), never the optimizer state. The
readers return `{name: loader}`: '/'-joined parameter names mapped to zero-arg
functions that read one array each. Nothing is read until a loader is called,
because an XXL checkpoint is 44 GB and must stream leaf by leaf into sharded
device buffers rather than sit in host memory at once. TensorStore leaves are
`BlockLoader`s: on a mesh each process reads only the blocks its devices
hold. Inline msgpack leaves (already in memory with the msgpack file) and
orbax leaves (restored whole through orbax) are read whole and sliced.

Layouts handled (`<ckpt>` is `<model_dir>/checkpoint_<N>`):
- Legacy T5X (every public checkpoint): `<ckpt>/checkpoint` is msgpack
  `{"version": 3, "optimizer": {"target": ..., "state": ...}}`; each leaf is an
  inline array (msgpack ext type 1) or a TensorStore spec of a zarr directory
  `<ckpt>/target.<dotted.name>/`.
- Orbax, written by T5X's `OrbaxCheckpointManagerInterface`: an
  `ocp.CheckpointManager(step_prefix='checkpoint')` with one item named
  `state` holding `train_state.state_dict()`, i.e. the PyTree
  `{"target": params, "state": {"step": ..., "param_states": ...}}` lives in
  `<ckpt>/state/` (and the input pipeline, if saved, in `<ckpt>/dataset/`).
  T5X's own restore detects this by `state_subdir.stem == 'state'`. We also
  accept that PyTree at `<ckpt>/` itself (a plain PyTreeCheckpointer save)
  and in `<ckpt>/default/` (orbax's name for an unnamed item). OCDBT and
  per-leaf zarr item directories both restore through orbax's
  PyTreeCheckpointHandler.

Paths may be local or remote (`gs://...`): files through `storage` (gcsfs,
which honours STORAGE_EMULATOR_HOST), arrays through TensorStore's gcs
driver (TENSORSTORE_GCS_HTTP_URL).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from etils import epath
import ml_dtypes
import msgpack
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from prompt_tuning import storage
from prompt_tuning.pretrained.assemble import BlockLoader

LazyParams = Dict[str, Callable[[], np.ndarray]]

# T5X's msgpack file name inside `checkpoint_<N>/`.
_MSGPACK_NAME = "checkpoint"
# flax.serialization's msgpack extension codes (ndarray, numpy scalar); both
# carry msgpack `[shape, dtype name, raw C-order bytes]`.
_EXT_NDARRAY = 1
_EXT_NPSCALAR = 3
# flax splits arrays over its msgpack size limit into flat chunks, marked so.
_CHUNKED_KEY = "__msgpack_chunked_array__"
# Versions with the `optimizer` wrapper (0 had none); 3, written since
# 2021-06, differs from 2 only in storing bfloat16 natively, not as uint16.
_KNOWN_VERSIONS = (1, 2, 3)
# Files that only an orbax PyTree item directory contains.
_ORBAX_ITEM_MARKERS = ("_METADATA", "manifest.ocdbt")
# Item sub-directories of a step directory: T5X's name first, then orbax's.
_ORBAX_ITEM_SUBDIRS = ("state", "default")
_STEP_DIR_RE = re.compile(r"checkpoint_(\d+)")


# ---------------------------------------------------------------- file access


def _is_remote(path: str) -> bool:
  return storage.is_remote(path)


def _exists(path: str) -> bool:
  return storage.exists(path)


def _isdir(path: str) -> bool:
  return storage.isdir(path)


def _isfile(path: str) -> bool:
  return storage.isfile(path)


def _listdir(path: str) -> list[str]:
  return [name.rstrip("/") for name in storage.listdir(path)]


def _read_bytes(path: str) -> bytes:
  return storage.read_bytes(path)


def _kvstore(directory: str) -> Dict[str, str]:
  """TensorStore kvstore spec of `directory` (local, gs:// or s3://)."""
  for scheme, driver in (("gs://", "gcs"), ("s3://", "s3")):
    if directory.startswith(scheme):
      bucket, _, path = directory[len(scheme):].partition("/")
      return {"driver": driver, "bucket": bucket,
              "path": path.rstrip("/") + "/"}
  if _is_remote(directory):
    raise ValueError(
        f"Cannot read TensorStore arrays from {directory!r}: only local, "
        "gs:// and s3:// paths are supported; copy the checkpoint locally.")
  return {"driver": "file", "path": os.path.abspath(directory) + "/"}


# ------------------------------------------------------------ finding a step


def _orbax_item_dir(ckpt_dir: str) -> Optional[str]:
  """The orbax PyTree item directory of a step directory, if there is one."""
  if any(_exists(posixpath.join(ckpt_dir, m)) for m in _ORBAX_ITEM_MARKERS):
    return ckpt_dir
  for sub in _ORBAX_ITEM_SUBDIRS:
    item_dir = posixpath.join(ckpt_dir, sub)
    # Orbax releases before `_METADATA` wrote only an aggregate msgpack file,
    # also named `checkpoint`; inside a named item dir it cannot be legacy T5X.
    markers = _ORBAX_ITEM_MARKERS + (_MSGPACK_NAME,)
    if any(_exists(posixpath.join(item_dir, m)) for m in markers):
      return item_dir
  return None


def is_t5x_legacy(ckpt_dir: str) -> bool:
  """Whether `ckpt_dir` holds a legacy T5X `checkpoint` msgpack file.

  Check this before `is_t5x_orbax`: T5X itself prefers the legacy file when a
  step directory has both.
  """
  has_orbax_root = any(
      _exists(posixpath.join(ckpt_dir, m)) for m in _ORBAX_ITEM_MARKERS)
  return _isfile(posixpath.join(ckpt_dir, _MSGPACK_NAME)) and not has_orbax_root


def is_t5x_orbax(ckpt_dir: str) -> bool:
  """Whether `ckpt_dir` (or its state/, default/) holds an orbax PyTree."""
  return _isdir(ckpt_dir) and _orbax_item_dir(ckpt_dir) is not None


def find_t5x_checkpoint(path: str) -> str:
  """Resolves a user-given path to a T5X `checkpoint_<N>` directory.

  Args:
    path: the `checkpoint` msgpack file, a `checkpoint_<N>` directory, or a
      model directory holding `checkpoint_<N>` sub-directories (the largest
      complete N wins; `checkpoint_5.tmp-...` and empty dirs are ignored).

  Returns:
    The step directory, to pass to `read_t5x_legacy` / `read_t5x_orbax`.
  """
  path = path.rstrip("/") or path
  hint = ("pass a T5X model dir, a checkpoint_<N> dir or its `checkpoint` "
          "file")
  if not _exists(path):
    raise FileNotFoundError(
        f"T5X checkpoint path {path!r} does not exist; {hint}.")
  if not _isdir(path):
    if posixpath.basename(path) != _MSGPACK_NAME:
      raise ValueError(
          f"{path!r} is a file but not a T5X `checkpoint` msgpack file; "
          f"{hint}.")
    return posixpath.dirname(path)
  if is_t5x_legacy(path) or is_t5x_orbax(path):
    return path
  steps = []
  for name in _listdir(path):
    match = _STEP_DIR_RE.fullmatch(name)
    child = posixpath.join(path, name)
    if match and (is_t5x_legacy(child) or is_t5x_orbax(child)):
      steps.append((int(match.group(1)), child))
  if not steps:
    raise FileNotFoundError(
        f"No T5X checkpoint in {path!r}: neither it nor a checkpoint_<N>/ "
        f"sub-directory has a `checkpoint` file or an orbax item; {hint}.")
  return max(steps)[1]


# -------------------------------------------------------------- legacy reader


def _dtype(name: str) -> np.dtype:
  """numpy dtype of a flax/T5X dtype name; bfloat16 & co come from ml_dtypes."""
  if hasattr(ml_dtypes, name):
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


def _decode_inline(payload: bytes, name: str) -> np.ndarray:
  """Decodes flax's ext-type payload `[shape, dtype name, bytes]`."""
  try:
    shape, dtype_name, buffer = msgpack.unpackb(payload, raw=True)
    if isinstance(dtype_name, bytes):
      dtype_name = dtype_name.decode()
    array = np.frombuffer(buffer, dtype=_dtype(dtype_name)).reshape(shape)
  except (ValueError, TypeError, msgpack.UnpackException) as e:
    raise ValueError(
        f"Inline array of parameter {name!r} is corrupt ({e}); re-download "
        "the checkpoint's `checkpoint` file.") from e
  # frombuffer aliases the msgpack bytes read-only; callers may write.
  return array.copy()


def _unchunk(node: Mapping[str, Any], name: str) -> np.ndarray:
  """Reassembles an array flax split into flat chunks (keys '0', '1', ...)."""
  chunks = node["chunks"]
  flat = np.concatenate(
      [_decode_inline(chunks[str(i)].data, name) for i in range(len(chunks))])
  shape = [node["shape"][str(i)] for i in range(len(node["shape"]))]
  return flat.reshape(shape)


def _is_ts_spec(node: Any) -> bool:
  return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _open_tensorstore(spec: Mapping[str, Any], name: str,
                      ckpt_dir: str) -> ts.TensorStore:
  """Opens (reads the metadata of) the zarr array of parameter `name`.

  The directory is found by T5X's naming rule (`target.<dotted name>`), never
  by the spec's kvstore: specs hold relative, absolute-elsewhere or driver
  names (`file`, `gfile`, `gcs`) of the machine that wrote them.
  """
  array_dir = posixpath.join(ckpt_dir, "target." + name.replace("/", "."))
  if not _exists(posixpath.join(array_dir, ".zarray")):
    # Fall back on the basename of the spec's own path, should a writer have
    # named the directory differently.
    spec_path = spec["kvstore"].get("path") or spec.get("path") or ""
    alt_dir = posixpath.join(ckpt_dir,
                             posixpath.basename(spec_path.rstrip("/")))
    if not spec_path or not _exists(posixpath.join(alt_dir, ".zarray")):
      raise FileNotFoundError(
          f"TensorStore array of parameter {name!r} is missing: no "
          f"{array_dir}/.zarray; the checkpoint is incomplete, copy the whole "
          "checkpoint_<N> directory.")
    array_dir = alt_dir
  zarr_dtype = spec.get("metadata", {}).get("dtype", "")
  if spec.get("dtype") == "uint16" or zarr_dtype in ("<u2", ">u2", "|u2"):
    raise ValueError(
        f"Parameter {name!r} in {array_dir} is bfloat16 stored as uint16 (T5X "
        "checkpoint version 2); re-save it with a T5X newer than 2021-06.")
  store = ts.open({"driver": "zarr", "kvstore": _kvstore(array_dir)},
                  open=True, read=True).result()
  shape = tuple(store.shape)
  expected = spec.get("metadata", {}).get("shape")
  if expected is not None and tuple(expected) != shape:
    raise ValueError(
        f"Parameter {name!r}: {array_dir} holds shape {shape} but the "
        f"`checkpoint` file says {tuple(expected)}; the checkpoint is mixed "
        "from different runs, re-copy it.")
  return store


def _read_tensorstore(spec: Mapping[str, Any], name: str, ckpt_dir: str,
                      index: Optional[Tuple[slice, ...]] = None) -> np.ndarray:
  """Reads parameter `name`, or only its block `index`: TensorStore fetches
  just the chunks that the block overlaps."""
  store = _open_tensorstore(spec, name, ckpt_dir)
  if index is not None:
    store = store[index]
  return np.asarray(store.read().result())


def _tensorstore_shape(spec: Mapping[str, Any], name: str,
                       ckpt_dir: str) -> Tuple[int, ...]:
  return tuple(_open_tensorstore(spec, name, ckpt_dir).shape)


def _legacy_loader(node: Any, name: str,
                   ckpt_dir: str) -> Callable[[], np.ndarray]:
  """The zero-arg loader of one `target` leaf, checked but not yet read."""
  if isinstance(node, msgpack.ExtType) and node.code in (_EXT_NDARRAY,
                                                         _EXT_NPSCALAR):
    return functools.partial(_decode_inline, node.data, name)
  if isinstance(node, dict) and node.get(_CHUNKED_KEY):
    return functools.partial(_unchunk, node, name)
  if _is_ts_spec(node):
    if node["driver"] != "zarr":
      raise ValueError(
          f"Parameter {name!r} uses TensorStore driver {node['driver']!r}; "
          "T5X writes only 'zarr', so this checkpoint was not written by T5X.")
    return BlockLoader(
        read=functools.partial(_read_tensorstore, node, name, ckpt_dir),
        shape=functools.partial(_tensorstore_shape, node, name, ckpt_dir))
  if isinstance(node, (bool, int, float)):
    return functools.partial(np.asarray, node)
  raise ValueError(
      f"Parameter {name!r} in {ckpt_dir} has an unsupported value of type "
      f"{type(node).__name__}; expected an inline array or a TensorStore spec.")


def read_t5x_legacy(ckpt_dir: str) -> LazyParams:
  """Lazily reads the parameters (`optimizer/target`) of a legacy checkpoint.

  Only the small msgpack file is parsed now; optimizer state is skipped and
  each TensorStore leaf is opened when, and only when, its loader is called.

  Args:
    ckpt_dir: a `checkpoint_<N>` directory (see `find_t5x_checkpoint`).

  Returns:
    `{name: loader}` with names like 'encoder/layers_0/attention/key/kernel';
    a loader returns the array in its stored dtype (float32, or ml_dtypes
    bfloat16 for a bfloat16 save).
  """
  msgpack_path = posixpath.join(ckpt_dir, _MSGPACK_NAME)
  if not _isfile(msgpack_path):
    raise FileNotFoundError(
        f"No T5X `checkpoint` msgpack file in {ckpt_dir!r}; pass a "
        "checkpoint_<N> dir written by T5X (find_t5x_checkpoint resolves "
        "model dirs).")
  try:
    # Ext types stay as raw msgpack.ExtType: decoding is deferred to loaders,
    # and optimizer-state arrays are never decoded at all.
    contents = msgpack.unpackb(
        _read_bytes(msgpack_path), raw=False, strict_map_key=False)
  except (ValueError, TypeError, msgpack.UnpackException) as e:
    raise ValueError(
        f"{msgpack_path} is not valid msgpack ({e}); the file is corrupt or "
        "not a T5X checkpoint, re-copy it.") from e
  if not isinstance(contents, dict) or "version" not in contents:
    keys = sorted(contents) if isinstance(contents, dict) else []
    orbax_hint = ("; it looks like an orbax checkpoint, use read_t5x_orbax"
                  if "target" in keys else "")
    raise ValueError(
        f"{msgpack_path} is not a T5X checkpoint: no 'version' field "
        f"(top-level keys {keys}){orbax_hint}.")
  version = contents["version"]
  if version not in _KNOWN_VERSIONS:
    raise ValueError(
        f"{msgpack_path} has T5X checkpoint version {version!r}; this reader "
        f"knows versions {_KNOWN_VERSIONS}, update it for the new format.")
  optimizer = contents.get("optimizer")
  target = optimizer.get("target") if isinstance(optimizer, dict) else None
  if not isinstance(target, dict):
    raise ValueError(
        f"{msgpack_path} is not a T5X checkpoint: no 'optimizer/target' "
        "parameter tree; pass the checkpoint of a T5X training run.")

  loaders: LazyParams = {}

  def visit(node: Any, keys: Tuple[str, ...]) -> None:
    if (isinstance(node, dict) and not _is_ts_spec(node) and
        not node.get(_CHUNKED_KEY)):
      for key, child in node.items():
        visit(child, keys + (str(key),))
    else:
      name = "/".join(keys)
      loaders[name] = _legacy_loader(node, name, ckpt_dir)

  visit(target, ())
  if not loaders:
    raise ValueError(
        f"{msgpack_path} has an empty 'optimizer/target' tree; the checkpoint "
        "holds no parameters.")
  return loaders


# --------------------------------------------------------------- orbax reader


def _restore_orbax_leaf(item_dir: str, keys: Tuple[str, ...],
                        leaf_metadata: Any) -> np.ndarray:
  """Restores the single leaf `target/<keys>` of an orbax item as numpy."""
  item: Any = leaf_metadata
  restore_args: Any = ocp.RestoreArgs(restore_type=np.ndarray)
  for key in reversed(("target",) + keys):
    item, restore_args = {key: item}, {key: restore_args}
  handler = ocp.PyTreeCheckpointHandler()
  try:
    # partial_restore reads only the leaves named in `item`: one array, on the
    # host, unsharded; the rest of the checkpoint is not touched.
    restored = handler.restore(
        epath.Path(item_dir),
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
  finally:
    handler.close()
  for key in ("target",) + keys:
    restored = restored[key]
  return np.asarray(restored)


def read_t5x_orbax(ckpt_dir: str) -> LazyParams:
  """Lazily reads the parameters (`target`) of an orbax T5X checkpoint.

  The tree is learnt from orbax's metadata without reading arrays; each loader
  restores one leaf.

  Args:
    ckpt_dir: a `checkpoint_<N>` directory (see `find_t5x_checkpoint`) or the
      orbax item directory itself.

  Returns:
    `{name: loader}`, names '/'-joined under `target`, as `read_t5x_legacy`.
  """
  if not _is_remote(ckpt_dir):
    # Orbax rejects relative paths.
    ckpt_dir = os.path.abspath(ckpt_dir)
  item_dir = _orbax_item_dir(ckpt_dir) if _isdir(ckpt_dir) else None
  if item_dir is None:
    raise FileNotFoundError(
        f"No orbax checkpoint in {ckpt_dir!r}: expected _METADATA or "
        "manifest.ocdbt in it or in its state/ or default/ sub-directory; "
        "pass a checkpoint_<N> dir written by T5X with orbax.")
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(epath.Path(item_dir)).tree
  except (OSError, ValueError) as e:
    raise ValueError(
        f"Cannot read the orbax metadata of {item_dir} ({e}); the checkpoint "
        "is incomplete or corrupt, re-copy it.") from e
  finally:
    handler.close()
  target = tree.get("target") if isinstance(tree, Mapping) else None
  if not isinstance(target, Mapping) or not target:
    keys = sorted(tree) if isinstance(tree, Mapping) else []
    raise ValueError(
        f"Orbax checkpoint {item_dir} has no 'target' parameter tree "
        f"(top-level keys {keys}); T5X saves {{'target': params, 'state': "
        "...}}, so this is not a T5X checkpoint.")

  loaders: LazyParams = {}

  def visit(node: Any, keys: Tuple[str, ...]) -> None:
    if isinstance(node, Mapping):
      for key, child in node.items():
        visit(child, keys + (str(key),))
    elif isinstance(node, (list, tuple)):
      raise ValueError(
          f"Orbax checkpoint {item_dir}: 'target/{'/'.join(keys)}' is a "
          "sequence; T5X parameter trees are nested dicts only.")
    else:
      loaders["/".join(keys)] = functools.partial(
          _restore_orbax_leaf, item_dir, keys, node)

  visit(target, ())
  return loaders
