"""Reads Hugging Face decoder-only checkpoints (Llama, Mistral, Qwen2,
Gemma 2) into our parameter names.

The same directory layout and safetensors readers as the T5 reader
(`pretrained.hf`): `config.json` plus `model.safetensors` or a sharded
`model.safetensors.index.json`, read lazily (`BlockLoader`s: a process reads
only the blocks its devices hold), bf16/f16/f32 as stored, pickles refused.
Every expected tensor's presence and shape, and the absence of tensors this
model has no place for, are checked when the directory is opened, each
failure one line naming the tensor and the file.
"""

from __future__ import annotations

import functools
import re
from typing import Dict, Tuple

import numpy as np

from prompt_tuning.models.decoder_only import config as config_lib
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained.assemble import BlockLoader

# Buffers some exports carry that are recomputed, not learned.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def param_map(config: DecoderConfig) -> Dict[str, Tuple[str, Tuple[int, ...],
                                                        bool]]:
  """Our name -> (HF name, our shape, whether HF stores it transposed)."""
  h, kv = config.emb_dim, config.num_kv_heads * config.head_dim
  q = config.num_heads * config.head_dim
  out = {"token_embedder/embedding": ("model.embed_tokens.weight",
                                      (config.vocab_size, h), False),
         "decoder/decoder_norm/scale": ("model.norm.weight", (h,), False)}
  if not config.tie_embeddings:
    out["decoder/logits_dense/kernel"] = ("lm_head.weight",
                                          (h, config.vocab_size), True)
  norms = {"input_layernorm": "pre_self_attention_layer_norm"}
  if config.gemma:
    norms.update(post_attention_layernorm="post_self_attention_layer_norm",
                 pre_feedforward_layernorm="pre_mlp_layer_norm",
                 post_feedforward_layernorm="post_mlp_layer_norm")
  else:
    norms["post_attention_layernorm"] = "pre_mlp_layer_norm"
  projections = {"q_proj": ("query", q), "k_proj": ("key", kv),
                 "v_proj": ("value", kv)}
  for i in range(config.num_layers):
    theirs, ours = f"model.layers.{i}.", f"decoder/layers_{i}/"
    for name, our_name in norms.items():
      out[f"{ours}{our_name}/scale"] = (f"{theirs}{name}.weight", (h,), False)
    for name, (our_name, width) in projections.items():
      out[f"{ours}self_attention/{our_name}/kernel"] = (
          f"{theirs}self_attn.{name}.weight", (h, width), True)
      if config.qkv_bias:
        out[f"{ours}self_attention/{our_name}/bias"] = (
            f"{theirs}self_attn.{name}.bias", (width,), False)
    out[f"{ours}self_attention/out/kernel"] = (
        f"{theirs}self_attn.o_proj.weight", (q, h), True)
    if config.qk_norm:
      for name, our_name in (("q_norm", "query_norm"),
                             ("k_norm", "key_norm")):
        out[f"{ours}self_attention/{our_name}/scale"] = (
            f"{theirs}self_attn.{name}.weight", (config.head_dim,), False)
    if config.out_bias:
      out[f"{ours}self_attention/out/bias"] = (
          f"{theirs}self_attn.o_proj.bias", (h,), False)
    for name, our_name, shape in (("gate_proj", "wi_0", (h, config.mlp_dim)),
                                  ("up_proj", "wi_1", (h, config.mlp_dim)),
                                  ("down_proj", "wo", (config.mlp_dim, h))):
      out[f"{ours}mlp/{our_name}/kernel"] = (f"{theirs}mlp.{name}.weight",
                                             shape, True)
  return out


def read_hf_decoder(path: str, **overrides) -> Tuple[DecoderConfig,
                                                     Dict[str, BlockLoader]]:
  """Opens a Hugging Face decoder-only checkpoint without loading weights.

  Args:
    path: a `save_pretrained` directory (a gs:// one is copied locally).
    **overrides: DecoderConfig fields to set (e.g. dtype='float32').

  Returns:
    (config, loaders): our '/'-joined parameter name -> `BlockLoader` of the
    array in our layout ([in, out] kernels) and its stored dtype.

  Raises:
    ValueError: one line, for a missing config.json or weights, a pickle, a
      corrupt header, a missing, unexpected or mis-shaped tensor, or a
      config this code does not implement.
  """
  path, hf_config, config_file = hf.open_directory(path)
  config = config_lib.from_hf(hf_config, config_file, **overrides)
  tensors, listing = hf.index_tensors(path)
  wanted = param_map(config)
  loaders = {}
  for ours, (theirs, shape, transpose) in wanted.items():
    tensor = tensors.get(theirs)
    if tensor is None:
      raise ValueError(f"Parameter {ours} (Hugging Face {theirs}) is missing "
                       f"from {listing}; the checkpoint does not match "
                       "config.json.")
    stored = shape[::-1] if transpose else shape
    if tensor.shape != stored:
      raise ValueError(f"Parameter {ours} (Hugging Face {theirs}) in "
                       f"{tensor.file} has shape {list(tensor.shape)} but "
                       f"config.json implies {list(stored)}.")
    loaders[ours] = BlockLoader(
        read=functools.partial(hf.load_param, tensor, transpose),
        shape=functools.partial(tuple, shape))
  known = {theirs for theirs, _, _ in wanted.values()}
  if config.tie_embeddings:
    known.add("lm_head.weight")  # a tied copy some exports keep
  extra = sorted(n for n in tensors if n not in known and
                 not _IGNORED.match(n))
  if extra:
    raise ValueError(f"{listing} has {len(extra)} tensor(s) this "
                     f"{hf_config.get('model_type')} model has no place for "
                     f"(first: {extra[0]!r}); is config.json the weights' "
                     "own?")
  return config, loaders


def load_host(path: str, dtype: str = "float32", **overrides
              ) -> Tuple[DecoderConfig, Dict[str, np.ndarray]]:
  """The whole checkpoint on the host, nested, cast to `dtype`: for tests,
  tools and models that fit one host (training places loaders on a mesh)."""
  config, loaders = read_hf_decoder(path, **overrides)
  flat = {name: np.asarray(loader.read(None)).astype(dtype)
          for name, loader in loaders.items()}
  tree: Dict = {}
  for name, array in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = array
  return config, tree
