"""Input pipeline: features, per-host sharding, determinism, exact resume.

All tests read the in-memory tasks of `tests/tiny_tasks.py` (64 train, 60
validation examples), so they need no files and run in seconds.
"""

import numpy as np
import pytest

from prompt_tuning.data import pipeline
from tests import tiny_tasks

LENGTHS = {"inputs": 32, "targets": 24}


@pytest.fixture(scope="module", autouse=True)
def _register():
  tiny_tasks.register()


def _train(task="tiny_classify", global_batch_size=8, shuffle=True, seed=0,
           repeat=True, **kwargs):
  kwargs.setdefault("shard_id", 0)
  kwargs.setdefault("num_shards", 1)
  return pipeline.get_dataset(task, LENGTHS, "train", global_batch_size,
                          shuffle=shuffle, seed=seed, repeat=repeat, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _rows(batches, key="encoder_input_tokens"):
  return [tuple(row) for b in batches for row in b[key]]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_batch_features_shapes_and_dtypes():
  batch = next(_train(global_batch_size=8))
  assert set(batch) == set(pipeline.MODEL_FEATURES)
  assert batch["encoder_input_tokens"].shape == (8, LENGTHS["inputs"])
  for key in pipeline.MODEL_FEATURES[1:]:
    assert batch[key].shape == (8, LENGTHS["targets"])
  for value in batch.values():
    assert value.dtype == np.int32
  targets = batch["decoder_target_tokens"]
  # Teacher forcing: decoder inputs are the targets shifted right by one.
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                targets[:, :-1])
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], 0)
  np.testing.assert_array_equal(batch["decoder_loss_weights"], targets > 0)
  # Every target ends in EOS (id 1) within the length.
  assert np.all(np.sum(targets == 1, axis=1) == 1)


def test_hosts_read_disjoint_shards_that_cover_the_global_batch():
  whole = next(_train(shuffle=False, repeat=False, global_batch_size=8))
  host_batches = [
      next(_train(shuffle=False, repeat=False, global_batch_size=8,
                  shard_id=i, num_shards=2)) for i in range(2)]
  for b in host_batches:
    assert b["encoder_input_tokens"].shape == (4, LENGTHS["inputs"])
  rows0, rows1 = _rows(host_batches[:1]), _rows(host_batches[1:])
  assert not set(rows0) & set(rows1)
  assert sorted(rows0 + rows1) == sorted(_rows([whole]))


def test_shuffled_hosts_split_an_epoch_exactly():
  epochs = [list(_train(shuffle=True, seed=3, repeat=False, shard_id=i,
                        num_shards=2)) for i in range(2)]
  rows0, rows1 = _rows(epochs[0]), _rows(epochs[1])
  assert len(rows0) == len(rows1) == tiny_tasks.NUM_TRAIN // 2
  assert not set(rows0) & set(rows1)
  everything = _rows(list(_train(shuffle=False, repeat=False)))
  assert sorted(rows0 + rows1) == sorted(everything)


def test_same_seed_same_order_different_seed_different_order():
  first = _take(_train(seed=7), 4)
  _assert_same(first, _take(_train(seed=7), 4))
  other = _take(_train(seed=8), 4)
  assert _rows(first) != _rows(other)


def test_skip_batches_resumes_exactly_across_epochs():
  # 8 batches per epoch: the resumed stretch crosses into the second epoch.
  straight = _train(seed=5)
  batches = _take(straight, 12)
  assert straight.position == 12
  resumed = _train(seed=5, skip_batches=7)
  assert resumed.position == 7
  _assert_same(batches[7:], _take(resumed, 5))
  assert resumed.position == 12


def test_skip_batches_resumes_a_mixture_exactly():
  batches = _take(_train(task="tiny_mix", seed=2), 6)
  _assert_same(batches[4:], _take(_train(task="tiny_mix", seed=2,
                                         skip_batches=4), 2))


def test_pack_is_refused():
  with pytest.raises(ValueError, match="Packing is not supported"):
    _train(pack=True)


def test_unknown_task_lists_close_matches():
  with pytest.raises(ValueError) as error:
    pipeline.get_task_or_mixture("tiny_clasify")
  message = str(error.value)
  assert "\n" not in message
  assert "tiny_classify" in message
  assert "import" in message


def test_batch_size_must_divide_among_shards():
  with pytest.raises(ValueError, match="not divisible"):
    _train(global_batch_size=6, shard_id=0, num_shards=4)


def test_resume_of_unseeded_shuffle_is_refused():
  with pytest.raises(ValueError, match="seed"):
    _train(seed=None, skip_batches=3)


@pytest.mark.parametrize("lengths, match", [
    ({"inputs": 32}, "do not match"),
    ({"inputs": 32, "target": 8}, "do not match"),
    ({"inputs": 32, "targets": 8, "extra": 4}, "do not match"),
    ({"inputs": 32, "targets": 1}, "too short"),
    ({"inputs": 0, "targets": 8}, "too short"),
    ({"inputs": 32, "targets": 8.0}, "too short"),
])
def test_bad_feature_lengths(lengths, match):
  with pytest.raises(ValueError, match=match):
    pipeline.get_dataset("tiny_copy", lengths, "train", 8, shuffle=False,
                     seed=0, repeat=False, shard_id=0, num_shards=1)


def test_pad_batch():
  batch = {"a": np.ones((3, 4), np.int32), "b": np.arange(3)}
  padded, n = pipeline.pad_batch(batch, 5)
  assert n == 3
  assert padded["a"].shape == (5, 4) and padded["a"].dtype == np.int32
  np.testing.assert_array_equal(padded["a"][3:], 0)
  np.testing.assert_array_equal(padded["b"], [0, 1, 2, 0, 0])
  with pytest.raises(ValueError):
    pipeline.pad_batch(batch, 2)


@pytest.mark.parametrize("task, num_examples", [
    ("tiny_classify", tiny_tasks.NUM_VALIDATION),
    ("tiny_mix", 2 * tiny_tasks.NUM_VALIDATION),
])
def test_evaluation_batches_keep_every_example_once(task, num_examples):
  # 16 rows per global batch over 2 hosts: 60 examples leave a last batch
  # with 12 real rows, 8 on host 0 and 4 on host 1.
  hosts = [list(pipeline.evaluation_dataset(task, LENGTHS, "validation", 16,
                                        shard_id=i, num_shards=2))
           for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == -(-num_examples // 16)
  real, seen = [], 0
  for step_batches in zip(*hosts):
    for batch in step_batches:
      for value in batch.features.values():
        assert value.shape[0] == 8
      n = batch.num_examples
      real.extend(_rows([{k: v[:n] for k, v in batch.features.items()}]))
      for value in batch.features.values():
        np.testing.assert_array_equal(value[n:], 0)
      seen += n
  assert seen == num_examples
  whole = list(pipeline.evaluation_dataset(task, LENGTHS, "validation", 16,
                                       shard_id=0, num_shards=1))
  in_order = _rows([{k: v[:b.num_examples] for k, v in b.features.items()}
                    for b in whole])
  # Process-ordered slices of each global batch are the global order.
  assert real == in_order
  assert len(in_order) == num_examples
