"""GLUE-style text-to-text formatting, as T5 defines it.

T5 casts a classification example as `<benchmark> <field>: <value> ...` ->
`<label word>`: the fields in a fixed order (sorted names unless given), the
label word from the dataset's class names, `<unk>` for a hidden test label
(-1). The paper's "taskless" variants drop the leading benchmark word, so that
the prompt alone has to say which task is wanted (`remove_task_word`, the
official code's rule: everything up to the first space).
Everything here is a `tf.data` map over TFDS-shaped examples.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

# The target of an example without a label (TFDS test splits use -1).
UNKNOWN_LABEL = "<unk>"
# Keys of a GLUE example that are not text fields.
_NON_TEXT_KEYS = ("label", "idx")


@seqio.map_over_dataset
def glue(x: Mapping[str, tf.Tensor], benchmark_name: Optional[str],
         label_names: Sequence[str],
         feature_names: Optional[Sequence[str]] = None,
         id_key: Optional[str] = "idx") -> dict:
  """`<benchmark> <f1>: <v1> <f2>: <v2> ...` -> label word (T5's `glue`).

  Args:
    x: a TFDS GLUE/SuperGLUE example (text fields, int `label`, `idx`).
    benchmark_name: the leading task word; None leaves it out (used for the
      paraphrase tasks, whose text must not name the source dataset).
    label_names: label word of each class id.
    feature_names: the text fields in order; default all but label/idx,
      sorted by name.
    id_key: the example id kept as `idx` for evaluation (None: none kept).

  Returns:
    {'inputs', 'targets', 'idx'} (MultiRC: 'idx/paragraph', 'idx/question',
    'idx/answer'), all strings but the ids.
  """
  keys = feature_names or sorted(set(x) - set(_NON_TEXT_KEYS))
  parts = [] if benchmark_name is None else [benchmark_name]
  for key in keys:
    parts += [f"{key}:", x[key]]
  joined = tf.strings.join(parts, separator=" ")
  target = tf.cond(tf.equal(x["label"], -1),
                   lambda: tf.constant(UNKNOWN_LABEL),
                   lambda: tf.gather(tf.constant(list(label_names)),
                                     x["label"]))
  ex = {}
  if benchmark_name == "multirc":
    # MultiRC paragraphs carry HTML line breaks and bold tags.
    joined = tf.strings.regex_replace(joined, "<br>", " ")
    joined = tf.strings.regex_replace(joined, "<(/)?b>", "")
    # The metric groups answers by question: keep the indices.
    for part in ("paragraph", "question", "answer"):
      ex[f"idx/{part}"] = x["idx"][part]
  elif id_key:
    ex["idx"] = x[id_key]
  ex["inputs"] = joined
  ex["targets"] = target
  return ex


@seqio.map_over_dataset
def stsb(x: Mapping[str, tf.Tensor]) -> dict:
  """STS-B: the similarity score rounded to the nearest 0.2, as text.

  'stsb sentence1: ... sentence2: ...' -> e.g. '3.8' (T5's `stsb`).
  """
  joined = tf.strings.join(["stsb sentence1:", x["sentence1"], "sentence2:",
                            x["sentence2"]], separator=" ")
  target = tf.strings.as_string(tf.round(x["label"] * 5) / 5, precision=1)
  return {"inputs": joined, "targets": target, "idx": x["idx"]}


@seqio.map_over_dataset
def rekey(x: Mapping[str, tf.Tensor], key_map: Mapping[str, str]) -> dict:
  """Renames features: new name -> old name; unmapped features are dropped."""
  return {new: x[old] for new, old in key_map.items()}


@seqio.map_over_dataset
def map_labels(x: Mapping[str, tf.Tensor], mapping: Sequence[int]) -> dict:
  """Replaces each class id `i` >= 0 by `mapping[i]` (-1 stays -1)."""
  ex = dict(x)
  label = tf.cast(x["label"], tf.int64)
  mapped = tf.gather(tf.constant(list(mapping), tf.int64),
                     tf.maximum(label, 0))
  ex["label"] = tf.where(label < 0, label, mapped)
  return ex


@seqio.map_over_dataset
def remove_task_word(x: Mapping[str, tf.Tensor],
                     feature: str = "inputs") -> dict:
  """The paper's taskless inputs: the text up to and including its first space
  removed (the official code's `remove_first_text_token`).

  'rte hypothesis: ...' -> 'hypothesis: ...'; 'wsc: The cat ...' -> 'The cat
  ...'. Only a space ends the word, not a tab or a newline ('wsc:<TAB>The cat'
  -> 'cat'); a text without a space is left whole, and a leading space is the
  whole match (' rte ...' -> 'rte ...'). The official tasks behave this way,
  so a prompt trained on them sees the same inputs here.
  """
  ex = dict(x)
  ex[feature] = tf.strings.regex_replace(x[feature], r"^[^ ]* ", "",
                                         replace_global=False)
  return ex
