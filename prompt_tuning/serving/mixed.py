"""Mixed-prompt inference: rows that each name their prompt (or task).

An input file is JSONL, one object per row: `inputs` (the model's input
text, formatted as the task's `inputs`), and `prompt` (a library name) or
`task` (a task whose prompt the library holds, `NAME:TASK=PATH`, or a prompt
named like the task); optional `labels` (this row's label words for rank
classification), `targets` and any other keys, which are copied to the
output. Rows are tokenized with one vocabulary (the frozen model's), batched
in file order whatever their prompts, and either decoded or, with
`DecodeConfig.rank_classification`, rank-classified over their label words
(the row's `labels`, else the task's catalogue labels; rows without labels
are decoded). Each output row is the input row plus `prompt` (the name used)
and `prediction`. `infer_mixed` is the file-to-file run; `predict_rows` the
in-memory Python API.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio

from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.prompts.library import PromptLibrary
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.training import eval_logs
from prompt_tuning.training import evaluation
from prompt_tuning.training.inference import DecodeConfig

Row = Dict[str, Any]


def read_rows(path: str) -> List[Row]:
  """The rows of a JSONL input file, each checked for `inputs` and a prompt
  or task (errors name the line)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Input file {path} does not exist.")
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not a JSON object ({e}).") \
            from None
      check_row(row, f"{path}:{number}")
      rows.append(row)
  if not rows:
    raise ValueError(f"{path} has no rows.")
  return rows


def check_row(row: Any, where: str) -> None:
  if not isinstance(row, dict):
    raise ValueError(f"{where}: a row must be a JSON object.")
  if not isinstance(row.get("inputs"), str):
    raise ValueError(f"{where}: the row has no 'inputs' text.")
  if not (row.get("prompt") or row.get("task")):
    raise ValueError(f"{where}: the row names neither a 'prompt' nor a "
                     "'task'.")
  labels = row.get("labels")
  if labels is not None and (not isinstance(labels, list) or not all(
      isinstance(x, str) and x for x in labels)):
    raise ValueError(f"{where}: 'labels' must be a list of label words.")


def resolve_vocabulary(name: str, rows: Sequence[Row] = (),
                       library: Optional[PromptLibrary] = None
                       ) -> seqio.Vocabulary:
  """The vocabulary of the frozen model.

  Args:
    name: 'byte', 't5', 'mt5', a SentencePiece `.model` path, or a
      registered task (its inputs vocabulary); '' takes the task of the
      first row (or library prompt) that names one.
    rows: the rows, for ''.
    library: the library, for ''.
  """
  if not name:
    tasks = [r["task"] for r in rows if r.get("task")]
    tasks += [p.task for p in library or () if p.task]
    if not tasks:
      raise ValueError(
          "No vocabulary: no row or prompt names a task; pass --vocabulary "
          "(byte, t5, mt5, a SentencePiece .model file or a task name).")
    name = tasks[0]
  if name == "byte":
    return seqio.ByteVocabulary()
  if name == "t5":
    return vocabularies.t5_vocabulary()
  if name == "mt5":
    return vocabularies.mt5_vocabulary()
  if name.endswith(".model"):
    if not os.path.isfile(name):
      raise FileNotFoundError(f"SentencePiece model {name} does not exist.")
    return seqio.SentencePieceVocabulary(name)
  provider = registry.get(name)
  return provider.output_features["inputs"].vocabulary


def _encode(vocabulary: seqio.Vocabulary, text: str, length: int) -> List[int]:
  """EOS-terminated ids, truncated first as seqio's append_eos_after_trim."""
  return list(vocabulary.encode(text))[:length - 1] + [vocabulary.eos_id]


def _row_labels(row: Row, library: PromptLibrary, prompt_id: int
                ) -> Tuple[str, ...]:
  if row.get("labels"):
    return tuple(row["labels"])
  task = row.get("task") or list(library)[prompt_id].task
  if not task:
    return ()
  try:
    return registry.class_labels(task)
  except ValueError:
    return ()  # not a registered task: decoded


def predict_rows(runner: Any, rows: Sequence[Row],
                 vocabulary: seqio.Vocabulary, inputs_length: int,
                 targets_length: int, batch_size: int) -> List[Row]:
  """Predictions for in-memory rows, in their order.

  Args:
    runner: the frozen model and its library (`frozen.make_runner`).
    rows: as in the module docstring.
    vocabulary: the frozen model's vocabulary.
    inputs_length: T, tokens per input (longer inputs are truncated).
    targets_length: L of label-word candidates (rank classification).
    batch_size: rows per model call (a multiple of the data-parallel size).

  Returns:
    One output row per input row: the row plus 'prompt' and 'prediction'.
  """
  library = runner.library
  for i, row in enumerate(rows):
    check_row(row, f"row {i}")
  ids = np.array([library.resolve(r.get("prompt", ""), r.get("task", ""))
                  for r in rows], np.int32)
  tokens, mask = runner.layout(
      [_encode(vocabulary, row["inputs"], inputs_length) for row in rows],
      inputs_length)
  pick = lambda array, chunk: (None if array is None else
                               frozen_lib.pad_rows(array[chunk], batch_size))
  labels = [(_row_labels(r, library, k) if runner.decode.rank_classification
             else ()) for r, k in zip(rows, ids)]
  predictions: List[str] = [""] * len(rows)
  ranked = [i for i, words in enumerate(labels) if words]
  decoded = [i for i, words in enumerate(labels) if not words]
  if ranked:
    widest = max(len(labels[i]) for i in ranked)
    candidates = np.zeros((len(rows), widest, targets_length), np.int32)
    for i in ranked:
      candidates[i, :len(labels[i])] = evaluation.label_candidates(
          labels[i], vocabulary, targets_length)
    for chunk in _chunks(ranked, batch_size):
      scores = runner.rank(pick(tokens, chunk), pick(ids, chunk),
                           pick(candidates, chunk), pick(mask, chunk))
      # Ties go to the first label, as in rank-classified evaluation.
      for i, best in zip(chunk, np.argmax(scores[:len(chunk)], axis=-1)):
        predictions[i] = labels[i][int(best)]
  for chunk in _chunks(decoded, batch_size):
    out = runner.predict(pick(tokens, chunk), pick(ids, chunk),
                         pick(mask, chunk))
    out = evaluation.clear_after_eos(out[:len(chunk)], vocabulary.eos_id)
    for i, row_tokens in zip(chunk, out):
      text = vocabulary.decode(row_tokens.tolist())
      predictions[i] = text.decode("utf-8") if isinstance(text, bytes) \
          else str(text)
  names = library.names
  return [dict(row, prompt=names[k], prediction=p)
          for row, k, p in zip(rows, ids, predictions)]


def _chunks(indices: Sequence[int], size: int) -> List[List[int]]:
  return [list(indices[i:i + size]) for i in range(0, len(indices), size)]


def infer_mixed(*, input_path: str, prompts: Sequence[str],
                initial_checkpoint_path: str, output_path: str,
                model_config: Optional[T5Config] = None,
                vocabulary: str = "",
                task_feature_lengths: Mapping[str, int] = (
                    {"inputs": 512, "targets": 8}),
                batch_size: int = 32, decode: DecodeConfig = DecodeConfig(),
                placement: str = "prefix",
                mesh_shape: Tuple[int, int] = (-1, 1), fsdp: bool = False,
                frozen_dtype: Optional[str] = None,
                dtype: Optional[str] = None) -> int:
  """Runs a file of rows, each with its own prompt, through one frozen model.

  Args:
    input_path: the JSONL rows (module docstring).
    prompts: the library: 'NAME=PATH' or 'NAME:TASK=PATH' (PATH: .npy, run
      directory, official numpy checkpoint, PEFT adapter).
    initial_checkpoint_path: the frozen T5 (T5X or Hugging Face).
    output_path: the JSONL written (atomically, by process 0).
    model_config: required for T5X checkpoints.
    vocabulary: see `resolve_vocabulary`.
    task_feature_lengths: {'inputs': T, 'targets': L}; L bounds decoding
      (unless DecodeConfig.max_decode_length) and label words.
    batch_size: rows per model call.
    decode: decoding method, or rank classification.
    placement: 'prefix' or 'suffix', as the prompts were trained.
    mesh_shape, fsdp, frozen_dtype: as in training.
    dtype: compute dtype, 'bfloat16' or 'float32' (None: the config's).

  Returns:
    The number of rows written.
  """
  rows = read_rows(input_path)
  model = frozen_lib.load_frozen(initial_checkpoint_path, model_config,
                                 mesh_shape, fsdp, frozen_dtype, dtype)
  if isinstance(model.config, DecoderConfig):
    # Prompts only (run directories of prompt runs, .npy, PEFT prompts).
    library = frozen_lib.load_library(prompts, model.config.emb_dim)
  else:
    library = frozen_lib.load_library(prompts, config=model.config)
  vocab = resolve_vocabulary(vocabulary, rows, library)
  runner = frozen_lib.make_runner(model, library, decode, placement,
                                  task_feature_lengths["targets"])
  logging.info("Serving %d prompts (%s) for %d rows.", len(library),
               ", ".join(library.names), len(rows))
  out = predict_rows(runner, rows, vocab, task_feature_lengths["inputs"],
                     task_feature_lengths["targets"], batch_size)
  if jax.process_index() == 0:
    eval_logs.write_predictions_jsonl(output_path, out)
  logging.info("Wrote %d predictions to %s.", len(out), output_path)
  return len(out)
