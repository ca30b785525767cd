"""Prefix tuning adapters as Hugging Face PEFT PREFIX_TUNING directories.

PEFT stores one merged table `prompt_embeddings` [P, 2L * token_dim]
(token_dim = heads * head_dim, L the encoder's layers); on T5 it feeds only
the decoder's self-attention, decoder layer i reading blocks (4i, 4i + 1)
mod 2L (`prefix.peft_prefix_blocks`). Our `PrefixConfig(layout='peft')`
trains exactly that table reshaped to [P, 2L, heads, kv], so a run's table
goes to `export_prefix` and `import_prefix`'s back into a run unchanged;
`prefix_layer_params` / `prefix_table` convert to and from per-layer
prefixes. Files and the common checks are `peft_io`'s.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from prompt_tuning.methods import peft_io
from prompt_tuning.methods.prefix import peft_prefix_blocks
from prompt_tuning.models.config import T5Config
from prompt_tuning.prompts import peft

PREFIX_TUNING = "PREFIX_TUNING"
PREFIX_TENSOR = "prompt_embeddings"


def _check_prefix_model(where: str, config: T5Config) -> None:
  if config.num_decoder_layers != config.num_encoder_layers:
    raise ValueError(
        f"{where}: PEFT's prefix table has one block pair per encoder layer "
        f"({config.num_encoder_layers}) but feeds decoder layers "
        f"({config.num_decoder_layers}); only models with as many decoder "
        "as encoder layers are supported.")


def prefix_layer_params(table: np.ndarray,
                        config: T5Config) -> Dict[str, np.ndarray]:
  """Our per-layer prefix params from PEFT's table.

  Args:
    table: [P, 2L, heads, kv], the reshaped `prompt_embeddings`.
    config: the frozen model's config (L decoder layers).

  Returns:
    'decoder/layers_{i}/self_attention/prefix_key' and 'prefix_value' ->
    [P, heads, kv] for every decoder layer i (PEFT puts prefixes in the
    decoder's self-attention only).
  """
  _check_prefix_model("prefix_layer_params", config)
  num_layers = config.num_decoder_layers
  table = np.asarray(table, np.float32)
  want = (2 * num_layers, config.num_heads, config.head_dim)
  if table.ndim != 4 or table.shape[1:] != want:
    raise ValueError(f"A prefix table for this model is [P, {want[0]}, "
                     f"{want[1]}, {want[2]}]; got {tuple(table.shape)}.")
  params = {}
  for i in range(num_layers):
    k, v = peft_prefix_blocks(i, num_layers)
    attention = f"decoder/layers_{i}/self_attention"
    params[f"{attention}/prefix_key"] = table[:, k]
    params[f"{attention}/prefix_value"] = table[:, v]
  return params


def prefix_table(params: Mapping[str, np.ndarray],
                 config: T5Config) -> np.ndarray:
  """The inverse of `prefix_layer_params`: PEFT's table from our prefixes.

  Blocks PEFT never reads (even L) are zeros. For even L, layers i and
  i + L/2 must hold equal prefixes: PEFT cannot give them different ones.

  Args:
    params: 'decoder/layers_{i}/self_attention/prefix_key|prefix_value' ->
      [P, heads, kv] for every decoder layer (and nothing else).
    config: the frozen model's config.

  Returns:
    [P, 2L, heads, kv] float32.
  """
  _check_prefix_model("prefix_table", config)
  num_layers = config.num_decoder_layers
  names = {f"decoder/layers_{i}/self_attention/prefix_{kv}"
           for i in range(num_layers) for kv in ("key", "value")}
  peft_io.check_param_names(params, names)
  first = np.asarray(params["decoder/layers_0/self_attention/prefix_key"])
  length = first.shape[0]
  table = np.zeros((length, 2 * num_layers, config.num_heads,
                    config.head_dim), np.float32)
  owner = {}
  for i in range(num_layers):
    for block, kv in zip(peft_prefix_blocks(i, num_layers), ("key", "value")):
      name = f"decoder/layers_{i}/self_attention/prefix_{kv}"
      value = peft_io.check_shape(name, params[name],
                           (length, config.num_heads, config.head_dim),
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
    config: the frozen model's config; L = its encoder layers, which must
      equal its decoder layers.
    directory: created if needed; adapter files there are replaced.
    base_model_name_or_path: recorded for PEFT.

  Returns:
    The directory.
  """
  _check_prefix_model("export_prefix", config)
  table = np.asarray(table, np.float32)
  num_layers, heads, head_dim = (config.num_encoder_layers, config.num_heads,
                                 config.head_dim)
  if table.ndim != 4 or table.shape[1:] != (2 * num_layers, heads, head_dim):
    raise ValueError(f"A prefix table for this model is [P, {2 * num_layers}, "
                     f"{heads}, {head_dim}]; got {tuple(table.shape)}.")
  token_dim = heads * head_dim  # PEFT's per-head split must give head_dim
  adapter = peft_io.base_config(PREFIX_TUNING, base_model_name_or_path)
  adapter.update({
      "num_virtual_tokens": int(table.shape[0]), "token_dim": token_dim,
      "num_transformer_submodules": 2, "num_attention_heads": heads,
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
  peft_io.check_common(config_file, adapter, PREFIX_TUNING)
  _check_prefix_model(config_file, config)
  num_layers, heads, head_dim = (config.num_encoder_layers, config.num_heads,
                                 config.head_dim)
  token_dim = heads * head_dim  # PEFT splits token_dim into heads
  for key, want, fix in (
      ("num_transformer_submodules", 2, "PEFT's seq2seq default, which "
       "this reader needs: re-save with 2"),
      ("num_layers", num_layers, "the frozen model's encoder layers: the "
       "adapter was trained for another model"),
      ("num_attention_heads", heads, "the frozen model's heads: the adapter "
       "was trained for another model"),
      ("token_dim", token_dim, "heads * head_dim, so that PEFT's per-head "
       "split gives this model's head_dim")):
    found = adapter.get(key, want if key == "num_transformer_submodules"
                        else None)
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
      length, 2 * num_layers, heads, head_dim)
  return ({"peft_type": PREFIX_TUNING, "length": int(length),
           "attentions": ("decoder_self",)}, table)
