"""Task examples -> decoder-only LM batches: inputs and targets in one row.

Every registered task (`inputs`, `targets` token features) feeds a causal
LM unchanged: each example becomes the row `[BOS] inputs targets` (BOS when
the model has one), right-padded to `inputs + targets (+ 1)` columns, and
the loss is on the targets only. Features, all [L] int32:

- `decoder_input_tokens`: the row (what the LM reads; 0 past its end);
- `decoder_target_tokens`: the row shifted left by one (column j holds the
  token that column j's logits predict);
- `decoder_loss_weights`: 1 where that token is a target;
- `decoder_mask`: 1 on the row's real columns. These vocabularies have no
  padding id (Llama 3's id 0 is a word), so padding is said, not inferred.

This is HF's causal-LM convention (no shift-right start token), which is
what a soft prompt before or inside the row (`prompts.decoder_model`)
expects. Truncation is the task's: inputs beyond their length are cut here
as seqio's converters cut them, targets likewise.
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

FEATURES = ("decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights", "decoder_mask")


def row_length(task_feature_lengths: Mapping[str, int],
               bos_id: Optional[int]) -> int:
  """L, the columns of every row."""
  return (int(task_feature_lengths["inputs"]) +
          int(task_feature_lengths["targets"]) + (bos_id is not None))


def convert(ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int],
            bos_id: Optional[int] = None) -> tf.data.Dataset:
  """Maps task examples to the features above (see the module docstring).

  Args:
    ds: examples with int `inputs` and `targets` [len] (other features are
      dropped).
    task_feature_lengths: {'inputs': a, 'targets': b}, the most of each.
    bos_id: prepended to every row when the model has a BOS token.

  Returns:
    The converted dataset, each feature [L] int32 (`row_length`).
  """
  for name in ("inputs", "targets"):
    if name not in task_feature_lengths:
      raise ValueError(f"A decoder-only row needs a length for {name!r}; "
                       f"got task_feature_lengths={dict(task_feature_lengths)}.")
  length = row_length(task_feature_lengths, bos_id)
  max_inputs = int(task_feature_lengths["inputs"])
  max_targets = int(task_feature_lengths["targets"])

  def one(example):
    inputs = tf.cast(example["inputs"][:max_inputs], tf.int32)
    targets = tf.cast(example["targets"][:max_targets], tf.int32)
    if bos_id is not None:
      inputs = tf.concat([tf.constant([bos_id], tf.int32), inputs], axis=0)
    context, count = tf.size(inputs), tf.size(targets)
    row = tf.concat([inputs, targets], axis=0)
    real = tf.size(row)
    columns = tf.range(length)
    # Static [L] shapes: the jitted step compiles once.
    pad = lambda x: tf.reshape(tf.pad(x, [[0, length - tf.size(x)]]),
                               [length])
    # Column j's logits predict row[j + 1]: targets are predicted from the
    # columns context - 1 .. context + count - 2.
    weights = (columns >= context - 1) & (columns < context + count - 1)
    return {
        "decoder_input_tokens": pad(row),
        "decoder_target_tokens": pad(row[1:]),
        "decoder_loss_weights": tf.cast(weights, tf.int32),
        "decoder_mask": tf.cast(columns < real, tf.int32),
    }

  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)


class DecoderOnlyConverter(seqio.FeatureConverter):
  """`convert` as a seqio feature converter, for seqio's `Evaluator` and the
  input pipelines (`data.pipeline`), which take one.

  Unpacked only: a soft prompt goes in front of each row. Its examples are
  the task's trimmed, unpadded `inputs` and `targets`; its model features
  are `FEATURES`, each of `row_length` columns.
  """

  TASK_FEATURES = {
      "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                    for name in FEATURES}
  PACKING_FEATURE_DTYPES = None

  def __init__(self, row_bos_id: Optional[int] = None):
    # seqio's own bos_id is a decoder start token, which these rows do not
    # have; the model's BOS (if any) starts every row instead.
    super().__init__(pack=False, apply_length_check=False)
    self.row_bos_id = row_bos_id

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    return convert(ds, task_feature_lengths, self.row_bos_id)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    length = row_length(task_feature_lengths, self.row_bos_id)
    return {name: length for name in FEATURES}
