"""Paths of run directories and checkpoints: local files or `gs://` objects.

Everything that reads or writes a run directory (records, the lock,
checkpoints' side files, prompts, predictions, configs, sweep roots) goes
through these few functions, so `MODEL_DIR=gs://bucket/run` works as T5X
users write it. Local paths go through `os` exactly as before; URLs go through
fsspec (gcsfs for `gs://`), which honours `STORAGE_EMULATOR_HOST` (and then
needs no credentials) as google-cloud-storage does. Object stores have no
directories and no rename: `makedirs` is a no-op there, every object write is
already atomic (a reader sees the old object or the new one), and exclusive
creation uses the generation precondition `ifGenerationMatch=0`.

Importing this module also points etils' path layer (orbax's) at its fsspec
backend: with TensorFlow installed etils would pick TensorFlow's GCS client,
which ignores the emulator variables; `EPATH_USE_TF=true` set by the user
still wins.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, BinaryIO, Callable, Iterator, List, Optional, Tuple

# Read by etils when it first resolves a `gs://` path, so setting it here,
# before any checkpoint is opened, is enough (see the module docstring).
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's experimental default asks Google's gRPC storage-control endpoint for
# every bucket's layout (zonal / hierarchical); that endpoint is not the
# emulator and not needed for ordinary buckets.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def is_remote(path: str) -> bool:
  """True for URLs (`gs://...`), False for local paths."""
  return "://" in os.fspath(path)


def _fs(path: str):
  """The fsspec filesystem of a URL; listings are never cached, since other
  processes (a second run, the other hosts) write the same prefixes."""
  import fsspec  # pylint: disable=g-import-not-at-top
  protocol = path.split("://", 1)[0]
  return fsspec.filesystem(protocol, use_listings_cache=False)


def join(base: str, *parts: str) -> str:
  return (posixpath.join(base, *parts) if is_remote(base)
          else os.path.join(base, *parts))


def dirname(path: str) -> str:
  return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
  if is_remote(path):
    return posixpath.basename(path.rstrip("/"))
  return os.path.basename(path)


def absolute(path: str) -> str:
  """An absolute local path; a URL unchanged (os.path.abspath would turn
  `gs://b/x` into a local `./gs:/b/x`)."""
  path = os.fspath(path)
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return _fs(path).exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  """A local directory, or a URL prefix with at least one object under it."""
  return _fs(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return _fs(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
  """Local `mkdir -p`; nothing for a URL (objects need no directories)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> List[str]:
  """Names directly under `path` (files and sub-directories).

  Raises:
    FileNotFoundError: nothing is there.
  """
  if not is_remote(path):
    return os.listdir(path)
  names = [basename(p) for p in _fs(path).ls(path, detail=False)]
  return [n for n in names if n]


def walk(root: str) -> Iterator[Tuple[str, List[str], List[str]]]:
  """os.walk for both kinds; a URL's folders are the prefixes of objects."""
  if not is_remote(root):
    yield from os.walk(root)
    return
  # Top-down like os.walk: a caller that prunes `subfolders` in place is
  # never listed below them.
  subfolders, files = [], []
  for entry in _fs(root).ls(root, detail=True):
    name = posixpath.basename(entry["name"].rstrip("/"))
    if name:
      (subfolders if entry["type"] == "directory" else files).append(name)
  yield root, subfolders, files
  for name in subfolders:
    yield from walk(join(root, name))


def open_file(path: str, mode: str = "rb", **kwargs: Any):
  """`open` for local paths; fsspec's file object for URLs (no append)."""
  if not is_remote(path):
    return open(path, mode, **kwargs)  # pylint: disable=unspecified-encoding
  return _fs(path).open(path, mode, **kwargs)


def read_bytes(path: str) -> bytes:
  """Raises FileNotFoundError / OSError like `open`."""
  if is_remote(path):
    return _fs(path).cat_file(path)
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def getmtime(path: str) -> float:
  if not is_remote(path):
    return os.path.getmtime(path)
  return _fs(path).modified(path).timestamp()


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Writes `path` whole or not at all: readers never see a partial file.

  Local: a temp file beside it and os.replace (atomic within one
  filesystem). URL: one object upload, which GCS makes visible at once.
  """
  if is_remote(path):
    buffer = io.BytesIO()
    write(buffer)
    _fs(path).pipe_file(path, buffer.getvalue())
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with naming(path), open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
  """Makes an OSError raised inside name `path`: a failed write() or
  flush() (a full disk: a bare `[Errno 28]`) names no file by itself."""
  try:
    yield
  except OSError as e:
    if e.filename is not None and e.filename != f"{path}.tmp-{os.getpid()}":
      raise
    raise OSError(e.errno, e.strerror or str(e), path) from e


def write_bytes(path: str, data: bytes) -> None:
  """`atomic_write` of bytes, creating the local parent directory."""
  makedirs(dirname(path) or ".")
  atomic_write(path, lambda f: f.write(data))


def remove(path: str) -> None:
  """Removes one file or object (FileNotFoundError when absent)."""
  if is_remote(path):
    _fs(path).rm_file(path)
  else:
    os.remove(path)


def move(source: str, target: str) -> None:
  """Moves a file or directory tree (on an object store: copy, then delete,
  object by object; nothing on GCS renames a prefix)."""
  if is_remote(source):
    _fs(source).mv(source, target, recursive=True)
  else:
    shutil.move(source, target)


def move_aside(source: str, target: str) -> str:
  """Moves `source` to `target`, or to `target.1`, `target.2`, ... when that
  is taken (something set aside earlier is never overwritten); returns where
  it went."""
  suffix = 0
  while exists(target + (f".{suffix}" if suffix else "")):
    suffix += 1
  target += f".{suffix}" if suffix else ""
  makedirs(dirname(target))
  move(source, target)
  return target


# ---------------------------------------------------- generations (locking)


def generation(path: str) -> Optional[str]:
  """The object's generation (it changes on every write); None locally.

  Raises:
    FileNotFoundError: no such object.
  """
  if not is_remote(path):
    return None
  return str(_fs(path).info(path)["generation"])


def write_if_generation(path: str, data: bytes, generation_match: str) -> None:
  """Uploads `path` only if its generation is still `generation_match`
  ("0": only if the object does not exist), as one request: of two writers
  racing on one generation exactly one succeeds.

  Raises:
    FileExistsError: the object is not at that generation (anymore).
    ValueError: `path` is local (use an exclusive open there).
  """
  if not is_remote(path):
    raise ValueError(f"{path}: generations exist only on object stores.")
  fs = _fs(path)
  bucket, _, name = path.split("://", 1)[1].partition("/")
  # gcsfs passes a precondition only for "create" uploads; a multipart upload
  # carries any `ifGenerationMatch` (GCS answers 412, raised as
  # FileExistsError).
  upload = fs.base.replace("/storage/v1/", "/upload/storage/v1/")
  boundary = "==prompt-tuning=="
  body = (f"--{boundary}\nContent-Type: application/json; charset=UTF-8\n\n"
          f"{json.dumps({'name': name})}\n--{boundary}\n"
          f"Content-Type: application/octet-stream\n\n").encode("utf-8")
  body += data + f"\n--{boundary}--".encode("utf-8")
  fs.call("POST", upload + "b/{}/o", bucket, uploadType="multipart",
          ifGenerationMatch=str(generation_match), data=body,
          headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
          json_out=True)


# ------------------------------------------- writers that need a local path


class LocalMirror:
  """A local directory standing in for `target` for writers that can only
  write local files (TensorFlow's event writer, whose GCS client ignores the
  emulator variables): `sync()` uploads what changed. For a local `target`
  it is `target` itself and `sync()` does nothing.
  """

  def __init__(self, target: str):
    self.target = target
    self._sizes = {}
    if is_remote(target):
      self._tmp = tempfile.TemporaryDirectory(prefix="prompt_tuning_mirror_")
      self.path = self._tmp.name
    else:
      self._tmp = None
      self.path = target

  def sync(self) -> None:
    """Uploads every file that is new or grew since the last sync."""
    if self._tmp is None:
      return
    for folder, _, files in os.walk(self.path):
      for name in files:
        local = os.path.join(folder, name)
        size = os.path.getsize(local)
        if self._sizes.get(local) == size:
          continue
        relative = os.path.relpath(local, self.path).replace(os.sep, "/")
        with open(local, "rb") as f:
          data = f.read()
        _fs(self.target).pipe_file(join(self.target, relative), data)
        self._sizes[local] = size


def local_copy(path: str, names: List[str]) -> str:
  """`path` itself when local; else a local temp directory holding those of
  `names` that exist under the URL `path`, for readers that need files on
  disk (safetensors maps them). The copy is deleted when the process ends.
  """
  if not is_remote(path):
    return path
  target = tempfile.mkdtemp(prefix="prompt_tuning_copy_")
  atexit.register(shutil.rmtree, target, True)
  fs = _fs(path)
  for name in names:
    source = join(path, name)
    if fs.isfile(source):
      fs.get_file(source, os.path.join(target, name))
  return target
