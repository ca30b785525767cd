"""Prompt similarity for transfer (SPoT, Vu et al., 2022): which source prompt
to start a target task from.

SPoT ranks source tasks by the similarity of their prompts to a prompt
briefly trained on the target task, then initialises the target prompt from
the best source (`prompts.initializers.from_file`, `PromptConfig.init =
'from_file'`). Measures, for a target prompt T [P_t, H] and a source S
[P_s, H] (lengths may differ):

- `average`: cosine of the average prompt vectors, cos(mean_i T_i,
  mean_j S_j) (SPoT's "cosine similarity of average tokens");
- `max_token`: the mean over target positions of the best cosine with any
  source position, mean_i max_j cos(T_i, S_j);
- `all_pairs`: the mean cosine over every (i, j) pair (SPoT's "per-token
  average cosine similarity").

numpy only.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np

_EPS = 1e-12


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _check(target: np.ndarray, source: np.ndarray) -> None:
  if (np.ndim(target) != 2 or np.ndim(source) != 2 or
      np.shape(target)[1] != np.shape(source)[1]):
    raise ValueError(f"Prompts must be [P, H] of one width H; got "
                     f"{np.shape(target)} and {np.shape(source)}.")


def average(target: np.ndarray, source: np.ndarray) -> float:
  """Cosine of the two prompts' mean vectors."""
  _check(target, source)
  # Means in float64 too: a float32 mean is ~1e-8 off.
  a = _unit(np.mean(np.asarray(target, np.float64), 0))
  b = _unit(np.mean(np.asarray(source, np.float64), 0))
  return float(a @ b)


def max_token(target: np.ndarray, source: np.ndarray) -> float:
  """Mean over target positions of the best cosine with a source position."""
  _check(target, source)
  cos = _unit(target) @ _unit(source).T  # [P_t, P_s]
  return float(np.mean(np.max(cos, axis=1)))


def all_pairs(target: np.ndarray, source: np.ndarray) -> float:
  """Mean cosine over all (target, source) position pairs."""
  _check(target, source)
  return float(np.mean(_unit(target) @ _unit(source).T))


MEASURES: Dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "average": average,
    "max_token": max_token,
    "all_pairs": all_pairs,
}


def rank_sources(target: np.ndarray, sources: Mapping[str, np.ndarray],
                 measure: str = "average"
                 ) -> List[Tuple[str, Dict[str, float]]]:
  """Source prompts, most similar to `target` first.

  Args:
    target: [P_t, H].
    sources: name -> [P_s, H].
    measure: the measure to sort by (every measure is reported).

  Returns:
    [(name, {measure: value, ...}), ...] sorted by `measure`, descending
    (ties keep the given order).
  """
  if measure not in MEASURES:
    raise ValueError(f"Unknown similarity measure {measure!r}; use one of "
                     f"{sorted(MEASURES)}.")
  scored = [(name, {m: fn(target, source) for m, fn in MEASURES.items()})
            for name, source in sources.items()]
  return sorted(scored, key=lambda item: -item[1][measure])
