"""Multitask prompts (mode 'mpt') as PEFT MULTITASK_PROMPT_TUNING directories.

PEFT saves its MPT adapter as three tensors: the shared table
`prompt_embeddings` [s P, H], and per task `prefix_task_cols` [T, s P, r] and
`prefix_task_rows` [T, r, H]; task t's prompt is
`prompt_embeddings * (cols[t] @ rows[t])`. Our `MultitaskPromptConfig(mode=
'mpt')` trains the same three arrays (`multitask/shared`, `cols`, `rows`) for
the encoder, which is PEFT with num_transformer_submodules s = 1. PEFT's
seq2seq default s = 2 doubles the tables: the first P rows prompt the encoder
(in forward and generate); the other P are prepended to the decoder's inputs
in forward only. Reading such an adapter keeps the encoder half, which is
what PEFT's `generate` uses; its teacher-forced logits differ (said in a log
line). On a decoder-only LM (CAUSAL_LM, s = 1) the prompt goes before the
input, our 'prefix' placement. PEFT numbers tasks; our tasks are names,
given in task-index order.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.methods import peft_io
from prompt_tuning.methods.multitask import PREFIX
from prompt_tuning.methods.peft_names import peft_names
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.prompts import peft

MPT = "MULTITASK_PROMPT_TUNING"
_TENSORS = {"prompt_embeddings": "shared", "prefix_task_cols": "cols",
            "prefix_task_rows": "rows"}


def export_mpt(params: Dict[str, np.ndarray], config: T5Config,
               directory: str, *,
               base_model_name_or_path: Optional[str] = None) -> str:
  """Writes an 'mpt' multitask prompt as a PEFT adapter (s = 1).

  Args:
    params: `multitask/shared` [P, H], `multitask/cols` [T, P, r],
      `multitask/rows` [T, r, H] (a run's trainable tree, flattened).
    config: the frozen model's config.
    directory: created if needed; adapter files there are replaced.
    base_model_name_or_path: recorded for PEFT.

  Returns:
    The directory.
  """
  try:
    shared, cols, rows = (np.asarray(params[f"{PREFIX}/{k}"], np.float32)
                          for k in ("shared", "cols", "rows"))
  except KeyError as e:
    raise ValueError(f"Not an 'mpt' multitask prompt: no {e.args[0]} (only "
                     f"mode 'mpt' is PEFT's MULTITASK_PROMPT_TUNING).") from None
  length, width = shared.shape
  tasks, _, rank = cols.shape
  if (width != config.emb_dim or cols.shape != (tasks, length, rank) or
      rows.shape != (tasks, rank, width)):
    raise ValueError(
        f"MPT shapes do not fit: shared {shared.shape}, cols {cols.shape}, "
        f"rows {rows.shape} for a model of width {config.emb_dim}.")
  adapter = peft_io.base_config(MPT, base_model_name_or_path,
                                peft_names(config).task_type)
  decoder_only = isinstance(config, DecoderConfig)
  adapter.update({
      "num_virtual_tokens": int(length), "token_dim": int(width),
      "num_transformer_submodules": 1,
      "num_attention_heads": config.num_heads,
      "num_layers": (config.num_layers if decoder_only else
                     config.num_encoder_layers), "num_tasks": int(tasks),
      "num_ranks": int(rank), "prompt_tuning_init": "RANDOM",
      "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
      "prompt_tuning_init_state_dict_path": None,
      "prompt_tuning_init_task": 0})
  return peft.write_adapter(directory, {
      "prompt_embeddings": shared, "prefix_task_cols": cols,
      "prefix_task_rows": rows}, adapter)


def import_mpt(directory: str, config: T5Config
               ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """Reads a PEFT MULTITASK_PROMPT_TUNING adapter.

  Returns:
    (options {'mode': 'mpt', 'length': P, 'rank': r, 'num_tasks': T},
    params {'multitask/shared', 'multitask/cols', 'multitask/rows'}).
  """
  config_file, adapter, weights, tensors = peft_io.read(directory)
  names = peft_names(config)
  peft_io.check_common(config_file, adapter, MPT, names.task_type)
  submodules = adapter.get("num_transformer_submodules") or 1
  length = adapter.get("num_virtual_tokens")
  allowed = (1,) if isinstance(config, DecoderConfig) else (1, 2)
  if submodules not in allowed or not isinstance(length, int) or length < 1:
    raise ValueError(
        f"{config_file}: num_virtual_tokens={length!r}, "
        f"num_transformer_submodules={submodules!r}: an MPT adapter for "
        f"this {names.model} has a length >= 1 and "
        f"{' or '.join(map(str, allowed))} submodules.")
  if set(tensors) != set(_TENSORS):
    raise ValueError(f"{weights} holds {sorted(tensors)}, not PEFT's MPT "
                     f"tensors {sorted(_TENSORS)}.")
  shared = np.asarray(tensors["prompt_embeddings"], np.float32)
  cols = np.asarray(tensors["prefix_task_cols"], np.float32)
  rows = np.asarray(tensors["prefix_task_rows"], np.float32)
  total = length * submodules
  if (shared.shape != (total, config.emb_dim) or cols.ndim != 3 or
      cols.shape[1] != total or rows.ndim != 3 or
      rows.shape != (cols.shape[0], cols.shape[2], config.emb_dim)):
    raise ValueError(
        f"{weights}: shapes {shared.shape}, {cols.shape}, {rows.shape} do "
        f"not fit [{total}, {config.emb_dim}], [T, {total}, r], "
        f"[T, r, {config.emb_dim}] (the model's width, "
        f"num_virtual_tokens * num_transformer_submodules).")
  if submodules == 2:
    logging.info("%s: num_transformer_submodules=2: keeping the encoder "
                 "half (the first %d rows), which PEFT's generate uses; its "
                 "teacher-forced forward also prompts the decoder.",
                 config_file, length)
  options = {"mode": "mpt", "length": int(length), "rank": int(cols.shape[2]),
             "num_tasks": int(cols.shape[0])}
  return options, {f"{PREFIX}/shared": shared[:length],
                   f"{PREFIX}/cols": cols[:, :length],
                   f"{PREFIX}/rows": rows}


def task_names(num_tasks: int, names: Sequence[str] = ()) -> Tuple[str, ...]:
  """The tasks of an imported adapter: `names` (in PEFT's task-id order)
  when given, else 'task_0', 'task_1', ..."""
  if names and len(names) != num_tasks:
    raise ValueError(f"The adapter has {num_tasks} tasks; {len(names)} names "
                     f"were given.")
  return tuple(names) or tuple(f"task_{i}" for i in range(num_tasks))
