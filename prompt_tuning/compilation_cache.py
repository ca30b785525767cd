"""JAX's persistent compilation cache, on by default for the entry points.

Every run of a sweep compiles the same train and eval steps again (minutes
at T5.1.1-Small shapes on a CPU). JAX can keep compiled executables on disk,
keyed by the computation, its shapes and shardings, the compile options, the
devices and the jax/jaxlib versions: a later process with the same key loads
the executable instead of compiling it. `enable` turns that on for
`train`/`eval`/`infer` (and so for `sweep run`, whose runs are `train`
processes) and logs one line saying where the cache is.

Where (first that is set):
1. `--compilation_cache=DIR` (`off` disables it);
2. `$PROMPT_TUNING_COMPILATION_CACHE` (same values);
3. JAX's own `$JAX_COMPILATION_CACHE_DIR`;
4. `$XDG_CACHE_HOME/prompt_tuning/jax_compilation_cache` (default
   `~/.cache/...`): a private directory of this user (JAX runs what it
   finds in the cache, so it must not be writable by others, as a /tmp one
   would be), on local disk, shared by every sweep, quickstart and hand-run
   `train` of this user (the key tells different models and versions apart,
   and a deleted sweep root keeps its compilations).

Several processes at once (a `--parallel` sweep, several users of one
directory): JAX writes an entry only from process 0 of a run, writes it
only when no file of that key exists, and the bytes of one key are the same
from every writer, so two writers racing on one key leave the right bytes.
A process reading an entry while another is still writing it gets a damaged
entry, which JAX turns into a warning and an ordinary compile (its
`jax_raise_persistent_cache_errors` is off by default; we leave it so). The
one lasting damage is a writer killed mid-write (kill -9 within the write):
later runs warn about that entry and compile it; deleting the directory
(a cache, nothing else) clears it.

JAX's default caches only computations that took at least 1 s to compile;
on a CPU the eval and decode steps of small models compile faster than
that, and each run compiles dozens of them, so the threshold here is
`MIN_COMPILE_SECONDS` unless `$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`
says otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Optional

ENV = "PROMPT_TUNING_COMPILATION_CACHE"
# Values of the flag or ENV that disable the cache.
OFF = ("off", "none", "false", "0", "no")
# Computations that compiled faster than this are not written: below ~0.1 s
# reading and deserialising an entry saves little.
MIN_COMPILE_SECONDS = 0.1

_HITS = "/jax/compilation_cache/cache_hits"
_WRITES = "/jax/compilation_cache/cache_misses"  # recorded on each write
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"


def default_directory(environ: Mapping[str, str] = os.environ) -> str:
  """`$XDG_CACHE_HOME/prompt_tuning/jax_compilation_cache` (`~/.cache/...`)."""
  base = environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "prompt_tuning", "jax_compilation_cache")


def resolve(flag: Optional[str],
            environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """The cache directory to use, or None when turned off (see the module
  docstring for the order)."""
  for value in (flag, environ.get(ENV)):
    if value is not None and value.strip():
      value = value.strip()
      if value.lower() in OFF:
        return None
      if "://" in value:
        # Kept as given, for `enable` to refuse: abspath would turn
        # gs://b/c into the local directory ./gs:/b/c.
        return value
      return os.path.abspath(os.path.expanduser(value))
  return (environ.get("JAX_COMPILATION_CACHE_DIR") or
          default_directory(environ))


@dataclasses.dataclass
class Stats:
  """What the cache did in this process (from JAX's monitoring events)."""
  directory: str
  hits: int = 0
  writes: int = 0
  seconds_saved: float = 0.0

  def line(self) -> str:
    return (f"Compilation cache {self.directory}: {self.hits} "
            f"compilation(s) loaded from it ({self.seconds_saved:.1f}s of "
            f"compiling saved), {self.writes} written to it.")


def enable(flag: Optional[str]) -> Optional[Stats]:
  """Turns the persistent cache on (unless off) and logs where it is.

  Args:
    flag: `--compilation_cache`'s value (None: not given).

  Returns:
    Counters the caller logs at the end (`Stats.line`), or None when off.

  Raises:
    ValueError: the directory is a URL (JAX's cache needs a local or mounted
      directory here).
  """
  directory = resolve(flag)
  if directory is None:
    logging.info("Compilation cache: off (%s=off / --compilation_cache=off).",
                 ENV)
    return None
  if "://" in directory:
    raise ValueError(f"compilation cache {directory}: must be a local or "
                     f"mounted directory; set {ENV} or --compilation_cache "
                     f"to one, or to 'off'.")
  try:
    # Private: JAX runs what it reads from here.
    os.makedirs(directory, mode=0o700, exist_ok=True)
  except OSError as e:
    logging.warning("Compilation cache %s cannot be created (%s): compiling "
                    "without it.", directory, e.strerror or e)
    return None
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_SECONDS)
  stats = Stats(directory)

  def on_event(event: str, **_) -> None:
    if event == _HITS:
      stats.hits += 1
    elif event == _WRITES:
      stats.writes += 1

  def on_duration(event: str, seconds: float, **_) -> None:
    if event == _SAVED:
      stats.seconds_saved += max(float(seconds), 0.0)

  jax.monitoring.register_event_listener(on_event)
  jax.monitoring.register_event_duration_secs_listener(on_duration)
  logging.info("Compilation cache: %s (%s=DIR or --compilation_cache=DIR "
               "moves it, =off disables it).", directory, ENV)
  return stats
