"""Evaluation-only and inference runs over a saved prompt or a saved run.

`evaluate(...)` scores what a run learned on a split with the task's
metrics; `infer(...)` writes a JSONL of inputs, predictions and targets.
Both rebuild the same model as training: the frozen checkpoint into its
shardings plus what was learned, taken from

- a prompt `.npy` file (prompt tuning), or the prompt export of a prompt or
  P-tuning run directory (`prompt_files`: its best step by best.json, else
  the newest; P-tuning's export is its merged prompt);
- the checkpoint of a run directory of any other method (deep prompts, prefix
  tuning, IA3, LoRA, model tuning): its `method.json` rebuilds the method
  (`methods.records`), and the trainable tree of the best checkpoint (else
  the newest; or the `checkpoint_<N>` the path names) is restored into the
  rebuilt model's shardings. `prompt_tools import-peft` writes such a
  directory for a PEFT LoRA, IA3, prefix or MPT adapter (`write_adapter_run`).

A run directory without method.json (written before it existed) is read by
its parameters.json `mode`: prompt tuning, or that method with its defaults.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.data import pipeline
from prompt_tuning.training import eval_logs
from prompt_tuning.training import evaluation
from prompt_tuning import partitioning
from prompt_tuning import methods
from prompt_tuning import storage
from prompt_tuning.models.config import T5Config
from prompt_tuning.training import checkpoints
from prompt_tuning.training import preflight
from prompt_tuning.training import prompt_files
from prompt_tuning.training import records
from prompt_tuning.training import run_directory
from prompt_tuning.training import setup
from prompt_tuning.training.inference import DecodeConfig
from prompt_tuning.training.inference import RunEvaluator


PyTree = Any

# Methods whose prompt export (prompts/step_<N>.npy) is all they add to the
# frozen model: their run directories are read as prompts, as always.
# Deep prompts are not among them: the export is only their input prompt.
PROMPT_EXPORTED = ("prompt", "p_tuning")
_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint_(\d+)$")


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """A run directory's method, and the checkpoint a path asks for."""

  # The run directory (holds method.json and checkpoint_<N>/).
  directory: str
  # The method it trained, options as trained (not yet bound to a model).
  method: methods.Method
  # A path naming `<run>/checkpoint_<N>` asks for N; None: best, else newest.
  step: Optional[int] = None
  # Whether method.json said so (else parameters.json's mode, defaults).
  recorded: bool = True


def find_run(path: str) -> Optional[SavedRun]:
  """The run `path` names, or None for anything that is not a run of a
  known method (a `.npy`, a PEFT adapter, an older prompt-tuning run).

  Args:
    path: a run directory, or one of its `checkpoint_<N>` directories.

  Raises:
    ValueError: one line, for a method.json that does not read as a method.
  """
  path = os.fspath(path).rstrip("/")
  step, directory = None, path
  match = _CHECKPOINT_DIR_RE.fullmatch(storage.basename(path))
  if match and storage.isdir(storage.dirname(path)):
    # Named even when gone (garbage-collected): the error lists the steps.
    step, directory = int(match.group(1)), storage.dirname(path)
  elif not storage.isdir(path):
    return None
  method = records.read_method(directory)
  if method is not None:
    return SavedRun(directory, method, step)
  parameters = records.read_json(
      storage.join(directory, records.PARAMETERS_FILE))
  if parameters is None:
    return None  # not a run of ours (e.g. an official numpy checkpoint)
  mode = parameters.get("mode", "prompt")
  if mode not in methods.METHODS or mode == "prompt":
    if step is not None:
      raise ValueError(
          f"{path}: {directory} has no {records.METHOD_FILE} (a run from "
          f"before it was written), so its checkpoints cannot be rebuilt; "
          f"pass the run directory or a prompts/step_<N>.npy instead.")
    return None
  logging.warning("%s has no %s (written by an older version): assuming "
                  "METHOD = %r with its default options.", directory,
                  records.METHOD_FILE, mode)
  return SavedRun(directory, methods.METHODS[mode](), step, recorded=False)


def _stored_tree(ckpt: checkpoints.Checkpointer, step: int) -> Dict[str, Any]:
  """The checkpoint's state tree of orbax array metadata (shapes, dtypes):
  the optimizer state's structure, which an evaluation does not know, must
  be restored along with the params."""
  where = storage.join(ckpt.model_dir, f"checkpoint_{step}")
  metadata = ckpt.stored_tree(step)
  tree = getattr(metadata, "tree", metadata)
  if not isinstance(tree, Mapping) or "params" not in tree:
    raise checkpoints.DamagedCheckpointError(
        step, where, "its state has no `params` (not a train state)")
  return dict(tree)


def restore_trainable(saved: SavedRun,
                      abstract_params: Optional[PyTree] = None,
                      mesh: Optional[jax.sharding.Mesh] = None
                      ) -> Tuple[PyTree, int]:
  """Reads the trainable tree of a run's chosen checkpoint.

  The checkpoint is `saved.step`, else best.json's step, else the newest.
  The run directory's lock is held while its Checkpointer is open (opening
  one clears unfinished saves), so a training run in it is refused, and
  none starts meanwhile.

  Args:
    saved: the run (`find_run`).
    abstract_params: the rebuilt model's trainable tree (arrays or
      ShapeDtypeStructs with shardings): restored into it, and checked
      against it leaf by leaf. None: the checkpoint's own tree, on one device.
    mesh: where the rest of the state (optimizer statistics, step, rng)
      lands, replicated; None: one device.

  Returns:
    (params, step).

  Raises:
    FileNotFoundError / ValueError / RuntimeError: one line (no checkpoint,
      no such step, a tree that does not fit the rebuilt model, a run
      training in the directory).
  """
  directory, method = saved.directory, saved.method
  with run_directory.hold(directory, writer=jax.process_index() == 0), \
      checkpoints.Checkpointer(directory) as ckpt:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(
          f"{directory}: no checkpoint_<N> to restore the {method.name} "
          f"parameters from (a run that saved nothing yet?).")
    step, why = saved.step, ""
    if step is None:
      step = ckpt.best_step()
      why = f"{checkpoints.BEST_FILE} names it, but " if step is not None \
          else ""
      step = steps[-1] if step is None else step
    if step not in steps:
      raise FileNotFoundError(
          f"{directory}: {why}there is no checkpoint_{step}; available "
          f"steps: {steps} (pass {directory}/checkpoint_<N>).")
    replicated = (jax.sharding.NamedSharding(mesh,
                                             jax.sharding.PartitionSpec())
                  if mesh is not None else
                  jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
        _stored_tree(ckpt, step))
    if abstract_params is not None:
      target["params"] = abstract_params
    try:
      state, _ = ckpt.restore(target, step)
    except checkpoints.DamagedCheckpointError:
      raise
    except ValueError as e:
      source = (records.METHOD_FILE if saved.recorded else
                f"{records.PARAMETERS_FILE}'s mode with default options")
      raise ValueError(
          f"The {method.name} model rebuilt from {directory}'s {source} does "
          f"not fit its checkpoint_{step} (another frozen model, or other "
          f"options?): {' '.join(str(e).split())}") from None
  logging.info("Restored the %s parameters of %s, step %d.", method.name,
               directory, step)
  return state["params"], step


def write_adapter_run(directory: str, method: methods.Method,
                      trainable: PyTree) -> str:
  """A minimal run directory that `evaluate`/`infer` read like a trained
  run's: `checkpoint_0` holding {'params': trainable, 'step': 0} (no
  optimizer state: nothing resumes from it) and method.json, written last
  so a directory with a method.json always has its checkpoint.

  Args:
    directory: a new run directory (one holding a run is refused).
    method: the method the tree is for (options only).
    trainable: its trainable tree, unscanned or scanned as the frozen model
      it is meant for (numpy or JAX arrays).

  Returns:
    The directory.
  """
  if storage.exists(storage.join(directory, records.METHOD_FILE)):
    raise ValueError(f"{directory} already holds a run "
                     f"({records.METHOD_FILE}); choose a new directory.")
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, np.float32),
                                  trainable)
  with checkpoints.Checkpointer(directory, keep=1) as ckpt:
    if ckpt.all_steps():
      raise ValueError(f"{directory} already holds checkpoints; choose a "
                       f"new directory.")
    ckpt.save(0, {"params": params, "step": jnp.zeros((), np.int32)},
              {"batches_consumed": 0, "seed": 0})
  if jax.process_index() == 0:
    records.write_method(directory, method)
  return directory


def _build_saved(saved: SavedRun, initial_checkpoint_path: str,
                 model_config: Optional[T5Config],
                 mixture_or_task_name: str, placement: str,
                 mesh_shape: Tuple[int, int], fsdp: bool,
                 frozen_dtype: Optional[str],
                 dtype: Optional[str]) -> setup.RunModel:
  """The frozen model with a run's method rebuilt and its checkpoint's
  trainable tree in place."""
  method = saved.method
  prompt = setup.PromptConfig(init="random_uniform")  # a placeholder
  if isinstance(method, methods.PromptTuning):
    if placement != method.placement:
      logging.info("placement=%r ignored: %s places its prompt %r.",
                   placement, saved.directory, method.placement)
    # The wayward penalty is training's only: no target text is needed.
    method = dataclasses.replace(method, wayward_gamma=0.0)
    prompt = dataclasses.replace(prompt, length=method.length,
                                 placement=method.placement)
  provider = pipeline.get_task_or_mixture(mixture_or_task_name)
  run = setup.build_model(
      initial_checkpoint_path=initial_checkpoint_path,
      model_config=model_config, mode=method.name, prompt=prompt,
      mesh=partitioning.create_mesh(mesh_shape),
      rules=partitioning.logical_axis_rules(fsdp),
      vocabulary=provider.output_features["inputs"].vocabulary,
      rng=jax.random.PRNGKey(0), frozen_dtype=frozen_dtype, dtype=dtype,
      method=method)
  run.trainable, _ = restore_trainable(saved, run.trainable, run.mesh)
  return run


def _build(prompt_path: str, initial_checkpoint_path: str,
           model_config: Optional[T5Config], mixture_or_task_name: str,
           placement: str, mesh_shape: Tuple[int, int],
           fsdp: bool, frozen_dtype: Optional[str] = None,
           dtype: Optional[str] = None) -> setup.RunModel:
  """The frozen model with what `prompt_path` saved in place: a prompt (a
  file, a prompt or P-tuning run directory) or a run's checkpoint."""
  saved = find_run(prompt_path)
  if saved is not None and (saved.step is not None or
                            saved.method.name not in PROMPT_EXPORTED):
    return _build_saved(saved, initial_checkpoint_path, model_config,
                        mixture_or_task_name, placement, mesh_shape, fsdp,
                        frozen_dtype, dtype)
  prompt = prompt_files.load_prompt(prompt_path)  # [P, H]
  provider = pipeline.get_task_or_mixture(mixture_or_task_name)
  mesh = partitioning.create_mesh(mesh_shape)
  run = setup.build_model(
      initial_checkpoint_path=initial_checkpoint_path,
      model_config=model_config, mode="prompt",
      # A placeholder of the right length; replaced by the saved prompt.
      prompt=setup.PromptConfig(length=int(prompt.shape[0]),
                                placement=placement, init="random_uniform"),
      mesh=mesh, rules=partitioning.logical_axis_rules(fsdp),
      vocabulary=provider.output_features["inputs"].vocabulary,
      rng=jax.random.PRNGKey(0), frozen_dtype=frozen_dtype, dtype=dtype)
  slot = run.trainable[run.prompt_path[0]]["prompt"]
  if tuple(prompt.shape) != tuple(slot["prompt"].shape):
    raise ValueError(
        f"{prompt_path}: prompt shape {tuple(prompt.shape)} does not fit the "
        f"model: its width must be emb_dim={run.config.emb_dim}.")
  slot["prompt"] = jax.device_put(prompt, slot["prompt"].sharding)
  return run


def evaluate(*, prompt_path: str, initial_checkpoint_path: str,
             model_config: Optional[T5Config], mixture_or_task_name: str,
             task_feature_lengths: Mapping[str, int],
             split: str = "validation", batch_size: int = 32,
             decode: DecodeConfig = DecodeConfig(), placement: str = "prefix",
             output_dir: str = "", mesh_shape: Tuple[int, int] = (-1, 1),
             fsdp: bool = False, frozen_dtype: Optional[str] = None,
             dtype: Optional[str] = None) -> Dict[str, Any]:
  """Evaluates a saved prompt; writes `metrics.json` and the predictions
  (`predictions/<task>/eval.jsonl`, TensorBoard text) to `output_dir` if set.

  `frozen_dtype` stores the frozen weights in that dtype (e.g. 'bfloat16'),
  as in training; `dtype` is the compute dtype ('float32' for full
  precision; None keeps the model config's, bfloat16 in T5X's presets).

  Returns:
    {'<task>/<metric>': value, 'eval/loss': ..., 'eval/token_accuracy': ...}.
  """
  # Before the model loads: the inputs are there (in seconds, not after
  # minutes of storage retries), and a missing or empty split is a config
  # mistake.
  preflight.check_run(initial_checkpoint_path, mixture_or_task_name)
  evaluation.check_split(mixture_or_task_name, split, task_feature_lengths)
  run = _build(prompt_path, initial_checkpoint_path, model_config,
               mixture_or_task_name, placement, mesh_shape, fsdp,
               frozen_dtype, dtype)
  evaluator = RunEvaluator(run, mixture_or_task_name, task_feature_lengths,
                           split, batch_size, decode,
                           log_dir=output_dir or None)
  flat = evaluator.evaluate(run.trainable)["flat"]
  for key, value in sorted(flat.items()):
    logging.info("%s: %.4f", key, value)
  if output_dir and jax.process_index() == 0:
    storage.write_bytes(storage.join(output_dir, "metrics.json"),
                        json.dumps(flat, indent=2, sort_keys=True).encode())
  return flat


def infer(*, prompt_path: str, initial_checkpoint_path: str,
          model_config: Optional[T5Config], mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], output_path: str,
          split: str = "validation", batch_size: int = 32,
          decode: DecodeConfig = DecodeConfig(), placement: str = "prefix",
          mesh_shape: Tuple[int, int] = (-1, 1),
          fsdp: bool = False, frozen_dtype: Optional[str] = None,
          dtype: Optional[str] = None) -> int:
  """Writes one JSONL record {'task', 'inputs', 'prediction', 'target'} per
  example of `split` to `output_path`; returns the number written."""
  # The checks are cheap and come before the model loads and runs; the
  # inputs first, so a refused start creates no output directory.
  preflight.check_run(initial_checkpoint_path, mixture_or_task_name)
  if jax.process_index() == 0:
    evaluation.check_output_path(output_path)
  evaluation.check_split(mixture_or_task_name, split, task_feature_lengths)
  run = _build(prompt_path, initial_checkpoint_path, model_config,
               mixture_or_task_name, placement, mesh_shape, fsdp,
               frozen_dtype, dtype)
  evaluator = RunEvaluator(run, mixture_or_task_name, task_feature_lengths,
                           split, batch_size, decode)
  if not evaluator.task_names:
    raise ValueError(
        f"No task of {mixture_or_task_name!r} with a {split!r} split has "
        f"metrics, and predictions run through seqio's evaluator, which "
        f"skips tasks without metrics: add metric_fns to the task.")
  records = []
  for task, rows in evaluator.predict(run.trainable).items():
    records.extend(dict(row, task=task) for row in rows)
  if jax.process_index() == 0:
    eval_logs.write_predictions_jsonl(output_path, records)
  logging.info("Wrote %d predictions to %s.", len(records), output_path)
  return len(records)
