"""A run directory's plain records: what a run was, what it scored, if it ended.

Beside the orbax checkpoints, `train(...)` writes small JSON files that tools
read without JAX or orbax (the sweep runner, `python -m prompt_tuning.report`):

  <model_dir>/parameters.json      {"total", "trainable", "trainable_percent",
                                    "model", "mode"}   written at start
  <model_dir>/method.json          {"method", "options", "version"}   written
                                   at start: the method and its options
                                   (`methods.records`), which evaluation,
                                   inference and PEFT export rebuild
  <model_dir>/eval/metrics.jsonl   one {"step", "metrics": {name: value}} line
                                   per evaluation, appended (a resumed run
                                   appends again; the last line of a step wins)
  <model_dir>/summary.json         {"step", "train_steps", "finished", "train",
                                    "eval"}   written when the run ends
  <model_dir>/eval/predictions/<task>/step_<N>.jsonl
                                   one line per example of the evaluation at
                                   step N (`eval_logs.PredictionLogger`)

`model` is the frozen T5's own parameter count (the prompt excluded), the x
axis of the paper's curves. Only process 0 writes. Every file is replaced
whole (`storage.atomic_write`: a rename locally, one object upload on
`gs://`; appends are whole lines, and on an object store, which cannot
append, a rewrite of the file by its one writer), so a reader never sees
half a record.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np

from prompt_tuning import storage

PARAMETERS_FILE = "parameters.json"
METHOD_FILE = "method.json"
EVAL_HISTORY_FILE = os.path.join("eval", "metrics.jsonl")
SUMMARY_FILE = "summary.json"
PREDICTIONS_DIR = "predictions"


def predictions_path(log_dir: str, task_name: str,
                     step: Optional[int]) -> str:
  """`<log_dir>/predictions/<task>/step_<N>.jsonl`; `eval.jsonl` for an
  evaluation without a step (a standalone one: its log_dir is its own)."""
  name = "eval.jsonl" if step is None else f"step_{int(step)}.jsonl"
  return storage.join(log_dir, PREDICTIONS_DIR, task_name, name)


def _plain(value: Any) -> Any:
  """numpy / jax scalars -> Python numbers, recursively (JSON can hold them)."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "shape") and np.ndim(value) == 0:
    return np.asarray(value).item()
  return value


def write_json(path: str, value: Mapping[str, Any]) -> None:
  text = json.dumps(_plain(value), indent=2, sort_keys=True) + "\n"
  storage.write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> Optional[Dict[str, Any]]:
  """The object in `path`, or None when the file is missing or unreadable."""
  try:
    value = json.loads(storage.read_text(path))
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def write_parameters(model_dir: str, counts: Mapping[str, Any],
                     prompt_parameters: int, mode: str) -> None:
  """parameters.json: the run's counts and the frozen model's own size."""
  record = dict(counts)
  record["model"] = int(counts["total"]) - int(prompt_parameters)
  record["mode"] = mode
  write_json(storage.join(model_dir, PARAMETERS_FILE), record)


def write_method(model_dir: str, method: Any) -> None:
  """method.json: the run's method and options (`methods.records`)."""
  # Imported here: the report and sweep tools read this module without JAX,
  # which the methods import.
  from prompt_tuning.methods import records as method_records  # pylint: disable=g-import-not-at-top
  write_json(storage.join(model_dir, METHOD_FILE),
             method_records.to_json(method))


def read_method(model_dir: str) -> Optional[Any]:
  """The `methods.Method` a run directory records, or None without a
  method.json (a run from before it was written: see `runs.run_method`).

  Raises:
    ValueError: one line, for a method.json that does not read as a method.
  """
  from prompt_tuning.methods import records as method_records  # pylint: disable=g-import-not-at-top
  path = storage.join(model_dir, METHOD_FILE)
  if not storage.exists(path):
    return None
  try:
    record = json.loads(storage.read_text(path))
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}).") from None
  return method_records.from_json(record, path)


def append_eval(model_dir: str, step: int,
                metrics: Mapping[str, Any]) -> None:
  """Appends one evaluation to eval/metrics.jsonl (one line, one write)."""
  line = json.dumps({"step": int(step), "metrics": _plain(dict(metrics))},
                    sort_keys=True) + "\n"
  append_line(storage.join(model_dir, EVAL_HISTORY_FILE), line)


TORN_SUFFIX = ".torn"


def _ends_torn(path: str) -> bool:
  """Whether a local file's last byte is not a newline (a line cut short)."""
  try:
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      return f.read(1) != b"\n"
  except OSError:  # missing, or empty (seeking before its start)
    return False


def _without_torn_tail(path: str, data: bytes) -> bytes:
  """`data` up to its last whole line. A tail without a newline (a crash
  mid-write) is appended to `<path>.torn` with a warning, never lost, and
  never has a record appended onto it (which would make both unreadable)."""
  keep = data[:data.rfind(b"\n") + 1]
  torn = data[len(keep):]
  if torn:
    aside = path + TORN_SUFFIX
    try:
      previous = storage.read_bytes(aside)
    except FileNotFoundError:
      previous = b""
    storage.write_bytes(aside, previous + torn + b"\n")
    logging.warning("%s ended in a line cut short (%d bytes, from a crash "
                    "mid-write): set aside in %s; records go on after the "
                    "last whole line.", path, len(torn), aside)
  return keep


def append_line(path: str, line: str) -> None:
  """Appends a whole line: one write locally; on an object store (no
  append) the file is read and rewritten whole, which is safe because a
  record file has one writer (process 0). A torn last line is set aside
  first (`_without_torn_tail`)."""
  if not storage.is_remote(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if _ends_torn(path):
      with open(path, "rb") as f:
        whole = _without_torn_tail(path, f.read())
      storage.write_bytes(path, whole)
    with storage.naming(path), open(path, "a", encoding="utf-8") as f:
      f.write(line)
    return
  try:
    old = _without_torn_tail(path, storage.read_bytes(path))
  except FileNotFoundError:
    old = b""
  storage.write_bytes(path, old + line.encode("utf-8"))


def read_eval_history(model_dir: str) -> Dict[int, Dict[str, float]]:
  """step -> flat metrics of eval/metrics.jsonl ({} when there is none).

  A line cut short by a crash (the last one) is skipped (the next append
  sets it aside); for a step evaluated twice (a resumed run) the later line
  wins.
  """
  history: Dict[int, Dict[str, float]] = {}
  try:
    lines = storage.read_text(
        storage.join(model_dir, EVAL_HISTORY_FILE)).splitlines()
  except (OSError, UnicodeDecodeError):
    return history
  for line in lines:
    try:
      record = json.loads(line)
      history[int(record["step"])] = {
          str(k): float(v) for k, v in record["metrics"].items()}
    except (ValueError, KeyError, TypeError):
      continue
  return history


def write_summary(model_dir: str, step: int, train_steps: int,
                  train: Mapping[str, Any], evaluation: Mapping[str, Any]
                  ) -> None:
  """summary.json: the end of a run (finished = it reached train_steps)."""
  write_json(storage.join(model_dir, SUMMARY_FILE), {
      "step": int(step), "train_steps": int(train_steps),
      "finished": int(step) >= int(train_steps),
      "train": dict(train), "eval": dict(evaluation)})


def is_finished(model_dir: str) -> bool:
  """True once the run's summary.json says it reached its last step."""
  summary = read_json(storage.join(model_dir, SUMMARY_FILE))
  return bool(summary and summary.get("finished"))
