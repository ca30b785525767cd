"""SuperGLUE's special formats: ReCoRD, WSC and DPR (T5's "simple" WSC).

The other SuperGLUE tasks use the GLUE-style format (`glue.glue`). ReCoRD is
a cloze over a news passage: T5 lists the candidate entities in the input and
trains on one example per gold answer, keeping every answer with each example
so that evaluation can take the best match. WSC is cast as "which noun does
the marked pronoun refer to": the input marks the pronoun with asterisks and
the target is the candidate referent; training keeps only the examples whose
candidate is the correct referent. DPR (Definite Pronoun Resolution, which T5
adds to its SuperGLUE mixture as extra WSC-like training data) uses the same
'wsc: ... *pronoun* ...' form with the correct candidate as target.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from prompt_tuning.data.preprocessors.glue import UNKNOWN_LABEL

_AUTOTUNE = tf.data.AUTOTUNE


def _record_inputs(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """'record query: <q> entities: <e1>, <e2> passage: <p>'."""
  passage = x["passage"]
  # CNN/Daily Mail highlights are separate lines: turn them into sentences
  # (keeping an existing final punctuation mark).
  passage = tf.strings.regex_replace(passage,
                                     r"(\.|\?|\!|\"|\')\n@highlight\n",
                                     r"\1 ")
  passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
  return tf.strings.join(
      ["record query:", x["query"], "entities:",
       tf.strings.reduce_join(x["entities"], separator=", "), "passage:",
       passage], separator=" ")


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one example per gold answer, all answers kept (T5's `record`).

  Each example becomes max(1, #answers) examples with the same inputs, each
  targeting one answer (`<unk>` when there is none, as on the test split);
  'answers' carries the whole list and 'idx/passage', 'idx/query' identify the
  query, so metrics can deduplicate and score against every answer.
  """
  def expand(x):
    answers = x["answers"]
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant([UNKNOWN_LABEL]))
    count = tf.size(targets)
    return tf.data.Dataset.from_tensor_slices({
        "idx/passage": tf.fill([count], x["idx"]["passage"]),
        "idx/query": tf.fill([count], x["idx"]["query"]),
        "inputs": tf.fill([count], _record_inputs(x)),
        "targets": targets,
        # [count, #answers]: every row carries the full list.
        "answers": tf.tile(answers[tf.newaxis], [count, 1]),
    })
  return dataset.flat_map(expand)


# Two WSC texts whose span2_index does not point at the pronoun as written:
# T5 hard-codes their marked form.
_WSC_SPECIAL_CASES = {
    "The boy continued to whip the pony , and eventually the pony threw him "
    "over. John laughed out quite loud. \"Good for him,\" he said. ":
        "The boy continued to whip the pony , and eventually the pony threw "
        "him over. John laughed out quite loud. \"Good for X ,\" he said.",
    "When they had eventually calmed down a bit , and had gotten home, Mr. "
    "Farley put the magic pebble in an iron safe . Some day they might want "
    "to use it , but really for now, what more could they wish for?":
        "When they had eventually calmed down a bit , and had gotten home, "
        "Mr. Farley put the magic pebble in an iron safe . Some day they might "
        "want to use X , but really for now, what more could they wish for?",
}


def _wsc_blanked(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The text with the pronoun (word `span2_index`) replaced by 'X'."""
  words = tf.strings.split([x["text"]], sep=" ").values
  index = x["span2_index"]

  def blank():
    return tf.strings.join(
        [tf.strings.reduce_join(words[:index], separator=" "), "X",
         tf.strings.reduce_join(words[index + 1:], separator=" ")],
        separator=" ")

  out = blank()
  for text, fixed in _WSC_SPECIAL_CASES.items():
    out = tf.where(tf.equal(x["text"], text), tf.constant(fixed), out)
  return out


def wsc_simple(dataset: tf.data.Dataset, label: str = "wsc:",
               correct_referent_only: bool = False) -> tf.data.Dataset:
  """WSC as 'wsc: ... *pronoun* ...' -> the candidate referent (T5).

  Args:
    dataset: TFDS `super_glue/wsc.fixed` examples.
    label: the leading task word.
    correct_referent_only: keep only examples whose candidate (span1) is the
      pronoun's referent (label != 0): the training formulation, since the
      target is always the candidate, right or wrong.

  Returns:
    {'inputs', 'targets' (the candidate), 'label', 'idx'} examples.
  """
  def convert(x):
    marked = tf.strings.regex_replace(_wsc_blanked(x), r" X ",
                                      " *" + x["span2_text"] + "* ")
    return {
        "inputs": tf.strings.join([label, marked], separator=" "),
        "targets": tf.reshape(x["span1_text"], []),
        "label": x.get("label", tf.constant(0, tf.int64)),
        "idx": x["idx"],
    }
  if correct_referent_only:
    dataset = dataset.filter(
        lambda x: tf.cast(x.get("label", False), tf.bool))
  return dataset.map(convert, num_parallel_calls=_AUTOTUNE)


# RE2 metacharacters: escaped before a DPR pronoun goes into a pattern.
_REGEX_METACHARACTERS = r"([\\.^$|?*+()\[\]{}])"


@seqio.map_over_dataset
def dpr_simple(x: Mapping[str, tf.Tensor], label: str = "wsc:") -> dict:
  """DPR as 'wsc: ... *pronoun* ...' -> the correct candidate (T5's
  `definite_pronoun_resolution_simple`).

  DPR's rule is that the pronoun's first occurrence is the one to resolve;
  as in T5, that is the first occurrence after a space and before a space,
  '.' or ',' (a sentence-initial pronoun is not marked).

  Args:
    x: a TFDS `definite_pronoun_resolution` example ('sentence', 'pronoun',
      two 'candidates', 'label' = index of the correct one).
    label: the leading task word.

  Returns:
    {'inputs', 'targets'}.
  """
  # T5 puts the pronoun into the pattern as is; escaping changes nothing for
  # DPR's pronouns (plain words) and keeps odd data from breaking the regex.
  pronoun = tf.strings.regex_replace(x["pronoun"], _REGEX_METACHARACTERS,
                                     r"\\\1")
  pattern = tf.strings.join([" (", pronoun, r")( |\.|,)"])
  marked = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2",
                                    replace_global=False)
  return {
      "inputs": tf.strings.join([label, marked], separator=" "),
      "targets": tf.gather(x["candidates"], x["label"]),
  }
