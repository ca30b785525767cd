"""Checkpoints of what trains, the best step, and the exported prompt.

A prompt-tuning run saves only its train state (`step`, the trainable
`params`, `opt_state`, `rng`) plus the input pipeline's position; the frozen
pretrained T5 is read from its own checkpoint on every start and never
re-written (an XXL copy per checkpoint would be 44 GB). Layout of a run
directory, T5X-compatible in naming:

  <model_dir>/checkpoint_<N>/   orbax: items `state`, `data_position`, `metrics`
  <model_dir>/prompts/step_<N>.npy   the learned prompt, float32 [P, H]
  <model_dir>/best.json         {"metric", "mode", "value", "step"}

Orbax writes each checkpoint to a temporary directory and renames it when
complete (on `gs://`, which cannot rename, it writes in place and commits
with a final marker file), so a crash never leaves a half-written checkpoint
that looks valid.
Garbage collection keeps the newest `keep` checkpoints plus the best one by a
dev metric (the paper selects prompts by early stopping on dev); prompt
exports are tiny and never deleted. Existing checkpoints are never
overwritten: saving a step at or below the newest one is an error, and so is
saving a state with a NaN or infinity in it, so "the newest checkpoint" is
always one a run can continue from. A checkpoint that no longer reads
(truncated files, a damaged `_METADATA`, a missing item) is skipped by
`restore_newest`, which resumes from the newest one that does and moves the
damaged ones, untouched, to `<model_dir>/damaged/` (they are never deleted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import logging
import re
import sys
from typing import (Any, Callable, Dict, List, Literal, Mapping, Optional,
                    Sequence, Tuple)

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning import partitioning
from prompt_tuning import storage
from prompt_tuning.training import best as best_lib
from prompt_tuning.training import prompt_export
from prompt_tuning.training import run_directory
from prompt_tuning.training import state_trees
from prompt_tuning.training import state as state_lib

PyTree = Any

_STEP_PREFIX = "checkpoint"
_STATE = "state"
_DATA_POSITION = "data_position"
_METRICS = "metrics"
_ITEMS = (_STATE, _DATA_POSITION, _METRICS)
# Read back by `prompt_files` (eval/infer runs).
PROMPTS_DIR = prompt_export.PROMPTS_DIR
BEST_FILE = best_lib.BEST_FILE
_DAMAGED_DIR = "damaged"
# TensorStore's status codes, which start the ValueErrors it raises for
# unreadable files; orbax's own ValueErrors (a tree that does not fit) don't.
_STORE_ERROR_RE = re.compile(
    r"^(DATA_LOSS|FAILED_PRECONDITION|NOT_FOUND|OUT_OF_RANGE|INTERNAL|"
    r"UNKNOWN|UNAVAILABLE|INVALID_ARGUMENT|PERMISSION_DENIED|ABORTED):")


class DamagedCheckpointError(ValueError):
  """A checkpoint directory that exists but cannot be restored (truncated or
  missing files, unreadable metadata, non-finite values), as opposed to one
  that reads fine but does not fit the run (a plain ValueError)."""

  def __init__(self, step: int, path: str, reason: str):
    super().__init__(f"{path} cannot be restored: {reason}")
    self.step, self.path, self.reason = step, path, reason


def _is_read_echo(error: Optional[BaseException]) -> bool:
  """Whether `error` is an echo of a failed checkpoint read (see below)."""
  if isinstance(error, RuntimeError):
    return str(error) == "Event loop is closed"
  return isinstance(error, ValueError) and bool(
      _STORE_ERROR_RE.match(str(error).strip()))


class _ReadEchoFilter(logging.Filter):
  """Drops asyncio's log records ("Task exception was never retrieved",
  "Exception in callback") whose exception is a read echo."""

  def filter(self, record: logging.LogRecord) -> bool:
    # asyncio's handler logs the exception as exc_info.
    return not (record.exc_info and _is_read_echo(record.exc_info[1]))


def _silence_read_echoes() -> None:
  """When a checkpoint read fails, orbax's asyncio loop and TensorStore's
  threads still finish the read's other futures: each failure echoes as an
  asyncio error log (a task's exception never retrieved, a callback into the
  closed loop) or an ignored `RuntimeError: Event loop is closed` through
  Python's error hooks, a screen of tracebacks above the one-line "Skipped
  checkpoint" warning that says it all. This drops exactly those echoes
  (process-wide: they can arrive after `restore` returned, when the tasks
  are collected) and passes everything else on."""
  if getattr(sys.excepthook, "drops_read_echoes", False):
    return
  previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, traceback):
    if not _is_read_echo(value):
      previous_except(kind, value, traceback)

  def unraisablehook(unraisable):
    if not _is_read_echo(unraisable.exc_value):
      previous_unraisable(unraisable)

  excepthook.drops_read_echoes = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
  logging.getLogger("asyncio").addFilter(_ReadEchoFilter())


def _damaged(step: int, path: str, error: BaseException
             ) -> "DamagedCheckpointError":
  return DamagedCheckpointError(step, path, _reason(error))


def _reason(error: BaseException) -> str:
  """The first line of an orbax/TensorStore error, short enough to log."""
  text = " ".join(str(error).split()) or type(error).__name__
  text = text.split(" See full TensorStore details")[0]
  return text[:200] + ("..." if len(text) > 200 else "")


def all_finite(tree: PyTree) -> bool:
  """No NaN or infinity in `tree`; jitted, so arrays sharded over processes
  work (every process calls it, as every process calls `save`)."""
  return bool(partitioning.to_host(jax.jit(state_lib.all_finite)(tree)))


def _is_writer() -> bool:
  # Orbax coordinates its own multi-process writes; our small side files
  # (prompt exports, best.json) must have exactly one writer.
  return jax.process_index() == 0


def _to_json(value: Any, what: str) -> Any:
  """Converts numpy/jax scalars to Python ones; fails early on anything JSON
  cannot hold, before orbax has started a checkpoint directory."""

  def default(x):
    if isinstance(x, (np.generic, np.ndarray, jax.Array)) and np.ndim(x) == 0:
      return np.asarray(x).item()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")

  try:
    return json.loads(json.dumps(value, default=default))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} must be JSON-serializable: {e}.") from None


@dataclasses.dataclass
class _KeepNewestAndBest(ocp.checkpoint_managers.PreservationPolicy):
  """Orbax preservation policy: the newest `keep` steps plus the best step.

  The best step is read at each garbage collection, not fixed when the policy
  is built, because `record_eval` can name a new best at any time.
  """

  keep: int
  best_step: Callable[[], Optional[int]]

  def should_preserve(self, checkpoints, *, context) -> Sequence[bool]:
    del context  # Unused: the decision depends on steps only.
    newest = set(sorted(c.step for c in checkpoints)[-self.keep:])
    best = self.best_step()
    return [c.step in newest or c.step == best for c in checkpoints]


class Checkpointer:
  """Saves and restores a run's train state in `model_dir`.

  Every process calls `save`, `restore` and `record_eval` with the same
  arguments (orbax synchronises the processes); only process 0 writes the
  prompt exports and best.json.

  Usage:
    with Checkpointer(model_dir, keep=3, best_metric="accuracy") as ckpt:
      if ckpt.latest_step() is not None:
        state, position = ckpt.restore(abstract_state)
      ...
      ckpt.save(step, state, {"batches_consumed": n, "seed": 0})
      ckpt.record_eval(step, {"accuracy": 81.2})
  """

  def __init__(self,
               model_dir: str | os.PathLike,
               keep: int = 3,
               best_metric: Optional[str] = None,
               best_mode: Literal["max", "min"] = "max",
               prompt_path: Optional[Sequence[str]] = ("encoder", "prompt",
                                                       "prompt"),
               materialize: Optional[Callable[[PyTree], PyTree]] = None):
    """Opens (creating if needed) the run directory.

    Args:
      model_dir: the run directory: a local path or a `gs://` URL.
      keep: how many of the newest checkpoints survive garbage collection
        (the best one is kept in addition).
      best_metric: the eval metric that picks the best step (e.g. "accuracy");
        None tracks no best.
      best_mode: "max" if a larger `best_metric` is better, "min" otherwise.
      prompt_path: where the prompt sits in `state.params`; it is exported
        as prompts/step_<N>.npy on every save. None, or a path absent from
        the params (model tuning), exports nothing.
      materialize: trainable params -> model params (a method's
        reparameterisation, e.g. P-tuning's prompt encoder), applied before
        the prompt is looked up; None: the params hold the prompt itself.

    Raises:
      ValueError: bad `keep`/`best_mode`, or best.json tracks another metric.
      OSError: `model_dir` cannot be created or written.
    """
    if keep < 1:
      raise ValueError(f"keep={keep} must be >= 1.")
    if best_mode not in best_lib.MODES:
      raise ValueError(
          f"best_mode={best_mode!r} must be one of {best_lib.MODES}.")
    self.model_dir = storage.absolute(os.fspath(model_dir))
    self.keep = keep
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.prompt_path = tuple(prompt_path) if prompt_path is not None else None
    self._materialize = materialize
    run_directory.check_writable(self.model_dir)
    try:
      self._best = best_lib.read(self.model_dir)
    except ValueError as e:
      # Derived data: `reconcile_best` rebuilds it from the evaluations.
      logging.warning("%s Rebuilding it from the evaluations.", e)
      self._best = None
    if self._best is not None and best_metric is not None and (
        self._best["metric"], self._best.get("mode", best_mode)) != (
            best_metric, best_mode):
      raise ValueError(
          f"{storage.join(self.model_dir, BEST_FILE)} tracks "
          f"{self._best.get('mode', '?')} {self._best['metric']!r} but this "
          f"run asks for {best_mode} {best_metric!r}; use a new model_dir or "
          f"the same best_metric/best_mode.")
    options = ocp.CheckpointManagerOptions(
        step_prefix=_STEP_PREFIX,
        create=True,
        # Saves are rare next to train steps; waiting keeps "save returned"
        # meaning "the checkpoint is on disk".
        enable_async_checkpointing=False,
        # Leftovers of a crashed save are never valid checkpoints.
        cleanup_tmp_directories=True,
        preservation_policy=_KeepNewestAndBest(keep, self.best_step))
    self._manager = ocp.CheckpointManager(
        self.model_dir,
        item_names=_ITEMS,
        # Known handlers let `restore` read the metadata of a checkpoint this
        # process has not written, to check shapes before orbax reads data.
        item_handlers={
            _STATE: ocp.StandardCheckpointHandler(),
            _DATA_POSITION: ocp.JsonCheckpointHandler(),
            _METRICS: ocp.JsonCheckpointHandler(),
        },
        options=options)

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Waits for pending work and releases orbax's resources."""
    self._manager.close()

  def all_steps(self) -> List[int]:
    """Steps with a complete checkpoint, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None if there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> Optional[int]:
    """The step with the best `best_metric` so far (mirrors best.json)."""
    return None if self._best is None else int(self._best["step"])

  def best(self) -> Optional[Dict[str, Any]]:
    """The contents of best.json, or None before the first eval."""
    return None if self._best is None else dict(self._best)

  def save(self,
           step: int,
           state: PyTree,
           data_position: Mapping[str, Any],
           metrics: Optional[Mapping[str, float]] = None) -> None:
    """Writes checkpoint_<step> and prompts/step_<step>.npy; returns when done.

    Args:
      step: the train step; must be newer than every existing checkpoint.
      state: the train state pytree; exactly this is saved (never pass the
        frozen model in it).
      data_position: where the input pipeline is, e.g.
        {"batches_consumed": 1200, "seed": 0}; JSON-serializable.
      metrics: optional eval metrics of this step; stored with the checkpoint
        and passed to `record_eval`.

    Raises:
      ValueError: the step already exists or is older than the newest
        checkpoint (an existing run directory is never overwritten),
        `state` holds a NaN or infinity, or `data_position`/`metrics` cannot
        be written as JSON.
    """
    step = int(step)
    position = _to_json(dict(data_position), "data_position")
    metrics_json = _to_json(dict(metrics or {}), "metrics")
    self._check_new_step(step)
    if not all_finite(state):
      # The newest checkpoint is what a rerun resumes from: it must be one
      # that can be continued (the loop stops before this; this is the
      # guarantee for every caller).
      raise ValueError(
          f"Not saving step {step} in {self.model_dir}: its state holds NaN "
          f"or infinite values; the newest checkpoint stays step "
          f"{self.latest_step()}.")
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardSave(state),
              _DATA_POSITION: ocp.args.JsonSave(position),
              _METRICS: ocp.args.JsonSave(metrics_json),
          }),
          # Our own checks above decide; no interval policy may skip a save.
          force=True)
    except ocp.checkpoint_manager.StepAlreadyExistsError:
      raise ValueError(self._exists_message(step)) from None
    self._manager.wait_until_finished()
    self._export_prompt(step, state)
    if metrics:
      self.record_eval(step, metrics)

  def record_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
    """Updates the best step from one eval's metrics.

    The best step's checkpoint (if it has one) is protected from garbage
    collection for as long as it stays best. Ties keep the earlier step;
    NaN never becomes best.

    Returns:
      True if `step` is the new best.
    """
    if self.best_metric is None or self.best_metric not in metrics:
      return False
    value = float(np.asarray(metrics[self.best_metric]))
    old = None if self._best is None else float(self._best["value"])
    if not best_lib.is_better(value, old, self.best_mode):
      return False
    self._set_best(best_lib.record(self.best_metric, self.best_mode, value,
                                   step))
    return True

  def reconcile_best(self, history: Mapping[int, Mapping[str, float]],
                     upto: int) -> None:
    """Makes best.json what the one rule picks from the evaluations so far.

    A resumed run calls this: best.json may be missing (deleted, or lost with
    a crash) or name another step than `history` selects; then the best
    checkpoint would go unprotected and a later step would win a tie.

    Args:
      history: step -> flat metrics of every recorded evaluation
        (`records.read_eval_history`).
      upto: the resumed step; later records belong to steps this run will
        train (and evaluate) again.
    """
    if self.best_metric is None:
      return
    seen = {s: m for s, m in history.items() if s <= upto}
    step = best_lib.select_step(seen, self.best_metric, self.best_mode)
    if step is None or (self._best is not None and
                        int(self._best["step"]) == step):
      return
    logging.warning(
        "%s %s; the evaluations in eval/metrics.jsonl select step %d: "
        "rewriting it.", storage.join(self.model_dir, BEST_FILE),
        "is missing" if self._best is None else
        f"names step {self._best['step']}", step)
    self._set_best(best_lib.record(self.best_metric, self.best_mode,
                                   seen[step][self.best_metric], step))

  def _set_best(self, best: Dict[str, Any]) -> None:
    self._best = best
    if _is_writer():
      best_lib.write(self.model_dir, best)

  def restore(self,
              abstract_state: PyTree,
              step: Optional[int] = None) -> Tuple[PyTree, Dict[str, Any]]:
    """Reads a checkpoint into the structure and shardings of a state.

    Args:
      abstract_state: the run's state as ShapeDtypeStructs with `.sharding`
        (e.g. from `jax.eval_shape` plus partitioning), or as concrete arrays
        whose shardings are reused.
      step: defaults to the newest checkpoint.

    Returns:
      (state, data_position): arrays placed as `abstract_state` asks.

    Raises:
      FileNotFoundError: no checkpoint (or none for `step`) in model_dir.
      DamagedCheckpointError: the checkpoint's files cannot be read.
      ValueError: the checkpoint's tree or shapes differ from the run's.
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(
          f"{self.model_dir}: no {_STEP_PREFIX}_<N> to restore from.")
    if step is None:
      step = steps[-1]
    elif int(step) not in steps:
      raise FileNotFoundError(
          f"{self.model_dir}: no checkpoint for step {step}; available "
          f"steps: {steps}.")
    step = int(step)
    target = jax.tree_util.tree_map(state_trees.abstract_leaf, abstract_state)
    # Installed before any read (the metadata read below is one), not after
    # one fails: the callbacks can fire before the failure reaches here.
    _silence_read_echoes()
    self._check_matches(step, target)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardRestore(target),
              _DATA_POSITION: ocp.args.JsonRestore(),
          }))
    except ValueError as e:
      if isinstance(e, json.JSONDecodeError) or _STORE_ERROR_RE.match(
          str(e).strip()):
        raise _damaged(step, self._ckpt_dir(step), e) from None
      # Same leaves but another tree shape, e.g. an optimizer chain with one
      # more (stateless) transformation: orbax's message is many lines.
      detail = " ".join(str(e).split())[:300]
      raise ValueError(
          f"{self._ckpt_dir(step)}: the checkpoint's state does not fit this "
          f"run's (did the optimizer configuration change?): {detail}"
      ) from None
    except Exception as e:  # pylint: disable=broad-except
      # TensorStore raises bare Exceptions (and orbax KeyErrors for missing
      # items) for files that are truncated or gone.
      raise _damaged(step, self._ckpt_dir(step), e) from None
    position = restored[_DATA_POSITION]
    if not isinstance(position, Mapping) or "batches_consumed" not in position:
      raise DamagedCheckpointError(
          step, self._ckpt_dir(step),
          f"its {_DATA_POSITION} is {position!r}, not the input pipeline's "
          f"position")
    return restored[_STATE], dict(position)

  def restore_newest(self, abstract_state: PyTree
                     ) -> Optional[Tuple[PyTree, Dict[str, Any], int]]:
    """Restores the newest checkpoint that reads and holds finite values.

    Damaged checkpoints newer than it are moved, untouched, to
    `<model_dir>/damaged/` (with a warning naming each and why), so the run
    can write those steps again; nothing is deleted. A checkpoint that reads
    but does not fit the run is an error, not damage: every older one would
    not fit either.

    Returns:
      (state, data_position, step), or None if model_dir has no checkpoint.

    Raises:
      DamagedCheckpointError: there are checkpoints but none restores (then
        nothing is moved).
      ValueError: the checkpoints do not fit the run's state.
    """
    steps = self.all_steps()
    damaged: List[DamagedCheckpointError] = []
    for step in reversed(steps):
      try:
        state, position = self.restore(abstract_state, step)
      except DamagedCheckpointError as e:
        damaged.append(e)
        continue
      if not all_finite(state):
        damaged.append(DamagedCheckpointError(
            step, self._ckpt_dir(step),
            "its state holds NaN or infinite values (written before saves "
            "were checked)"))
        continue
      for bad in damaged:
        self._set_aside(bad, step)
      self._manager.reload()
      return state, position, step
    if not damaged:
      return None
    reasons = "; ".join(f"step {e.step}: {e.reason}" for e in damaged)
    raise DamagedCheckpointError(
        damaged[0].step, self.model_dir,
        f"none of its {len(damaged)} checkpoint(s) restores ({reasons}). "
        f"Nothing was changed; move them away to start over, or use a new "
        f"model_dir")

  def _set_aside(self, bad: DamagedCheckpointError, resumed: int) -> None:
    """Moves a damaged checkpoint to damaged/ (process 0; the others wait)."""
    target = storage.join(self.model_dir, _DAMAGED_DIR,
                          storage.basename(bad.path))
    if _is_writer():
      target = storage.move_aside(bad.path, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"set_aside_{bad.step}")
    logging.warning(
        "Skipped checkpoint step %d: %s. Moved it, unchanged, to %s; resuming "
        "from step %d.", bad.step, bad.reason, target, resumed)

  def _ckpt_dir(self, step: int) -> str:
    return storage.join(self.model_dir, f"{_STEP_PREFIX}_{step}")

  def _exists_message(self, step: int) -> str:
    return (f"{self._ckpt_dir(step)} already exists; checkpoints are never "
            f"overwritten: restore from it, or use a new model_dir.")

  def _check_new_step(self, step: int) -> None:
    # Re-list: another run (or a crashed one) may have written since __init__.
    self._manager.reload()
    steps = self.all_steps()
    if step in steps:
      raise ValueError(self._exists_message(step))
    if steps and step < steps[-1]:
      raise ValueError(
          f"{self.model_dir}: step {step} is older than the newest checkpoint "
          f"(step {steps[-1]}); a run in a directory with checkpoints must "
          f"restore first, or use a new model_dir.")

  def stored_tree(self, step: int) -> Any:
    """A checkpoint's state tree as orbax array metadata (shapes, dtypes),
    without reading an array: for a reader that does not know the state's
    structure (evaluation restores the optimizer state it never uses).

    Raises:
      DamagedCheckpointError: its metadata is unreadable or has no state.
    """
    try:
      metadata = self._manager.item_metadata(step)[_STATE]
    except Exception as e:  # pylint: disable=broad-except
      # A damaged _METADATA or a missing `state/` (JSON or key errors).
      raise _damaged(step, self._ckpt_dir(step), e) from None
    if metadata is None:
      raise DamagedCheckpointError(
          step, self._ckpt_dir(step),
          f"no readable `{_STATE}` item (not a checkpoint written by this "
          f"Checkpointer, or its {_STATE}/ is gone)")
    return metadata

  def _check_matches(self, step: int, target: PyTree) -> None:
    state_trees.check_fits(self.stored_tree(step), target,
                           self._ckpt_dir(step))

  def _host_prompt(self, state: PyTree) -> Optional[np.ndarray]:
    """[P, H] the state's prompt on every process, or None (nothing to
    export). A collective where the prompt is spread over processes: every
    process calls it (orbax's save and restore require all of them anyway)."""
    if self.prompt_path is None:
      return None
    if self._materialize is not None and getattr(state, "params", None):
      state = {"params": self._materialize(state.params)}
    prompt = prompt_export.find(state, self.prompt_path)
    if prompt is None:
      return None
    return partitioning.to_host(prompt).astype(np.float32)

  def _export_prompt(self, step: int, state: PyTree) -> None:
    prompt = self._host_prompt(state)
    if prompt is not None and _is_writer():
      prompt_export.write(self.model_dir, step, prompt)

  def repair_prompt_export(self, step: int, state: PyTree) -> None:
    """After a resume: rewrites the restored step's prompt export from the
    checkpoint if it is missing or damaged (a crash between the checkpoint
    and its export, a truncated copy): once keep-N deletes the checkpoint,
    the export is the only copy of that prompt."""
    prompt = self._host_prompt(state)
    if prompt is not None and _is_writer():
      prompt_export.repair(self.model_dir, step, prompt)
