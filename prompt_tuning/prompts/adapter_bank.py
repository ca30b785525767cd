"""Per-example adapters for mixed serving: one bank, one compiled model.

A prompt library may hold entries that add more than an input prompt: IA3
vectors, LoRA matrices, prefixes, per-layer prompts (deep prompts), each with
its own `AdapterConfig`. `AdapterBank.build` turns them into one model
config that covers them all (`per_example` on; the union of targets and
attentions, the largest rank and lengths) and one array per parameter with
a leading bank axis [K, ...] (entry k's values, padded), so a batch whose
rows name different entries runs in one pass: `example_params` gathers each
row's adapters and the model applies them per example.

Padding never changes an entry's outputs:
- an entry's missing LoRA target gets zero matrices, its smaller rank zero
  rows/columns (exact), and its own scale alpha / r is folded into `lora_b`
  (the bank's model uses scale 1), so rounding may differ by an ulp;
- a missing IA3 target gets ones;
- prefixes and decoder per-layer prompts are padded at the front and masked
  (`prefix_mask`, `layer_prompt_mask`), which keeps T5's relative position
  between every query and an entry's real prefix rows; encoder per-layer
  prompts sit on the input prompt's rows, so they are padded at the back;
- an entry without prefixes or layer prompts has all their rows masked.

Entries' parameters are the model's own names, '/'-joined and unscanned
(`encoder/layers_0/attention/key/ia3_scaling`); `model_shapes` (for a
scanned model too) says what the bank's model expects.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning.models.adapters import AdapterConfig

PyTree = Any
# '/'-joined parameter name -> shape.
Shapes = Mapping[str, Tuple[int, ...]]
# Under scan_layers a stack's parameters have a leading [layers] axis.
_SCANNED = ("encoder/layers/", "decoder/layers/")
# Parameters a per-example model adds to the frozen tree (by leaf name).
HOOK_LEAVES = ("lora_a", "lora_b", "ia3_scaling", "prefix_key",
               "prefix_value", "prefix_mask", "layer_prompt",
               "layer_prompt_mask")


def _unique(items) -> Tuple[str, ...]:
  return tuple(dict.fromkeys(items))


def _hooked(entries: Sequence[Tuple[AdapterConfig, Mapping[str, Any]]],
            leaf: str) -> Tuple[str, ...]:
  """Targets for exactly the projections entries hold `leaf` for: their
  paths as regular expressions that also match the scanned model's path
  (`layers` for `layers_<i>`), since targets naming layers cannot."""
  paths = _unique(re.sub(r"/layers_\d+/", "/layers_N/",
                         name[:-len(leaf) - 1])
                  for _, params in entries for name in params
                  if name.endswith("/" + leaf))
  return tuple(re.escape(p).replace("layers_N", r"layers(_\d+)?")
               for p in paths)


def union_config(entries: Sequence[Tuple[AdapterConfig, Mapping[str, Any]]]
                 ) -> AdapterConfig:
  """One per-example config whose model can run every entry's adapters
  (each entry: its config and its parameters).

  Raises:
    ValueError: one line, for entries no single model can serve together
      (per-layer prompts that 'add' beside ones that 'replace'; decoder
      per-layer prompts beside decoder self-attention prefixes).
  """
  configs = [c for c, _ in entries]
  modes = {c.layer_prompt_mode for c in configs if c.layer_prompt_length}
  if len(modes) > 1:
    raise ValueError("The library mixes deep prompts that 'add' with ones "
                     "that 'replace': serve them from two libraries.")
  rank = max((c.lora_rank for c in configs), default=0)
  decoder_prompts = max((c.decoder_layer_prompt_length for c in configs),
                        default=0)
  attentions = _unique(a for c in configs for a in c.prefix_attentions
                       if c.prefix_length)
  if decoder_prompts and "decoder_self" in attentions:
    raise ValueError("The library mixes decoder per-layer prompts with "
                     "decoder self-attention prefixes: serve them from two "
                     "libraries.")
  return AdapterConfig(
      lora_rank=rank, lora_alpha=float(rank),  # scale 1: folded per entry
      lora_targets=_hooked(entries, "lora_a"),
      ia3_targets=_hooked(entries, "ia3_scaling"),
      prefix_length=max((c.prefix_length for c in configs), default=0)
      if attentions else 0,
      prefix_attentions=attentions,
      layer_prompt_length=max((c.layer_prompt_length for c in configs),
                              default=0),
      layer_prompt_mode=modes.pop() if modes else "replace",
      decoder_layer_prompt_length=decoder_prompts,
      per_example=True)


def _unscanned(name: str) -> Tuple[str, bool]:
  """A scanned model's name -> its layers_0 form (for shapes), scanned?"""
  for prefix in _SCANNED:
    if name.startswith(prefix):
      return prefix[:-1] + "_0/" + name[len(prefix):], True
  return name, False


def _padded(name: str, value: Optional[np.ndarray], shape: Tuple[int, ...],
            config: AdapterConfig) -> np.ndarray:
  """Entry values for one parameter of the bank's model (per-example shape
  without the batch axis), padded as the module docstring says."""
  leaf = name.rsplit("/", 1)[-1]
  if leaf == "ia3_scaling":
    return np.ones(shape, np.float32) if value is None else value
  out = np.zeros(shape, np.float32)
  if value is None:
    return out
  if leaf == "lora_a":
    out[:, :value.shape[1]] = value
  elif leaf == "lora_b":
    out[:value.shape[0]] = value * config.lora_scaling
  elif leaf in ("prefix_key", "prefix_value") or (
      leaf == "layer_prompt" and name.startswith("decoder/")):
    out[shape[0] - value.shape[0]:] = value  # front: keeps relative positions
  elif leaf == "layer_prompt":
    out[:value.shape[0]] = value  # the input prompt's first rows
  else:
    raise ValueError(f"{name}: not a parameter of a per-example adapter.")
  return out


def _rows(name: str, length: int, shape: Tuple[int, ...]) -> np.ndarray:
  """The mask [P] of an entry's `length` real rows (see `_padded`)."""
  out = np.zeros(shape, np.float32)
  if name.startswith("encoder/") and name.endswith("layer_prompt_mask"):
    out[:length] = 1
  elif length:
    out[shape[0] - length:] = 1
  return out


@dataclasses.dataclass(frozen=True)
class AdapterBank:
  """The union config and a [K, ...] array per per-example parameter."""

  config: AdapterConfig
  # '/'-joined model name -> [K, ...] float32 (a scanned name: [K, layers,
  # ...]).
  arrays: Dict[str, np.ndarray]

  @classmethod
  def build(cls, entries: Sequence[Tuple[AdapterConfig,
                                         Mapping[str, np.ndarray]]],
            model_shapes: Shapes,
            entry_shapes: Sequence[Shapes]) -> "AdapterBank":
    """Pads and stacks the entries.

    Args:
      entries: per entry, its own config and its parameters (unscanned
        names, float32).
      model_shapes: the per-example parameters of the bank's model
        (`union_config` on), without their batch axis: '/'-joined name ->
        shape (scanned names have [layers, ...]).
      entry_shapes: per entry, the parameters its own config gives the
        frozen model (unscanned): the entry must fit them exactly.

    Raises:
      ValueError: one line, for an entry whose parameters do not fit the
        frozen model (another model, or a damaged file).
    """
    config = union_config(entries)
    for k, ((_, params), want) in enumerate(zip(entries, entry_shapes)):
      got = {n: tuple(np.shape(v)) for n, v in params.items()}
      if got != dict(want):
        wrong = sorted(set(got) ^ set(want)) or sorted(
            n for n in got if got[n] != want[n])
        raise ValueError(f"Library entry {k}: its adapters do not fit the "
                         f"frozen model (first difference: {wrong[0]!r}); "
                         "was it trained for another model?")
    arrays = {}
    for name, shape in sorted(model_shapes.items()):
      single, scanned = _unscanned(name)
      layers = shape[0] if scanned else None
      per_layer = shape[1:] if scanned else shape
      stacked = []
      for own, params in entries:
        names = ([single.replace("layers_0/", f"layers_{i}/", 1)
                  for i in range(layers)] if scanned else [single])
        values = []
        for n in names:
          if n.endswith("_mask"):
            values.append(_rows(n, _entry_length(n, own), per_layer))
          else:
            values.append(_padded(n, _entry_value(params, n), per_layer,
                                  own))
        stacked.append(np.stack(values) if scanned else values[0])
      arrays[name] = np.stack(stacked).astype(np.float32)
    return cls(config, arrays)


def _entry_value(params: Mapping[str, np.ndarray], name: str
                 ) -> Optional[np.ndarray]:
  value = params.get(name)
  return None if value is None else np.asarray(value, np.float32)


def _entry_length(name: str, config: AdapterConfig) -> int:
  """Real rows of an entry's prefix / layer prompt at parameter `name`."""
  if name.endswith("layer_prompt_mask"):
    return (config.layer_prompt_length if name.startswith("encoder/") else
            config.decoder_layer_prompt_length)
  kind = ("encoder_self" if name.startswith("encoder/") else
          "cross" if "/encoder_decoder_attention/" in name else
          "decoder_self")
  return config.prefix_length if kind in config.prefix_attentions else 0


def hook_shapes(flat_shapes: Shapes, per_example: bool = False
                ) -> Dict[str, Tuple[int, ...]]:
  """The adapter parameters among a model's '/'-joined parameter shapes;
  `per_example`: a per-example model's, less their batch axis (axis 0, or 1
  under scan)."""
  out = {}
  for name, shape in flat_shapes.items():
    if name.rsplit("/", 1)[-1] not in HOOK_LEAVES:
      continue
    shape = tuple(shape)
    if per_example:
      axis = 1 if _unscanned(name)[1] else 0
      shape = shape[:axis] + shape[axis + 1:]
    out[name] = shape
  return out


def example_params(frozen: PyTree, bank: Optional[Mapping[str, Any]],
                   example_ids: jax.Array) -> PyTree:
  """The frozen tree plus each example's adapters (traceable).

  Args:
    frozen: the frozen model's params (nested).
    bank: `AdapterBank.arrays` (as device arrays), or None: `frozen` as is.
    example_ids: [B] int, each example's entry (repeat it per beam).

  Returns:
    The params of the bank's model for this batch: per-example leaves
    [B, ...] (scanned ones [layers, B, ...]).
  """
  if not bank:
    return frozen
  names = traverse_util.flatten_dict(frozen, sep="/")
  for name, array in bank.items():
    gathered = jnp.take(array, example_ids, axis=0)  # [K, ...] -> [B, ...]
    if _unscanned(name)[1]:
      gathered = jnp.swapaxes(gathered, 0, 1)  # [B, L, ...] -> [L, B, ...]
    names[name] = gathered
  return traverse_util.unflatten_dict(names, sep="/")
