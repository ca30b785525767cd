"""Nearest vocabulary tokens of a prompt (Lester et al., 2021, Section 8).

For each prompt position, the top-k rows of the frozen model's token
embedding table by cosine similarity. The table may be sharded (vocab over
`model`, and with FSDP embed over `data`): the search runs inside
`shard_map` on the table's own sharding, so each device scores only its
rows, partial dot products over a split `embed` axis are summed with
`psum`, and only each shard's k best (ids and cosines, [P, k]) travel
between devices; the [V, H] table is never gathered. `neighbours` adds the
token text and marks label words; `format_table` prints the result.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence
from typing import Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Array = jax.Array

_EPS = 1e-12


def _names(entry: Any) -> Tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _cosine_top_k(prompt: Array, table: Array, k: int,
                  embed_axes: Tuple[str, ...] = (),
                  vocab_axes: Tuple[str, ...] = ()) -> Tuple[Array, Array]:
  """Top-k cosine of local rows; inside shard_map when axes are given.

  Args:
    prompt: [P, H'] (H' = this shard's slice of H).
    table: [V', H'] this shard's rows.
    k: neighbours wanted.
    embed_axes: mesh axes that split H (partial sums are psum-ed).
    vocab_axes: mesh axes that split V (per-shard winners are gathered).

  Returns:
    (ids [P, k] int32 global row ids, cosines [P, k] float32), best first.
  """
  prompt = prompt.astype(jnp.float32)
  table = table.astype(jnp.float32)
  dots = prompt @ table.T  # [P, V']
  table_sq = jnp.sum(table * table, axis=-1)  # [V']
  prompt_sq = jnp.sum(prompt * prompt, axis=-1)  # [P]
  if embed_axes:
    dots, table_sq, prompt_sq = lax.psum((dots, table_sq, prompt_sq),
                                         embed_axes)
  cos = dots / (jnp.maximum(jnp.sqrt(prompt_sq), _EPS)[:, None] *
                jnp.maximum(jnp.sqrt(table_sq), _EPS)[None])  # [P, V']
  local = table.shape[0]
  values, ids = lax.top_k(cos, min(k, local))  # [P, k']
  if vocab_axes:
    shard = lax.axis_index(vocab_axes)
    ids = ids + shard * local
    values = lax.all_gather(values, vocab_axes, axis=1, tiled=True)
    ids = lax.all_gather(ids, vocab_axes, axis=1, tiled=True)  # [P, S * k']
    values, best = lax.top_k(values, k)
    ids = jnp.take_along_axis(ids, best, axis=1)
  return ids.astype(jnp.int32), values


@functools.partial(jax.jit, static_argnames=("k",))
def _dense(prompt: Array, table: Array, k: int) -> Tuple[Array, Array]:
  return _cosine_top_k(prompt, table, k)


def nearest_tokens(prompt: Any, embedding: Any,
                   k: int = 5) -> Tuple[np.ndarray, np.ndarray]:
  """The k nearest vocabulary rows of each prompt position, by cosine.

  Args:
    prompt: [P, H].
    embedding: [V, H] token embedding table: numpy, or a jax.Array, whose
      `NamedSharding` (if any) the search follows without gathering it.
    k: neighbours per position (at most V).

  Returns:
    (ids [P, k] int, cosines [P, k] float32), most similar first.
  """
  prompt = np.asarray(prompt, np.float32)
  shape = tuple(embedding.shape)
  if prompt.ndim != 2 or len(shape) != 2 or prompt.shape[1] != shape[1]:
    raise ValueError(
        f"nearest_tokens needs a prompt [P, H] and a table [V, H] of the same "
        f"H; got {tuple(prompt.shape)} and {shape}.")
  if not 1 <= k <= shape[0]:
    raise ValueError(f"k must be in [1, V={shape[0]}]; got {k}.")
  sharding = getattr(embedding, "sharding", None)
  if not isinstance(sharding, NamedSharding) or all(
      not _names(e) for e in sharding.spec):
    ids, values = _dense(jnp.asarray(prompt), jnp.asarray(embedding), k)
    return np.asarray(ids), np.asarray(values)
  search, prompt_sharding = sharded_search(sharding, shape, k)
  ids, values = search(jax.device_put(prompt, prompt_sharding), embedding)
  return np.asarray(ids), np.asarray(values)


def sharded_search(sharding: NamedSharding, shape: Tuple[int, int], k: int
                   ) -> Tuple[Callable[[Array, Array], Tuple[Array, Array]],
                              NamedSharding]:
  """The jitted search over a table [V, H] placed with `sharding`.

  Returns:
    (fn(prompt, table) -> (ids [P, k], cosines [P, k]) replicated, the
    sharding the prompt must have: its H split like the table's).
  """
  spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
  vocab_axes, embed_axes = _names(spec[0]), _names(spec[1])
  mesh = sharding.mesh
  shards = int(np.prod([mesh.shape[a] for a in vocab_axes] or [1]))
  if k > shape[0] // shards:
    raise ValueError(f"k={k} exceeds the {shape[0] // shards} rows of one "
                     f"vocabulary shard; ask for fewer neighbours.")
  fn = jax.shard_map(
      functools.partial(_cosine_top_k, k=k, embed_axes=embed_axes,
                        vocab_axes=vocab_axes),
      mesh=mesh,
      in_specs=(PartitionSpec(None, spec[1]), PartitionSpec(*spec)),
      out_specs=(PartitionSpec(), PartitionSpec()),
      # Replicated by construction (psum / all_gather over every axis that
      # splits the table), which the varying-axes check cannot infer for
      # all_gather's output.
      check_vma=False)
  return jax.jit(fn), NamedSharding(mesh, PartitionSpec(None, spec[1]))


def label_tokens(labels: Sequence[str],
                 encode: Callable[[str], Sequence[int]]) -> Dict[int, str]:
  """Token id -> the label word(s) it spells (all sub-tokens of each label).

  Args:
    labels: the task's label words.
    encode: the vocabulary's `encode` (text -> ids).
  """
  out: Dict[int, List[str]] = {}
  for label in labels:
    for token in encode(label):
      out.setdefault(int(token), [])
      if label not in out[int(token)]:
        out[int(token)].append(label)
  return {t: "/".join(words) for t, words in out.items()}


def neighbours(prompt: Any, embedding: Any, k: int,
               decode: Callable[[int], str],
               labels: Optional[Mapping[int, str]] = None
               ) -> List[Dict[str, Any]]:
  """The nearest tokens as JSON-ready records.

  Args:
    prompt: [P, H].
    embedding: [V, H], as in `nearest_tokens`.
    k: neighbours per position.
    decode: token id -> its text (e.g. `lambda i: vocabulary.decode([i])`).
    labels: token id -> label word(s) (`label_tokens`); those neighbours get
      a 'label' field.

  Returns:
    One record per position: {'position', 'neighbours': [{'id', 'token',
    'cosine', 'label'?}, ...]} best first.
  """
  labels = labels or {}
  ids, values = nearest_tokens(prompt, embedding, k)
  records = []
  for position in range(ids.shape[0]):
    near = []
    for token, cos in zip(ids[position].tolist(), values[position].tolist()):
      entry = {"id": int(token), "token": decode(int(token)),
               "cosine": round(float(cos), 6)}
      if int(token) in labels:
        entry["label"] = labels[int(token)]
      near.append(entry)
    records.append({"position": position, "neighbours": near})
  return records


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
  """One line per prompt position: `pos  'token' (cosine) ...`; label words
  are starred (`*'positive'*`)."""
  lines = []
  for record in records:
    cells = []
    for n in record["neighbours"]:
      # Ids that decode to nothing (special ids, unused rows) show as <id>.
      token = repr(n["token"]) if n["token"] else f"<{n['id']}>"
      if "label" in n:
        token = f"*{token}*"
      cells.append(f"{token} ({n['cosine']:.3f})")
    lines.append(f"{record['position']:>4}  " + "  ".join(cells))
  return "\n".join(lines)
