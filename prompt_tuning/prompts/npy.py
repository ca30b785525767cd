"""A prompt's `.npy` file: the one reader every prompt file goes through.

Prompts arrive as `np.save` files from several writers: ours (float32
`prompts/step_<N>.npy`), the official google-research/prompt-tuning code
(T5X's `Checkpointer.save_numpy`, which saves `np.array(x).astype(
save_dtype)`: with `save_dtype='bfloat16'` that is an `ml_dtypes.bfloat16`
array, which `np.save` can only describe as raw 2-byte records, descr `<V2`
or `|V2`), and users' own scripts (float16, float64). The initializer
`from_file`, the prompt library and the serving tools all read through
`read`, so they accept the same files and refuse the same ones, each with
one line naming the file. A prompt always comes out float32 [P, H]; any
other stored dtype is announced in one log line saying whether the cast is
exact (bfloat16, float16) or rounds (float64). Files are loaded without
pickle: a prompt may come from anywhere, and a pickle runs code when loaded.
jax-free, numpy and ml_dtypes only.
"""

from __future__ import annotations

import logging
import os
from typing import BinaryIO, Optional, Union

import ml_dtypes
import numpy as np

MAGIC = b"\x93NUMPY"
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
# What np.load gives for a bfloat16 array that np.save wrote: 2-byte records.
_RAW_2_BYTES = np.dtype("V2")
# Stored dtypes whose every value is a float32 value (the cast is exact).
_EXACT_IN_FLOAT32 = (np.dtype(np.float16), _BFLOAT16)
_ACCEPTED = "float32, bfloat16, float16 or float64"


def as_float32_prompt(array: np.ndarray, where: str) -> np.ndarray:
  """A loaded array as a float32 [P, H] prompt, its cast announced.

  Args:
    array: as loaded; 2-byte void records are read as bfloat16.
    where: the file (or directory) it came from, for messages.

  Returns:
    float32 [P, H].

  Raises:
    ValueError: one line naming `where`: not a 2-D floating array, or
      NaN / inf values (also float64 values beyond float32's range).
  """
  array = np.asarray(array)
  if array.dtype.byteorder not in "=|":  # big-endian files: the same values
    array = array.astype(array.dtype.newbyteorder("="))
  if array.dtype == _RAW_2_BYTES:
    array = array.view(_BFLOAT16)
  floating = (np.issubdtype(array.dtype, np.floating)
              or array.dtype == _BFLOAT16)
  if array.ndim != 2 or not floating:
    raise ValueError(
        f"{where} holds a {array.dtype} array of shape {array.shape}; a "
        f"prompt is a floating [P, H] array ({_ACCEPTED}).")
  if not np.all(np.isfinite(array.astype(np.float64))):
    raise ValueError(f"{where} contains NaN or inf values.")
  if array.dtype == np.float32:
    return array
  with np.errstate(over="ignore"):
    prompt = array.astype(np.float32)
  if not np.all(np.isfinite(prompt)):
    raise ValueError(f"{where} holds {array.dtype} values beyond float32's "
                     "range; a prompt is stored as float32.")
  exact = array.dtype in _EXACT_IN_FLOAT32
  logging.warning("Prompt file %s is %s %s: cast to float32 (%s).", where,
                  array.dtype, list(array.shape),
                  "exact" if exact else "rounded to float32's precision")
  return prompt


def _load(f: BinaryIO, where: str) -> np.ndarray:
  """The array of an `np.save` file read from `f`'s current position."""
  start = f.tell()
  if f.read(len(MAGIC)) != MAGIC:
    raise ValueError(f"{where} is not a .npy file (no NUMPY magic); save "
                     "prompts with np.save.")
  f.seek(start)
  # MemoryError: a damaged header whose shape numpy then tries to allocate.
  try:
    return np.load(f, allow_pickle=False)
  except (ValueError, OSError, EOFError, MemoryError) as e:
    reason = " ".join(str(e).split())
    if "allow_pickle" in reason:  # an object array: a pickle
      raise ValueError(
          f"{where} is not a plain numeric .npy array ({reason}); save "
          "prompts with np.save(path, np.asarray(prompt, np.float32))."
      ) from None
    # A file cut short, or a damaged header.
    raise ValueError(f"{where} is not a readable .npy array ({reason}); it "
                     "may be truncated: save it again.") from None


def read(source: Union[str, os.PathLike, BinaryIO],
         where: Optional[str] = None) -> np.ndarray:
  """A prompt from an `np.save` file (any name, with an extension or not).

  Args:
    source: a local path, or a binary file open for reading and seekable
      (e.g. `storage.open_file(path, 'rb')` for a `gs://` file), read from
      its current position.
    where: the name messages use; default the path.

  Returns:
    float32 [P, H]; a stored dtype other than float32 is announced in one
    log line (`as_float32_prompt`).

  Raises:
    FileNotFoundError / ValueError: one line naming the file.
  """
  if isinstance(source, (str, os.PathLike)):
    where = where or os.fspath(source)
    try:
      with open(source, "rb") as f:
        array = _load(f, where)
    except (FileNotFoundError, IsADirectoryError):
      raise FileNotFoundError(f"Prompt file {where} does not exist or is not "
                              "a file.") from None
  else:
    where = where or str(getattr(source, "name", "prompt file"))
    array = _load(source, where)
  return as_float32_prompt(array, where)
