"""Writes our T5 parameters as a Hugging Face checkpoint (the inverse of hf.py),
and a decoder-only LM's (`save_hf_decoder`, the inverse of hf_decoder.py).

`save_hf(params, config, directory)` writes `config.json` (transformers 4.x
dialect: `tie_word_embeddings` says both tying and logit scaling) and a single
`model.safetensors`, so that `load_pretrained(directory)` (and transformers'
`T5ForConditionalGeneration.from_pretrained`) read the same model back. Names
and layouts come from `hf.param_map`, the table the reader uses: kernels
`[in, out]` are stored as torch Linear weights `[out, in]`. The safetensors
file is written by the `safetensors` package's numpy API (no torch needed),
to a temporary file that replaces the target atomically. Meant for small models written from one process (the quickstart's
frozen model, test fixtures): every parameter is fetched to host memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import safetensors.numpy
from flax import traverse_util

from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained import hf_decoder
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only import config as decoder_config_lib
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.models.t5 import unscan_params

PyTree = Any

# Storage dtypes this writer offers; safetensors data is little-endian.
_SAFETENSORS_DTYPES = {
    "float32": ("F32", np.dtype("<f4")),
    "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
    "float16": ("F16", np.dtype("<f2")),
}
# flax.linen activation -> the HF (ACT2FN) name with the same maths; the
# inverse of hf._FLAX_ACTIVATIONS. flax's gelu is the tanh approximation,
# HF's "gelu_new"; HF's plain "gelu" (exact erf) has no flax name here.
_HF_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu_new",
    "silu": "silu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
}
# T5Config fields that config.json must reproduce exactly.
_ARCHITECTURE_FIELDS = (
    "vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
    "num_encoder_layers", "num_decoder_layers", "mlp_activations",
    "logits_via_embedding", "relative_attention_num_buckets",
    "relative_attention_max_distance")


def _feed_forward_proj(config: T5Config) -> Dict[str, Any]:
  """`feed_forward_proj` plus the derived keys transformers itself writes."""
  activations = tuple(config.mlp_activations)
  gated = len(activations) == 2 and activations[1] == "linear"
  if not (gated or len(activations) == 1) or (
      activations[0] not in _HF_ACTIVATIONS):
    raise ValueError(
        f"mlp_activations={activations} has no Hugging Face T5 equivalent; "
        f"supported: (ACT,) or (ACT, 'linear') with ACT in "
        f"{sorted(_HF_ACTIVATIONS)}.")
  act = _HF_ACTIVATIONS[activations[0]]
  if gated and act == "gelu_new":
    proj = "gated-gelu"  # HF's T5Config turns exactly this into gelu_new
  else:
    proj = f"gated-{act}" if gated else act
  return {"feed_forward_proj": proj, "dense_act_fn": act,
          "is_gated_act": gated}


def hf_config(config: T5Config, dtype: str = "float32") -> Dict[str, Any]:
  """The transformers 4.x `config.json` contents for `config`.

  Args:
    config: the model; dtype / scan_layers / remat_policy are runtime
      choices and not written.
    dtype: the storage dtype of the weights (`torch_dtype`).

  Raises:
    ValueError: a config Hugging Face's T5 cannot express.
  """
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      **_feed_forward_proj(config),
      # 4.x dialect: true means tied *and* logits scaled by 1/sqrt(d_model),
      # exactly T5X's logits_via_embedding; false means an unscaled lm_head.
      "tie_word_embeddings": bool(config.logits_via_embedding),
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance":
          config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": hf._LAYER_NORM_EPSILON,  # pylint: disable=protected-access
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "use_cache": True,
      "torch_dtype": dtype,
  }


def _check_reads_back(config: T5Config, hf_dict: Mapping[str, Any]) -> None:
  """The reader must derive the same architecture from what we write."""
  found = hf.config_from_hf(hf_dict,
                            has_lm_head=not config.logits_via_embedding)
  for field in _ARCHITECTURE_FIELDS:
    a, b = getattr(config, field), getattr(found, field)
    if tuple(np.atleast_1d(a)) != tuple(np.atleast_1d(b)):
      raise ValueError(f"config.{field}={a!r} would be read back as {b!r}; "
                       "this config cannot be written as a Hugging Face T5.")


def _host_params(params: PyTree) -> Dict[str, np.ndarray]:
  """'/'-joined names -> host numpy arrays, boxes (LogicallyPartitioned)
  removed, scanned stacks split into layers."""
  params = nn.unbox(params)
  flat = traverse_util.flatten_dict(params, sep="/")
  host = {}
  for name, value in flat.items():
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
      raise ValueError(
          f"Parameter {name} is spread over several processes; save_hf "
          "writes from one process: gather the params first.")
    host[name] = np.asarray(jax.device_get(value))
  return unscan_params(host)


def _write_atomic(path: str, write) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes `tensors` (name -> array of a `_SAFETENSORS_DTYPES` dtype).

  The library lays the file out (8-byte header length, JSON header padded so
  the data is aligned, C-order little-endian data); the write is atomic.
  """
  names = {np.dtype(d) for _, d in _SAFETENSORS_DTYPES.values()}
  for name, array in tensors.items():
    if array.dtype not in names:
      raise ValueError(f"Tensor {name!r} has dtype {array.dtype}; write "
                       f"one of {sorted(_SAFETENSORS_DTYPES)}.")
  contiguous = {name: np.ascontiguousarray(array)
                for name, array in tensors.items()}
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    safetensors.numpy.save_file(
        contiguous, tmp, metadata=dict(metadata) if metadata else None)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_hf(params: PyTree, config: T5Config, directory: str | os.PathLike,
            dtype: str = "float32") -> None:
  """Writes `params` as a Hugging Face T5 checkpoint directory.

  Args:
    params: the model's parameter tree, as `load_pretrained` returns it or
      `T5(config).init(...)['params']` (boxed or not; scanned or not); jax or
      numpy arrays.
    config: the model's config; `hf_config(config)` is written as
      config.json.
    directory: created if needed; an existing config.json /
      model.safetensors there is replaced (each file atomically).
    dtype: storage dtype: 'float32' (exact for float32 params), 'bfloat16'
      or 'float16'.

  Raises:
    ValueError: a parameter missing from or unknown to the config, a shape
      that disagrees with it, or a config HF's T5 cannot express.
  """
  if dtype not in _SAFETENSORS_DTYPES:
    raise ValueError(f"dtype={dtype!r}; use one of "
                     f"{sorted(_SAFETENSORS_DTYPES)}.")
  hf_dict = hf_config(config, dtype)
  _check_reads_back(config, hf_dict)
  _write_checkpoint(params, hf.param_map(config), hf_dict, directory, dtype,
                    "; pass the T5Config the params were built with")


def _write_checkpoint(params: PyTree, table: Mapping[str, Any],
                      hf_dict: Mapping[str, Any], directory, dtype: str,
                      hint: str = "") -> None:
  """Writes model.safetensors (names and layouts from the reader's `table`:
  ours -> (HF name, our shape, transposed?)) and config.json."""
  storage = _SAFETENSORS_DTYPES[dtype][1]
  flat = _host_params(params)
  missing = sorted(set(table) - set(flat))
  unknown = sorted(set(flat) - set(table))
  if missing or unknown:
    raise ValueError(
        f"The params do not match the config: missing {missing[:3]}, "
        f"unknown {unknown[:3]} ({len(missing)} / {len(unknown)} in all)"
        f"{hint}.")
  tensors = {}
  for ours, (hf_name, shape, transpose) in table.items():
    array = flat[ours]
    if tuple(array.shape) != tuple(shape):
      raise ValueError(f"Parameter {ours} has shape {tuple(array.shape)} but "
                       f"the config implies {tuple(shape)}.")
    # Kernels [in, out] -> torch Linear weights [out, in].
    tensors[hf_name] = (array.T if transpose else array).astype(storage)
  os.makedirs(directory, exist_ok=True)
  write_safetensors(os.path.join(directory, hf.WEIGHTS_FILE), tensors,
                    metadata={"format": "pt"})
  text = json.dumps(dict(hf_dict), indent=2, sort_keys=True) + "\n"
  _write_atomic(os.path.join(directory, hf.CONFIG_FILE),
                lambda f: f.write(text.encode("utf-8")))


def _decoder_model_type(config: DecoderConfig) -> str:
  """The HF model_type that holds exactly this architecture."""
  if config.family == "gemma3":
    return "gemma3_text"
  if config.gemma:
    return "gemma2"
  if config.sliding_layers == "all":
    return "mistral"
  if config.qkv_bias and not config.out_bias:
    return "qwen2"
  return "llama"


def hf_decoder_config(config: DecoderConfig,
                      dtype: str = "float32") -> Dict[str, Any]:
  """config.json for a decoder-only LM (Llama, Mistral, Qwen2, Gemma 2),
  checked to read back as the same architecture.

  Raises:
    ValueError: one line, for a config no HF model type expresses.
  """
  model_type = _decoder_model_type(config)
  out: Dict[str, Any] = {
      "model_type": model_type,
      "architectures": [{"llama": "LlamaForCausalLM",
                         "mistral": "MistralForCausalLM",
                         "qwen2": "Qwen2ForCausalLM",
                         "gemma2": "Gemma2ForCausalLM",
                         "gemma3_text": "Gemma3ForCausalLM"}[model_type]],
      "vocab_size": config.vocab_size, "hidden_size": config.emb_dim,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "rms_norm_eps": config.norm_eps,
      "rope_theta": config.rope_theta,
      "tie_word_embeddings": config.tie_embeddings,
      "bos_token_id": config.bos_id, "eos_token_id": config.eos_id,
      "max_position_embeddings": 8192, "torch_dtype": dtype,
  }
  if config.rope_type == "linear":
    out["rope_scaling"] = {"rope_type": "linear",
                           "factor": config.rope_factor}
  elif config.rope_type == "llama3":
    out["rope_scaling"] = {
        "rope_type": "llama3", "factor": config.rope_factor,
        "low_freq_factor": config.rope_low_freq_factor,
        "high_freq_factor": config.rope_high_freq_factor,
        "original_max_position_embeddings":
            config.rope_original_max_positions}
  if model_type == "gemma3_text":
    out.update(rope_local_base_freq=config.rope_local_theta,
               layer_types=[
                   "sliding_attention" if config.sliding(i) else
                   "full_attention" for i in range(config.num_layers)])
  if model_type in ("gemma2", "gemma3_text"):
    out.update(hidden_activation="gelu_pytorch_tanh",
               hidden_act="gelu_pytorch_tanh",
               query_pre_attn_scalar=config.query_pre_attn_scalar or
               config.head_dim,
               attn_logit_softcapping=config.attn_softcap or None,
               final_logit_softcapping=config.final_softcap or None,
               sliding_window=config.sliding_window or None)
  else:
    out.update(hidden_act={"silu": "silu", "gelu": "gelu_pytorch_tanh"}.get(
        config.activation, config.activation), mlp_bias=False,
               sliding_window=config.sliding_window or None)
    if model_type == "llama":
      out["attention_bias"] = config.out_bias
  found = decoder_config_lib.from_hf(out, "the written config.json")
  # Gemma's scalar 0 means head_dim: compare the scale it gives.
  ignored = ("dtype", "param_dtype", "query_pre_attn_scalar")
  mismatch = [f for f in dataclasses.fields(DecoderConfig)
              if f.name not in ignored
              and getattr(found, f.name) != getattr(config, f.name)]
  if found.query_scale != config.query_scale:
    mismatch += [f for f in dataclasses.fields(DecoderConfig)
                 if f.name == "query_pre_attn_scalar"]
  if mismatch:
    raise ValueError(
        f"No Hugging Face {model_type} config expresses this model: "
        f"{mismatch[0].name} would read back as "
        f"{getattr(found, mismatch[0].name)!r}, not "
        f"{getattr(config, mismatch[0].name)!r}.")
  return out


def save_hf_decoder(params: PyTree, config: DecoderConfig,
                    directory: str | os.PathLike,
                    dtype: str = "float32") -> None:
  """Writes a decoder-only LM as a Hugging Face checkpoint directory that
  `load_decoder_only` and transformers' `AutoModelForCausalLM` read back
  (names and layouts from `hf_decoder.param_map`, the reader's table).

  Args:
    params: the LM's parameter tree (boxed or not; jax or numpy), without a
      prompt.
    config: its config (`hf_decoder_config` is written).
    directory: created if needed; config.json and model.safetensors there
      are replaced, each atomically.
    dtype: 'float32' (exact for float32 params), 'bfloat16' or 'float16'.

  Raises:
    ValueError: one line, for params that do not match the config or a
      config no HF model type expresses.
  """
  if dtype not in _SAFETENSORS_DTYPES:
    raise ValueError(f"dtype={dtype!r}; use one of "
                     f"{sorted(_SAFETENSORS_DTYPES)}.")
  hf_dict = hf_decoder_config(config, dtype)
  _write_checkpoint(params, hf_decoder.param_map(config), hf_dict, directory,
                    dtype)
