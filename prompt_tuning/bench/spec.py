"""One benchmark configuration, as both frameworks' workers read it.

A `RunSpec` crosses process boundaries as JSON (the harness runs every
configuration in a fresh process so that peak-memory figures do not leak
between runs, and the PyTorch peer may live in another virtual environment),
so it holds only plain values and imports neither JAX nor torch.

Shapes: B = `batch`, T = `inputs`, P = `prompt`, L = `targets`. A method
with an input prompt (prompt, deep_prompt, p_tuning) is fed T tokens and the
model prepends P prompt vectors; the others (prefix, ia3, lora, model) have
no input prompt, so they are fed T + P real tokens instead. Either way the
encoder runs over P + T positions, which makes every method (and ours and
the peer) compute over the same shapes; prefix tuning's attentions also see
`prefix_length` learned key/value positions on top.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping

# Marks a worker's result line in its stdout (libraries may print too).
RESULT_MARKER = "BENCH_RESULT "

IMPLS = ("ours", "peft", "hf_full")
PEERS = ("peft", "hf_full")
# The `prompt_tuning.methods.METHODS` the benchmark runs, spelled out: this
# module imports no JAX (tests/bench_test.py checks them against the
# package; a method added there, e.g. one needing per-example task ids,
# joins here once the synthetic batch can feed it).
METHODS = ("prompt", "deep_prompt", "prefix", "p_tuning", "ia3", "lora",
           "model")
# The methods that prepend an input prompt (`methods.PROMPT_METHODS`).
PROMPT_METHODS = ("prompt", "deep_prompt", "p_tuning")
# The methods each peer performs, its default first (deep prompts have no
# PEFT counterpart: ours only).
PEER_METHODS = {"peft": ("prompt", "p_tuning", "prefix", "ia3", "lora"),
                "hf_full": ("model",)}
# The tuning mode each peer performs by default (the benchmark's first form).
PEER_MODES = {peer: methods[0] for peer, methods in PEER_METHODS.items()}
PREFIX_LAYOUTS = ("li_liang", "peft")
# Fields that only matter to one method: describe() drops the others.
METHOD_FIELDS = {"lora": ("lora_rank", "lora_alpha"),
                 "prefix": ("prefix_length", "prefix_layout"),
                 "p_tuning": ("p_tuning_hidden",)}
PEER_PRECISIONS = ("auto", "autocast", "bf16", "fp32")
PEER_OPTIMIZERS = ("adafactor", "adamw")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything one timed run depends on."""

  # 'ours' (this project's jitted step), 'peft' (HF PEFT prompt tuning) or
  # 'hf_full' (HF full fine-tuning).
  impl: str
  # A `prompt_tuning.models.PRESETS` name, e.g. 't5_1_1_base'.
  preset: str
  # The method (`METHODS`; the field keeps the benchmark's first name, as
  # gin's METHOD is `train.mode`): 'prompt' or 'model' tuning, or a
  # parameter-efficient method. A peer performs one of its `PEER_METHODS`.
  mode: str
  # B, examples per step.
  batch: int
  # T, input tokens per example.
  inputs: int
  # P, prompt vectors (prompt mode) or extra input tokens (model mode).
  prompt: int
  # L, target tokens per example.
  targets: int
  # Timed steps; the reported step time is their median.
  steps: int
  # Untimed steps after compilation (allocator and autotuner settle).
  warmup: int
  # Our remat policy: none, dots_saveable, dots_with_no_batch_dims_saveable,
  # full.
  remat: str = "none"
  # Our layers under nn.scan (one compiled layer body) or unrolled.
  scan: bool = False
  # Our attention: 'xla' (reference einsums) or 'fused'.
  attention: str = "xla"
  # Storage dtype of our frozen weights (prompt mode only).
  frozen_dtype: str = "bfloat16"
  # Our activation / matmul dtype.
  dtype: str = "bfloat16"
  # Dropout rate for both frameworks (0 by default: the fused attention
  # kernels have no attention-weight dropout, and timing should not hinge on
  # a random-number generator).
  dropout: float = 0.0
  # Seeds weights and data.
  seed: int = 0
  # Ours only: compile from shapes and report XLA's buffer sizes and FLOPs
  # without allocating or running (sizes a model too big for the machine).
  compile_only: bool = False
  # Peer numerics: 'auto' is bf16 autocast on CUDA and float32 on CPU.
  peer_precision: str = "auto"
  # Peer optimizer: HF's Adafactor with the paper's settings, or AdamW.
  peer_optimizer: str = "adafactor"
  # LoRA's rank r and alpha (PEFT's and our defaults: 8, 8; targets q, v).
  lora_rank: int = 8
  lora_alpha: float = 8.0
  # Prefix tuning: key/value positions per prefixed attention, and our
  # layout: 'li_liang' (encoder self, decoder self and cross attention, our
  # default) or 'peft' (decoder self-attention only, as PEFT does on T5: the
  # like-for-like comparison). A PEFT run is always 'peft'.
  prefix_length: int = 10
  prefix_layout: str = "li_liang"
  # P-tuning's MLP width; 0 means the model width H (PEFT's default).
  p_tuning_hidden: int = 0
  # Model dimensions (`flops.Shapes` fields), filled in by the harness so
  # that the peer needs no JAX to read the preset table.
  shapes: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.impl not in IMPLS:
      raise ValueError(f"impl={self.impl!r} is not one of {IMPLS}.")
    if self.mode not in METHODS:
      raise ValueError(f"method {self.mode!r} is not one of {METHODS}.")
    if self.impl in PEERS and self.mode not in PEER_METHODS[self.impl]:
      raise ValueError(f"{self.impl} performs {PEER_METHODS[self.impl]}; got "
                       f"method {self.mode!r}.")
    if self.prefix_layout not in PREFIX_LAYOUTS:
      raise ValueError(f"prefix_layout={self.prefix_layout!r} is not one of "
                       f"{PREFIX_LAYOUTS}.")
    if self.impl == "peft" and self.prefix_layout != "peft":
      raise ValueError("PEFT's prefix tuning has the 'peft' layout; set "
                       "prefix_layout='peft' for a peft run.")
    if min(self.lora_rank, self.prefix_length) < 1 or self.p_tuning_hidden < 0:
      raise ValueError("lora_rank and prefix_length must be >= 1, "
                       "p_tuning_hidden >= 0.")
    if self.peer_precision not in PEER_PRECISIONS:
      raise ValueError(f"peer_precision={self.peer_precision!r} is not one "
                       f"of {PEER_PRECISIONS}.")
    if self.peer_optimizer not in PEER_OPTIMIZERS:
      raise ValueError(f"peer_optimizer={self.peer_optimizer!r} is not one "
                       f"of {PEER_OPTIMIZERS}.")
    if min(self.batch, self.inputs, self.targets, self.steps) < 1:
      raise ValueError("batch, inputs, targets and steps must be >= 1.")
    if self.mode in PROMPT_METHODS and self.prompt < 1:
      raise ValueError(f"{self.mode} needs --prompt >= 1.")

  @property
  def encoder_length(self) -> int:
    """P + T, the encoder positions in both modes."""
    return self.inputs + self.prompt

  @property
  def input_tokens(self) -> int:
    """Tokens fed per example: T (input-prompt methods) or T + P."""
    if self.mode in PROMPT_METHODS:
      return self.inputs
    return self.inputs + self.prompt

  @property
  def backward(self) -> str:
    """How far the step's gradients reach (`flops.BACKWARDS`): 'model'
    (every weight), 'decoder' (PEFT-layout prefixes: nothing trainable in
    the encoder, so no gradient enters it) or 'prompt' (activation
    gradients back to the encoder's first layer)."""
    if self.mode == "model":
      return "model"
    if self.mode == "prefix" and self.prefix_layout == "peft":
      return "decoder"
    return "prompt"

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "RunSpec":
    return cls(**dict(values))

  def describe(self) -> Dict[str, Any]:
    """The fields a result line repeats (what was run)."""
    out = dataclasses.asdict(self)
    out.pop("shapes")
    if self.impl != "ours":
      for field in ("remat", "scan", "attention", "frozen_dtype", "dtype",
                    "compile_only"):
        out.pop(field)
    else:
      out.pop("peer_precision")
      out.pop("peer_optimizer")
    if self.mode == "model":
      out.pop("frozen_dtype", None)
    for method, fields in METHOD_FIELDS.items():
      if self.mode != method:
        for field in fields:
          out.pop(field)
    return out
