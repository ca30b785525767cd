"""Input pipelines: SeqIO tasks to fixed-shape, host-local numpy batches.

Training reads a registered SeqIO Task or Mixture through seqio's own
`get_dataset` and `EncDecFeatureConverter(pack=False)`, so the model sees the
T5X feature names (`encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens`, `decoder_loss_weights`). Every process reads only its
own input shard (`seqio.ShardInfo`) and yields `global_batch_size //
num_shards` rows. Given the mesh, the shards follow its data layout
(`partitioning.data_layout`): one shard per group of processes that hold the
same `data` indices, so when the `model` axis spans processes, the processes
sharing a data shard read identical rows. Given a seed the order is fixed, so a run resumes exactly by skipping
the batches it already consumed (`skip_batches`, saved from
`BatchIterator.position`). Evaluation batches (`evaluation_dataset`) keep
every example exactly once: the last batch is padded with all-zero rows to the
full size, because the jitted step needs static shapes, and each batch says how
many of its rows are real. Packing is refused: a soft prompt is prepended to
each encoder sequence, so packed examples would share one prompt.
"""

from __future__ import annotations

from typing import (Any, Dict, Iterator, Mapping, NamedTuple, Optional, Tuple,
                    Union)

import jax
import numpy as np
from jax.sharding import Mesh
import seqio
import tensorflow as tf

from prompt_tuning import partitioning
from prompt_tuning.data import registry


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow only reads and tokenizes data here, on the CPU; left alone it
  claims every GPU's memory on its first op, which JAX then lacks."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF's devices were initialised already, by someone else's op.


_hide_accelerators_from_tensorflow()

Batch = Dict[str, np.ndarray]
TaskOrMixture = Union[seqio.Task, seqio.Mixture]

# Features of an unpacked `EncDecFeatureConverter`, all [B, T] or [B, L] int32.
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                  "decoder_target_tokens", "decoder_loss_weights")
# Task features an encoder-decoder converter reads.
TASK_FEATURES = ("inputs", "targets")
# With a task index (multitask prompts), every example also carries the index
# of the task it came from: [B] int32.
TASK_ID_FEATURE = "task_ids"


def get_task_or_mixture(name: str) -> TaskOrMixture:
  """Looks up a registered SeqIO Mixture or Task (a Mixture wins a tie).

  Args:
    name: the registered name.

  Returns:
    The `seqio.Mixture` or `seqio.Task`.

  Raises:
    ValueError: (one line) if nothing is registered under `name`; it lists up
      to 5 close matches and says how tasks get registered.
  """
  return registry.get(name)


def check_feature_lengths(provider: TaskOrMixture,
                          task_feature_lengths: Mapping[str, int]) -> None:
  """Fails with a one-line error on missing, unknown or too short lengths.

  seqio silently truncates to these lengths, so a typo ('target') or a
  length that cannot hold one token plus EOS would otherwise train on
  damaged examples without a word.

  Args:
    provider: the Task or Mixture the lengths are for.
    task_feature_lengths: task feature name -> maximum length, e.g.
      {'inputs': 512, 'targets': 8}.

  Raises:
    ValueError: on any problem, naming the task and the expected keys.
  """
  features = provider.output_features
  missing = [k for k in TASK_FEATURES if k not in features]
  if missing:
    raise ValueError(
        f"{provider.name!r} has output features {sorted(features)}, but "
        f"prompt tuning needs {list(TASK_FEATURES)}.")
  expected = sorted(features)
  given = sorted(task_feature_lengths)
  if given != expected:
    raise ValueError(
        f"task_feature_lengths keys {given} do not match the features of "
        f"{provider.name!r}: {expected} (e.g. {{'inputs': 512, "
        f"'targets': 8}}).")
  for key, length in task_feature_lengths.items():
    # An EOS-terminated feature of length 1 keeps nothing but the EOS.
    minimum = 2 if features[key].add_eos else 1
    if (not isinstance(length, (int, np.integer)) or isinstance(length, bool)
        or length < minimum):
      raise ValueError(
          f"task_feature_lengths[{key!r}] = {length!r} for {provider.name!r} "
          f"is too short: need an int >= {minimum} (one token"
          f"{' plus EOS' if minimum == 2 else ''}).")


def feature_converter() -> seqio.EncDecFeatureConverter:
  """seqio's unpacked encoder-decoder converter, as training and eval use it.

  Its per-example length assertions are off: they are redundant here, since
  every caller trims the task features to the lengths, and tracing them costs
  about a second per pipeline. `_check_example_shapes` checks the result
  statically instead.
  """
  return seqio.EncDecFeatureConverter(pack=False, apply_length_check=False)


def _check_example_shapes(ds: tf.data.Dataset,
                          task_feature_lengths: Mapping[str, int],
                          task_ids: bool = False,
                          converter: Optional[seqio.FeatureConverter] = None
                          ) -> None:
  """Fails unless each converted example has exactly the converter's model
  features, static (and the scalar task id when asked for)."""
  converter = converter or feature_converter()
  lengths = converter.get_model_feature_lengths(task_feature_lengths)
  expected = {key: (lengths[key],) for key in converter.MODEL_FEATURES}
  if task_ids:
    expected[TASK_ID_FEATURE] = ()
  got = {k: tuple(v.shape) for k, v in ds.element_spec.items()}
  if got != expected:
    raise ValueError(f"Examples have features {got}, expected {expected}.")


def _shard(shard_id: Optional[int], num_shards: Optional[int],
           mesh: Optional[Mesh]) -> Tuple[int, int]:
  """(shard_id, num_shards): explicit, else the mesh's data layout, else one
  shard per process."""
  if mesh is not None and jax.process_count() > 1:
    layout = partitioning.data_layout(mesh)
    default_id, default_count = layout.shard_id, layout.num_shards
  else:
    default_id, default_count = jax.process_index(), jax.process_count()
  shard_id = default_id if shard_id is None else shard_id
  num_shards = default_count if num_shards is None else num_shards
  if not 0 <= shard_id < num_shards:
    raise ValueError(f"shard_id {shard_id} is not in [0, {num_shards}).")
  return shard_id, num_shards


def _host_batch_size(global_batch_size: int, num_shards: int) -> int:
  if global_batch_size <= 0 or num_shards <= 0:
    raise ValueError(f"global_batch_size ({global_batch_size}) and num_shards "
                     f"({num_shards}) must be positive.")
  if global_batch_size % num_shards:
    raise ValueError(
        f"global_batch_size {global_batch_size} is not divisible by the "
        f"number of data shards (processes) {num_shards}.")
  return global_batch_size // num_shards


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  # Parallel maps may otherwise return elements out of order, which would
  # break exact resumption and cross-restart reproducibility.
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _task_dataset(provider: TaskOrMixture, **kwargs: Any) -> tf.data.Dataset:
  # The in-memory cache is never needed here, and it breaks TfdsDataSource
  # under tfds mock data.
  return provider.get_dataset(try_in_mem_cache=False,
                              trim_output_features=True, **kwargs)


def task_id_of(task_index: Mapping[str, int], name: str) -> int:
  """A task's index, or a one-line error naming the known tasks."""
  if name not in task_index:
    raise ValueError(
        f"Task {name!r} has no index among the multitask prompt's tasks "
        f"({', '.join(task_index)}); list it in MultitaskPromptConfig.tasks.")
  return int(task_index[name])


def _with_task_id(ds: tf.data.Dataset, task_id: int) -> tf.data.Dataset:
  return ds.map(lambda ex: dict(ex, **{TASK_ID_FEATURE: tf.constant(
      task_id, tf.int32)}))


def _tagged_mixture(provider: TaskOrMixture, task_index: Mapping[str, int],
                    task_feature_lengths: Mapping[str, int],
                    seed: Optional[int],
                    converter: seqio.FeatureConverter,
                    **kwargs: Any) -> tf.data.Dataset:
  """Converted examples tagged with their task's index, mixed at the
  mixture's rates (what seqio's Mixture does, keeping each example's task).

  Each task is read and converted on its own (conversion is per example
  without packing), tagged, then sampled from with the normalised rates
  and `seed`, so the stream is deterministic for a seed, as seqio's is.
  """
  tasks = seqio.get_subtasks(provider)
  rates = ([float(provider.get_rate(t)) for t in tasks]
           if isinstance(provider, seqio.Mixture) else [1.0])
  datasets = []
  for task in tasks:
    ds = _task_dataset(task, sequence_length=dict(task_feature_lengths),
                       seed=seed, **kwargs)
    ds = converter(ds, task_feature_lengths=task_feature_lengths)
    datasets.append(_with_task_id(ds, task_id_of(task_index, task.name)))
  if len(datasets) == 1:
    return datasets[0]
  total = sum(rates)
  return tf.data.Dataset.sample_from_datasets(
      datasets, weights=[r / total for r in rates], seed=seed)


class BatchIterator:
  """Host-local training batches with a resumable position.

  Iterating yields dicts of numpy arrays: `MODEL_FEATURES`, each [B, T]
  (encoder) or [B, L] (decoder) int32 with B = global_batch_size // num_shards.

  Attributes:
    dataset: the underlying batched `tf.data.Dataset` (already skipped).
    batch_size: host-local rows per batch.
    num_shards: distinct input shards: global rows = batch_size * num_shards.
    position: batches consumed since the start of the data, counting those
      skipped on construction: pass it back as `skip_batches` to resume.
  """

  def __init__(self, dataset: tf.data.Dataset, batch_size: int,
               skip_batches: int, num_shards: int = 1):
    self.dataset = dataset
    self.batch_size = batch_size
    self.num_shards = num_shards
    self.position = skip_batches
    self._iterator = dataset.as_numpy_iterator()

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> Batch:
    batch = next(self._iterator)
    # Only count a batch once it has really been handed out.
    self.position += 1
    return batch


def get_dataset(mixture_or_task_name: str,
                task_feature_lengths: Mapping[str, int],
                split: str,
                global_batch_size: int,
                shuffle: bool,
                seed: Optional[int],
                repeat: bool,
                pack: bool = False,
                shard_id: Optional[int] = None,
                num_shards: Optional[int] = None,
                skip_batches: int = 0,
                use_cached: bool = False,
                mesh: Optional[Mesh] = None,
                task_index: Optional[Mapping[str, int]] = None,
                converter: Optional[seqio.FeatureConverter] = None
                ) -> BatchIterator:
  """Training batches for this process, deterministic and resumable.

  Args:
    mixture_or_task_name: a registered SeqIO Task or Mixture.
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 8}; T and L.
    split: e.g. 'train'.
    global_batch_size: rows per step over all processes.
    shuffle: shuffle examples (seqio's Task shuffle buffer).
    seed: fixes the shuffle, the mixing and any stochastic preprocessing:
      with a seed, each shard's order is the same after every restart.
    repeat: loop over the data forever (seqio `num_epochs=None`).
    pack: must be False; see the module docstring.
    shard_id: this process's shard; default from `mesh`, else
      `jax.process_index()`.
    num_shards: number of shards; default from `mesh`, else
      `jax.process_count()`.
    skip_batches: host-local batches to skip, i.e. a saved
      `BatchIterator.position`, to continue a run exactly.
    use_cached: read the task's offline seqio cache.
    mesh: the mesh the batches feed (`partitioning.shard_batch`): the shards
      follow its data layout, which differs from one per process when the
      `model` axis spans processes. Pass it in multi-process runs.
    task_index: task name -> index; given, each batch also has
      `TASK_ID_FEATURE` [B] int32, the index of each example's task, and a
      mixture is sampled by `_tagged_mixture`.
    converter: turns task examples into the model's features; None is
      `feature_converter()` (T5's), a decoder-only LM's is
      `data.decoder_features.DecoderOnlyConverter`.

  Returns:
    A `BatchIterator` of dicts with the converter's features (T5's
    `MODEL_FEATURES`), each [B, T] or [B, L]
    int32, B = global_batch_size // num_shards; incomplete batches are
    dropped.

  Raises:
    ValueError: (one line) for pack=True, a batch size not divisible by
      num_shards, bad lengths, an unknown name, or an inexact resume.
  """
  if pack:
    raise ValueError(
        "Packing is not supported for prompt tuning: the soft prompt is "
        "prepended per encoder sequence, so packed examples would share it.")
  shard_id, num_shards = _shard(shard_id, num_shards, mesh)
  batch_size = _host_batch_size(global_batch_size, num_shards)
  if skip_batches < 0:
    raise ValueError(f"skip_batches must be >= 0, got {skip_batches}.")
  if shuffle and seed is None and skip_batches:
    raise ValueError(
        "Cannot resume a shuffled dataset exactly without a seed: pass the "
        "run's data seed.")
  provider = get_task_or_mixture(mixture_or_task_name)
  check_feature_lengths(provider, task_feature_lengths)
  converter = converter or feature_converter()

  read = dict(
      split=split, use_cached=use_cached, shuffle=shuffle,
      # One shard is no sharding; seqio would still list the source's files.
      shard_info=(seqio.ShardInfo(index=shard_id, num_shards=num_shards)
                  if num_shards > 1 else None),
      num_epochs=None if repeat else 1)
  if task_index is not None:
    ds = _tagged_mixture(provider, task_index, task_feature_lengths, seed,
                         converter, **read)
  else:
    ds = _task_dataset(provider, sequence_length=dict(task_feature_lengths),
                       seed=seed, **read)
    ds = converter(ds, task_feature_lengths=task_feature_lengths)
  # Static shapes for the jitted step: a short last batch would recompile.
  _check_example_shapes(ds, task_feature_lengths, task_index is not None,
                        converter)
  ds = ds.batch(batch_size, drop_remainder=True)
  # Skipping whole batches of the deterministic stream lands exactly where a
  # run that consumed `skip_batches` batches stopped (it re-reads, not seeks).
  ds = ds.skip(skip_batches)
  ds = _deterministic(ds.prefetch(tf.data.AUTOTUNE))
  return BatchIterator(ds, batch_size, skip_batches, num_shards)


def pad_batch(batch: Mapping[str, np.ndarray],
              batch_size: int) -> Tuple[Batch, int]:
  """Pads every feature along axis 0 with zeros to `batch_size` rows.

  Zero rows are harmless: token 0 is padding and their loss weights are 0.

  Args:
    batch: feature -> [n, ...] array, n <= batch_size.
    batch_size: rows wanted.

  Returns:
    (feature -> [batch_size, ...] array, n).
  """
  sizes = {len(v) for v in batch.values()}
  if len(sizes) != 1:
    raise ValueError(f"Features have different batch sizes: {sorted(sizes)}.")
  n = sizes.pop()
  if n > batch_size:
    raise ValueError(f"Batch of {n} rows does not fit batch_size {batch_size}.")
  padded = {}
  for key, value in batch.items():
    value = np.asarray(value)
    widths = [(0, batch_size - n)] + [(0, 0)] * (value.ndim - 1)
    padded[key] = np.pad(value, widths)  # [n, ...] -> [batch_size, ...]
  return padded, n


class PaddedBatch(NamedTuple):
  """A fixed-size evaluation batch whose first `num_examples` rows are real."""
  features: Batch  # MODEL_FEATURES, each [B, T] or [B, L] int32
  num_examples: int


def evaluation_dataset(mixture_or_task_name: str,
                       task_feature_lengths: Mapping[str, int],
                       split: str,
                       global_batch_size: int,
                       shard_id: Optional[int] = None,
                       num_shards: Optional[int] = None,
                       use_cached: bool = False,
                       mesh: Optional[Mesh] = None,
                       task_index: Optional[Mapping[str, int]] = None,
                       converter: Optional[seqio.FeatureConverter] = None
                       ) -> Iterator[PaddedBatch]:
  """Every example of a split exactly once, in fixed-size host-local batches.

  Every process reads the whole split in order (unshuffled, one epoch; a
  Mixture's tasks one after another rather than sampled), pads it to a
  multiple of `global_batch_size` and keeps its input shard's contiguous
  slice of each global batch. So all processes run the same number of steps,
  and the shard-ordered concatenation of the slices is the global batch.

  Args:
    mixture_or_task_name: a registered SeqIO Task or Mixture.
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 8}.
    split: e.g. 'validation'.
    global_batch_size: rows per step over all processes.
    shard_id: default from `mesh`, else `jax.process_index()`.
    num_shards: default from `mesh`, else `jax.process_count()`.
    use_cached: read the task's offline seqio cache.
    mesh: the mesh the batches feed; as for `get_dataset`.
    task_index: as for `get_dataset`: batches also carry each example's
      task index (padding rows: 0).
    converter: as for `get_dataset`.

  Yields:
    `PaddedBatch`es: features [B, T] / [B, L] int32 with
    B = global_batch_size // num_shards; the real rows come first.

  Raises:
    ValueError: (one line) on bad sizes or lengths, an unknown name, or no
      task with the split.
  """
  shard_id, num_shards = _shard(shard_id, num_shards, mesh)
  batch_size = _host_batch_size(global_batch_size, num_shards)
  provider = get_task_or_mixture(mixture_or_task_name)
  check_feature_lengths(provider, task_feature_lengths)
  converter = converter or feature_converter()

  tasks = [t for t in seqio.get_subtasks(provider) if split in t.splits]
  if not tasks:
    raise ValueError(f"No task of {mixture_or_task_name!r} has a {split!r} "
                     "split.")
  keys = set(provider.output_features)
  datasets = []
  for task in tasks:
    ds = _task_dataset(task, sequence_length=dict(task_feature_lengths),
                       split=split, use_cached=use_cached, shuffle=False,
                       seed=None, shard_info=None, num_epochs=1)
    # Tasks of a mixture may carry extra features; keep what concatenates.
    ds = ds.map(lambda ex: {k: ex[k] for k in keys})
    # Converted per task (per example without packing: the same result),
    # so that each example can carry its task.
    ds = converter(ds, task_feature_lengths=task_feature_lengths)
    if task_index is not None:
      ds = _with_task_id(ds, task_id_of(task_index, task.name))
    datasets.append(ds)
  ds = datasets[0]
  for other in datasets[1:]:
    ds = ds.concatenate(other)
  _check_example_shapes(ds, task_feature_lengths, task_index is not None,
                        converter)
  ds = _deterministic(ds.batch(global_batch_size, drop_remainder=False))

  start = shard_id * batch_size
  for global_batch in ds.as_numpy_iterator():
    padded, n = pad_batch(global_batch, global_batch_size)
    features = {k: v[start:start + batch_size] for k, v in padded.items()}
    # Padding sits at the end of the global batch, so a slice's real rows
    # are a prefix of it.
    yield PaddedBatch(features, int(np.clip(n - start, 0, batch_size)))

