"""Looking at prompts: nearest tokens, transfer similarity, PEFT interchange.

File-level versions of `prompts.nearest`, `prompts.similarity` and
`prompts.peft`: prompts are read in any library format (run directories
included), the embedding table comes from the frozen checkpoint placed on
its mesh (sharded as in training, never gathered), token text from the
model's vocabulary, and label words from the task catalogue. PEFT
interchange also covers the other methods' runs (`methods.peft_adapters`):
a LoRA, IA3, prefix or MPT multitask run directory's checkpoint is
exported as that PEFT adapter, and such an adapter is imported as a run directory that
evaluation and inference read (`training.runs`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.data import registry
from prompt_tuning.methods import base as method_base
from prompt_tuning.methods import peft_adapters
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained import hf_decoder
from prompt_tuning.pretrained import is_decoder_only
from prompt_tuning.pretrained import t5x
from prompt_tuning.pretrained.assemble import BlockLoader
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.prompts import nearest as nearest_lib
from prompt_tuning.prompts import peft
from prompt_tuning.prompts.decoder_model import prompt_space_table
from prompt_tuning.prompts import similarity as similarity_lib
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.serving import mixed
from prompt_tuning.training import prompt_files
from prompt_tuning.training import runs

# The token embedding table's name in every reader's map: [V, H].
_EMBEDDING = "token_embedder/embedding"


def read_prompt(path: str) -> np.ndarray:
  """A prompt [P, H] from any library format, our run directories too."""
  return library_lib.read_prompt(path, read_run=prompt_files.load_prompt)[0]


def nearest_tokens(*, prompt_path: str, initial_checkpoint_path: str,
                   model_config: Optional[T5Config] = None, k: int = 5,
                   vocabulary: str = "", task: str = "",
                   labels: Sequence[str] = (),
                   mesh_shape: Tuple[int, int] = (-1, 1), fsdp: bool = False
                   ) -> List[Dict[str, Any]]:
  """The k nearest vocabulary tokens of each prompt position.

  Args:
    prompt_path: the prompt (any library format).
    initial_checkpoint_path: the frozen model whose embedding table is
      searched, placed with the training shardings of `mesh_shape` / `fsdp`.
    model_config: for T5X checkpoints.
    k: neighbours per position.
    vocabulary: as `mixed.resolve_vocabulary` ('' = the task's).
    task: its label words are marked (unless `labels` is given).
    labels: label words to mark.
    mesh_shape, fsdp: the mesh and rules.

  Returns:
    `prompts.nearest.neighbours` records.
  """
  model = frozen_lib.load_frozen(initial_checkpoint_path, model_config,
                                 mesh_shape, fsdp)
  prompt = read_prompt(prompt_path)
  if prompt.shape[1] != model.config.emb_dim:
    raise ValueError(f"{prompt_path}: the prompt is {prompt.shape[1]} wide "
                     f"but the frozen model is {model.config.emb_dim}.")
  vocab = mixed.resolve_vocabulary(vocabulary or task,
                                   [{"task": task}] if task else [])
  words = tuple(labels) or (registry.class_labels(task) if task else ())

  def decode(token: int) -> str:
    text = vocab.decode([token])
    return text.decode("utf-8", "replace") if isinstance(text, bytes) \
        else str(text)

  table = model.embedding
  if isinstance(model.config, DecoderConfig):
    table = prompt_space_table(model.config, table)  # Gemma 3's scale
  return nearest_lib.neighbours(prompt, table, k, decode,
                                nearest_lib.label_tokens(words, vocab.encode))


def rank_sources(*, target_path: str, sources: Sequence[str],
                 measure: str = "average"
                 ) -> List[Tuple[str, Dict[str, float]]]:
  """Source prompts ('NAME=PATH'), most similar to the target's first."""
  target = read_prompt(target_path)
  parsed = [library_lib.parse_spec(s) for s in sources]
  return similarity_lib.rank_sources(
      target, {name: read_prompt(path) for name, _, path in parsed}, measure)


def _hf_config(path: str):
  """A Hugging Face checkpoint's config, T5 or decoder-only, from its
  config.json and safetensors headers (shapes checked, nothing loaded)."""
  if is_decoder_only(path):
    return hf_decoder.read_hf_decoder(path)[0]
  return hf.read_hf(path)[0]


def _config(initial_checkpoint_path: str,
            model_config: Optional[T5Config]) -> T5Config:
  if hf.is_hf_checkpoint(initial_checkpoint_path):
    return _hf_config(initial_checkpoint_path)
  if model_config is None:
    raise ValueError(f"{initial_checkpoint_path}: not a Hugging Face "
                     "checkpoint; pass the model config (--model).")
  return model_config


def export_peft(*, prompt_path: str, initial_checkpoint_path: str,
                output_dir: str, model_config: Optional[T5Config] = None
                ) -> Tuple[str, Tuple[str, ...]]:
  """Writes what a run learned as a PEFT adapter for the frozen model's HF T5.

  Args:
    prompt_path: a prompt in any library format, a prompt or P-tuning run
      directory (its exported prompt, P-tuning's merged: PROMPT_TUNING), or
      the run directory (or `checkpoint_<N>`) of a LoRA, IA3, prefix
      (layout 'peft') or multitask prompt (mode 'mpt') run: its best
      checkpoint, else the newest, as LORA, IA3, PREFIX_TUNING or
      MULTITASK_PROMPT_TUNING. Deep prompts, Li & Liang prefixes, the other
      multitask modes and model tuning are refused in one line saying why.
      On a decoder-only LM (CAUSAL_LM) the same, with prefix runs of
      either layout (both are PEFT's there).
    initial_checkpoint_path: the frozen model (only its config is read).
    output_dir: the adapter directory.
    model_config: for T5X checkpoints.

  Returns:
    (the adapter directory, the tasks that PEFT's task ids 0, 1, ... stand
    for: a multitask run's, in its task index order; () for the others).
    PEFT's adapter config has no field for task names, so the caller says
    them.
  """
  config = _config(initial_checkpoint_path, model_config)
  base_path = os.path.abspath(initial_checkpoint_path)
  saved = runs.find_run(prompt_path)
  if saved is None or (saved.step is None and
                       saved.method.name in runs.PROMPT_EXPORTED):
    return peft.export_adapter(read_prompt(prompt_path), config, output_dir,
                               base_path), ()
  why = peft_adapters.refusal(saved.method, config)
  if why:
    raise ValueError(f"{prompt_path}: a {saved.method.name} run cannot be a "
                     f"PEFT adapter: {why}.")
  trainable, step = runs.restore_trainable(saved)
  names = {k: np.asarray(v) for k, v in method_base.flat(trainable).items()}
  kind = peft_adapters.export_run(saved.method, names, config, output_dir,
                                  base_path)
  logging.info("%s: step %d as a PEFT %s adapter.", saved.directory, step,
               kind)
  return output_dir, tuple(getattr(saved.method, "tasks", ()))


def frozen_shape(checkpoint: str, model_config: Optional[T5Config] = None
                 ) -> Tuple[Tuple[int, int], Optional[T5Config]]:
  """The frozen model's token embedding shape [V, H], read without loading
  the model, and its config where known (Hugging Face's config.json, else
  `model_config`, which must then agree with the table).

  A T5X checkpoint's table is learnt from its TensorStore metadata; an inline
  (msgpack) or orbax table is read whole, once.
  """
  if hf.is_hf_checkpoint(checkpoint):
    config = _hf_config(checkpoint)
    return (config.vocab_size, config.emb_dim), config
  ckpt_dir = t5x.find_t5x_checkpoint(checkpoint)
  loaders = (t5x.read_t5x_legacy(ckpt_dir) if t5x.is_t5x_legacy(ckpt_dir)
             else t5x.read_t5x_orbax(ckpt_dir))
  loader = loaders.get(_EMBEDDING)
  if loader is None:
    raise ValueError(f"{ckpt_dir} has no {_EMBEDDING}: not a T5 checkpoint.")
  shape = tuple(loader.shape() if isinstance(loader, BlockLoader)
                else np.shape(loader()))
  if len(shape) != 2:
    raise ValueError(f"{ckpt_dir}: {_EMBEDDING} has shape {shape}, not "
                     "[V, H].")
  if model_config is not None and model_config.emb_dim != shape[1]:
    raise ValueError(
        f"{ckpt_dir}: the token embedding is {shape[1]} wide but --model "
        f"has emb_dim {model_config.emb_dim}; pass the checkpoint's preset.")
  return (int(shape[0]), int(shape[1])), model_config


def import_peft(*, adapter_dir: str, output_path: str, checkpoint: str = "",
                model_config: Optional[T5Config] = None) -> Tuple[int, int]:
  """Saves a PEFT prompt-tuning adapter as a `.npy` prompt; returns (P, H).

  Args:
    adapter_dir: the adapter (`peft.import_adapter`).
    output_path: the `.npy` file written.
    checkpoint: the frozen model the prompt is for (T5X or Hugging Face):
      the adapter's width, and its heads and layers where the model's config
      is known, must match it, checked before anything is written. '' skips
      the check and says so in one log line.
    model_config: a T5X checkpoint's config, if known.
  """
  if checkpoint:
    (vocab, width), config = frozen_shape(checkpoint, model_config)
    prompt = peft.import_adapter(adapter_dir, width, config)
    logging.info("%s: width %d matches %s (V=%d, H=%d).", adapter_dir,
                 prompt.shape[1], checkpoint, vocab, width)
  else:
    prompt = peft.import_adapter(adapter_dir)
    logging.warning(
        "%s: the prompt's width %d was not checked against a frozen model; "
        "pass --checkpoint PATH (the model it is for) to check it.",
        adapter_dir, prompt.shape[1])
  directory = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(directory, exist_ok=True)
  np.save(output_path, prompt)
  return tuple(prompt.shape)


def import_peft_run(*, adapter_dir: str, output_dir: str, checkpoint: str,
                    model_config: Optional[T5Config] = None,
                    tasks: Sequence[str] = ()) -> str:
  """Saves a PEFT LORA, IA3, PREFIX_TUNING or MULTITASK_PROMPT_TUNING adapter
  as a run directory.

  The directory (`runs.write_adapter_run`: method.json and checkpoint_0) is
  what `python -m prompt_tuning.eval` / `infer` take as PROMPT_PATH, with
  the same frozen model.

  Args:
    adapter_dir: the adapter (`methods.peft_adapters.import_run`).
    output_dir: the new run directory.
    checkpoint: the frozen model it adapts (T5X or Hugging Face): its layers,
      heads and widths lay the parameters out, checked before writing.
    model_config: a T5X checkpoint's config (required for T5X).
    tasks: an MPT adapter's task names, one per task in PEFT's task-id order
      (the run's task index); evaluation matches them to the mixture's
      tasks.

  Returns:
    The method's name.
  """
  kind = peft_adapters.peft_type(adapter_dir)
  if not checkpoint:
    raise ValueError(f"{adapter_dir}: a {kind} adapter is laid out by the "
                     f"frozen model it adapts: pass --checkpoint PATH (and "
                     f"--model PRESET for a T5X checkpoint).")
  _, config = frozen_shape(checkpoint, model_config)
  if config is None:
    raise ValueError(f"{checkpoint}: not a Hugging Face checkpoint; pass its "
                     f"preset (--model) to lay out the {kind} adapter.")
  method, names = peft_adapters.import_run(adapter_dir, config, tasks)
  runs.write_adapter_run(output_dir, method, method_base.nested(names))
  return method.name
