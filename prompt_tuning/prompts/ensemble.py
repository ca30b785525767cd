"""Prompt ensembles (Lester et al., 2021, Section 7): K prompts, one pass.

Every example is replicated K times in the batch, once per prompt
(example-major: rows b*K .. b*K + K - 1 are example b under prompts
0 .. K-1), so a mixed-prompt forward pass (`prompts.mixed`) evaluates all K
prompts at once. `split_outputs` takes the K predictions of each example
apart again, `majority_vote` combines them (the paper's ensemble), and
`summarize` reports each prompt's metrics, their mean and best, and the
vote's. numpy only.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import numpy as np


def replicate(batch: Mapping[str, np.ndarray], num_prompts: int
              ) -> Dict[str, np.ndarray]:
  """Each example once per prompt, plus the prompt of each row.

  Args:
    batch: feature -> [B, ...].
    num_prompts: K.

  Returns:
    feature -> [B * K, ...] (example-major), and 'prompt_ids' [B * K] int32
    (0 .. K-1 for each example).
  """
  if num_prompts < 1:
    raise ValueError(f"An ensemble needs at least one prompt; got "
                     f"{num_prompts}.")
  out = {k: np.repeat(np.asarray(v), num_prompts, axis=0)
         for k, v in batch.items()}  # [B, ...] -> [B * K, ...]
  rows = len(next(iter(batch.values())))
  out["prompt_ids"] = np.tile(np.arange(num_prompts, dtype=np.int32), rows)
  return out


def split_outputs(outputs: np.ndarray, num_prompts: int) -> np.ndarray:
  """[B * K, ...] outputs of a replicated batch -> [B, K, ...]."""
  outputs = np.asarray(outputs)
  if outputs.shape[0] % num_prompts:
    raise ValueError(f"{outputs.shape[0]} rows are not a whole number of "
                     f"examples times {num_prompts} prompts.")
  return outputs.reshape((outputs.shape[0] // num_prompts, num_prompts) +
                         outputs.shape[1:])


def majority_vote(predictions: np.ndarray) -> np.ndarray:
  """The most frequent of each example's K predictions.

  Args:
    predictions: [B, K, L] token rows (equal rows are equal predictions;
      pass them after `clear_after_eos` so leftovers cannot split a vote).

  Returns:
    [B, L]: per example the prediction most prompts made; a tie goes to the
    tied prediction of the lowest-numbered prompt (library order), so the
    vote is deterministic.
  """
  predictions = np.asarray(predictions)
  num_examples, num_prompts = predictions.shape[:2]
  out = np.empty((num_examples,) + predictions.shape[2:], predictions.dtype)
  for b in range(num_examples):
    rows = [p.tobytes() for p in predictions[b]]
    counts = {r: rows.count(r) for r in rows}
    best = max(range(num_prompts), key=lambda k: (counts[rows[k]], -k))
    out[b] = predictions[b, best]
  return out


def summarize(per_prompt: Mapping[str, Mapping[str, float]],
              vote: Mapping[str, float]) -> Dict[str, Any]:
  """The ensemble report of one task.

  Args:
    per_prompt: prompt name -> metric -> value (every prompt has the same
      metrics).
    vote: metric -> value of the majority-vote ensemble.

  Returns:
    {'prompts': per_prompt, 'mean': metric -> mean over prompts, 'best':
    metric -> max over prompts, 'vote': vote}.
  """
  names = list(per_prompt)
  metrics: Sequence[str] = sorted(per_prompt[names[0]]) if names else ()
  return {
      "prompts": {n: dict(per_prompt[n]) for n in names},
      "mean": {m: float(np.mean([per_prompt[n][m] for n in names]))
               for m in metrics},
      "best": {m: float(np.max([per_prompt[n][m] for n in names]))
               for m in metrics},
      "vote": dict(vote),
  }
