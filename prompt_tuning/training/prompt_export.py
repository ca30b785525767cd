"""The learned prompt as a plain file beside the checkpoints.

Every save exports the prompt as `<model_dir>/prompts/step_<N>.npy` (float32
[P, H], `np.save` without pickle): evaluation, inference, the prompt library
and PEFT export read it without JAX or orbax, and it outlives the checkpoint
(keep-N garbage collection never deletes exports). So a damaged export must
not survive a resume: `repair` compares the newest export with the restored
checkpoint and rewrites it, setting the damaged file aside.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning import storage

PROMPTS_DIR = "prompts"
# Beside the damaged checkpoints `Checkpointer` sets aside.
_DAMAGED_DIR = "damaged"


def path(model_dir: str, step: int) -> str:
  return storage.join(model_dir, PROMPTS_DIR, f"step_{int(step)}.npy")


def find(state: Any, where: Sequence[str]) -> Optional[Any]:
  """The prompt inside a train state's params, or None (model tuning)."""
  params = getattr(state, "params", None)
  if params is None and isinstance(state, Mapping):
    params = state.get("params")
  node = params
  for name in where:
    if not isinstance(node, Mapping) or name not in node:
      return None
    node = node[name]
  return node


def write(model_dir: str, step: int, prompt: np.ndarray) -> None:
  """Writes prompts/step_<step>.npy whole (a reader never sees half)."""
  storage.makedirs(storage.join(model_dir, PROMPTS_DIR))
  prompt = np.asarray(prompt, np.float32)  # [P, H]
  storage.atomic_write(path(model_dir, step),
                       lambda f: np.save(f, prompt, allow_pickle=False))


def _problem(file: str, prompt: np.ndarray) -> Optional[str]:
  """Why `file` is not exactly `prompt`'s export, or None."""
  if not storage.exists(file):
    return "it is missing"
  try:
    stored = np.load(io.BytesIO(storage.read_bytes(file)), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    return f"it does not read as .npy ({' '.join(str(e).split())[:120]})"
  if stored.shape != prompt.shape or stored.dtype != np.float32:
    return (f"it holds a {stored.dtype} {stored.shape} array, not the "
            f"checkpoint's float32 {prompt.shape}")
  if not np.array_equal(stored, prompt):
    return "its values differ from the checkpoint's"
  return None


def repair(model_dir: str, step: int, prompt: np.ndarray) -> bool:
  """Rewrites prompts/step_<step>.npy from `prompt` unless it already is it.

  A damaged file (truncated, another array) is moved, unchanged, to
  `<model_dir>/damaged/prompts/` first: nothing is deleted.

  Args:
    model_dir: the run directory.
    step: the checkpoint's step.
    prompt: [P, H] the checkpoint's prompt, on the host.

  Returns:
    Whether the export was (re)written.
  """
  prompt = np.asarray(prompt, np.float32)
  file = path(model_dir, step)
  problem = _problem(file, prompt)
  if problem is None:
    return False
  if storage.exists(file):
    aside = storage.move_aside(file, storage.join(
        model_dir, _DAMAGED_DIR, PROMPTS_DIR, storage.basename(file)))
    problem += f"; moved it to {aside}"
  write(model_dir, step, prompt)
  logging.warning("Rewrote %s from checkpoint step %d: %s.", file, step,
                  problem)
  return True
