"""Evaluation through SeqIO: a model's batch functions in, task metrics out.

`Evaluator` wraps `seqio.Evaluator`, which picks the tasks of a Task or
Mixture that have the split and metrics, caches their examples once, and
applies each task's postprocessor and metric functions. The model side stays
plain: `predict_batch` maps a fixed-size numpy batch to decoded token ids and
`score_batch` to per-example log-likelihoods; this module turns them into the
`(index, output)` functions seqio calls. Rank classification (optional) swaps
decoding for scoring: `rank_batch` gives each example's log-likelihood of
every label word of its task (the task catalogue's `class_labels`), and the
best-scoring label's tokens stand in for the decoded prediction, so the
task's postprocessor and metrics apply unchanged and no prediction is ever
outside the label set. Batches always have the full batch
size (the last one is zero-padded, as in `pipeline.pad_batch`) so one compiled
function serves every batch. Every process iterates the whole evaluation set
and gets the same batches: `predict_batch` must return the predictions for the
whole batch on every process. `write_predictions_jsonl` saves
inputs/prediction/target texts for an inference run.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple)

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import pipeline
from prompt_tuning.data import registry

Batch = Dict[str, np.ndarray]
# batch -> [B, L] int token ids (greedy or best beam).
PredictBatchFn = Callable[[Batch], np.ndarray]
# batch -> [B] float log-likelihood of `decoder_target_tokens`.
ScoreBatchFn = Callable[[Batch], np.ndarray]
# (batch, candidates [C, L] int) -> [B, C] float log-likelihood of each
# candidate target sequence for each example.
RankBatchFn = Callable[[Batch, np.ndarray], np.ndarray]

_PREDICTION = seqio.metrics.ModelOutputType.PREDICTION
_SCORE = seqio.metrics.ModelOutputType.SCORE


def clear_after_eos(tokens: np.ndarray, eos_id: Optional[int]) -> np.ndarray:
  """Sets every position after the first EOS to 0 (padding), keeping the EOS.

  seqio's `Vocabulary.decode` also cuts at EOS, but the rows must keep one
  length for seqio's `np.array` of all predictions, and records written
  elsewhere should not carry the decoder's leftovers.

  Args:
    tokens: [B, L] int token ids.
    eos_id: end-of-sequence id; None leaves the tokens as they are.

  Returns:
    [B, L] int token ids.
  """
  tokens = np.asarray(tokens)
  if eos_id is None:
    return tokens
  # Count of EOS strictly before each position: > 0 means after the first.
  seen = np.cumsum(tokens == eos_id, axis=-1) - (tokens == eos_id)
  return np.where(seen > 0, 0, tokens)


def _padded_batches(dataset: tf.data.Dataset, batch_size: int
                    ) -> Iterator[Tuple[np.ndarray, Batch, int]]:
  """Batches an enumerated seqio dataset: (indices [n], features, n)."""
  for indices, features in dataset.batch(batch_size).as_numpy_iterator():
    padded, n = pipeline.pad_batch(features, batch_size)
    yield indices, padded, n


def _run_predict(dataset: tf.data.Dataset, batch_size: int,
                 predict_batch: PredictBatchFn,
                 eos_id: Optional[int]) -> List[Tuple[int, np.ndarray]]:
  """(example index, [L] tokens) for every example of an enumerated dataset."""
  outputs = []
  for indices, batch, n in _padded_batches(dataset, batch_size):
    tokens = np.asarray(predict_batch(batch))
    if tokens.ndim != 2 or tokens.shape[0] != batch_size:
      raise ValueError(f"predict_batch must return [B={batch_size}, L] token "
                       f"ids, got shape {tokens.shape}.")
    tokens = clear_after_eos(tokens[:n], eos_id)
    outputs.extend(zip(indices.tolist(), tokens))
  return outputs


def label_candidates(labels: Sequence[str], vocabulary: seqio.Vocabulary,
                     length: int) -> np.ndarray:
  """Label words as target token rows: [C, L] int, EOS-terminated, 0-padded.

  Raises:
    ValueError: (one line) if a label needs more than `length` tokens.
  """
  rows = np.zeros((len(labels), length), np.int32)
  for i, label in enumerate(labels):
    ids = list(vocabulary.encode(label)) + [vocabulary.eos_id]
    if len(ids) > length:
      raise ValueError(
          f"Label {label!r} is {len(ids)} tokens with EOS, more than the "
          f"targets length {length}: raise TASK_FEATURE_LENGTHS['targets'].")
    rows[i, :len(ids)] = ids
  return rows


def _run_rank(dataset: tf.data.Dataset, batch_size: int,
              rank_batch: RankBatchFn,
              candidates: np.ndarray) -> List[Tuple[int, np.ndarray]]:
  """(example index, [L] tokens of its best-scoring candidate)."""
  outputs = []
  for indices, batch, n in _padded_batches(dataset, batch_size):
    scores = np.asarray(rank_batch(batch, candidates))
    if scores.shape != (batch_size, len(candidates)):
      raise ValueError(f"rank_batch must return [B={batch_size}, "
                       f"C={len(candidates)}] scores, got {scores.shape}.")
    # Ties go to the first label, in the task's label order.
    best = np.argmax(scores[:n], axis=-1)
    outputs.extend(zip(indices.tolist(), candidates[best]))
  return outputs


def _run_score(dataset: tf.data.Dataset, batch_size: int,
               score_batch: ScoreBatchFn) -> List[Tuple[int, float]]:
  """(example index, log-likelihood) for every example."""
  outputs = []
  for indices, batch, n in _padded_batches(dataset, batch_size):
    scores = np.asarray(score_batch(batch))
    if scores.shape != (batch_size,):
      raise ValueError(f"score_batch must return [B={batch_size}] scores, got "
                       f"shape {scores.shape}.")
    outputs.extend(zip(indices.tolist(), scores[:n].astype(float).tolist()))
  return outputs


def _as_float(value: Any) -> Optional[float]:
  """A metric as a float, or None when it is not a scalar (text, images)."""
  if isinstance(value, seqio.metrics.Scalar):
    value = value.value
  if isinstance(value, seqio.metrics.MetricValue):
    return None
  try:
    return float(np.asarray(value))
  except (TypeError, ValueError):
    return None


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Evaluator:
  """Computes a Task's or Mixture's metrics for given model batch functions.

  Attributes:
    task_names: the tasks that are evaluated (those with the split and at
      least one metric); empty means `evaluate` returns {}.
    batch_size: rows of every batch handed to the model functions.
  """

  def __init__(self, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int],
               batch_size: int,
               split: str = "validation",
               log_dir: Optional[str] = None,
               use_cached: bool = False,
               num_examples: Optional[int] = None):
    """Caches the evaluation examples of every task with metrics.

    Args:
      mixture_or_task_name: a registered SeqIO Task or Mixture.
      task_feature_lengths: e.g. {'inputs': 512, 'targets': 8}; fixed, so
        the batches have the training shapes and `predict_batch` compiles
        once. Examples are truncated to them as in training.
      batch_size: rows per model call (on every process).
      split: the split to evaluate.
      log_dir: if set, seqio's JSONLogger writes `<task>-metrics.jsonl` and
        `<task>-<step>.jsonl` (inferences) there.
      use_cached: read the tasks' offline seqio cache.
      num_examples: evaluate only the first this many examples of each task.
    """
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}.")
    provider = pipeline.get_task_or_mixture(mixture_or_task_name)
    pipeline.check_feature_lengths(provider, task_feature_lengths)
    self.batch_size = batch_size
    self._targets_length = task_feature_lengths["targets"]
    self._evaluator = seqio.Evaluator(
        mixture_or_task_name=mixture_or_task_name,
        feature_converter=pipeline.feature_converter(),
        eval_split=split,
        use_cached=use_cached,
        sequence_length=dict(task_feature_lengths),
        num_examples=num_examples,
        logger_cls=(seqio.JSONLogger,) if log_dir else (),
        log_dir=log_dir,
        # Metrics run inline: a metric thread racing the next train step for
        # the accelerator can deadlock, and callers want the numbers now.
        async_compute_metrics=False)
    self._tasks = {t.name: t for t in self._evaluator.eval_tasks}
    self.task_names = tuple(self._tasks)

  def _task_of(self, dataset: tf.data.Dataset) -> seqio.Task:
    # seqio calls the model function with a task's cached dataset object
    # only; find the task (for its vocabulary) by identity.
    for name, ds in self._evaluator.cached_model_datasets.items():
      if ds is dataset:
        return self._tasks[name]
    raise KeyError("Dataset is not one of this evaluator's cached datasets.")

  def _eos_id(self, task: seqio.Task) -> Optional[int]:
    return task.output_features["targets"].vocabulary.eos_id

  def ranked_tasks(self) -> Tuple[str, ...]:
    """The evaluated tasks that have label words (rank classification)."""
    return tuple(n for n in self._tasks if registry.class_labels(n))

  def _outputs(self, task: seqio.Task, dataset: tf.data.Dataset,
               predict_batch: Optional[PredictBatchFn],
               rank_batch: Optional[RankBatchFn]
               ) -> List[Tuple[int, np.ndarray]]:
    """Decoded (or, with rank_batch, best-label) tokens per example."""
    labels = registry.class_labels(task.name) if rank_batch else ()
    if labels:
      candidates = label_candidates(
          labels, task.output_features["targets"].vocabulary,
          self._targets_length)
      return _run_rank(dataset, self.batch_size, rank_batch, candidates)
    if predict_batch is None:
      raise ValueError(f"Task {task.name!r} has no label words for rank "
                       f"classification: pass predict_batch too.")
    return _run_predict(dataset, self.batch_size, predict_batch,
                        self._eos_id(task))

  def evaluate(self, predict_batch: Optional[PredictBatchFn],
               score_batch: Optional[ScoreBatchFn] = None,
               step: Optional[int] = None,
               rank_batch: Optional[RankBatchFn] = None
               ) -> Dict[str, Dict[str, float]]:
    """Runs the model over each task's examples and computes its metrics.

    Args:
      predict_batch: batch (pipeline.MODEL_FEATURES, [B, T] / [B, L] int32) ->
        [B, L] int decoded token ids. Needed if a task has prediction metrics
        (and, with rank_batch, no label words).
      score_batch: batch -> [B] float log-likelihood of the targets. Needed
        if a task has score metrics.
      step: training step, for the logs.
      rank_batch: if given, tasks with label words are evaluated by rank
        classification instead of decoding.

    Returns:
      task name -> metric name -> value (scalar metrics only).
    """
    needed = {m.model_output_type for t in self._tasks.values()
              for m in t.metric_objs}
    unsupported = needed - {_PREDICTION, _SCORE}
    if unsupported:
      raise ValueError(f"Unsupported metric output types: {unsupported}.")
    if (_PREDICTION in needed and predict_batch is None and
        (rank_batch is None or
         set(self.ranked_tasks()) != set(self._tasks))):
      raise ValueError("Tasks with prediction metrics need predict_batch.")
    if _SCORE in needed and score_batch is None:
      scored = [n for n, t in self._tasks.items()
                if any(m.model_output_type == _SCORE for m in t.metric_objs)]
      raise ValueError(f"Tasks {scored} have score metrics: pass score_batch.")
    if not self._tasks:
      return {}

    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      return self._outputs(self._task_of(dataset), dataset, predict_batch,
                           rank_batch)

    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      return _run_score(dataset, self.batch_size, score_batch)

    future, _ = self._evaluator.evaluate(
        compute_metrics=True, step=step,
        predict_fn=(predict_fn if predict_batch is not None or rank_batch
                    is not None else None),
        score_fn=score_fn if score_batch is not None else None)
    results = {}
    for task_name, metrics in (future.result() or {}).items():
      values = {k: _as_float(v) for k, v in metrics.items()}
      results[task_name] = {k: v for k, v in values.items() if v is not None}
    return results

  def predict(self, predict_batch: Optional[PredictBatchFn],
              rank_batch: Optional[RankBatchFn] = None
              ) -> Dict[str, List[Dict[str, str]]]:
    """Decoded predictions with their inputs and targets, per task.

    Args:
      predict_batch: as in `evaluate`.
      rank_batch: as in `evaluate`.

    Returns:
      task name -> records in example order, each {'inputs', 'prediction',
      'target'} text; the prediction is decoded but not postprocessed.
    """
    records = {}
    for name, task in self._tasks.items():
      dataset = self._evaluator.cached_model_datasets[name]
      vocab_in = task.output_features["inputs"].vocabulary
      vocab_out = task.output_features["targets"].vocabulary
      outputs = sorted(self._outputs(task, dataset, predict_batch,
                                     rank_batch), key=lambda x: x[0])
      examples = self._evaluator.cached_task_datasets[name].as_numpy_iterator()
      records[name] = [
          {"inputs": _pretokenized(ex, "inputs", vocab_in),
           "prediction": _text(vocab_out.decode(tokens.tolist())),
           "target": _pretokenized(ex, "targets", vocab_out)}
          for ex, (_, tokens) in zip(examples, outputs)]
    return records


def _pretokenized(example: Mapping[str, Any], key: str,
                  vocab: seqio.Vocabulary) -> str:
  """The original text of a feature, or its tokens decoded if none was kept."""
  if f"{key}_pretokenized" in example:
    return _text(example[f"{key}_pretokenized"])
  return _text(vocab.decode(np.asarray(example[key]).tolist()))


def write_predictions_jsonl(path: str,
                            records: Iterable[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line, atomically (temp file + os.replace).

  A reader never sees a half-written file, and a crash leaves any previous
  file intact.

  Args:
    path: destination file; its directory is created if needed.
    records: e.g. {'inputs': ..., 'prediction': ..., 'target': ...} texts.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # The temp file lives next to the target: os.replace is atomic only within
  # one filesystem.
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for record in records:
        f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
    # mkstemp creates the file private (0600); predictions are for sharing.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def read_predictions_jsonl(path: str) -> List[Dict[str, Any]]:
  """The records written by `write_predictions_jsonl`, in order."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
