"""Evaluation and inference for a run's model (prompted or fully tuned).

`RunEvaluator` computes, for a split of a task or mixture, the teacher-forced
loss and token accuracy and the task's own metrics on decoded predictions
(seqio's evaluation machinery: postprocessor, then metric functions). The same
jitted decoding serves the inference run, which writes inputs, predictions
and targets as JSONL; with a `log_dir`, every evaluation writes its
predictions too (`eval_logs.PredictionLogger`). With
`DecodeConfig.rank_classification`, tasks that have label words are predicted
by scoring every label word instead (one encoder pass per batch, one
teacher-forced decoder pass per label).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Dict, List, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.data import pipeline
from prompt_tuning.training import evaluation
from prompt_tuning import metrics
from prompt_tuning import partitioning
from prompt_tuning import storage
from prompt_tuning.models import decoding
from prompt_tuning.training import decoder_inference
from prompt_tuning.training import losses
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.setup import RunModel

PyTree = Any

DECODE_METHODS = ("greedy", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How predictions are decoded for evaluation and inference."""

  # 'greedy' (T5X's default for classification) or 'beam'.
  method: str = "greedy"
  # Beams for method='beam' (T5X: 4).
  beam_size: int = 4
  # Length-penalty exponent for beam search (T5X: 0.6).
  alpha: float = 0.6
  # Tokens to decode at most; 0 = the targets feature length.
  max_decode_length: int = 0
  # End-of-sequence id of T5's vocabularies (a decoder-only LM stops at its
  # config.json's eos_token_id instead).
  eos_id: int = 1
  # Predict classification tasks by the label word the model scores highest
  # (never an invalid prediction) instead of decoding; tasks without label
  # words are still decoded.
  rank_classification: bool = False

  def __post_init__(self):
    if self.method not in DECODE_METHODS:
      raise ValueError(f"Unknown decoding method {self.method!r}; use one of "
                       f"{DECODE_METHODS}.")


def _predict(params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array],
             *, model, decode: DecodeConfig, length: int,
             method=None) -> jax.Array:
  full = step_lib.full_params(method, params, frozen)
  if step_lib.DECODER_ONLY_FEATURE in batch:
    return decoder_inference.predict(
        model, full, batch, length=length, method=decode.method,
        eos_id=decode.eos_id, beam_size=decode.beam_size, alpha=decode.alpha,
        prompt=step_lib.example_prompt(method, params, batch))
  encoded, mask = _encode(model, full, method, params, batch)
  if decode.method == "greedy":
    return decoding.greedy_decode_encoded(model, full, encoded, mask, length,
                                          decode.eos_id)
  tokens, _ = decoding.beam_search_encoded(model, full, encoded, mask, length,
                                           decode.beam_size, decode.alpha,
                                           decode.eos_id)
  return tokens[:, 0]


def _encode(model, full: PyTree, method, params: PyTree,
            batch: Mapping[str, jax.Array]):
  """(encoded, mask) with the method's per-example prompt if it has one."""
  prompt = step_lib.example_prompt(method, params, batch)
  extra = {} if prompt is None else {"prompt": prompt}
  return model.apply({"params": full}, batch["encoder_input_tokens"],
                     method="encode_with_mask", **extra)


def _rank(params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array],
          candidates: jax.Array, *, model, method=None) -> jax.Array:
  """[B, C] log-likelihood of each candidate target row [C, L] per example."""
  full = step_lib.full_params(method, params, frozen)
  if step_lib.DECODER_ONLY_FEATURE in batch:
    return decoder_inference.rank(
        model, full, batch, candidates,
        prompt=step_lib.example_prompt(method, params, batch))
  encoded, mask = _encode(model, full, method, params, batch)
  batch_size = encoded.shape[0]
  # C is small (the label words): a static loop reuses one encoder pass.
  scores = [decoding.score_encoded(
      model, full, encoded, mask,
      jnp.broadcast_to(candidates[c], (batch_size, candidates.shape[1])))
            for c in range(candidates.shape[0])]
  return jnp.stack(scores, axis=-1)  # C x [B] -> [B, C]


class RunEvaluator:
  """Evaluates a run's current trainable params on one split."""

  def __init__(self, run: RunModel, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int], split: str,
               batch_size: int, decode: DecodeConfig, z_loss: float = 1e-4,
               log_dir: Optional[str] = None):
    self._run = run
    self._name = mixture_or_task_name
    self._lengths = dict(task_feature_lengths)
    self._split = split
    self._batch_size = batch_size
    length = decode.max_decode_length or self._lengths["targets"]
    if run.decoder_only:
      decode = decoder_inference.model_eos(decode, run.config)
    self._eval_step = jax.jit(functools.partial(
        step_lib.eval_step, model=run.model, z_loss=z_loss,
        method=run.method))
    self._predict = jax.jit(functools.partial(
        _predict, model=run.model, decode=decode, length=length,
        method=run.method))
    self._rank = (jax.jit(functools.partial(_rank, model=run.model,
                                            method=run.method))
                  if decode.rank_classification else None)
    if log_dir and jax.process_index() == 0:
      # Through storage: os.makedirs would make a local `gs:` directory.
      storage.makedirs(log_dir)
    # With log_dir, each evaluation's predictions go to
    # <log_dir>/predictions/<task>/step_<N>.jsonl (and TensorBoard text).
    self._evaluator = evaluation.Evaluator(
        mixture_or_task_name, task_feature_lengths, batch_size, split=split,
        log_dir=log_dir, write_predictions=jax.process_index() == 0,
        task_index=run.method.task_index(),
        converter=run.feature_converter())
    # The tasks with the split and metrics (what evaluate and predict cover).
    self.task_names = self._evaluator.task_names

  def _shard(self, batch: Mapping[str, np.ndarray]):
    # seqio's evaluator hands every process the same whole batch.
    return partitioning.shard_global_batch(dict(batch), self._run.mesh)

  def predict_batch_fn(self, params: PyTree):
    """`batch -> [B, L]` decoded tokens, for seqio's evaluator."""
    def predict_batch(batch):
      with partitioning.mesh_context(self._run.mesh, self._run.rules):
        out = self._predict(params, self._run.frozen, self._shard(batch))
      return partitioning.to_host(out)
    return predict_batch

  def rank_batch_fn(self, params: PyTree
                    ) -> Optional[evaluation.RankBatchFn]:
    """`(batch, candidates [C, L]) -> [B, C]` scores, or None when off."""
    if self._rank is None:
      return None

    def rank_batch(batch, candidates):
      with partitioning.mesh_context(self._run.mesh, self._run.rules):
        out = self._rank(params, self._run.frozen, self._shard(batch),
                         jnp.asarray(candidates))
      return partitioning.to_host(out)
    return rank_batch

  def teacher_forced(self, params: PyTree) -> Dict[str, float]:
    """Loss and token accuracy over the whole split (padding rows weigh 0)."""
    total = None
    with partitioning.mesh_context(self._run.mesh, self._run.rules):
      for padded in pipeline.evaluation_dataset(
          self._name, self._lengths, self._split, self._batch_size,
          mesh=self._run.mesh, task_index=self._run.method.task_index(),
          converter=self._run.feature_converter()):
        # This process's slice of each global batch (see
        # `pipeline.evaluation_dataset`); the sums come back replicated.
        sums = jax.tree_util.tree_map(partitioning.to_host, self._eval_step(
            params, self._run.frozen,
            partitioning.shard_batch(padded.features, self._run.mesh)))
        total = sums if total is None else {
            k: total[k] + sums[k] for k in total}
    if total is None:
      return {}
    return {k: v for k, v in losses.summarize(total).items() if k != "tokens"}

  def evaluate(self, params: PyTree, step: Optional[int] = None
               ) -> Dict[str, Any]:
    """Returns {'flat': {'eval/loss': ..., '<task>/<metric>': ...,
    '<task>/score' (the mean of the task's metrics), 'super_glue/average'
    (2+ SuperGLUE tasks)}, 'tasks': task -> metric -> value}."""
    flat = {f"eval/{k}": v for k, v in self.teacher_forced(params).items()}
    tasks = self._evaluator.evaluate(self.predict_batch_fn(params), step=step,
                                     rank_batch=self.rank_batch_fn(params))
    for task, task_metrics in tasks.items():
      for metric, value in task_metrics.items():
        flat[f"{task}/{metric}"] = value
      # The paper selects checkpoints by the dev score, a multi-metric task
      # counting as the mean of its metrics (`best_metric='<task>/score'`).
      if any(m not in metrics.IGNORED_IN_SCORE for m in task_metrics):
        flat[f"{task}/score"] = metrics.task_score(task_metrics)
    # A SuperGLUE mixture also gets the leaderboard-style average over the
    # SuperGLUE tasks it evaluated (diagnostics excluded).
    superglue = {t: m for t, m in tasks.items() if m and
                 metrics.superglue_task_name(t) in metrics.SUPERGLUE_TASKS}
    if len(superglue) > 1:
      flat["super_glue/average"] = metrics.superglue_average(superglue)
    return {"flat": flat, "tasks": tasks}

  def predict(self, params: PyTree) -> Dict[str, List[Dict[str, str]]]:
    """task -> records {'inputs', 'prediction', 'target'} in example order."""
    return self._evaluator.predict(self.predict_batch_fn(params),
                                   rank_batch=self.rank_batch_fn(params))
