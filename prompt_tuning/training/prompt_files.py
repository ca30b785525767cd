"""Reading a learned prompt back: a `.npy` file or a run directory's export.

Training exports every saved step's prompt as `<model_dir>/prompts/
step_<N>.npy` (see `checkpoints`); evaluation and inference runs take either
such a file or the run directory, where the best step by best.json (else the
newest export) is meant. Files are read without pickle.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from prompt_tuning import storage
from prompt_tuning.prompts import npy
from prompt_tuning.training import best as best_lib
from prompt_tuning.training import checkpoints

_PROMPT_FILE_RE = re.compile(r"^step_(\d+)\.npy$")


def _newest_prompt_file(prompts_dir: str) -> Optional[str]:
  found = []
  for name in (storage.listdir(prompts_dir) if storage.isdir(prompts_dir)
               else ()):
    match = _PROMPT_FILE_RE.fullmatch(name)
    if match:
      found.append((int(match.group(1)), name))
  return storage.join(prompts_dir, max(found)[1]) if found else None


def load_prompt(path: str | os.PathLike) -> np.ndarray:
  """Loads a learned prompt.

  Args:
    path: a `.npy` file, or a run directory: then the best step's
      prompts/step_<N>.npy if best.json exists, else the newest one.

  Returns:
    The prompt, float32 [P, H].

  Raises:
    FileNotFoundError / ValueError: one line naming the path and the problem.
  """
  path = os.fspath(path)
  if storage.isdir(path):
    prompts_dir = storage.join(path, checkpoints.PROMPTS_DIR)
    best = best_lib.read(path)
    if best is not None:
      file = storage.join(prompts_dir, f"step_{int(best['step'])}.npy")
      if not storage.exists(file):
        raise FileNotFoundError(
            f"{storage.join(path, checkpoints.BEST_FILE)} names step "
            f"{best['step']} but {file} does not exist (was that step evaluated without a "
            f"save?); pass a prompts/step_<N>.npy file instead.")
    else:
      file = _newest_prompt_file(prompts_dir)
      if file is None:
        raise FileNotFoundError(
            f"{path}: no prompt found; expected {prompts_dir}/step_<N>.npy.")
  elif storage.exists(path):
    file = path
  else:
    raise FileNotFoundError(
        f"prompt path {path} does not exist; pass a .npy file or a run "
        f"directory.")
  # The one prompt reader (bfloat16 as T5X saves it; casts announced).
  with storage.open_file(file, "rb") as f:
    return npy.read(f, file)
