"""Task examples as decoder-only rows: tokens, shifted targets, weights."""

import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.data import decoder_features


def _rows(examples, lengths, bos_id):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32)})
  return list(decoder_features.convert(ds, lengths, bos_id).as_numpy_iterator())


def test_rows_are_inputs_then_targets_with_loss_on_targets():
  lengths = {"inputs": 4, "targets": 3}
  rows = _rows([{"inputs": [5, 6], "targets": [7, 1]},
                {"inputs": [0, 3, 4, 8, 9], "targets": [2, 2, 2, 1]}],
               lengths, bos_id=128)
  assert decoder_features.row_length(lengths, 128) == 8
  first, second = rows
  np.testing.assert_array_equal(first["decoder_input_tokens"],
                                [128, 5, 6, 7, 1, 0, 0, 0])
  np.testing.assert_array_equal(first["decoder_target_tokens"],
                                [5, 6, 7, 1, 0, 0, 0, 0])
  # Columns 2 and 3 predict the targets 7 and 1.
  np.testing.assert_array_equal(first["decoder_loss_weights"],
                                [0, 0, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(first["decoder_mask"],
                                [1, 1, 1, 1, 1, 0, 0, 0])
  # Truncated to 4 inputs and 3 targets; id 0 is a real token here.
  np.testing.assert_array_equal(second["decoder_input_tokens"],
                                [128, 0, 3, 4, 8, 2, 2, 2])
  np.testing.assert_array_equal(second["decoder_loss_weights"],
                                [0, 0, 0, 0, 1, 1, 1, 0])
  np.testing.assert_array_equal(second["decoder_mask"], [1] * 8)
  picked = first["decoder_target_tokens"][first["decoder_loss_weights"] > 0]
  np.testing.assert_array_equal(picked, [7, 1])


def test_without_bos_and_missing_lengths():
  rows = _rows([{"inputs": [5], "targets": [7, 1]}],
               {"inputs": 2, "targets": 2}, bos_id=None)
  np.testing.assert_array_equal(rows[0]["decoder_input_tokens"], [5, 7, 1, 0])
  np.testing.assert_array_equal(rows[0]["decoder_loss_weights"], [1, 1, 0, 0])
  with pytest.raises(ValueError, match="needs a length for 'targets'"):
    decoder_features.convert(tf.data.Dataset.range(1), {"inputs": 2})
