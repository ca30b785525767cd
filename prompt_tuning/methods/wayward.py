"""Wayward prompts: a penalty that keeps a soft prompt near a discrete one.

Khashabi et al. (2022) found that soft prompts drift far from any text; the
official code's `extended/train/wayward.py` adds `gamma * d(P, E)` to the loss,
where E is the frozen embedding of a text prompt and d the squared L2
distance averaged over prompt positions (summed over features). Rows of E past
the text are zero, as there; the text's pieces are encoded without EOS. The
penalty is added to the trained loss only, never to the reported metrics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def squared_distance(prompt: Array, target: Array) -> Array:
  """sum_i ||prompt_i - target_i||^2 / P for [P, H] arrays (float32 scalar)."""
  diff = prompt.astype(jnp.float32) - jnp.asarray(target, jnp.float32)
  return jnp.sum(jnp.square(diff)) / prompt.shape[0]


def discrete_prompt(embedding: np.ndarray, vocabulary: Any, text: str,
                    length: int) -> np.ndarray:
  """[P, H] float32: row i is the embedding of the text's i-th token.

  Args:
    embedding: [V, H] frozen token embedding table.
    vocabulary: anything with `.encode(str) -> list[int]` (no EOS added).
    text: the discrete prompt to stay near.
    length: P; a longer text is refused (it could not be stayed near).
  """
  if not text:
    raise ValueError("Wayward prompts need a text to stay near: set "
                     "PromptConfig.wayward_text (or PromptConfig.text).")
  ids = [int(i) for i in vocabulary.encode(text)]
  if len(ids) > length:
    raise ValueError(
        f"The wayward text {text!r} is {len(ids)} tokens, longer than the "
        f"prompt (PROMPT_LENGTH={length}); lengthen the prompt to at least "
        f"{len(ids)} or shorten the text.")
  table = np.asarray(embedding, np.float32)
  out = np.zeros((length, table.shape[1]), np.float32)
  out[:len(ids)] = table[ids]
  return out
