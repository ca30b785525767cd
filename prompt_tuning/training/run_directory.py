"""The run directory itself: is MODEL_DIR usable, and is anyone else in it.

Two trainings on one directory would both train until one dies at its first
save (or worse, interleave checkpoints), so a training run holds
`<model_dir>/run.lock` from its start to its end: a small JSON file (host,
pid, the process's start time, when) created with an exclusive create, so
exactly one of two racing runs gets it. A second run is refused at start,
naming the first. A lock left behind by a run that died (kill -9, a lost
machine) is stale when its host is this host and its process is gone, or is
another process that reused the pid: it is then taken over with a warning.
A lock from another host cannot be checked from here, so it is refused with
the command that removes it. Only process 0 of a multi-process run takes
the lock: the processes of one run share the directory by design.

On an object store (`MODEL_DIR=gs://...`) the lock is an object created with
the precondition "generation 0" (it must not exist), one request that exactly
one of two racing runs wins; a stale lock is taken over by overwriting it
with the precondition "still the generation that was found stale", so of two
runs taking over one lock, one wins.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

from prompt_tuning import storage

LOCK_FILE = "run.lock"


def check_writable(model_dir: str) -> None:
  """Fails at construction, not at the first save hours into a run.

  Raises:
    OSError: one line naming MODEL_DIR, the path that is in the way and why.
  """
  if not model_dir:
    raise OSError("MODEL_DIR is not set: pass --gin.MODEL_DIR=\"'/path'\".")
  # Unique per host, process and call: identical hosts of one run (same
  # pids in identical containers) probe the shared directory at once.
  probe = storage.join(model_dir, f".write_probe.{socket.gethostname()}."
                       f"{os.getpid()}.{uuid.uuid4().hex[:8]}")
  try:
    storage.makedirs(model_dir)
    with storage.open_file(probe, "wb") as f:
      f.write(b"ok")
    storage.remove(probe)
  except OSError as e:
    if storage.is_remote(model_dir):
      raise OSError(f"MODEL_DIR {model_dir!r} is not usable: writing "
                    f"{probe} failed ({e}); check the bucket and the "
                    f"credentials.") from None
    raise OSError(f"MODEL_DIR {model_dir!r} is not usable: "
                  f"{_blocker(model_dir, e)}.") from None


def _blocker(model_dir: str, error: OSError) -> str:
  """Why `model_dir` cannot be written, naming the path in the way (the raw
  error names a probe file the user never asked for)."""
  path = os.path.abspath(model_dir)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    return (f"{path} is a file, not a directory; choose a MODEL_DIR that is "
            f"not inside a file")
  if not os.access(path, os.W_OK):
    return (f"{path} is not writable by this user; choose another MODEL_DIR "
            f"or fix its permissions")
  return (f"writing in {path} failed ({error.strerror or error}); choose "
          f"another MODEL_DIR")


# Write failures that no retry fixes: the disk or the quota is full, the
# file system went read-only.
_FULL = {errno.ENOSPC: "no space left on device",
         errno.EDQUOT: "disk quota exceeded",
         errno.EROFS: "the file system is read-only"}


def _write_failure(error: BaseException) -> Optional[OSError]:
  """The OSError of a full or read-only disk behind `error` (orbax and
  TensorStore wrap it), else None."""
  seen = 0
  while error is not None and seen < 16:
    if isinstance(error, OSError) and error.errno in _FULL:
      return error
    for number, text in ((errno.ENOSPC, "No space left on device"),
                         (errno.EDQUOT, "Disk quota exceeded")):
      if text in str(error):
        return OSError(number, text)
    error, seen = error.__cause__ or error.__context__, seen + 1
  return None


@contextlib.contextmanager
def explain_write_errors(model_dir: str, step: Callable[[], int]
                         ) -> Iterator[None]:
  """Turns a full (or read-only) disk during a run into one line naming the
  file, the step and what to do; the raw error names neither.

  Args:
    model_dir: the run directory.
    step: the step the run is at (called when a write fails).

  Raises:
    OSError: one line; other errors pass through unchanged.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    failure = _write_failure(e)
    if failure is None:
      raise
    raise OSError(
        f"{_FULL[failure.errno]}: writing {failure.filename or model_dir} at "
        f"step {step()} failed; free space there (or choose another "
        f"MODEL_DIR, copying {model_dir} over) and rerun: the run resumes "
        f"from its last checkpoint.") from None


def _start_time(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (Linux /proc), which
  tells a live holder from a new process that got its pid; None elsewhere."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      # Field 22; the command name (field 2) may hold spaces, so count from
      # after its closing parenthesis.
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start_time: Optional[str]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's live process
  now = _start_time(pid)
  return start_time is None or now is None or now == start_time


def _describe(holder: Dict[str, Any]) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')!r}, started "
          f"{holder.get('started', '?')}")


def _damage(holder: Dict[str, Any]) -> str:
  """What makes a parsed lock name no process ('' when it names one)."""
  pid = holder.get("pid")
  if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
    return f"its pid {pid!r} is not a process id"
  return ""


def _read(path: str) -> Optional[Dict[str, Any]]:
  try:
    holder = json.loads(storage.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # half-written by a run killed mid-write: stale
  return holder if isinstance(holder, dict) else {}


def _mtime(path: str) -> float:
  try:
    return storage.getmtime(path)
  except OSError:
    return 0.0


def _create(path: str, me: Dict[str, Any]) -> None:
  """Creates the lock, or raises FileExistsError."""
  data = json.dumps(me).encode("utf-8")
  if storage.is_remote(path):
    storage.write_if_generation(path, data, "0")
    return
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  with os.fdopen(fd, "wb") as f:
    f.write(data)


def _take_over(path: str, seen: Optional[str],
               me: Dict[str, Any]) -> bool:
  """Replaces the stale lock found at generation `seen` (None locally).

  Returns:
    True if this run now holds the lock; False if another run changed it
    first (look again).
  """
  if storage.is_remote(path):
    try:
      storage.write_if_generation(path, json.dumps(me).encode("utf-8"), seen)
    except (FileExistsError, FileNotFoundError):
      return False
    return True
  # Renaming is atomic: of two runs taking over one stale lock, one wins
  # and the other sees the winner's live lock on its next look.
  aside = f"{path}.stale.{os.getpid()}"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return False
  os.remove(aside)
  try:
    _create(path, me)
  except FileExistsError:
    return False
  return True


@contextlib.contextmanager
def hold(model_dir: str, writer: bool = True) -> Iterator[None]:
  """Holds `<model_dir>/run.lock` for the duration of a run.

  Args:
    model_dir: an existing, writable run directory.
    writer: False on processes other than 0 (they take no lock).

  Raises:
    RuntimeError: another live run holds the lock, or a run on another host
      does (one line naming it and what to do).
  """
  if not writer:
    yield
    return
  path = storage.join(model_dir, LOCK_FILE)
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "start_time": _start_time(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  for _ in range(3):  # a stale lock taken over by a racing run: look again
    try:
      _create(path, me)
      break
    except FileExistsError:
      pass
    try:
      # Read before the holder: a newer holder fails the take-over below.
      seen = storage.generation(path)
    except FileNotFoundError:
      continue  # released meanwhile
    holder = _read(path)
    if holder is None:
      continue  # released meanwhile
    if not holder and time.time() - _mtime(path) < 10:
      # Just created and not yet written by a run starting right now.
      raise RuntimeError(f"MODEL_DIR {model_dir} is being taken by another "
                         f"run starting now ({path}); use another "
                         f"MODEL_DIR.")
    same_host = holder.get("host") == me["host"]
    if holder and not same_host:
      raise RuntimeError(
          f"MODEL_DIR {model_dir} is in use by another run ("
          f"{_describe(holder)}, per {path}); this host cannot check that "
          f"run: if it is dead, remove {path} and rerun, else use another "
          f"MODEL_DIR.")
    damaged = holder and _damage(holder)
    if holder and not damaged and _alive(holder["pid"],
                                         holder.get("start_time")):
      raise RuntimeError(
          f"MODEL_DIR {model_dir} is in use by another run ("
          f"{_describe(holder)}); wait for it to finish or stop it, or use "
          f"another MODEL_DIR.")
    if _take_over(path, seen, me):
      if damaged:
        # No run of this host can hold a lock that names no process.
        logging.warning("Took over the damaged lock %s: %s.", path, damaged)
      else:
        logging.warning("Took over the stale lock %s of a run that is no "
                        "longer running (%s).", path,
                        _describe(holder) if holder else "unreadable")
      break
  else:
    raise RuntimeError(f"Could not take {path}: other runs keep taking it; "
                       f"use another MODEL_DIR.")
  try:
    yield
  finally:
    # Only our own lock is ours to remove.
    if _read(path) == me:
      storage.remove(path)
