"""Shared command-line plumbing of the train / eval / infer entry points.

Parses absl flags and gin (T5X-style: `--gin_file`, `--gin.KEY=VALUE`,
`--gin_bindings`, `--gin_search_paths`), imports task modules so their SeqIO
registrations exist, initialises multi-host JAX when asked, logs the devices
and versions, writes the config to `MODEL_DIR` (process 0 only) once a run
has really started (a run that fails its checks, or one already finished,
leaves an existing directory's configs alone), and turns errors a user can
cause into one line on stderr instead of a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
from typing import Callable, Sequence

# TensorFlow (imported for the data pipeline) logs, at ERROR, that it found
# no CUDA driver (`failed call to cuInit`) on every machine without a GPU
# for it, right above a real `error:` line. Its C++ log level must be set
# before it is imported; --debug keeps everything.
if "--debug" not in sys.argv:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import gin  # pylint: disable=g-import-not-at-top

from prompt_tuning import compilation_cache  # pylint: disable=g-import-not-at-top
from prompt_tuning import configurables  # pylint: disable=g-import-not-at-top
from prompt_tuning.training import preemption  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files to parse, in order.")
flags.DEFINE_multi_string("gin_bindings", [],
                          "Gin bindings; `--gin.KEY=VALUE` also works.")
flags.DEFINE_multi_string("gin_search_paths", [],
                          "Directories searched for gin files and includes "
                          "(gin_configs/ is always searched last).")
flags.DEFINE_multi_string("task_module", [],
                          "Python modules to import before parsing gin, "
                          "e.g. a module that registers your SeqIO tasks.")
flags.DEFINE_bool("multihost", False,
                  "Call jax.distributed.initialize(): TPU VM pods and "
                  "clusters JAX detects (SLURM, Open MPI, ...) need nothing "
                  "more; elsewhere give the three flags below.")
# T5X's names for an explicit multi-process setup (GPU clusters, or several
# processes on one machine: launch/local_processes.py).
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0's coordinator (with --multihost).")
flags.DEFINE_integer("process_count", None,
                     "Number of processes (with --multihost).")
flags.DEFINE_integer("process_index", None,
                     "This process's index, 0..process_count-1 (with "
                     "--multihost).")
flags.DEFINE_bool("debug", False, "Show full tracebacks for errors.")
flags.DEFINE_string("compilation_cache", None,
                    "Directory of JAX's persistent compilation cache, or "
                    "'off' (default: $PROMPT_TUNING_COMPILATION_CACHE, else "
                    "~/.cache/prompt_tuning/jax_compilation_cache).")

# What a user can get wrong: bad config, paths, shapes, divisibility, data.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError,
                PermissionError, KeyError, OSError, RuntimeError)


def _import_task_modules(modules: Sequence[str]) -> None:
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ValueError(f"--task_module={name}: cannot import it ({e}); is it "
                       f"on PYTHONPATH?") from None


def _write_config(model_dir: str, name: str, text: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import storage  # pylint: disable=g-import-not-at-top
  if not model_dir or jax.process_index() != 0:
    return
  path = storage.join(model_dir, name)
  try:
    storage.write_bytes(path, text.encode("utf-8"))
  except OSError as e:
    raise OSError(f"MODEL_DIR {model_dir!r}: cannot write {path} "
                  f"({e.strerror or e}); choose a writable MODEL_DIR."
                  ) from None


def run(fn_name: str, model_dir_macro: str = "MODEL_DIR") -> None:
  """Entry point body: `python -m prompt_tuning.<cmd> --gin_file=...`."""

  def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger().setLevel(logging.INFO)
    # Libraries (orbax, seqio, tf) log through absl at INFO: keep their
    # warnings, drop their chatter so the progress lines stay readable.
    if not FLAGS.debug:
      logging.getLogger("absl").setLevel(logging.WARNING)
    try:
      # Watched from before JAX's distributed start (tens of seconds on a
      # pod): a signal then stops the run before its first step, saved.
      with (preemption.watch() if fn_name == "train" else
            contextlib.nullcontext()):
        return _main(fn_name, model_dir_macro)
    except preemption.Preempted as e:
      # Saved and resumable: a status launchers requeue on, not a failure.
      preemption.wait_for_every_process()
      print(f"preempted: {_one_line(e)}", file=sys.stderr)
      return e.exit_code
    except KeyboardInterrupt:
      # A second Ctrl-C (the first saves and stops cleanly) or one outside
      # a training run: stop at once, without a traceback.
      print("interrupted", file=sys.stderr)
      return preemption.EXIT_INTERRUPTED
    except configurables.ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    except _USER_ERRORS as e:
      if FLAGS.debug:
        raise
      print(f"error: {_one_line(e)}", file=sys.stderr)
      return 1

  app.run(main, argv=configurables.rewrite_gin_args(sys.argv),
          flags_parser=_parse_flags)


def _one_line(error: BaseException) -> str:
  """The error's message on one line, without what gin appends to it
  ("In call to configurable 'train' (<function ...>)")."""
  return re.sub(r"\s*In call to configurable .*$", "",
                " ".join(str(error).split()))


def _parse_flags(argv):
  return FLAGS(argv)


def _main(fn_name: str, model_dir_macro: str) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.multihost:
    # CPU processes need a collectives library to talk to each other (tests
    # and laptops); accelerators ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.process_count,
                               process_id=FLAGS.process_index)
    # It replaced our SIGTERM handler with JAX's preemption notifier.
    preemption.reclaim()
  elif (FLAGS.coordinator_address or FLAGS.process_count is not None or
        FLAGS.process_index is not None):
    raise ValueError("--coordinator_address/--process_count/--process_index "
                     "set without --multihost: add --multihost.")
  logging.info("jax %s, process %d/%d, devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  # Before the first compilation; its counters are logged however it ends.
  cache = compilation_cache.enable(FLAGS.compilation_cache)
  try:
    return _configure_and_call(fn_name, model_dir_macro)
  finally:
    if cache is not None:
      logging.info(cache.line())


def _configure_and_call(fn_name: str, model_dir_macro: str) -> int:
  _import_task_modules(FLAGS.task_module)
  configurables.parse(FLAGS.gin_file, FLAGS.gin_bindings,
                      FLAGS.gin_search_paths, entry=fn_name,
                      also_read=(model_dir_macro,))
  model_dir = configurables.macro(model_dir_macro) or ""
  config_text = gin.config_str()
  logging.info("Gin config:\n%s", config_text)
  fn: Callable = gin.get_configurable(fn_name)
  started = []

  def on_start() -> None:
    _write_config(model_dir, "config.gin", config_text)
    started.append(True)

  if fn_name == "train":
    # Written once the run has passed its checks: a failed start or a
    # finished run keeps the configs that describe its checkpoints.
    result = fn(on_start=on_start)
  else:
    result = fn()
    on_start()
  if started:
    _write_config(model_dir, "operative_config.gin",
                  gin.operative_config_str())
  logging.info("Result: %s", result)
  return 0
