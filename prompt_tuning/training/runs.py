"""Evaluation-only and inference runs over a saved prompt and a frozen T5.

`evaluate(...)` scores a prompt (a `.npy` file or a run directory, whose best
or newest prompt is taken) on a split with the task's metrics; `infer(...)`
writes a JSONL of inputs, predictions and targets. Both rebuild the same model
as training: the frozen checkpoint into its shardings plus the prompt.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import jax

from prompt_tuning.data import pipeline
from prompt_tuning.training import eval_logs
from prompt_tuning.training import evaluation
from prompt_tuning import partitioning
from prompt_tuning import storage
from prompt_tuning.models.config import T5Config
from prompt_tuning.training import preflight
from prompt_tuning.training import prompt_files
from prompt_tuning.training import setup
from prompt_tuning.training.inference import DecodeConfig
from prompt_tuning.training.inference import RunEvaluator


def _build(prompt_path: str, initial_checkpoint_path: str,
           model_config: Optional[T5Config], mixture_or_task_name: str,
           placement: str, mesh_shape: Tuple[int, int],
           fsdp: bool, frozen_dtype: Optional[str] = None,
           dtype: Optional[str] = None) -> setup.RunModel:
  """The frozen model with the saved prompt (file or run directory) in place."""
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
  slot = run.trainable["encoder"]["prompt"]
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
