"""Reads Hugging Face T5 checkpoints (safetensors) into T5X parameter names.

A Hugging Face T5 directory (`save_pretrained` output: `config.json` plus
`model.safetensors` or a sharded `model.safetensors.index.json`) is turned
into our `T5Config` and a table from T5X's '/'-joined parameter names
(`encoder/layers_0/attention/query/kernel`) to zero-argument loaders. Loading
is lazy, one tensor per call, so an XXL checkpoint (44 GB) never has to fit in
host memory at once; each loader returns the tensor in our layout (torch
Linear weights `[out, in]` transposed to kernels `[in, out]`) and in the dtype
it was stored in: the caller casts. Loaders are `BlockLoader`s: on a mesh
each process reads only the blocks of each tensor that its devices hold. Files are read with the `safetensors`
package's numpy API (no torch; it reads bfloat16 as `ml_dtypes.bfloat16`),
one `safe_open` per tensor, and `pytorch_model.bin` is
refused rather than unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from typing import Callable, Dict, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np
import safetensors

from prompt_tuning import storage
from prompt_tuning.models.config import T5Config
from prompt_tuning.pretrained.assemble import BlockLoader
from prompt_tuning.pretrained.assemble import Index

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"

# safetensors is little-endian by specification.
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}

# HF activation names (ACT2FN keys) -> flax.linen names with the same maths.
# HF's "gelu" is the exact erf GELU, which no flax.linen name gives; it is
# left out so that such a config fails instead of silently changing numerics.
_FLAX_ACTIVATIONS = {
    "relu": "relu",
    "gelu_new": "gelu",  # tanh approximation == flax.linen.gelu default
    "gelu_pytorch_tanh": "gelu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
}

# HF T5Config defaults for keys a config.json may omit.
_HF_DEFAULTS = {
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "feed_forward_proj": "relu",
    "layer_norm_epsilon": 1e-6,
}
# Our model's RMS norm uses T5X's fixed epsilon.
_LAYER_NORM_EPSILON = 1e-6

Loader = Callable[[], np.ndarray]


def is_hf_checkpoint(path: str) -> bool:
  """True if `path` (local or gs://) is a directory with config.json and
  safetensors weights."""
  return (storage.isdir(path) and
          storage.isfile(storage.join(path, CONFIG_FILE)) and
          (storage.isfile(storage.join(path, WEIGHTS_FILE)) or
           storage.isfile(storage.join(path, INDEX_FILE))))


def config_from_hf(hf_config: Mapping, has_lm_head: bool, *,
                   where: str = CONFIG_FILE) -> T5Config:
  """Derives our T5Config from a Hugging Face T5 `config.json`.

  Tied vs untied output projection (`logits_via_embedding`). T5X has two
  layouts: tied, logits = y @ embedding^T / sqrt(emb_dim) (T5 1.0), and
  untied, logits = y @ logits_dense, unscaled (T5.1.1, LM-adapted, mT5). HF
  configs express this in two dialects:

  * transformers <= 4.x: `tie_word_embeddings` decides both the tying and the
    1/sqrt(d_model) scale (modeling_t5.py scales `sequence_output` iff the
    flag is true). The flag defaults to true in PretrainedConfig, so a config
    without the key (T5 1.0 on the hub) is tied; T5.1.1 / LM-adapted / mT5
    configs say false and carry `lm_head.weight`. A tied config whose file
    still holds `lm_head.weight` is read as tied, as 4.x does: its
    `tie_weights()` overwrites lm_head with `shared` after loading.
  * transformers >= 5: configuration_t5.py turns the incoming
    `tie_word_embeddings` into `scale_decoder_outputs = (flag is not False)`
    and forces `tie_word_embeddings = True`, so every config it writes says
    true and the scale lives in `scale_decoder_outputs`. Whether logits use
    lm_head is then decided by the weights: `tie_weights` in modeling_utils.py
    does not tie lm_head to `shared` when both are in the file with different
    values, and `save_pretrained` drops lm_head when it is tied. So: the scale
    is `scale_decoder_outputs`, and the model is untied iff the file has
    `lm_head.weight`. (5.0 releases before huggingface/transformers#43681
    computed the scale as always true, so a T5.1.1 re-saved by them reads
    `scale_decoder_outputs: true` next to an lm_head: refused below.)

  Args:
    hf_config: the parsed config.json.
    has_lm_head: whether the weights hold `lm_head.weight`.
    where: where the config came from, for error messages.

  Returns:
    The config, with T5Config's dtype defaults.

  Raises:
    ValueError: on a config this model cannot reproduce exactly (another
      model type, an unsupported activation or epsilon) or one the weights
      contradict.
  """
  model_type = hf_config.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    # umt5 and longt5 share T5's names but not its numerics (per-layer
    # relative positions, local attention): refuse rather than misread.
    raise ValueError(
        f"{where}: model_type {model_type!r} is not T5; this reader handles "
        "model_type 't5' and 'mt5' checkpoints only.")
  for key in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff",
              "num_layers"):
    if key not in hf_config:
      raise ValueError(f"{where}: config.json lacks {key!r}; re-save the "
                       "checkpoint with transformers' save_pretrained.")

  def get(key):
    return hf_config.get(key, _HF_DEFAULTS.get(key))

  epsilon = get("layer_norm_epsilon")
  if not math.isclose(epsilon, _LAYER_NORM_EPSILON):
    raise ValueError(
        f"{where}: layer_norm_epsilon={epsilon} but this model's RMS norm "
        f"uses T5's {_LAYER_NORM_EPSILON}; such a checkpoint is not "
        "supported.")

  mlp_activations = _mlp_activations(hf_config, where)
  logits_via_embedding = _logits_via_embedding(hf_config, has_lm_head, where)
  num_layers = hf_config["num_layers"]
  num_decoder_layers = hf_config.get("num_decoder_layers")
  return T5Config(
      vocab_size=hf_config["vocab_size"],
      emb_dim=hf_config["d_model"],
      num_heads=hf_config["num_heads"],
      head_dim=hf_config["d_kv"],
      mlp_dim=hf_config["d_ff"],
      num_encoder_layers=num_layers,
      # HF: "default = symmetry" when the key is absent or null.
      num_decoder_layers=(num_layers if num_decoder_layers is None
                          else num_decoder_layers),
      mlp_activations=mlp_activations,
      logits_via_embedding=logits_via_embedding,
      dropout_rate=get("dropout_rate"),
      relative_attention_num_buckets=get("relative_attention_num_buckets"),
      relative_attention_max_distance=get("relative_attention_max_distance"),
  )


def _mlp_activations(hf_config: Mapping, where: str) -> Tuple[str, ...]:
  """Maps HF's feed_forward_proj ("relu", "gated-gelu", ...) to flax names."""
  proj = hf_config.get("feed_forward_proj", _HF_DEFAULTS["feed_forward_proj"])
  parts = proj.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"{where}: feed_forward_proj={proj!r} is not 'ACT' or "
                     "'gated-ACT' (e.g. 'relu', 'gated-gelu').")
  # Same derivation as HF's T5Config, including its special case: "gated-gelu"
  # means gelu_new (tanh), while a plain "gelu" would be HF's exact GELU.
  act, gated = parts[-1], len(parts) == 2
  if proj == "gated-gelu":
    act = "gelu_new"
  # A config.json written by transformers itself stores the derived values;
  # HF uses the stored ones after loading, so they win here too.
  act = hf_config.get("dense_act_fn", act)
  gated = hf_config.get("is_gated_act", gated)
  if act not in _FLAX_ACTIVATIONS:
    raise ValueError(
        f"{where}: activation {act!r} (feed_forward_proj={proj!r}) has no "
        f"exact flax.linen equivalent; supported: "
        f"{', '.join(sorted(_FLAX_ACTIVATIONS))}.")
  flax_act = _FLAX_ACTIVATIONS[act]
  # HF's gated MLP is act(x @ wi_0) * (x @ wi_1): T5X's ('act', 'linear').
  return (flax_act, "linear") if gated else (flax_act,)


def _logits_via_embedding(hf_config: Mapping, has_lm_head: bool,
                          where: str) -> bool:
  """Tied (scaled) or untied (unscaled) logits; see config_from_hf."""
  if "scale_decoder_outputs" in hf_config:  # written by transformers >= 5
    scale = bool(hf_config["scale_decoder_outputs"])
    if has_lm_head and scale:
      raise ValueError(
          f"{where}: the weights hold lm_head.weight (untied) but config.json "
          "says scale_decoder_outputs=true, a mix T5 never trained with "
          "(transformers 5.0 before PR #43681 wrote it for T5.1.1); for "
          "T5.1.1/LM-adapted/mT5 set \"scale_decoder_outputs\": false.")
    if not has_lm_head and not scale:
      raise ValueError(
          f"{where}: config.json says scale_decoder_outputs=false (T5.1.1 "
          "style, untied) but the weights have no lm_head.weight; the "
          "checkpoint is incomplete: re-save it with its lm_head.")
    return not has_lm_head
  tied = bool(hf_config.get("tie_word_embeddings", True))
  if not tied and not has_lm_head:
    raise ValueError(
        f"{where}: config.json says tie_word_embeddings=false (untied, "
        "T5.1.1 style) but the weights have no lm_head.weight; re-save the "
        "checkpoint with its lm_head, or drop the key if it is T5 1.0.")
  return tied


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  """One tensor of a safetensors file, as its header describes it."""
  file: str
  name: str
  dtype: str  # safetensors dtype name, e.g. "BF16"
  shape: Tuple[int, ...]


def _corrupt(file: str, reason: str) -> ValueError:
  return ValueError(
      f"Corrupt safetensors header in {file}: {reason}; re-download or "
      "re-save the checkpoint.")


def _reason(error: Exception) -> str:
  """The library's message without its fixed preamble."""
  return re.sub(r"^Error while deserializing header: ", "",
                " ".join(str(error).split()))


def read_safetensors_header(file: str) -> Dict[str, TensorEntry]:
  """Reads a safetensors header: tensor name -> dtype and shape.

  The `safetensors` library validates the header (its length, JSON, that the
  offsets tile the data exactly and match each dtype and shape) and maps the
  file without reading any tensor.

  Raises:
    ValueError: on anything that is not a well-formed safetensors file.
  """
  try:
    with safetensors.safe_open(file, framework="np") as f:
      tensors = {}
      for name in f.keys():
        view = f.get_slice(name)
        tensors[name] = TensorEntry(file, name, view.get_dtype(),
                                    tuple(int(n) for n in view.get_shape()))
  except safetensors.SafetensorError as e:
    raise _corrupt(file, _reason(e)) from None
  return tensors


def load_tensor(tensor: TensorEntry,
                index: Optional[Index] = None) -> np.ndarray:
  """Reads one tensor from disk, or only its block `index` (one slice per
  dimension), in its stored dtype."""
  if tensor.dtype not in _DTYPES:
    raise ValueError(
        f"{tensor.file}: tensor {tensor.name!r} has dtype {tensor.dtype}; "
        f"only {', '.join(_DTYPES)} are supported; re-save it as float32.")
  # Opened per tensor: only this tensor's bytes are copied out, and no map of
  # the whole shard outlives the call (an XXL shard is ~10 GB). The header is
  # re-validated, so a file that changed since `read_safetensors_header`
  # fails here instead of yielding another tensor's bytes.
  try:
    with safetensors.safe_open(tensor.file, framework="np") as f:
      if index is None:
        array = f.get_tensor(tensor.name)
        shape = tensor.shape
      else:
        view = f.get_slice(tensor.name)
        if tuple(view.get_shape()) != tensor.shape:
          raise ValueError(
              f"{tensor.file}: {tensor.name!r} is now "
              f"{list(view.get_shape())}, not {list(tensor.shape)}: the file "
              "changed since it was opened.")
        # Copies out only the block's bytes of the mapped file.
        array = view[index]
        shape = tuple(len(range(n)[s]) for n, s in zip(tensor.shape, index))
  except safetensors.SafetensorError as e:
    raise ValueError(
        f"{tensor.file}: cannot read {tensor.name!r}: the file is truncated "
        f"or changed since it was opened ({_reason(e)}); re-download or "
        "re-save the checkpoint.") from None
  if array.dtype != _DTYPES[tensor.dtype] or array.shape != shape:
    raise ValueError(
        f"{tensor.file}: {tensor.name!r} is now {array.dtype}{list(array.shape)}"
        f", not {tensor.dtype}{list(shape)}: the file changed since it "
        "was opened.")
  return array


def index_tensors(path: str) -> Tuple[Dict[str, TensorEntry], str]:
  """All tensors of a checkpoint directory, and the file that lists them."""
  single = os.path.join(path, WEIGHTS_FILE)
  if os.path.isfile(single):  # transformers prefers it too
    return read_safetensors_header(single), single
  index_file = os.path.join(path, INDEX_FILE)
  try:
    with open(index_file) as f:
      weight_map = json.load(f).get("weight_map")
  except (json.JSONDecodeError, AttributeError):
    weight_map = None
  if not isinstance(weight_map, dict):
    raise ValueError(f"{index_file} is not a safetensors index with a "
                     "'weight_map' object; re-save the checkpoint.")
  headers = {}
  tensors = {}
  for name, shard in weight_map.items():
    if shard not in headers:
      shard_file = os.path.join(path, shard)
      if not os.path.isfile(shard_file):
        raise ValueError(f"{index_file} lists shard {shard} for {name!r} but "
                         f"{shard_file} does not exist; copy every shard.")
      headers[shard] = read_safetensors_header(shard_file)
    if name not in headers[shard]:
      raise ValueError(f"{index_file} places {name!r} in {shard} but that "
                       "file has no such tensor; re-save the checkpoint.")
    tensors[name] = headers[shard][name]
  return tensors, index_file


def param_map(config: T5Config) -> Dict[str, Tuple[str, Tuple[int, ...],
                                                   bool]]:
  """Our name -> (HF name, our shape, whether HF stores it transposed).

  The one table between the two naming schemes: the reader here and the
  writer in `hf_export` both use it, so they cannot drift apart.
  """
  d, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
  qkv = config.num_heads * config.head_dim
  params = {}

  def add(ours, hf, shape, transpose):
    params[ours] = (hf, shape, transpose)

  add("token_embedder/embedding", "shared.weight", (v, d), False)
  wi = (["wi"] if len(config.mlp_activations) == 1 else
        [f"wi_{j}" for j in range(len(config.mlp_activations))])
  for stack, num_layers in (("encoder", config.num_encoder_layers),
                            ("decoder", config.num_decoder_layers)):
    # HF keeps the per-stack table on block 0 only; later blocks reuse it.
    add(f"{stack}/relpos_bias/rel_embedding",
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (config.num_heads, config.relative_attention_num_buckets), True)
    if stack == "encoder":
      # (our attention name, our norm name, HF layer index, HF module name)
      attentions = [("attention", "pre_attention_layer_norm", 0,
                     "SelfAttention")]
    else:
      attentions = [("self_attention", "pre_self_attention_layer_norm", 0,
                     "SelfAttention"),
                    ("encoder_decoder_attention",
                     "pre_cross_attention_layer_norm", 1, "EncDecAttention")]
    for i in range(num_layers):
      ours, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      for attention, norm, k, module in attentions:
        add(f"{ours}/{norm}/scale", f"{hf}.{k}.layer_norm.weight", (d,), False)
        for our_proj, hf_proj in (("query", "q"), ("key", "k"),
                                  ("value", "v")):
          add(f"{ours}/{attention}/{our_proj}/kernel",
              f"{hf}.{k}.{module}.{hf_proj}.weight", (d, qkv), True)
        add(f"{ours}/{attention}/out/kernel", f"{hf}.{k}.{module}.o.weight",
            (qkv, d), True)
      k = len(attentions)  # the MLP follows the attention sub-layers
      add(f"{ours}/pre_mlp_layer_norm/scale", f"{hf}.{k}.layer_norm.weight",
          (d,), False)
      for name in wi:
        add(f"{ours}/mlp/{name}/kernel",
            f"{hf}.{k}.DenseReluDense.{name}.weight", (d, f), True)
      add(f"{ours}/mlp/wo/kernel", f"{hf}.{k}.DenseReluDense.wo.weight",
          (f, d), True)
    add(f"{stack}/{stack}_norm/scale", f"{stack}.final_layer_norm.weight",
        (d,), False)
  if not config.logits_via_embedding:
    add("decoder/logits_dense/kernel", "lm_head.weight", (d, v), True)
  return params


def load_param(tensor: TensorEntry, transpose: bool,
                index: Optional[Index] = None) -> np.ndarray:
  """Our layout's array, or its block `index` (in our layout: a transposed
  tensor is sliced by the reversed index, then transposed)."""
  if index is not None and transpose:
    index = tuple(index[::-1])
  array = load_tensor(tensor, index)
  # Contiguous so that the caller's device_put / cast sees a plain array.
  return np.ascontiguousarray(array.T) if transpose else array


def open_directory(path: str) -> Tuple[str, Dict, str]:
  """A Hugging Face model directory's local path, its config.json (parsed)
  and that file's path, after checking the weights are there.

  A gs:// directory is first copied (its .json and .safetensors files) to a
  local temporary directory that lives as long as the process: safetensors
  maps files.

  Raises:
    ValueError: one line, for a missing or invalid config.json, missing
      weights, or only a pickle (never opened).
  """
  if storage.is_remote(path) and storage.isdir(path):
    path = storage.local_copy(path, [
        n for n in storage.listdir(path)
        if n.endswith((".json", ".safetensors"))])
  config_file = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_file):
    raise ValueError(
        f"No {CONFIG_FILE} in {path}: expected a Hugging Face model directory "
        "as written by save_pretrained (config.json + model.safetensors).")
  if not is_hf_checkpoint(path):
    if os.path.isfile(os.path.join(path, PICKLE_FILE)):
      raise ValueError(
          f"{path} has only {PICKLE_FILE}, a pickle this reader never loads; "
          "convert it to safetensors: <Model>.from_pretrained(path)"
          ".save_pretrained(out, safe_serialization=True).")
    raise ValueError(
        f"No {WEIGHTS_FILE} or {INDEX_FILE} in {path}; copy the weights next "
        "to config.json or re-save with save_pretrained.")
  try:
    with open(config_file) as f:
      hf_config = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_file} is not valid JSON ({e}).") from None
  return path, hf_config, config_file


def read_hf(path: str) -> Tuple[T5Config, Dict[str, Loader]]:
  """Opens a Hugging Face T5 checkpoint directory without loading weights.

  Headers are read and every parameter's presence and shape are checked now,
  so a wrong or incomplete checkpoint fails before any training starts; the
  data itself is read only when a loader is called.

  Args:
    path: a `save_pretrained` directory: config.json and model.safetensors or
      model.safetensors.index.json with its shards. A gs:// directory is
      first copied (its .json and .safetensors files) to a local temporary
      directory that lives as long as the process: safetensors maps files.

  Returns:
    (config, loaders): loaders maps each T5X parameter name ('/'-joined, e.g.
    `decoder/layers_0/mlp/wi_0/kernel` -> [H, mlp_dim]) to a zero-argument
    function returning that array in our layout and its stored dtype.
    `encoder.embed_tokens` / `decoder.embed_tokens` copies of `shared` are
    ignored.

  Raises:
    ValueError: a missing config.json or weights, a pickle-only checkpoint, a
      corrupt header, a missing or mis-shaped parameter, or a config the
      weights contradict.
  """
  path, hf_config, config_file = open_directory(path)
  tensors, listing = index_tensors(path)
  config = config_from_hf(hf_config, has_lm_head="lm_head.weight" in tensors,
                          where=config_file)
  loaders = {}
  for ours, (hf, shape, transpose) in param_map(config).items():
    tensor = tensors.get(hf)
    if tensor is None:
      raise ValueError(
          f"Parameter {ours} (Hugging Face {hf}) is missing from {listing}; "
          "the checkpoint must be a complete T5ForConditionalGeneration "
          "matching config.json.")
    hf_shape = shape[::-1] if transpose else shape
    if tensor.shape != hf_shape:
      raise ValueError(
          f"Parameter {ours} (Hugging Face {hf}) in {tensor.file} has shape "
          f"{list(tensor.shape)} but config.json implies {list(hf_shape)}; "
          "config.json does not match the weights.")
    loaders[ours] = BlockLoader(
        read=functools.partial(load_param, tensor, transpose),
        shape=functools.partial(tuple, shape))
  return config, loaders
