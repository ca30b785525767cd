"""Initializers for the soft prompt, as in Lester et al. (2021), Section 3.2.

Each factory returns a Flax-signature initializer `(rng, shape, dtype) ->
[P, H]` for the `Prompt` layer's one parameter. The paper compares random
uniform noise, embeddings of sampled vocabulary items and embeddings of the
class labels (padded with sampled vocabulary); we add the embeddings of a
given text and a prompt loaded from a `.npy` file (to warm-start or to resume
from a prompt saved elsewhere). Everything that depends only on the factory's
arguments (tokenizing labels, pooling their embeddings, reading the file) is
done once on the host when the factory runs, so configuration errors surface
before any tracing, and the returned function stays jit-able: it only draws
from `rng` and gathers rows. Vocabularies are duck-typed (anything with
`.encode(str) -> list[int]`, e.g. a seqio vocabulary) so that this module
needs neither seqio nor tensorflow.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import npy

Array = jax.Array
Shape = Tuple[int, ...]
# (rng, shape, dtype) -> array of `shape`: what `nn.Module.param` calls.
Initializer = Callable[..., Array]


class Vocabulary(Protocol):
  """The one method of a (seqio) vocabulary the initializers use."""

  def encode(self, s: str) -> Sequence[int]:
    ...


def _check_prompt_shape(shape: Shape, embed_dim: Optional[int],
                        who: str) -> Tuple[int, int]:
  """Returns (P, H) of a requested prompt shape, checked against the table."""
  if len(shape) != 2:
    raise ValueError(f"{who} initializes a [P, H] prompt; got shape "
                     f"{tuple(shape)}.")
  length, width = int(shape[0]), int(shape[1])
  if embed_dim is not None and width != embed_dim:
    raise ValueError(
        f"{who}: the prompt width {width} differs from the embedding table's "
        f"width {embed_dim}; pass the token embedding of the frozen model.")
  return length, width


def _as_table(embedding: Any) -> np.ndarray:
  table = np.asarray(embedding)
  if table.ndim != 2:
    raise ValueError(f"The embedding table must be [V, H]; got shape "
                     f"{table.shape}.")
  return table


def random_uniform(scale: float = 0.5) -> Initializer:
  """U[-scale, scale] noise; the paper's random initialization uses 0.5.

  Args:
    scale: half-width of the interval.

  Returns:
    An initializer `(rng, shape, dtype) -> [P, H]`.
  """
  if scale <= 0:
    raise ValueError(f"random_uniform needs scale > 0; got {scale}.")

  def init(rng: Array, shape: Shape, dtype=jnp.float32) -> Array:
    return jax.random.uniform(rng, tuple(shape), dtype, -scale, scale)

  return init


def sampled_vocab(embedding: np.ndarray,
                  num_tokens: int = 5000) -> Initializer:
  """Embeddings of vocabulary items sampled from the first `num_tokens` rows.

  SentencePiece orders pieces roughly by frequency, so the first rows are
  common tokens (the paper samples from the 5,000 most common). Rows are
  distinct while P <= N; only a prompt longer than the candidate set samples
  with replacement.

  Args:
    embedding: [V, H] the frozen model's token embedding table.
    num_tokens: N, the number of leading rows to sample from (capped at V).

  Returns:
    An initializer `(rng, shape, dtype) -> [P, H]`, deterministic given rng.
  """
  table = _as_table(embedding)
  if num_tokens < 1:
    raise ValueError(f"sampled_vocab needs num_tokens >= 1; got {num_tokens}.")
  # Only the candidate rows are kept: under jit they become a constant of the
  # program, and N rows are far smaller than a 32k (or 250k mT5) table.
  candidates = table[:min(num_tokens, table.shape[0])]  # [N, H]

  def init(rng: Array, shape: Shape, dtype=jnp.float32) -> Array:
    length, _ = _check_prompt_shape(shape, table.shape[1], "sampled_vocab")
    num = candidates.shape[0]
    ids = jax.random.choice(rng, num, (length,), replace=length > num)  # [P]
    return jnp.take(jnp.asarray(candidates), ids, axis=0).astype(dtype)

  return init


def _fill_after(head: np.ndarray, rng: Array, length: int, width: int,
                dtype, fallback: Initializer) -> Array:
  """[n, H] fixed rows, then `fallback` for the remaining P - n positions."""
  head = jnp.asarray(head, dtype)
  if head.shape[0] == length:
    return head
  _, rest_rng = jax.random.split(rng)
  rest = fallback(rest_rng, (length - head.shape[0], width), dtype)
  return jnp.concatenate([head, rest.astype(dtype)], axis=0)  # [P, H]


def _embed_ids(table: np.ndarray, ids: Sequence[int], what: str) -> np.ndarray:
  """[n] token ids -> [n, H] rows of the table, with a range check."""
  ids = np.asarray(list(ids), np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
    raise ValueError(
        f"{what} tokenizes to ids outside the embedding table (V="
        f"{table.shape[0]}): {ids.tolist()}. Is the vocabulary the one the "
        f"model was trained with?")
  return table[ids].astype(np.float32)


def class_labels(embedding: np.ndarray, labels: Sequence[str],
                 vocabulary: Vocabulary,
                 fallback: Optional[Initializer] = None) -> Initializer:
  """One position per class label: the mean of its sub-token embeddings.

  Position i holds label i (in the given order); positions beyond the labels
  come from `fallback`, as the paper fills them with sampled vocabulary.

  Args:
    embedding: [V, H] the frozen model's token embedding table.
    labels: the verbalized classes, e.g. ["positive", "negative"].
    vocabulary: has `.encode(str) -> list[int]` (no EOS is appended by seqio's
      `encode`, so the pooled vector covers the label's own pieces only).
    fallback: initializer for the remaining positions; default
      `sampled_vocab(embedding)`.

  Returns:
    An initializer `(rng, shape, dtype) -> [P, H]`; it raises ValueError when
    there are more labels than prompt positions.
  """
  table = _as_table(embedding)
  labels = list(labels)
  if not labels:
    raise ValueError("class_labels needs at least one label.")
  pooled = []
  for label in labels:
    ids = list(vocabulary.encode(label))
    if not ids:
      raise ValueError(
          f"Class label {label!r} tokenizes to no tokens, so it has no "
          f"embedding to initialize from; fix or drop the label.")
    pooled.append(_embed_ids(table, ids, f"Class label {label!r}").mean(0))
  label_rows = np.stack(pooled)  # [num_labels, H]
  fallback = fallback if fallback is not None else sampled_vocab(table)

  def init(rng: Array, shape: Shape, dtype=jnp.float32) -> Array:
    length, width = _check_prompt_shape(shape, table.shape[1], "class_labels")
    num_labels = label_rows.shape[0]
    if num_labels > length:
      raise ValueError(
          f"class_labels got {num_labels} labels but the prompt has only "
          f"{length} positions: raise PROMPT_LENGTH to at least {num_labels} "
          f"or use fewer labels.")
    return _fill_after(label_rows, rng, length, width, dtype, fallback)

  return init


def from_text(embedding: np.ndarray, text: str, vocabulary: Vocabulary,
              fallback: Optional[Initializer] = None) -> Initializer:
  """The embeddings of a text's tokens in the first positions.

  Useful to start from a hand-written instruction. A text longer than the
  prompt is truncated (with a warning); shorter leaves the rest to `fallback`.

  Args:
    embedding: [V, H] the frozen model's token embedding table.
    text: the text to tokenize.
    vocabulary: has `.encode(str) -> list[int]`.
    fallback: initializer for positions after the text; default
      `sampled_vocab(embedding)`.

  Returns:
    An initializer `(rng, shape, dtype) -> [P, H]`.
  """
  table = _as_table(embedding)
  ids = list(vocabulary.encode(text))
  if not ids:
    raise ValueError(f"from_text: {text!r} tokenizes to no tokens; give a "
                     f"non-empty text or use another initializer.")
  text_rows = _embed_ids(table, ids, f"from_text text {text!r}")  # [n, H]
  fallback = fallback if fallback is not None else sampled_vocab(table)

  def init(rng: Array, shape: Shape, dtype=jnp.float32) -> Array:
    length, width = _check_prompt_shape(shape, table.shape[1], "from_text")
    rows = text_rows
    if rows.shape[0] > length:
      logging.warning(
          "from_text: the text has %d tokens but the prompt only %d "
          "positions; keeping the first %d tokens.", rows.shape[0], length,
          length)
      rows = rows[:length]
    return _fill_after(rows, rng, length, width, dtype, fallback)

  return init


def _load_prompt_file(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Prompt file {path} does not exist; from_file expects a [P, H] "
        f"float array written with np.save.")
  return npy.read(path)


def from_file(path: str, fallback: Optional[Initializer] = None) -> Initializer:
  """A prompt saved as a `.npy` [P, H] float array.

  The file is read (and checked) once, when the factory is called, by
  `prompts.npy.read`: float32, bfloat16 (as T5X's `np.save` writes it),
  float16 or float64, the last three cast to float32 with one log line.

  Args:
    path: path of a `.npy` file, loaded without pickle.
    fallback: when given, a file with fewer rows than P (same H) fills the
      remaining positions from it (e.g. to lengthen a trained prompt). Without
      it, the file's shape must equal the requested shape exactly.

  Returns:
    An initializer `(rng, shape, dtype) -> [P, H]`.
  """
  array = _load_prompt_file(path)

  def init(rng: Array, shape: Shape, dtype=jnp.float32) -> Array:
    want = tuple(int(s) for s in shape)
    got = tuple(array.shape)
    extendable = (fallback is not None and len(got) == 2 and len(want) == 2
                  and got[1] == want[1] and got[0] < want[0])
    if got != want and not extendable:
      raise ValueError(
          f"Prompt file {path} holds shape {got} but the prompt has shape "
          f"{want} ([PROMPT_LENGTH, emb_dim]); match the prompt length and "
          f"model to the file.")
    if got == want:
      return jnp.asarray(array, dtype)
    return _fill_after(array, rng, want[0], want[1], dtype, fallback)

  return init


# Name -> factory, for the gin layer to bind a prompt initializer by name.
INITIALIZERS: Dict[str, Callable[..., Initializer]] = {
    "random_uniform": random_uniform,
    "sampled_vocab": sampled_vocab,
    "class_labels": class_labels,
    "from_text": from_text,
    "from_file": from_file,
}
