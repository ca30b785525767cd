"""Prompt ensembles on a task: K prompts evaluated in one pass, plus the vote.

Each evaluation batch is replicated across the K prompts of the library
(`prompts.ensemble.replicate`) and run once through the mixed-prompt model;
the K predictions of every example are recorded. The task's metrics then
come from seqio's evaluation machinery (`training.evaluation.Evaluator`:
postprocessor, metric functions) K + 1 times over the cached examples, each
time replaying one prompt's recorded predictions (and last the majority
vote's) instead of running the model again, so every number is computed
exactly as a single-prompt evaluation computes it. Rank classification
votes over the best label of each prompt.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence
from typing import Tuple

import jax
import numpy as np

from prompt_tuning.models.config import T5Config
from prompt_tuning.prompts import ensemble
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.training import evaluation
from prompt_tuning.training.inference import DecodeConfig

Batch = Dict[str, np.ndarray]


class _Recorder:
  """Runs the replicated model once per batch; replays per prompt or vote.

  seqio visits the same tasks and batches in the same order on every
  `evaluate` call, so outputs are replayed in recording order; each replayed
  batch is checked to be the recorded one.
  """

  def __init__(self, runner: Any, num_prompts: int,
               eos_id: int):
    self._runner = runner
    self._k = num_prompts
    self._eos_id = eos_id
    self._records: List[Tuple[np.ndarray, np.ndarray]] = []
    self._cursor = 0

  def _replicated(self, batch: Batch):
    """(the batch's model inputs [B, T], which identify it on replay; and
    tokens, prompt ids, mask or None, each example once per prompt)."""
    tokens, mask = self._runner.context(batch)
    features = {"tokens": tokens}
    if mask is not None:
      features["mask"] = mask
    rows = ensemble.replicate(features, self._k)
    return tokens, rows["tokens"], rows["prompt_ids"], rows.get("mask")

  def record_predict(self, batch: Batch) -> np.ndarray:
    key, tokens, ids, mask = self._replicated(batch)
    out = evaluation.clear_after_eos(self._runner.predict(tokens, ids, mask),
                                     self._eos_id)
    per_prompt = ensemble.split_outputs(out, self._k)  # [B, K, L]
    self._records.append((key, per_prompt))
    return per_prompt[:, 0]

  def record_rank(self, batch: Batch, candidates: np.ndarray) -> np.ndarray:
    key, tokens, ids, mask = self._replicated(batch)
    rows = tokens.shape[0]
    scores = self._runner.rank(tokens, ids, np.broadcast_to(
        candidates, (rows,) + candidates.shape), mask)
    # The best label per prompt, as one-hot scores: argmax picks it back.
    best = np.argmax(ensemble.split_outputs(scores, self._k), axis=-1)
    self._records.append((key, best))  # [B, K]
    return _one_hot(best[:, 0], len(candidates))

  def _next(self, batch: Batch) -> np.ndarray:
    if self._cursor >= len(self._records):
      raise RuntimeError("The ensemble replay ran past the recorded batches.")
    tokens, outputs = self._records[self._cursor]
    self._cursor += 1
    if not np.array_equal(tokens, self._runner.context(batch)[0]):
      raise RuntimeError("The ensemble replay saw batches in another order "
                         "than recorded.")
    return outputs

  def replay_predict(self, which: Optional[int]
                     ) -> Callable[[Batch], np.ndarray]:
    """predict_batch giving prompt `which`'s predictions (None: the vote)."""
    self._cursor = 0

    def predict_batch(batch):
      outputs = self._next(batch)  # [B, K, L]
      if which is None:
        return ensemble.majority_vote(outputs)
      return outputs[:, which]
    return predict_batch

  def replay_rank(self, which: Optional[int]):
    """rank_batch giving prompt `which`'s best labels (None: the vote)."""
    self._cursor = 0

    def rank_batch(batch, candidates):
      best = self._next(batch)  # [B, K]
      if which is None:
        best = ensemble.majority_vote(best[:, :, None])[:, 0]
      else:
        best = best[:, which]
      return _one_hot(best, len(candidates))
    return rank_batch


def _one_hot(index: np.ndarray, size: int) -> np.ndarray:
  return np.eye(size, dtype=np.float32)[np.asarray(index)]


def evaluate_prompts(runner: Any,
                     mixture_or_task_name: str,
                     task_feature_lengths: Mapping[str, int], split: str,
                     batch_size: int,
                     num_examples: Optional[int] = None) -> Dict[str, Any]:
  """Evaluates every prompt of `runner.library` and their majority vote.

  Args:
    runner: the frozen model and the K prompts.
    mixture_or_task_name: a registered task or mixture with metrics.
    task_feature_lengths: as in training.
    split: e.g. 'validation'.
    batch_size: examples per batch (the model sees batch_size * K rows).
    num_examples: only the first this many examples of each task.

  Returns:
    task -> {'prompts': name -> metric -> value, 'mean', 'best', 'vote'}.
  """
  library = runner.library
  rank = runner.decode.rank_classification
  evaluator = evaluation.Evaluator(mixture_or_task_name, task_feature_lengths,
                                   batch_size, split=split,
                                   num_examples=num_examples,
                                   converter=runner.feature_converter())
  recorder = _Recorder(runner, len(library), runner.decode.eos_id)
  first = evaluator.evaluate(recorder.record_predict,
                             rank_batch=recorder.record_rank if rank else None)
  per_prompt: Dict[str, Dict[str, Dict[str, float]]] = {}
  for k, name in enumerate(library.names):
    if k == 0:
      per_prompt[name] = first
      continue
    per_prompt[name] = evaluator.evaluate(
        recorder.replay_predict(k),
        rank_batch=recorder.replay_rank(k) if rank else None)
  vote = evaluator.evaluate(recorder.replay_predict(None),
                            rank_batch=recorder.replay_rank(None) if rank
                            else None)
  return {task: ensemble.summarize({n: per_prompt[n][task]
                                    for n in library.names}, vote[task])
          for task in vote}


def evaluate_ensemble(*, prompts: Sequence[str], initial_checkpoint_path: str,
                      mixture_or_task_name: str,
                      task_feature_lengths: Mapping[str, int],
                      model_config: Optional[T5Config] = None,
                      split: str = "validation", batch_size: int = 32,
                      decode: DecodeConfig = DecodeConfig(),
                      placement: str = "prefix",
                      mesh_shape: Tuple[int, int] = (-1, 1),
                      fsdp: bool = False, frozen_dtype: Optional[str] = None,
                      dtype: Optional[str] = None,
                      output_dir: str = "") -> Dict[str, Any]:
  """Loads the frozen model and K prompts, evaluates them as an ensemble;
  writes `ensemble.json` to `output_dir` if set. Returns
  `evaluate_prompts`'s report. `dtype`: compute dtype, as `load_frozen`."""
  model = frozen_lib.load_frozen(initial_checkpoint_path, model_config,
                                 mesh_shape, fsdp, frozen_dtype, dtype)
  library = frozen_lib.load_library(prompts, model.config.emb_dim)
  runner = frozen_lib.make_runner(model, library, decode, placement,
                                  task_feature_lengths["targets"])
  report = evaluate_prompts(runner, mixture_or_task_name,
                            task_feature_lengths, split, batch_size)
  for task, summary in report.items():
    for key in ("mean", "best", "vote"):
      logging.info("%s %s: %s", task, key, summary[key])
  if output_dir and jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "ensemble.json"), "w") as f:
      json.dump(report, f, indent=2, sort_keys=True)
  return report
