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
whole batch on every process. `eval_logs.write_predictions_jsonl` saves
inputs/prediction/target texts for an inference run.

With a `log_dir`, every evaluation also writes what the metric functions saw,
one JSONL line per example, to `<log_dir>/predictions/<task>/step_<N>.jsonl`
(atomically: a killed run leaves the previous files, never a half one), and
its first examples as a TensorBoard text table. `check_split` and
`check_output_path` let entry points refuse a missing or empty split and an
unwritable output before they load a model.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import storage
from prompt_tuning.data import pipeline
from prompt_tuning.data import registry
from prompt_tuning.training import eval_logs

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


def _tagged(task_id: int, predict_batch: Optional[PredictBatchFn],
            rank_batch: Optional[RankBatchFn]):
  """The model functions with every batch tagged with `task_id`."""
  def tag(batch):
    rows = len(next(iter(batch.values())))
    return dict(batch, **{pipeline.TASK_ID_FEATURE: np.full(
        (rows,), task_id, np.int32)})
  return (None if predict_batch is None else
          (lambda batch: predict_batch(tag(batch))),
          None if rank_batch is None else
          (lambda batch, candidates: rank_batch(tag(batch), candidates)))


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
              rank_batch: RankBatchFn, candidates: np.ndarray,
              scores_by_index: Optional[Dict[int, np.ndarray]] = None
              ) -> List[Tuple[int, np.ndarray]]:
  """(example index, [L] tokens of its best-scoring candidate).

  `scores_by_index`, if given, receives each example's [C] candidate scores
  (seqio only carries the tokens on to its loggers).
  """
  outputs = []
  for indices, batch, n in _padded_batches(dataset, batch_size):
    scores = np.asarray(rank_batch(batch, candidates))
    if scores.shape != (batch_size, len(candidates)):
      raise ValueError(f"rank_batch must return [B={batch_size}, "
                       f"C={len(candidates)}] scores, got {scores.shape}.")
    # Ties go to the first label, in the task's label order.
    best = np.argmax(scores[:n], axis=-1)
    outputs.extend(zip(indices.tolist(), candidates[best]))
    if scores_by_index is not None:
      scores_by_index.update(zip(indices.tolist(), scores[:n]))
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


def _splits_text(task: seqio.Task) -> str:
  return ", ".join(task.splits) or "none"


def _empty_split_message(task_name: str, split: str, splits: str,
                         setting: str) -> str:
  return (f"Task {task_name!r} has an empty {split!r} split (0 examples): "
          f"there is nothing to evaluate. Check the task's {split} data, or "
          f"set {setting} to another split (it has: {splits}).")


def check_split(mixture_or_task_name: str, split: str,
                task_feature_lengths: Mapping[str, int],
                setting: str = "SPLIT",
                use_cached: bool = False) -> Tuple[str, ...]:
  """Refuses a split that is missing or empty, before a model is loaded.

  A Mixture needs the split in at least one task (seqio's evaluator skips
  the others); every task that has it must have an example there. Reads at
  most one example per task.

  Args:
    mixture_or_task_name: a registered SeqIO Task or Mixture.
    split: the split to evaluate or predict.
    task_feature_lengths: as for `Evaluator` (the preprocessors may need it).
    setting: the knob a user sets to change the split, named in the error.
    use_cached: read the tasks' offline seqio cache.

  Returns:
    The names of the tasks that have the split.

  Raises:
    ValueError: (one line) naming the task, the split and the splits it has.
  """
  provider = pipeline.get_task_or_mixture(mixture_or_task_name)
  tasks = list(seqio.get_subtasks(provider))
  with_split = [t for t in tasks if split in t.splits]
  if not with_split:
    if isinstance(provider, seqio.Task):
      raise ValueError(
          f"Task {mixture_or_task_name!r} has no {split!r} split (it has: "
          f"{_splits_text(provider)}); set {setting} to one of those.")
    raise ValueError(
        f"No task of mixture {mixture_or_task_name!r} has a {split!r} split "
        f"({'; '.join(f'{t.name}: {_splits_text(t)}' for t in tasks)}); set "
        f"{setting} to one of those.")
  for task in with_split:
    dataset = task.get_dataset(
        sequence_length=dict(task_feature_lengths), split=split,
        shuffle=False, num_epochs=1, use_cached=use_cached)
    if not any(True for _ in dataset.take(1)):
      raise ValueError(_empty_split_message(task.name, split,
                                            _splits_text(task), setting))
  return tuple(t.name for t in with_split)


def check_output_path(path: str, setting: str = "OUTPUT_PATH") -> None:
  """Fails now, not after a whole inference run, if `path` cannot be written:
  creates the missing parents (the write would) and probes with a temp file.

  Raises:
    ValueError / OSError: (one line) naming the path and the problem.
  """
  if not path:
    raise ValueError(f"{setting} is empty; set it to a .jsonl file path.")
  if storage.is_remote(path):
    _check_remote_output_path(path, setting)
    return
  if os.path.isdir(path):
    raise ValueError(f"{setting} {path} is a directory; give a file path, "
                     f"e.g. {os.path.join(path, 'predictions.jsonl')}.")
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".write_probe-")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    reason = e.strerror or str(e)
    parent = directory
    while not os.path.exists(parent):  # makedirs says only "File exists"
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
      reason = f"{parent} is a file, not a directory"
    raise OSError(f"{setting} {path} cannot be written ({reason}); choose a "
                  f"path in a writable directory.") from None


def _check_remote_output_path(path: str, setting: str) -> None:
  """check_output_path for a URL: a probe object beside it."""
  if storage.isdir(path):
    raise ValueError(f"{setting} {path} is a directory; give a file path, "
                     f"e.g. {storage.join(path, 'predictions.jsonl')}.")
  probe = f"{path}.write_probe-{os.getpid()}"
  try:
    storage.write_bytes(probe, b"")
    storage.remove(probe)
  except OSError as e:
    raise OSError(f"{setting} {path} cannot be written ({e}); check the "
                  f"bucket and the credentials.") from None


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
               num_examples: Optional[int] = None,
               write_predictions: bool = True,
               task_index: Optional[Mapping[str, int]] = None,
               converter: Optional[seqio.FeatureConverter] = None):
    """Caches the evaluation examples of every task with metrics.

    Args:
      mixture_or_task_name: a registered SeqIO Task or Mixture.
      task_feature_lengths: e.g. {'inputs': 512, 'targets': 8}; fixed, so
        the batches have the training shapes and `predict_batch` compiles
        once. Examples are truncated to them as in training.
      batch_size: rows per model call (on every process).
      split: the split to evaluate.
      log_dir: if set, `MetricLogger` appends to `<task>-metrics.jsonl`
        there and `PredictionLogger` writes every evaluation's predictions
        (`records.predictions_path`) and a TensorBoard text sample.
      use_cached: read the tasks' offline seqio cache.
      num_examples: evaluate only the first this many examples of each task.
      write_predictions: with log_dir, write the metric log and the
        predictions (False on processes other than 0: one writer).
      task_index: task name -> index (multitask prompts): every batch
        handed to the model functions also carries
        `pipeline.TASK_ID_FEATURE` [B], its task's index.
      converter: the model's feature converter (`pipeline.get_dataset`'s);
        None is T5's.

    Raises:
      ValueError: (one line) if an evaluated task's split has no examples.
    """
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}.")
    provider = pipeline.get_task_or_mixture(mixture_or_task_name)
    pipeline.check_feature_lengths(provider, task_feature_lengths)
    self.batch_size = batch_size
    self._task_index = task_index
    self._targets_length = task_feature_lengths["targets"]
    # task -> example index -> [C] label scores of the last ranked pass.
    self._label_scores: Dict[str, Dict[int, np.ndarray]] = {}
    loggers = ()
    # Only the writing process logs: the metric log rewrites one shared
    # file through one temporary name, so two processes writing it lose
    # lines and fail on each other's renames.
    if log_dir and write_predictions:
      loggers = (
          # Metrics only: PredictionLogger writes the examples, atomically
          # and as text, instead of seqio's token-level dumps.
          eval_logs.MetricLogger,
          functools.partial(eval_logs.PredictionLogger, label_scores=self._label_scores,
                            enabled=write_predictions))
    self._evaluator = seqio.Evaluator(
        mixture_or_task_name=mixture_or_task_name,
        feature_converter=converter or pipeline.feature_converter(),
        eval_split=split,
        use_cached=use_cached,
        sequence_length=dict(task_feature_lengths),
        num_examples=num_examples,
        logger_cls=loggers,
        log_dir=log_dir,
        # Metrics run inline: a metric thread racing the next train step for
        # the accelerator can deadlock, and callers want the numbers now.
        async_compute_metrics=False)
    self._tasks = {t.name: t for t in self._evaluator.eval_tasks}
    self.task_names = tuple(self._tasks)
    # seqio would hand the metric functions empty lists (0.0, or an obscure
    # unpacking error): refuse before any metric runs.
    for name, task in self._tasks.items():
      if int(self._evaluator.cached_task_datasets[name].cardinality()) == 0:
        raise ValueError(_empty_split_message(
            name, split, _splits_text(task),
            "SPLIT (TrainConfig.eval_split in training)"))

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
    if self._task_index is not None:
      predict_batch, rank_batch = _tagged(
          pipeline.task_id_of(self._task_index, task.name), predict_batch,
          rank_batch)
    # Scores of an earlier ranked pass must not be logged for this one.
    self._label_scores.pop(task.name, None)
    if labels:
      candidates = label_candidates(
          labels, task.output_features["targets"].vocabulary,
          self._targets_length)
      scores = self._label_scores[task.name] = {}
      return _run_rank(dataset, self.batch_size, rank_batch, candidates,
                       scores)
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
          {"inputs": eval_logs.pretokenized(ex, "inputs", vocab_in),
           "prediction": eval_logs.text(vocab_out.decode(tokens.tolist())),
           "target": eval_logs.pretokenized(ex, "targets", vocab_out)}
          for ex, (_, tokens) in zip(examples, outputs)]
    return records


