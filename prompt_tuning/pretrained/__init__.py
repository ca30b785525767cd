"""Pretrained weights: T5X (legacy, orbax) and Hugging Face checkpoint readers.

One entry point, `load_pretrained(path, config=None, mesh=None)`, recognises
the format, reads one parameter at a time and returns `(config, params)` with
params laid out for `prompt_tuning.models.T5` (scanned or not, sharded when a
mesh is given). Modules: `t5x` and `hf` (the readers), `assemble` (tree
assembly, checks, placement), `hf_export` (writing a Hugging Face checkpoint).
"Checkpoint" here always means someone's pretrained model; a training run's
own checkpoints are `prompt_tuning.training.checkpoints`. May import
`models/`, `partitioning`, TensorStore, msgpack and `safetensors` (its
numpy API: no torch); never `training/`,
`data/` or gin.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from typing import Any, Optional, Tuple

import jax

from prompt_tuning import partitioning
from prompt_tuning import storage
from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained import hf_decoder
from prompt_tuning.pretrained import t5x
from prompt_tuning.pretrained.assemble import assemble_params
from prompt_tuning.pretrained.assemble import LoadStats
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.models.decoder_only.config import MODEL_TYPES

PyTree = Any

# Fields that change the function the weights compute; a config passed for an
# HF checkpoint must agree with config.json on all of them. The rest (dtype,
# scan_layers, remat_policy, dropout_rate, ...) are the caller's to choose.
_ARCHITECTURE_FIELDS = (
    "vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
    "num_encoder_layers", "num_decoder_layers", "mlp_activations",
    "logits_via_embedding", "relative_attention_num_buckets",
    "relative_attention_max_distance")


def _check_architecture(given: T5Config, found: T5Config, path: str) -> None:
  for field in _ARCHITECTURE_FIELDS:
    a, b = getattr(given, field), getattr(found, field)
    if (tuple(a) if isinstance(a, (list, tuple)) else a) != (
        tuple(b) if isinstance(b, (list, tuple)) else b):
      raise ValueError(
          f"{path}: config.{field}={a!r} disagrees with the checkpoint's "
          f"config.json ({b!r}); pass config=None to use the checkpoint's, or "
          f"fix the config.")


def _size(num_bytes: float) -> str:
  for unit in ("B", "KiB", "MiB"):
    if num_bytes < 1024:
      return f"{num_bytes:.1f} {unit}"
    num_bytes /= 1024
  return f"{num_bytes:.1f} GiB"


def _log_load(stats: LoadStats, seconds: float) -> None:
  """One line per process: what a sharded load cost this host."""
  # ru_maxrss is in KiB on Linux: the process's peak, the load included.
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  logging.info(
      "Process %d: Loaded %d frozen arrays (%s of %s) in %.1fs; peak host "
      "RSS %.0f MiB", jax.process_index(), stats.arrays,
      _size(stats.bytes_read), _size(stats.bytes_total), seconds, peak_mib)


def load_pretrained(
    path: str | os.PathLike,
    config: Optional[T5Config] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
    rules: Optional[partitioning.Rules] = None,
    param_dtype: Optional[str] = None,
) -> Tuple[T5Config, PyTree]:
  """Loads a pretrained T5 checkpoint.

  Args:
    path: a Hugging Face directory (`config.json` + `model.safetensors` or a
      sharded index); or a T5X checkpoint: the `checkpoint` msgpack file, a
      `checkpoint_<N>` directory (legacy or orbax), or a model directory whose
      newest `checkpoint_<N>` is taken. `gs://...` paths are read through
      gcsfs and TensorStore's gcs driver (an HF directory is copied locally
      first).
    config: required for T5X checkpoints (they carry no model config); for
      HF it defaults to one derived from `config.json`, and a given one must
      agree with it on the architecture.
    mesh: place each parameter with the sharding of the logical axis rules;
      each process then reads only the blocks of the TensorStore and
      safetensors arrays that its devices hold, and logs one line of what it
      read, how long it took and its peak host memory.
    rules: logical axis rules (default `partitioning.logical_axis_rules()`).
    param_dtype: store the weights in this dtype instead of the config's
      (e.g. 'bfloat16' for frozen weights); each array is cast on the host
      as it is read.

  Returns:
    (config, params): params is the nested dict `T5(config).apply` takes;
    the config's param_dtype is the weights' dtype.

  Raises:
    ValueError / FileNotFoundError: one line naming what is wrong and where.
  """
  path = os.fspath(path)
  if hf.is_hf_checkpoint(path):
    found, loaders = hf.read_hf(path)
    if config is None:
      config = found
    else:
      _check_architecture(config, found, path)
    source = path
  else:
    ckpt_dir = t5x.find_t5x_checkpoint(path)
    if config is None:
      raise ValueError(
          f"{ckpt_dir}: T5X checkpoints carry no model config; pass one, e.g. "
          f"load_pretrained(path, config=t5_config('t5_1_1_base')).")
    if t5x.is_t5x_legacy(ckpt_dir):
      loaders = t5x.read_t5x_legacy(ckpt_dir)
    else:
      loaders = t5x.read_t5x_orbax(ckpt_dir)
    source = ckpt_dir
  return _assemble(config, loaders, source, mesh, rules, param_dtype)


def is_decoder_only(path: str | os.PathLike) -> bool:
  """True if `path` is a Hugging Face directory whose config.json names a
  decoder-only family this code implements (`load_decoder_only`); False for
  T5 (HF or T5X) and anything unreadable, which `load_pretrained` explains."""
  path = os.fspath(path)
  config_file = storage.join(path, hf.CONFIG_FILE)
  try:
    if not storage.isfile(config_file):
      return False
    hf_config = json.loads(storage.read_text(config_file))
  except (OSError, ValueError):
    return False
  return (isinstance(hf_config, dict) and
          hf_config.get("model_type") in MODEL_TYPES)


def load_decoder_only(
    path: str | os.PathLike,
    mesh: Optional[jax.sharding.Mesh] = None,
    rules: Optional[partitioning.Rules] = None,
    param_dtype: Optional[str] = None, **overrides: Any,
) -> Tuple[DecoderConfig, PyTree]:
  """Loads a Hugging Face decoder-only LM (Llama, Mistral, Qwen2, Gemma 2).

  As `load_pretrained` for T5: on a mesh each parameter is placed with the
  sharding of the logical axis rules and each process reads only the
  safetensors blocks its devices hold.

  Args:
    path: a `save_pretrained` directory (`pretrained.hf_decoder`).
    mesh, rules, param_dtype: as for `load_pretrained`.
    **overrides: DecoderConfig fields (e.g. dtype='float32').

  Returns:
    (config, params) for `DecoderOnlyLM(config)`.
  """
  path = os.fspath(path)
  config, loaders = hf_decoder.read_hf_decoder(path, **overrides)
  return _assemble(config, loaders, path, mesh, rules, param_dtype)


def _assemble(config, loaders, source: str,
              mesh: Optional[jax.sharding.Mesh],
              rules: Optional[partitioning.Rules],
              param_dtype: Optional[str]) -> Tuple[Any, PyTree]:
  """The checkpoint's loaders assembled (on the mesh, one log line of what
  this process read): the tail both families' loaders share."""
  if param_dtype is not None:
    config = config.replace(param_dtype=param_dtype)
  stats = LoadStats()
  start = time.perf_counter()
  params = assemble_params(config, loaders, source, mesh, rules, stats)
  if mesh is not None:
    _log_load(stats, time.perf_counter() - start)
  return config, params


__all__ = ["load_pretrained", "load_decoder_only", "is_decoder_only", "assemble_params",
           "LoadStats"]
