"""Prefix tuning adapters as Hugging Face PEFT PREFIX_TUNING directories.

PEFT stores one merged table `prompt_embeddings` [P, 2L * token_dim] with
token_dim = heads * head_dim:

- T5 (SEQ_2_SEQ_LM): L is the encoder's layer count and the table feeds
  only the decoder's self-attention, decoder layer i reading blocks
  (4i, 4i + 1) mod 2L (`prefix.peft_prefix_blocks`).
- A decoder-only LM (CAUSAL_LM): L is its layer count, heads its key/value
  heads (PEFT's prefix for grouped-query attention), and layer i reads
  blocks (2i, 2i + 1).

Our `PrefixConfig(layout='peft')` (any layout on a decoder-only LM) trains
exactly that table reshaped to [P, 2L, heads, kv], so a run's table goes to
`export_prefix` and `import_prefix`'s back into a run unchanged;
`prefix_layer_params` / `prefix_table` convert to and from per-layer
prefixes. Files and the common checks are `peft_io`'s.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from prompt_tuning.methods import peft_io
from prompt_tuning.methods.peft_names import CAUSAL_LM
from prompt_tuning.methods.peft_names import SEQ_2_SEQ_LM
from prompt_tuning.methods.prefix import PrefixConfig
from prompt_tuning.methods.prefix import prefix_heads
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.prompts import peft

PREFIX_TUNING = "PREFIX_TUNING"
PREFIX_TENSOR = "prompt_embeddings"


def _layout(where: str, config: Any) -> Tuple[int, int, int, str]:
  """(L of PEFT's table, heads, num_transformer_submodules, task_type)."""
  if isinstance(config, DecoderConfig):
    return config.num_layers, prefix_heads(config), 1, CAUSAL_LM
  if config.num_decoder_layers != config.num_encoder_layers:
    raise ValueError(
        f"{where}: PEFT's prefix table has one block pair per encoder layer "
        f"({config.num_encoder_layers}) but feeds decoder layers "
        f"({config.num_decoder_layers}); only models with as many decoder "
        "as encoder layers are supported.")
  return config.num_encoder_layers, config.num_heads, 2, SEQ_2_SEQ_LM


def _blocks(config: Any):
  """(layer, key block, value block) of PEFT's table for every layer."""
  method = PrefixConfig(layout="peft").bind(config)
  return [(i, k, v) for _, i, k, v in method.blocks(config)]


def _check_table(table: np.ndarray, config: Any, where: str) -> np.ndarray:
  num_layers, heads, _, _ = _layout(where, config)
  table = np.asarray(table, np.float32)
  want = (2 * num_layers, heads, config.head_dim)
  if table.ndim != 4 or table.shape[1:] != want:
    raise ValueError(f"{where}: a prefix table for this model is [P, "
                     f"{want[0]}, {want[1]}, {want[2]}]; got "
                     f"{tuple(table.shape)}.")
  return table


def prefix_layer_params(table: np.ndarray,
                        config: T5Config) -> Dict[str, np.ndarray]:
  """Our per-layer prefix params from PEFT's table.

  Args:
    table: [P, 2L, heads, kv], the reshaped `prompt_embeddings`.
    config: the frozen model's config (T5 or decoder-only).

  Returns:
    'decoder/layers_{i}/self_attention/prefix_key' and 'prefix_value' ->
    [P, heads, kv] for every decoder layer i (PEFT puts prefixes in the
    decoder's self-attention only).
  """
  table = _check_table(table, config, "prefix_layer_params")
  params = {}
  for i, k, v in _blocks(config):
    attention = f"decoder/layers_{i}/self_attention"
    params[f"{attention}/prefix_key"] = table[:, k]
    params[f"{attention}/prefix_value"] = table[:, v]
  return params


def prefix_table(params: Mapping[str, np.ndarray],
                 config: T5Config) -> np.ndarray:
  """The inverse of `prefix_layer_params`: PEFT's table from our prefixes.

  On T5, blocks PEFT never reads (even L) are zeros, and for even L layers
  i and i + L/2 must hold equal prefixes: PEFT cannot give them different
  ones.

  Args:
    params: 'decoder/layers_{i}/self_attention/prefix_key|prefix_value' ->
      [P, heads, kv] for every decoder layer (and nothing else).
    config: the frozen model's config.

  Returns:
    [P, 2L, heads, kv] float32.
  """
  num_layers, heads, _, _ = _layout("prefix_table", config)
  blocks = _blocks(config)
  names = {f"decoder/layers_{i}/self_attention/prefix_{kv}"
           for i, _, _ in blocks for kv in ("key", "value")}
  peft_io.check_param_names(params, names)
  first = np.asarray(params["decoder/layers_0/self_attention/prefix_key"])
  length = first.shape[0]
  table = np.zeros((length, 2 * num_layers, heads, config.head_dim),
                   np.float32)
  owner = {}
  for i, key_block, value_block in blocks:
    for block, kv in ((key_block, "key"), (value_block, "value")):
      name = f"decoder/layers_{i}/self_attention/prefix_{kv}"
      value = peft_io.check_shape(name, params[name],
                                  (length, heads, config.head_dim),
                                  "prefix_table")
      if block in owner and not np.array_equal(table[:, block], value):
        raise ValueError(
            f"prefix_table: {name} differs from {owner[block]}, but PEFT "
            f"feeds both from block {block} of its table (an even number of "
            "layers shares prefixes); tie them before exporting.")
      owner[block] = name
      table[:, block] = value
  return table


def export_prefix(table: np.ndarray, config: T5Config, directory: str, *,
                  base_model_name_or_path: Optional[str] = None) -> str:
  """Writes a prefix table as a PEFT PREFIX_TUNING adapter directory.

  Args:
    table: [P, 2L, heads, kv] (see `prefix_table`); stored as PEFT's
      `prompt_embeddings` [P, 2L * heads * kv], always merged (no
      prefix_projection MLP).
    config: the frozen model's config: a T5 (L = its encoder layers, which
      must equal its decoder layers; SEQ_2_SEQ_LM) or a decoder-only LM
      (L = its layers, heads its key/value heads; CAUSAL_LM).
    directory: created if needed; adapter files there are replaced.
    base_model_name_or_path: recorded for PEFT.

  Returns:
    The directory.
  """
  table = _check_table(table, config, "export_prefix")
  num_layers, heads, submodules, task_type = _layout("export_prefix", config)
  token_dim = heads * config.head_dim  # PEFT's per-head split: head_dim
  adapter = peft_io.base_config(PREFIX_TUNING, base_model_name_or_path,
                                task_type)
  adapter.update({
      "num_virtual_tokens": int(table.shape[0]), "token_dim": token_dim,
      "num_transformer_submodules": submodules, "num_attention_heads": heads,
      "num_layers": num_layers, "encoder_hidden_size": token_dim,
      "prefix_projection": False, "init_weights": None})
  flat = table.reshape(table.shape[0], -1)  # [P, 2L, heads, kv] -> [P, 2L*H']
  return peft.write_adapter(directory, {PREFIX_TENSOR: flat}, adapter)


def import_prefix(directory: str, config: T5Config
                  ) -> Tuple[Dict[str, Any], np.ndarray]:
  """Reads a PEFT PREFIX_TUNING adapter for the frozen model `config`.

  Returns:
    (options, table): options {'peft_type': 'PREFIX_TUNING', 'length': P,
    'attentions': ('decoder_self',)}; table [P, 2L, heads, kv] float32
    (`prefix_layer_params` gives our per-layer params).

  Raises:
    ValueError / FileNotFoundError: one line naming the adapter file and the
      fix, for anything this model cannot reproduce.
  """
  config_file, adapter, weights, tensors = peft_io.read(directory)
  num_layers, heads, submodules, task_type = _layout(directory, config)
  peft_io.check_common(config_file, adapter, PREFIX_TUNING, task_type)
  layers = "layers" if task_type == CAUSAL_LM else "encoder layers"
  token_dim = heads * config.head_dim  # PEFT splits token_dim into heads
  for key, want, fix in (
      ("num_transformer_submodules", submodules, f"PEFT's {task_type} "
       f"default, which this reader needs: re-save with {submodules}"),
      ("num_layers", num_layers, f"the frozen model's {layers}: the "
       "adapter was trained for another model"),
      ("num_attention_heads", heads, "the frozen model's key/value heads: "
       "the adapter was trained for another model"),
      ("token_dim", token_dim, "heads * head_dim, so that PEFT's per-head "
       "split gives this model's head_dim")):
    found = adapter.get(key)
    if found is None and key == "num_transformer_submodules":
      found = want  # PEFT fills it in from the task type
    if found != want:
      raise ValueError(f"{config_file}: {key}={found!r} but it must be "
                       f"{want}, {fix}.")
  length = adapter.get("num_virtual_tokens")
  if not isinstance(length, int) or length < 1:
    raise ValueError(f"{config_file}: num_virtual_tokens={length!r} is not a "
                     "prefix length >= 1.")
  if set(tensors) != {PREFIX_TENSOR}:
    raise ValueError(
        f"{weights} holds {sorted(tensors)[:3]}, not just {PREFIX_TENSOR!r}: "
        "an unmerged prefix_projection encoder; load it in PEFT and "
        "save_pretrained it, which stores the merged table.")
  want = (length, 2 * num_layers * token_dim)
  table = tensors[PREFIX_TENSOR]
  if tuple(table.shape) != want:
    raise ValueError(
        f"{weights}: {PREFIX_TENSOR} has shape {tuple(table.shape)} but "
        f"{peft.CONFIG_FILE} says [num_virtual_tokens, 2 * num_layers * "
        f"token_dim] = {list(want)}.")
  table = np.asarray(table, np.float32).reshape(
      length, 2 * num_layers, heads, config.head_dim)
  return ({"peft_type": PREFIX_TUNING, "length": int(length),
           "attentions": ("decoder_self",)}, table)
