"""What an evaluation writes: the metric log, every example's prediction.

`MetricLogger` (one JSON line of metrics per task and evaluation) and
`PredictionLogger` (one JSONL line per evaluated example, and a sample as
TensorBoard text) are the seqio loggers `evaluation.Evaluator` attaches on
the writing process; `write_predictions_jsonl` / `read_predictions_jsonl`
are the predictions file format, used by eval and infer runs too. Paths go
through `storage` (local or gs://).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import storage
from prompt_tuning.data import registry
from prompt_tuning.training import records
from prompt_tuning.training.records import predictions_path


def text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)



def pretokenized(example: Mapping[str, Any], key: str,
                  vocab: seqio.Vocabulary) -> str:
  """The original text of a feature, or its tokens decoded if none was kept."""
  if f"{key}_pretokenized" in example:
    return text(example[f"{key}_pretokenized"])
  return text(vocab.decode(np.asarray(example[key]).tolist()))



# Examples per evaluation shown in TensorBoard (the JSONL has them all).
TENSORBOARD_SAMPLE = 8


def _jsonable(value: Any) -> Any:
  """A postprocessed target or prediction (numpy, bytes, dicts) as JSON."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, (np.ndarray, np.generic)):
    return _jsonable(value.tolist())
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if value is None or isinstance(value, (str, int, float, bool)):
    return value
  return str(value)


def _markdown_cell(value: Any, limit: int = 300) -> str:
  text = value if isinstance(value, str) else json.dumps(value)
  text = " ".join(text.split()).replace("|", "\\|")
  return text if len(text) <= limit else text[:limit] + "..."


class MetricLogger(seqio.Logger):
  """seqio's JSONLogger without examples, through `storage`: appends
  {"step", <metric>: value} to `<output_dir>/<task>-metrics.jsonl` (seqio's own logger writes through TensorFlow's GCS client,
  which ignores the emulator variables). One writer: process 0."""

  def __call__(self, task_name: str, step: Optional[int],
               metrics: Mapping[str, Any], dataset: Optional[tf.data.Dataset],
               inferences: Optional[Mapping[str, Sequence[Any]]],
               targets: Optional[Sequence[Any]]) -> None:
    del dataset, inferences, targets
    values = {}
    for name, value in metrics.items():
      if isinstance(value, seqio.metrics.Scalar):
        values[name] = value.value
      elif isinstance(value, seqio.metrics.Text):
        values[name] = value.textdata
      elif isinstance(value, seqio.metrics.Generic):
        values[name] = value.tensor.tolist()
    if not values:
      return
    path = storage.join(self.output_dir, f"{task_name}-metrics.jsonl")
    records.append_line(path, json.dumps(
        {"step": -1 if step is None else step, **values},
        cls=seqio.loggers.TensorAndNumpyEncoder) + "\n")


class PredictionLogger(seqio.Logger):
  """A seqio logger: every evaluated example as JSONL, a sample as TensorBoard
  text.

  seqio calls it after a task's metrics, with exactly what the metric
  functions received: the postprocessed `targets` and the `inferences`
  ('output': decoded text, 'prediction': postprocessed, 'score': target
  log-likelihood), aligned with the task's cached examples. Each line is
  {'task', 'step', 'index', 'inputs', 'target' (texts), 'prediction'
  (decoded text, as `infer` writes it), 'score', 'label_scores' (rank
  classification: label -> log-likelihood), 'metric_target',
  'metric_prediction' (the metric functions' inputs)}; keys a task's metrics
  do not produce are left out.
  """

  def __init__(self, output_dir: str, *,
               label_scores: Mapping[str, Mapping[int, np.ndarray]],
               enabled: bool = True, sample: int = TENSORBOARD_SAMPLE):
    """`label_scores`: task -> example index -> [C] label scores of the
    last ranked pass (`Evaluator` fills it); `enabled`: False on processes
    other than 0; `sample`: examples shown in TensorBoard."""
    super().__init__(output_dir)
    self._label_scores = label_scores
    self._enabled = enabled
    self._sample = sample
    self._writer = None
    self._mirror = None

  def __call__(self, task_name: str, step: Optional[int],
               metrics: Mapping[str, Any], dataset: Optional[tf.data.Dataset],
               inferences: Optional[Mapping[str, Sequence[Any]]],
               targets: Optional[Sequence[Any]]) -> None:
    del metrics
    if not self._enabled or dataset is None:
      return
    rows = self.records(task_name, step, dataset, inferences or {}, targets)
    write_predictions_jsonl(
        predictions_path(self.output_dir, task_name, step), rows)
    self._write_text(task_name, step, rows[:self._sample])

  def records(self, task_name: str, step: Optional[int],
              dataset: tf.data.Dataset,
              inferences: Mapping[str, Sequence[Any]],
              targets: Optional[Sequence[Any]]) -> List[Dict[str, Any]]:
    """One JSON-able record per example of `dataset`, in example order."""
    task = seqio.get_mixture_or_task(task_name)
    vocab_in = task.output_features["inputs"].vocabulary
    vocab_out = task.output_features["targets"].vocabulary
    labels = registry.class_labels(task_name)
    ranked = self._label_scores.get(task_name, {})
    columns = {"prediction": inferences.get("output"),
               "score": inferences.get("score"),
               "metric_target": targets,
               "metric_prediction": inferences.get("prediction")}
    rows = []
    for i, example in enumerate(dataset.as_numpy_iterator()):
      row = {"task": task_name, "step": step, "index": i,
             "inputs": pretokenized(example, "inputs", vocab_in),
             "target": pretokenized(example, "targets", vocab_out)}
      for key, values in columns.items():
        if values is not None and i < len(values):
          row[key] = _jsonable(values[i])
      if i in ranked:
        row["label_scores"] = {label: float(score)
                               for label, score in zip(labels, ranked[i])}
      rows.append(row)
    return rows

  def _write_text(self, task_name: str, step: Optional[int],
                  rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
      return
    keys = [k for k in ("inputs", "target", "prediction", "score")
            if k in rows[0]]
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_markdown_cell(r.get(k, "")) for k in keys)
              + " |" for r in rows]
    if self._writer is None:
      # TensorFlow's writer cannot reach gs:// through the emulator
      # variables: it writes a local mirror, uploaded after each flush.
      self._mirror = storage.LocalMirror(self.output_dir)
      self._writer = tf.summary.create_file_writer(self._mirror.path)
    with self._writer.as_default():
      tf.summary.text(f"{task_name}/predictions", "\n".join(lines),
                      step=0 if step is None else int(step))
    self._writer.flush()
    self._mirror.sync()



def write_predictions_jsonl(path: str,
                            records: Iterable[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line, atomically (temp file + os.replace;
  on gs:// one object upload).

  A reader never sees a half-written file, and a crash leaves any previous
  file intact.

  Args:
    path: destination file; its directory is created if needed.
    records: e.g. {'inputs': ..., 'prediction': ..., 'target': ...} texts.
  """
  if storage.is_remote(path):
    storage.write_bytes(path, "".join(
        json.dumps(dict(r), ensure_ascii=False) + "\n"
        for r in records).encode("utf-8"))
    return
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
  return [json.loads(line) for line in storage.read_text(path).splitlines()
          if line.strip()]
