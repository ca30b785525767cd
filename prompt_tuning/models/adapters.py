"""Hooks in the frozen T5 for the parameter-efficient methods.

A method (see `prompt_tuning.methods`) decides *which* new parameters train;
this module says *where* they enter the frozen forward pass, as a frozen
dataclass the model layers read (`T5Config.adapters`). With the default (all
off) the model is exactly T5 and its parameter tree exactly T5X's. Each hook
creates its parameters next to the frozen weight it modifies, so a parameter's
path says what it does:

- LoRA (Hu et al. 2021): `<kernel path>/lora_a` [in, r] and `lora_b` [r, out];
  the projection becomes `x @ (W + alpha/r * lora_a @ lora_b)` (computed
  unmerged, `x @ W + (x @ lora_a) @ lora_b * alpha/r`). `lora_a @ lora_b` is
  PEFT's `(B A)^T`.
- IA3 (Liu et al. 2022): `<kernel path>/ia3_scaling`, a vector that scales the
  projection's output (keys, values: [heads * kv]) or, for an MLP's `wo`, its
  input (the [mlp] hidden units), as PEFT does for T5.
- Prefixes (Li & Liang 2021): `<attention path>/prefix_key`, `prefix_value`
  [P, heads, kv], keys and values every query of that attention also sees.
- Per-layer prompts (the official code's `per_layer` prompts, deep prompt
  tuning): `<encoder layer>/layer_prompt` [P, H] that replaces, or is added
  to, the first P positions of the stream before the layer. A decoder layer's
  `layer_prompt` [P, H] replaces P positions placed before the decoder's
  first token: those positions' keys and values are then the layer's own
  norm and key/value projections of the prompt, so they enter the decoder
  self-attention as a computed prefix (the same relative positions, the same
  KV-cache path), and no prompt position is run or decoded.

With `per_example`, every hook's parameters get a leading batch axis [B, ...]
(the batch of the activations they act on), so each example of a batch can
carry its own adapters (mixed serving: `prompts.adapter_bank` gathers them
from a bank by each example's id). Prefixes and per-layer prompts then also
read a `prefix_mask` / `layer_prompt_mask` [B, P] (1 for an example's real
rows), so examples may differ in length.

Targets are matched against the '/'-joined module path of each projection
(`encoder/layers_3/attention/query`; `encoder/layers/attention/query` under
`scan_layers`): a target without '/' names the projection itself (`query`,
`key`, `value`, `out`, `wi`, `wi_0`, `wi_1`, `wo`), anything else is a regular
expression that must match the whole path.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence, Tuple

# Projections of the T5 tree a target may name.
PROJECTIONS = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo")
# The three kinds of attention a prefix may be given to.
PREFIX_ATTENTIONS = ("encoder_self", "decoder_self", "cross")
LAYER_PROMPT_MODES = ("replace", "add")


def _check_targets(field: str, targets: Sequence[str]) -> None:
  for target in targets:
    if "/" not in target and target not in PROJECTIONS:
      raise ValueError(
          f"{field}: {target!r} is not a projection of T5 ({', '.join(PROJECTIONS)})"
          f"; give one of those, or a regular expression over the whole path "
          f"such as 'decoder/layers_\\d+/self_attention/query'.")
    if "/" in target:
      try:
        re.compile(target)
      except re.error as e:
        raise ValueError(f"{field}: {target!r} is not a regular expression "
                         f"({e}).") from None


def matches(targets: Sequence[str], path: Sequence[str]) -> bool:
  """Whether a projection at module `path` is one of `targets`."""
  joined = "/".join(path)
  for target in targets:
    if "/" not in target:
      if path and path[-1] == target:
        return True
    elif re.fullmatch(target, joined):
      return True
  return False


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Which hooks are on in the frozen model; all off by default."""

  # LoRA rank r; 0 turns LoRA off.
  lora_rank: int = 0
  # LoRA alpha: the update is scaled by alpha / r (alpha / sqrt(r) with rslora).
  lora_alpha: float = 8.0
  # Dropout on the LoRA branch's input only (PEFT's lora_dropout).
  lora_dropout: float = 0.0
  # Rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023; PEFT use_rslora).
  lora_rslora: bool = False
  # Projections that get LoRA (PEFT's T5 default: q and v, in every attention).
  lora_targets: Tuple[str, ...] = ()
  # Projections whose output (or, for `wo`, input) IA3 scales; empty = off.
  ia3_targets: Tuple[str, ...] = ()
  # Prefix length P per attention; 0 turns prefixes off.
  prefix_length: int = 0
  # Which attentions get a prefix: encoder_self, decoder_self, cross.
  prefix_attentions: Tuple[str, ...] = ()
  # Per-layer encoder prompt length (must equal the input prompt's); 0 = off.
  layer_prompt_length: int = 0
  # 'replace' the first P positions before every layer, or 'add' to them.
  layer_prompt_mode: str = "replace"
  # Per-layer decoder prompt length (replace only; see the module docstring);
  # 0 = off.
  decoder_layer_prompt_length: int = 0
  # Parameters per example ([B, ...]) plus length masks; see the docstring.
  per_example: bool = False

  def __post_init__(self):
    for name in ("lora_targets", "ia3_targets", "prefix_attentions"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.lora_rank < 0:
      raise ValueError(f"LoRA rank must be >= 0; got {self.lora_rank}.")
    if self.lora_rank and not self.lora_targets:
      raise ValueError("LoRA needs at least one target projection, e.g. "
                       "('query', 'value').")
    if not 0.0 <= self.lora_dropout < 1.0:
      raise ValueError(f"lora_dropout must be in [0, 1); got "
                       f"{self.lora_dropout}.")
    _check_targets("LoRA targets", self.lora_targets)
    _check_targets("IA3 targets", self.ia3_targets)
    unknown = set(self.prefix_attentions) - set(PREFIX_ATTENTIONS)
    if unknown:
      raise ValueError(f"Prefix attentions {sorted(unknown)} unknown; use "
                       f"some of {PREFIX_ATTENTIONS}.")
    if self.prefix_length < 0 or (self.prefix_length and
                                  not self.prefix_attentions):
      raise ValueError("A prefix needs a length >= 1 and at least one of "
                       f"{PREFIX_ATTENTIONS}.")
    if self.decoder_layer_prompt_length < 0 or (
        self.decoder_layer_prompt_length and
        "decoder_self" in self.prefix_attentions):
      raise ValueError("Decoder per-layer prompts are a decoder self-attention "
                       "prefix of their own: do not combine them with a "
                       "'decoder_self' prefix.")
    if self.layer_prompt_mode not in LAYER_PROMPT_MODES:
      raise ValueError(f"Per-layer prompt mode {self.layer_prompt_mode!r} is "
                       f"not one of {LAYER_PROMPT_MODES}.")

  @property
  def lora_scaling(self) -> float:
    """The factor of the LoRA update: alpha / r, or alpha / sqrt(r)."""
    if not self.lora_rank:
      return 0.0
    denominator = self.lora_rank ** 0.5 if self.lora_rslora else self.lora_rank
    return self.lora_alpha / denominator

  def lead(self, batch: int) -> Tuple[Tuple[int, ...], Tuple[str, ...]]:
    """The leading (shape, logical axes) of a hook's parameters: the batch
    with `per_example`, nothing otherwise."""
    return ((batch,), ("batch",)) if self.per_example else ((), ())

  def prefix_for(self, attention: str) -> int:
    """P for one kind of attention (0 when it has no prefix); the decoder's
    per-layer prompts count as its self-attention's prefix."""
    if attention == "decoder_self" and self.decoder_layer_prompt_length:
      return self.decoder_layer_prompt_length
    return self.prefix_length if attention in self.prefix_attentions else 0
