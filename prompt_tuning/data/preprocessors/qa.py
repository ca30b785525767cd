"""Extractive QA as text-to-text: 'question: <q> context: <c>' -> answer.

The format the paper uses for its MRQA domain-shift study (train on SQuAD,
evaluate zero-shot on the out-of-domain MRQA sets). MRQA contexts are used as
TFDS gives them (with MRQA's [PAR]/[DOC]/[TLE] markers); no task word, so a
prompt trained on one QA set applies to any other. Training targets the first
gold answer; 'answers' keeps every gold answer for the metric (max over
answers of exact match and token F1).
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from prompt_tuning.data.preprocessors.glue import UNKNOWN_LABEL


@seqio.map_over_dataset
def mrqa(x: Mapping[str, tf.Tensor]) -> dict:
  """A TFDS `mrqa/*` example -> {'inputs', 'targets', 'answers', 'id'}."""
  answers = x["answers"]
  target = tf.cond(tf.size(answers) > 0, lambda: answers[0],
                   lambda: tf.constant(UNKNOWN_LABEL))
  return {
      "inputs": tf.strings.join(["question:", x["question"], "context:",
                                 x["context"]], separator=" "),
      "targets": target,
      "answers": answers,
      "id": x["qid"],
  }
