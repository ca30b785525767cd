"""Extractive QA as text-to-text: 'question: <q> context: <c>' -> answer.

The paper's domain-shift study trains on SQuAD and evaluates zero-shot on the
out-of-domain MRQA sets, every set in T5's SQuAD format. That format pads
punctuation: a space on each side of every ASCII punctuation character, then
whitespace runs collapsed, in the question, the context and every answer. The
padding is part of what the model learns, not decoration: a prompt trained on
padded targets writes 'U . S .', and SQuAD's answer normalisation deletes
punctuation but keeps spaces ('u s'), so only a padded gold answer matches it
('U.S.' normalises to 'us'). Training targets the first gold answer; 'answers'
keeps every gold answer, padded the same way, for the metric (max over
answers of exact match and token F1). MRQA contexts are used as TFDS gives
them (with MRQA's [PAR]/[DOC]/[TLE] markers, padded like the rest); no task
word, so a prompt trained on one QA set applies to any other.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data.preprocessors.glue import UNKNOWN_LABEL


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """Spaces around each ASCII punctuation character; whitespace collapsed.

  'U.S.-led (2x)' -> 'U . S . - led ( 2x ) '. Element-wise on a string tensor
  of any shape. RE2's [[:punct:]] is ASCII only, so typographic marks ('—',
  '“') stay attached to their words; a leading or trailing space is kept
  (collapsed to one, not stripped). Both are T5's behaviour, which is what a
  T5-formatted checkpoint or result expects.
  """
  spaced = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
  return tf.strings.regex_replace(spaced, r"\s+", " ")


def _join_collapsed(parts: Sequence[tf.Tensor]) -> tf.Tensor:
  """Joins with single spaces; padded parts may start or end with a space,
  so whitespace runs are collapsed once more after joining."""
  return tf.strings.regex_replace(tf.strings.join(parts, separator=" "),
                                  r"\s+", " ")


def _first_answer(answers: tf.Tensor) -> tf.Tensor:
  """The training target; `<unk>` for an example without answers (every
  SQuAD and MRQA example has one, so this only keeps bad data from
  crashing the pipeline)."""
  return tf.cond(tf.size(answers) > 0, lambda: answers[0],
                 lambda: tf.constant(UNKNOWN_LABEL))


@seqio.map_over_dataset
def squad(x: Mapping[str, tf.Tensor]) -> dict:
  """A TFDS `squad/v1.1` example -> T5's SQuAD format (T5's `squad`).

  Returns:
    {'inputs': 'question: <q> context: <c>', 'targets': the first answer,
    'id', 'question', 'context', 'answers' (all padded)}.
  """
  answers = pad_punctuation(x["answers"]["text"])
  question = pad_punctuation(x["question"])
  context = pad_punctuation(x["context"])
  return {
      "inputs": _join_collapsed(["question:", question, "context:", context]),
      "targets": _first_answer(answers),
      "id": x["id"],
      "context": context,
      "question": question,
      "answers": answers,
  }


@seqio.map_over_dataset
def mrqa(x: Mapping[str, tf.Tensor]) -> dict:
  """A TFDS `mrqa/*` example -> the SQuAD format (the paper's `mrqa`).

  Returns:
    {'inputs', 'targets' (= 'answer', the first answer), 'idx' (MRQA's
    qid), 'question', 'context', 'answers'}, all text padded.
  """
  answers = pad_punctuation(x["answers"])
  question = pad_punctuation(x["question"])
  context = pad_punctuation(x["context"])
  answer = _first_answer(answers)
  return {
      "idx": x["qid"],
      "question": question,
      "context": context,
      "answer": answer,
      "answers": answers,
      "inputs": _join_collapsed(["question:", question, "context:", context]),
      "targets": answer,
  }
