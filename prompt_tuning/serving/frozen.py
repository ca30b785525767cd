"""The frozen model on the mesh, its prompt library, and jitted mixed batches.

`load_frozen` reads a pretrained T5 (T5X or Hugging Face) straight into its
shardings; `load_library` reads prompts in every format (`prompts.library`,
plus our run directories through the training layer's checkpoint reader)
and checks them against the model's width; `MixedRunner` decodes or
rank-classifies fixed-size batches whose rows each name a prompt of the
library's bank. The bank is an argument, not a constant, of the jitted
functions: one compilation serves any mix of prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from prompt_tuning import partitioning
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.models.decoder_only.model import DecoderOnlyLM
from prompt_tuning.pretrained import is_decoder_only
from prompt_tuning.pretrained import load_decoder_only
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.prompts import mixed
from prompt_tuning.prompts.library import PromptLibrary
from prompt_tuning.serving import library_entries
from prompt_tuning.training import prompt_files
from prompt_tuning.training.inference import DecodeConfig

PyTree = Any
# Compute dtypes serving offers: T5X's bfloat16, or float32 to match a
# float32 evaluation's scores.
SERVING_DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass
class FrozenModel:
  """A pretrained T5 (or decoder-only LM) placed on a mesh, for serving
  prompts."""

  model: Any  # T5, or DecoderOnlyLM with a DecoderConfig
  config: Any
  params: PyTree
  mesh: jax.sharding.Mesh
  rules: partitioning.Rules

  @property
  def embedding(self) -> jax.Array:
    """[V, H] token embedding table (sharded like the params)."""
    return self.params["token_embedder"]["embedding"]


def load_frozen(initial_checkpoint_path: str,
                model_config: Optional[T5Config] = None,
                mesh_shape: Tuple[int, int] = (-1, 1), fsdp: bool = False,
                frozen_dtype: Optional[str] = None,
                dtype: Optional[str] = None) -> FrozenModel:
  """Loads the frozen T5 into its shardings.

  Args:
    initial_checkpoint_path: T5X or Hugging Face checkpoint (`load_pretrained`).
    model_config: required for T5X checkpoints; HF ones carry theirs.
    mesh_shape: (data, model).
    fsdp: also shard the weights' embed axis over `data`.
    frozen_dtype: store the weights in this dtype (e.g. 'bfloat16').
    dtype: compute (activation) dtype, 'bfloat16' or 'float32'; None keeps
      the config's (bfloat16 for presets and Hugging Face checkpoints).
  """
  if not initial_checkpoint_path:
    raise ValueError("INITIAL_CHECKPOINT_PATH is not set: serving prompts "
                     "needs the frozen T5 they were trained for.")
  if dtype is not None and dtype not in SERVING_DTYPES:
    raise ValueError(f"dtype={dtype!r}: serving computes in one of "
                     f"{', '.join(SERVING_DTYPES)}.")
  mesh = partitioning.create_mesh(mesh_shape)
  rules = partitioning.logical_axis_rules(fsdp)
  if is_decoder_only(initial_checkpoint_path):
    config, params = load_decoder_only(initial_checkpoint_path, mesh, rules,
                                       param_dtype=frozen_dtype)
  else:
    config, params = load_pretrained(initial_checkpoint_path, model_config,
                                     mesh, rules, param_dtype=frozen_dtype)
  if frozen_dtype is not None:
    config = config.replace(param_dtype=(model_config.param_dtype
                                         if model_config else "float32"))
  if dtype is not None:
    config = config.replace(dtype=dtype)
  logging.info("Serving %s: weights in %s, computing in %s.",
               initial_checkpoint_path, jax.tree_util.tree_leaves(params)[0]
               .dtype, config.dtype)
  model = (DecoderOnlyLM(config) if isinstance(config, DecoderConfig)
           else T5(config))
  return FrozenModel(model, config, params, mesh, rules)


def load_library(specs: Union[Sequence[str], Mapping[str, str]],
                 embed_dim: Optional[int] = None,
                 config: Optional[T5Config] = None) -> PromptLibrary:
  """Reads prompts ('NAME=PATH', 'NAME:TASK=PATH' or {name: path}) in any
  format, our run directories included, checked against `embed_dim`. With
  the frozen model's `config`, also entries that add adapters (runs of any
  method but model tuning, PEFT LoRA/IA3/prefix adapters;
  `library_entries`)."""
  read_entry = (library_entries.entry_reader(config) if config is not None
                else None)
  return PromptLibrary.load(
      specs, embed_dim if config is None else config.emb_dim,
      read_run=prompt_files.load_prompt, read_entry=read_entry)


def _predict(frozen, adapters, bank, lengths, prompt_ids, tokens, *, model,
             decode, length, placement):
  return mixed.predict(model, frozen, bank, lengths, prompt_ids, tokens,
                       max_decode_length=length, method=decode.method,
                       beam_size=decode.beam_size, alpha=decode.alpha,
                       eos_id=decode.eos_id, placement=placement,
                       adapters=adapters)


def _rank(frozen, adapters, bank, lengths, prompt_ids, tokens, candidates, *,
          model, eos_id, placement):
  return mixed.rank(model, frozen, bank, lengths, prompt_ids, tokens,
                    candidates, placement, eos_id, adapters)


def placed_bank(frozen: FrozenModel, library: PromptLibrary):
  """The library's prompt bank [K, P_max, H] and lengths [K] on the mesh,
  checked against the model's width."""
  if library.embed_dim != frozen.config.emb_dim:
    raise ValueError(f"The library's prompts are {library.embed_dim} wide "
                     f"but the frozen model is {frozen.config.emb_dim}.")
  # The bank is tiny and read by every row: replicated.
  replicated = jax.sharding.NamedSharding(frozen.mesh,
                                          jax.sharding.PartitionSpec())
  bank, lengths = library.bank()
  return jax.device_put(bank, replicated), jax.device_put(lengths, replicated)


class MixedRunner:
  """Jitted mixed-prompt decoding and scoring for one frozen model and bank.

  Every call takes a full batch of `batch_size` rows (pad with zero rows and
  prompt id 0), so each function compiles once per input shape. A library
  with adapters (IA3, LoRA, prefixes, deep prompts) runs on the per-example
  model of its adapter bank (`library_entries.build_bank`); a library of
  prompts on the frozen model itself.
  """

  def __init__(self, frozen: FrozenModel, library: PromptLibrary,
               decode: DecodeConfig = DecodeConfig(),
               placement: str = "prefix", max_decode_length: int = 8):
    if isinstance(frozen.config, DecoderConfig):
      raise ValueError("A decoder-only LM is served by "
                       "decoder_runner.DecoderMixedRunner (make_runner).")
    self.frozen = frozen
    self.library = library
    self.decode = decode
    self.max_decode_length = decode.max_decode_length or max_decode_length
    self._bank, self._lengths = placed_bank(frozen, library)
    replicated = jax.sharding.NamedSharding(frozen.mesh,
                                            jax.sharding.PartitionSpec())
    adapters = library_entries.build_bank(library, frozen.config)
    library_entries.check_placement(adapters, placement)
    model = frozen.model
    self._adapters = None
    if adapters is not None:
      model = T5(frozen.config.replace(adapters=adapters.config))
      # Small next to the frozen model (K entries' adapters): replicated.
      self._adapters = jax.device_put(adapters.arrays, replicated)
      logging.info("Serving per-example adapters: %s.", adapters.config)
    self._predict = jax.jit(functools.partial(
        _predict, model=model, decode=decode,
        length=self.max_decode_length, placement=placement))
    self._rank = jax.jit(functools.partial(
        _rank, model=model, eos_id=decode.eos_id, placement=placement))

  def _shard(self, *arrays: np.ndarray):
    return partitioning.shard_global_batch(tuple(arrays), self.frozen.mesh)

  def feature_converter(self) -> None:
    """The evaluation batches' converter: T5's (`data.pipeline`)."""
    return None

  def context(self, batch: Mapping[str, np.ndarray]
              ) -> Tuple[np.ndarray, None]:
    """An evaluation batch's model inputs: (encoder tokens, no mask)."""
    return np.asarray(batch["encoder_input_tokens"]), None

  def layout(self, encoded: Sequence[Sequence[int]], length: int
             ) -> Tuple[np.ndarray, None]:
    """Rows of input ids right-padded with 0 (T5's padding) to `length`:
    (tokens [B, T] int32, no mask)."""
    tokens = np.zeros((len(encoded), length), np.int32)
    for i, ids in enumerate(encoded):
      tokens[i, :len(ids)] = ids
    return tokens, None

  def predict(self, tokens: np.ndarray, prompt_ids: np.ndarray,
              mask: None = None) -> np.ndarray:
    """tokens [B, T], prompt_ids [B] -> decoded [B, L] int32 (host)."""
    del mask  # 0 is T5's padding
    with partitioning.mesh_context(self.frozen.mesh, self.frozen.rules):
      tokens, prompt_ids = self._shard(np.asarray(tokens, np.int32),
                                       np.asarray(prompt_ids, np.int32))
      out = self._predict(self.frozen.params, self._adapters, self._bank,
                          self._lengths, prompt_ids, tokens)
    return partitioning.to_host(out)

  def rank(self, tokens: np.ndarray, prompt_ids: np.ndarray,
           candidates: np.ndarray, mask: None = None) -> np.ndarray:
    """tokens [B, T], prompt_ids [B], candidates [B, C, L] -> [B, C] scores
    (host; -inf for absent candidates)."""
    del mask
    with partitioning.mesh_context(self.frozen.mesh, self.frozen.rules):
      tokens, prompt_ids, candidates = self._shard(
          np.asarray(tokens, np.int32), np.asarray(prompt_ids, np.int32),
          np.asarray(candidates, np.int32))
      out = self._rank(self.frozen.params, self._adapters, self._bank,
                       self._lengths, prompt_ids, tokens, candidates)
    return partitioning.to_host(out)


def make_runner(frozen: FrozenModel, library: PromptLibrary,
                decode: DecodeConfig = DecodeConfig(),
                placement: str = "prefix", max_decode_length: int = 8):
  """The mixed-prompt runner of the frozen model's family."""
  if isinstance(frozen.config, DecoderConfig):
    from prompt_tuning.serving import decoder_runner  # pylint: disable=g-import-not-at-top
    return decoder_runner.DecoderMixedRunner(frozen, library, decode,
                                             placement, max_decode_length)
  return MixedRunner(frozen, library, decode, placement, max_decode_length)


def pad_rows(array: Optional[np.ndarray], rows: int) -> Optional[np.ndarray]:
  """Zero rows appended along axis 0 up to `rows` (None stays None)."""
  if array is None:
    return None
  array = np.asarray(array)
  return np.pad(array, [(0, rows - array.shape[0])] +
                [(0, 0)] * (array.ndim - 1))
