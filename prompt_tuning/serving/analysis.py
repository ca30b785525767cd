"""Looking at prompts: nearest tokens, transfer similarity, PEFT interchange.

File-level versions of `prompts.nearest`, `prompts.similarity` and
`prompts.peft`: prompts are read in any library format (run directories
included), the embedding table comes from the frozen checkpoint placed on
its mesh (sharded as in training, never gathered), token text from the
model's vocabulary, and label words from the task catalogue.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.data import registry
from prompt_tuning.models.config import T5Config
from prompt_tuning.pretrained import hf
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.prompts import nearest as nearest_lib
from prompt_tuning.prompts import peft
from prompt_tuning.prompts import similarity as similarity_lib
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.serving import mixed
from prompt_tuning.training import prompt_files


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

  return nearest_lib.neighbours(prompt, model.embedding, k, decode,
                                nearest_lib.label_tokens(words, vocab.encode))


def rank_sources(*, target_path: str, sources: Sequence[str],
                 measure: str = "average"
                 ) -> List[Tuple[str, Dict[str, float]]]:
  """Source prompts ('NAME=PATH'), most similar to the target's first."""
  target = read_prompt(target_path)
  parsed = [library_lib.parse_spec(s) for s in sources]
  return similarity_lib.rank_sources(
      target, {name: read_prompt(path) for name, _, path in parsed}, measure)


def _config(initial_checkpoint_path: str,
            model_config: Optional[T5Config]) -> T5Config:
  if hf.is_hf_checkpoint(initial_checkpoint_path):
    return hf.read_hf(initial_checkpoint_path)[0]  # headers only
  if model_config is None:
    raise ValueError(f"{initial_checkpoint_path}: not a Hugging Face "
                     "checkpoint; pass the model config (--model).")
  return model_config


def export_peft(*, prompt_path: str, initial_checkpoint_path: str,
                output_dir: str,
                model_config: Optional[T5Config] = None) -> str:
  """Writes a prompt as a PEFT adapter for the frozen model's HF T5."""
  config = _config(initial_checkpoint_path, model_config)
  return peft.export_adapter(read_prompt(prompt_path), config, output_dir,
                             os.path.abspath(initial_checkpoint_path))


def import_peft(*, adapter_dir: str, output_path: str,
                embed_dim: Optional[int] = None) -> Tuple[int, int]:
  """Saves a PEFT prompt-tuning adapter as a `.npy` prompt; returns (P, H)."""
  prompt = peft.import_adapter(adapter_dir, embed_dim)
  directory = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(directory, exist_ok=True)
  np.save(output_path, prompt)
  return tuple(prompt.shape)
