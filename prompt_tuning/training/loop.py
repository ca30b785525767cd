"""The training loop: `train(...)`, the one function the CLI configures.

Reads a SeqIO task, loads the frozen T5 into its shardings, builds the
prompt, then steps: jitted `train_step` on global batches built from
host-local data, a progress line (loss, steps/s, tokens/s, ETA),
TensorBoard scalars, periodic checkpoints of what trains (never the frozen
model) and periodic evaluation (teacher-forced loss and token accuracy, and
decoded predictions scored by the task's metrics), with the plain records of
`records` (parameter counts, every evaluation, how the run ended). It
resumes exactly from the newest checkpoint in `model_dir` that restores:
prompt, optimizer state, rng and data position (a damaged newer one is set
aside, see `checkpoints.restore_newest`).

What it refuses, and when: everything a user can get wrong is checked before
anything is written to `model_dir` (schedule values, the task and its eval
split, best_metric, the batch against the mesh, the frozen checkpoint, a
second run holding the directory's lock, a TRAIN_STEPS below the step
already reached); `on_start` is called only then, so the CLI writes the
configs of runs that really start. Every step reports whether its new state
is finite and how large the trainable values got: a NaN or infinite loss or
state, or values whose square overflows float32 (T5's layer norm squares its
input: such a prompt is numerically meaningless), stops the run before that
state is adopted or saved, so the newest checkpoint is always a good one.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import optax
import seqio

from prompt_tuning.training import checkpoints
from prompt_tuning.training import evaluation
from prompt_tuning.data import pipeline
from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning import storage
from prompt_tuning.models.config import T5Config
from prompt_tuning.training import losses
from prompt_tuning.training import optimizers
from prompt_tuning.training import preemption
from prompt_tuning.training import preflight
from prompt_tuning.training import records
from prompt_tuning.training import run_directory
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.inference import DecodeConfig
from prompt_tuning.training.inference import RunEvaluator
from prompt_tuning.training.state import TrainState
from prompt_tuning.training.state import create_train_state
from prompt_tuning.training.state import parameter_summary

PyTree = Any


class NonFiniteLossError(RuntimeError):
  """Raised when the loss or the trained state becomes NaN or infinite, or
  the trainable values outgrow what float32 arithmetic can square."""


# sqrt(float32 max) ~ 1.8e19: past it x * x overflows to inf, so the layer
# norm over a prompt vector returns 0 or NaN and the prompt carries nothing.
_LARGEST_USABLE = float(np.sqrt(np.finfo(np.float32).max))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The schedule and bookkeeping of a run (model and data live elsewhere)."""

  # Total optimizer steps (the paper: 30,000).
  train_steps: int = 30000
  # Global batch size over all hosts (the paper: 32).
  batch_size: int = 32
  # Gradient accumulation slices per step, for batches that do not fit.
  num_microbatches: int = 1
  # T5X's z-loss coefficient.
  z_loss: float = 1e-4
  # Seeds the prompt init, dropout and data shuffling.
  seed: int = 0
  # Save what trains every this many steps (and at the end).
  checkpoint_period: int = 1000
  # Newest checkpoints kept (the best one is kept on top).
  keep_checkpoints: int = 3
  # Evaluate every this many steps (0: only at the end).
  eval_period: int = 1000
  # Split evaluated periodically.
  eval_split: str = "validation"
  # Also evaluate before the first step (the untrained prompt's baseline).
  eval_at_start: bool = False
  # Metric (as `task/metric`) whose best value selects the kept checkpoint.
  best_metric: str = ""
  # 'max' or 'min' for best_metric.
  best_mode: str = "max"
  # Log a progress line every this many steps.
  log_period: int = 100

  def __post_init__(self):
    # Checked here, before a model is loaded: gin hands over whatever was
    # written (TRAIN_STEPS=-5 would otherwise "finish" at once, exit 0).
    for name, low in _LOWER_BOUNDS.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        macro = _MACROS.get(name)
        where = f"{macro} (TrainConfig.{name})" if macro else (
            f"TrainConfig.{name}")
        raise ValueError(f"{where} = {value!r}: must be a whole number >= "
                         f"{low}.")
    if self.batch_size % self.num_microbatches:
      raise ValueError(
          f"BATCH_SIZE = {self.batch_size} is not divisible by "
          f"TrainConfig.num_microbatches = {self.num_microbatches}.")
    if self.best_mode not in ("max", "min"):
      raise ValueError(f"TrainConfig.best_mode = {self.best_mode!r}: use "
                       f"'max' or 'min'.")


# The smallest value of each integer field (train_steps=0: only the step-0
# evaluation and a checkpoint of the initial prompt).
_LOWER_BOUNDS = {"train_steps": 0, "batch_size": 1, "num_microbatches": 1,
                 "checkpoint_period": 1, "keep_checkpoints": 1,
                 "eval_period": 0, "log_period": 1}
# The macros runs/prompt_tune.gin binds them to, for the error messages.
_MACROS = {"train_steps": "TRAIN_STEPS", "batch_size": "BATCH_SIZE"}


class _Scalars:
  """TensorBoard event files via tf.summary (process 0 writes).

  TensorFlow's GCS client ignores the emulator variables (and is a second
  client beside the one storage uses), so for a gs:// directory the events
  go to a local mirror that each flush uploads.
  """

  def __init__(self, directory: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._mirror = storage.LocalMirror(directory)
    self._writer = tf.summary.create_file_writer(self._mirror.path)

  def scalar(self, name: str, value: float, step: int) -> None:
    with self._writer.as_default():
      self._tf.summary.scalar(name, float(value), step=step)

  def flush(self) -> None:
    self._writer.flush()
    self._mirror.sync()


def _tensorboard(model_dir: str, name: str) -> Optional[_Scalars]:
  if jax.process_index() != 0:
    return None
  return _Scalars(storage.join(model_dir, name))


def _input_tokens(batch: Mapping[str, np.ndarray]) -> float:
  """Real input tokens of a host batch: T5's encoder inputs, a decoder-only
  LM's real row columns."""
  if step_lib.DECODER_ONLY_FEATURE in batch:
    return float(np.sum(batch[step_lib.DECODER_ONLY_FEATURE]))
  return float(np.sum(batch["encoder_input_tokens"] > 0))


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _vocabulary(provider) -> Any:
  return provider.output_features["inputs"].vocabulary


def train(*, model_dir: str, initial_checkpoint_path: str,
          model_config: Optional[T5Config],
          mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int],
          mode: str = "prompt",
          prompt: setup.PromptConfig = setup.PromptConfig(),
          deep_prompt: methods.DeepPromptConfig = methods.DeepPromptConfig(),
          prefix: methods.PrefixConfig = methods.PrefixConfig(),
          p_tuning: methods.PTuningConfig = methods.PTuningConfig(),
          multitask_prompt: methods.MultitaskPromptConfig = (
              methods.MultitaskPromptConfig()),
          ia3: methods.IA3Config = methods.IA3Config(),
          lora: methods.LoraConfig = methods.LoraConfig(),
          optimizer: optimizers.AdafactorConfig = optimizers.PROMPT_TUNING,
          schedule: TrainConfig = TrainConfig(),
          decode: DecodeConfig = DecodeConfig(),
          dropout_rate: Optional[float] = 0.1,
          mesh_shape: Tuple[int, int] = (-1, 1),
          fsdp: bool = False,
          frozen_dtype: Optional[str] = None,
          dtype: Optional[str] = None,
          on_start: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
  """Trains a prompt (or the whole model) and returns the final metrics.

  Args:
    model_dir: run directory: checkpoints, prompts/, TensorBoard, config.
    initial_checkpoint_path: the frozen pretrained T5 (T5X or HF).
    model_config: its T5Config (required for T5X checkpoints).
    mixture_or_task_name: registered SeqIO task or mixture.
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 8}.
    mode: the method (gin's METHOD, `methods.METHODS`): 'prompt' (only
      the prompt trains), 'model' (everything trains), 'deep_prompt',
      'prefix', 'p_tuning', 'multitask_prompt', 'ia3' or 'lora'.
    prompt: the input prompt (the methods that prepend one).
    deep_prompt, prefix, p_tuning, multitask_prompt, ia3, lora: each
      method's own options (only the chosen method's are used).
    optimizer: Adafactor hyper-parameters.
    schedule: steps, batch size, checkpoint/eval/log periods.
    decode: decoding for evaluation predictions.
    dropout_rate: overrides the checkpoint config's dropout.
    mesh_shape: (data, model); -1 fills with the remaining devices.
    fsdp: also shard frozen weights over `data`.
    frozen_dtype: prompt mode: store the frozen weights in this dtype (e.g.
      'bfloat16': half the memory, no float32 copy on the device); None keeps
      the config's param_dtype.
    dtype: the compute dtype ('float32' or 'bfloat16'); None keeps the
      model config's (bfloat16 from an HF config.json and in the presets).
    on_start: called once every check has passed and the run will train (or
      finish the bookkeeping of) at least its last step: not for a finished
      run, nor one that failed to start. The CLI writes config.gin here.

  Returns:
    {'step': final step, 'train': last train metrics, 'eval': last eval,
    'parameters': counts, 'started': whether on_start was called}.

  Raises:
    ValueError, OSError, RuntimeError: a one-line, user-fixable problem
      (bad settings, paths, a directory in use, a run already past
      TRAIN_STEPS); NonFiniteLossError: the run diverged (nothing bad saved);
      preemption.Preempted: SIGTERM, SIGUSR1 or SIGINT stopped the run after
      saving the step every process agreed on (resumable).
  """
  logging.info("Process %d/%d, %d local / %d global devices (%s).",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  # Seconds, before the lock, the model or the data pipeline: a missing
  # vocabulary, checkpoint or TFDS dataset is one line, not a traceback
  # after minutes of retries.
  method = setup.make_method(mode, prompt, {
      "deep_prompt": deep_prompt, "prefix": prefix, "p_tuning": p_tuning,
      "multitask_prompt": multitask_prompt, "ia3": ia3, "lora": lora})
  preflight.check_run(initial_checkpoint_path, mixture_or_task_name)
  run_directory.check_writable(model_dir)
  # Held from here to the end: a second run on this directory stops now,
  # before it loads anything or writes a byte. Signals (preemption, Ctrl-C)
  # from here on save a checkpoint and stop; the lock is released after.
  with preemption.watch(), run_directory.hold(
      model_dir, writer=jax.process_index() == 0):
    return _start(
        model_dir=model_dir, initial_checkpoint_path=initial_checkpoint_path,
        model_config=model_config, mixture_or_task_name=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths, mode=mode, prompt=prompt,
        method=method, optimizer=optimizer, schedule=schedule, decode=decode,
        dropout_rate=dropout_rate, mesh_shape=mesh_shape, fsdp=fsdp,
        frozen_dtype=frozen_dtype, dtype=dtype, on_start=on_start)


def _start(*, model_dir: str, initial_checkpoint_path: str,
           model_config: Optional[T5Config], mixture_or_task_name: str,
           task_feature_lengths: Mapping[str, int], mode: str,
           prompt: setup.PromptConfig, method: methods.Method,
           optimizer: optimizers.AdafactorConfig,
           schedule: TrainConfig, decode: DecodeConfig,
           dropout_rate: Optional[float], mesh_shape: Tuple[int, int],
           fsdp: bool, frozen_dtype: Optional[str], dtype: Optional[str],
           on_start: Optional[Callable[[], None]]) -> Dict[str, Any]:
  """`train` under the directory's lock: check, build, resume, then loop."""
  provider = pipeline.get_task_or_mixture(mixture_or_task_name)
  pipeline.check_feature_lengths(provider, task_feature_lengths)
  # Multitask prompts index the mixture's tasks (unless configured).
  method = method.bind_tasks(tuple(
      t.name for t in seqio.get_subtasks(provider)))
  # Now, not at the first evaluation hours in: a missing or empty eval split.
  eval_tasks = evaluation.check_split(
      mixture_or_task_name, schedule.eval_split, task_feature_lengths,
      "TrainConfig.eval_split")
  if schedule.best_metric:
    _check_best_metric(schedule.best_metric, eval_tasks, schedule.eval_split,
                       task_feature_lengths)
  mesh = partitioning.create_mesh(mesh_shape)
  rules = partitioning.logical_axis_rules(fsdp)
  if schedule.batch_size % mesh.shape["data"]:
    raise ValueError(
        f"BATCH_SIZE={schedule.batch_size} is not divisible by the "
        f"data-parallel size {mesh.shape['data']} (mesh {dict(mesh.shape)}).")

  rng = jax.random.PRNGKey(schedule.seed)
  init_rng, state_rng = jax.random.split(rng)
  run = setup.build_model(
      initial_checkpoint_path=initial_checkpoint_path,
      model_config=model_config, mode=mode, prompt=prompt, mesh=mesh,
      rules=rules, vocabulary=_vocabulary(provider), rng=init_rng,
      dropout_rate=dropout_rate, frozen_dtype=frozen_dtype, dtype=dtype,
      method=method)
  counts = parameter_summary(run.trainable, run.frozen)
  logging.info("Parameters: %s total, %s trainable (%.4f%%).",
               f"{counts['total']:,}", f"{counts['trainable']:,}",
               counts["trainable_percent"])

  tx = optimizers.adafactor(optimizer)
  state = create_train_state(run.trainable, tx, state_rng)
  shardings = setup.state_shardings(state, run.trainable_shardings(), mesh)
  state = jax.device_put(state, shardings)
  # Opened only now that the inputs are known good: orbax starts background
  # work that a failing run would leave behind.
  with checkpoints.Checkpointer(
      model_dir, keep=schedule.keep_checkpoints,
      best_metric=schedule.best_metric or None,
      best_mode=schedule.best_mode, materialize=run.model_params,
      prompt_path=(run.prompt_path if run.method.exports_prompt
                   else None)) as ckpt:
    position = {"batches_consumed": 0, "seed": schedule.seed}
    resumed = ckpt.restore_newest(state)
    if resumed is not None:
      state, position, step = resumed
      logging.info("Resumed from step %d (%d batches consumed).", step,
                   position["batches_consumed"])
      if step > schedule.train_steps:
        raise ValueError(
            f"MODEL_DIR {model_dir} already holds a run at step {step}, past "
            f"TRAIN_STEPS={schedule.train_steps}; nothing was trained or "
            f"overwritten. Set TRAIN_STEPS >= {step} to continue this run, or "
            f"use a new MODEL_DIR to train {schedule.train_steps} steps.")
      # What a crash or a damaged file may have left behind: the export is
      # the prompt's only copy once keep-N deletes this checkpoint, and
      # best.json decides which checkpoint garbage collection keeps.
      ckpt.repair_prompt_export(step, state)
      ckpt.reconcile_best(records.read_eval_history(model_dir), upto=step)
      if step == schedule.train_steps and records.is_finished(model_dir):
        logging.info("The run in %s already finished at step %d "
                     "(TRAIN_STEPS=%d): nothing to do, nothing changed. Raise "
                     "TRAIN_STEPS to train on.", model_dir, step,
                     schedule.train_steps)
        return {"step": step, "train": {}, "eval": {}, "parameters": counts,
                "started": False}
    if on_start is not None:
      on_start()
    # The loop advances position["batches_consumed"]: one batch a step.
    with run_directory.explain_write_errors(
        model_dir, lambda: position["batches_consumed"]):
      if jax.process_index() == 0:
        records.write_parameters(
            model_dir, counts, mode=mode,
            prompt_parameters=(0 if run.method.trains_everything else
                               counts["trainable"]))
        # What eval, infer and export-peft rebuild the model from.
        records.write_method(model_dir, run.method)
      result = _loop(ckpt, run, state, position, shardings, tx, counts,
                     model_dir, mixture_or_task_name, task_feature_lengths,
                     schedule, decode)
    return dict(result, started=True)


def _diverged(loss_sum: float, state_finite: bool,
              largest: float) -> Optional[str]:
  """Why a step's result must not be kept, or None."""
  if not math.isfinite(loss_sum):
    return f"Non-finite training loss ({loss_sum})"
  if not state_finite:
    return ("The trained parameters or their optimizer state became "
            "non-finite (NaN or inf)")
  if largest > _LARGEST_USABLE:
    return (f"The trained parameters diverged (largest |value| {largest:.3g}"
            f" > {_LARGEST_USABLE:.3g}, where float32 squares overflow)")
  return None


def _check_best_metric(best_metric: str, eval_tasks: Sequence[str],
                       split: str, lengths: Mapping[str, int]) -> None:
  """Refuses a best_metric the evaluation will never report, at start (it
  would otherwise be ignored: no best.json, no best checkpoint kept)."""
  task, _, metric = best_metric.rpartition("/")
  known = {"eval": {"loss", "token_accuracy", "z_loss"}}
  if len(eval_tasks) > 1:  # a mixture may report the SuperGLUE average
    known["super_glue"] = {"average"}
  for name in eval_tasks:
    names = _metric_names(name, split, lengths)
    known[name] = None if names is None else names | {"score"}
  if task in known and (known[task] is None or metric in known[task]):
    return
  choices = sorted(f"{t}/{m}" for t, ms in known.items() if ms for m in ms)
  close = difflib.get_close_matches(best_metric, choices, n=3, cutoff=0.5)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise ValueError(
      f"TrainConfig.best_metric = {best_metric!r} is not a metric this run "
      f"reports on {split!r}; it would be ignored (no best.json).{hint} "
      f"Known: {', '.join(choices)}.")


def _metric_names(task_name: str, split: str,
                  lengths: Mapping[str, int]) -> Optional[set]:
  """The names a task's metric functions return, found by scoring one
  example's target against itself; None when that cannot be worked out
  (the first evaluation checks best_metric again)."""
  task = seqio.get_mixture_or_task(task_name)
  try:
    example = next(iter(task.get_dataset(
        sequence_length=dict(lengths), split=split, shuffle=False,
        num_epochs=1).take(1).as_numpy_iterator()))
    text = example.get("targets_pretokenized")
    text = (text.decode("utf-8") if isinstance(text, bytes) else
            task.output_features["targets"].vocabulary.decode(
                [int(t) for t in example["targets"]]))
    target = task.postprocess_fn(text, example=example, is_target=True)
    names = set()
    for fn in task.predict_metric_fns:
      names |= set(fn([target], [target]))
    for fn in task.score_metric_fns:
      names |= set(fn([target], [0.0]))
    return names
  except Exception:  # pylint: disable=broad-except
    return None


def _evaluation_lost(step: int, schedule: TrainConfig,
                     model_dir: str) -> bool:
  """Whether resumed `step` is one the loop evaluates (a periodic or the
  final evaluation) that has no record in eval/metrics.jsonl. Every
  process reads the same record file, so all agree (evaluation is a
  collective)."""
  if step <= 0:
    return False
  due = step == schedule.train_steps or (
      schedule.eval_period and step % schedule.eval_period == 0)
  return bool(due) and step not in records.read_eval_history(model_dir)


def _loop(ckpt: checkpoints.Checkpointer, run: setup.RunModel,
          state: TrainState, position: Dict[str, Any], shardings: TrainState,
          tx: optax.GradientTransformation, counts: Mapping[str, Any],
          model_dir: str, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], schedule: TrainConfig,
          decode: DecodeConfig) -> Dict[str, Any]:
  """Steps, logs, saves and evaluates from `state` (fresh or resumed)."""
  mesh, rules = run.mesh, run.rules

  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data"))
  train_step = step_lib.jit_train_step(
      run.model, tx, shardings, run.frozen_shardings(), batch_sharding,
      z_loss=schedule.z_loss, num_microbatches=schedule.num_microbatches,
      method=run.method)
  batches = pipeline.get_dataset(
      mixture_or_task_name, task_feature_lengths, split="train",
      global_batch_size=schedule.batch_size, shuffle=True,
      seed=schedule.seed, repeat=True,
      skip_batches=position["batches_consumed"], mesh=mesh,
      task_index=run.method.task_index(),
      converter=run.feature_converter())
  writer = _tensorboard(model_dir, "train")

  evaluator = None

  def evaluate(step: int) -> Dict[str, Any]:
    nonlocal evaluator
    if evaluator is None:  # built once: seqio caches the eval examples
      evaluator = RunEvaluator(run, mixture_or_task_name, task_feature_lengths,
                               schedule.eval_split, schedule.batch_size,
                               decode, schedule.z_loss,
                               log_dir=os.path.join(model_dir, "eval"))
    results = evaluator.evaluate(state.params, step)
    if schedule.best_metric and schedule.best_metric not in results["flat"]:
      # What the start-time check could not work out (a task whose metrics
      # need more than one example to name themselves).
      raise ValueError(
          f"TrainConfig.best_metric = {schedule.best_metric!r} is not among "
          f"the metrics of the evaluation at step {step} ("
          f"{', '.join(sorted(results['flat']))}); it would be ignored.")
    if step > 0:  # the untrained baseline has no checkpoint to select
      ckpt.record_eval(step, results["flat"])
    if jax.process_index() == 0:
      records.append_eval(model_dir, step, results["flat"])
    if writer is not None:
      for key, value in results["flat"].items():
        writer.scalar(f"eval/{key}" if "/" not in key else key, value, step)
      writer.flush()
    logging.info("eval step %d: %s", step, ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(results["flat"].items())))
    return results

  def save(step: int) -> None:
    if step in ckpt.all_steps():
      return
    ckpt.save(step, state, dict(position))

  def stop_if_requested(step: int) -> None:
    """Saves `step` and stops when a signal asked every process to."""
    signal_name = preemption.stop_requested()
    if signal_name:
      save(step)
      raise preemption.Preempted(signal_name, step, model_dir)

  first_step = int(state.step)
  # A signal while the model loaded and compiled: stop before training.
  stop_if_requested(first_step)
  last_train: Dict[str, float] = {}
  last_eval: Dict[str, Any] = {}
  if schedule.eval_at_start and first_step == 0:
    with partitioning.mesh_context(mesh, rules):
      evaluate(0)
  elif _evaluation_lost(first_step, schedule, model_dir):
    # The run stopped after saving this step and before its evaluation was
    # recorded (the loop saves, then evaluates): redo it, or an early
    # stopping candidate (or the final score) is silently missing.
    logging.info("Step %d was saved but its evaluation never finished "
                 "(the run stopped during it): evaluating it now.",
                 first_step)
    with partitioning.mesh_context(mesh, rules):
      last_eval = evaluate(first_step)
  window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
  run_start = time.perf_counter()
  accumulated = None
  with partitioning.mesh_context(mesh, rules):
    for step in range(first_step, schedule.train_steps):
      host_batch = next(batches)
      batch = partitioning.shard_batch(host_batch, mesh)
      new_state, metrics = train_step(state, run.frozen, batch)
      health = {k: metrics.pop(k) for k in ("state_finite", "params_max_abs")}
      problem = _diverged(float(metrics["loss_sum"]),
                          bool(health["state_finite"]),
                          float(health["params_max_abs"]))
      if problem:
        # The donated old state is gone, but nothing was saved from the bad
        # step: the newest checkpoint on disk is the last good one.
        latest = ckpt.latest_step()
        raise NonFiniteLossError(
            f"{problem} at step {step + 1}; stopping, nothing of it saved. "
            + (f"The last good checkpoint in {model_dir} is step {latest} "
               f"(a rerun resumes there)" if latest is not None else
               f"No checkpoint was saved yet in {model_dir}")
            + "; lower the learning rate or check the data.")
      state = new_state
      position["batches_consumed"] += 1
      accumulated = metrics if accumulated is None else jax.tree_util.tree_map(
          lambda a, b: a + b, accumulated, metrics)
      window_steps += 1
      window_tokens += _input_tokens(host_batch) * batches.num_shards
      done = step + 1
      if done % schedule.log_period == 0 or done == schedule.train_steps:
        elapsed = time.perf_counter() - window_start
        last_train = losses.summarize(
            {k: v for k, v in accumulated.items() if k != "grad_norm"})
        last_train["grad_norm"] = float(metrics["grad_norm"])
        steps_per_s = window_steps / max(elapsed, 1e-9)
        eta = (schedule.train_steps - done) / max(steps_per_s, 1e-9)
        logging.info(
            "step %d/%d | loss %.4f | token acc %.4f | %.2f steps/s | "
            "%s tokens/s | ETA %s", done, schedule.train_steps,
            last_train["loss"], last_train["token_accuracy"], steps_per_s,
            f"{window_tokens / max(elapsed, 1e-9):,.0f}", _format_eta(eta))
        if writer is not None:
          for key, value in last_train.items():
            writer.scalar(key, value, done)
          writer.scalar("steps_per_second", steps_per_s, done)
          writer.flush()
        accumulated = None
        window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
      if done % schedule.checkpoint_period == 0:
        save(done)
      if schedule.eval_period and done % schedule.eval_period == 0:
        last_eval = evaluate(done)
      if done < schedule.train_steps:  # the last step finishes the run
        stop_if_requested(done)
    final = int(state.step)
    save(final)
    if final > first_step and (not schedule.eval_period or
                               final % schedule.eval_period):
      last_eval = evaluate(final)
  logging.info("Finished at step %d in %.1fs.", final,
               time.perf_counter() - run_start)
  # A rerun of a finished run trains nothing: its summary stays as it was.
  if jax.process_index() == 0 and (final > first_step or
                                   not records.is_finished(model_dir)):
    records.write_summary(model_dir, final, schedule.train_steps, last_train,
                          last_eval.get("flat", {}))
  return {"step": final, "train": last_train,
          "eval": last_eval.get("flat", {}), "parameters": counts}
