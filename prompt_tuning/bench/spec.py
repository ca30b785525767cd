"""One benchmark configuration, as both frameworks' workers read it.

A `RunSpec` crosses process boundaries as JSON (the harness runs every
configuration in a fresh process so that peak-memory figures do not leak
between runs, and the PyTorch peer may live in another virtual environment),
so it holds only plain values and imports neither JAX nor torch.

Shapes: B = `batch`, T = `inputs`, P = `prompt`, L = `targets`. Prompt
tuning feeds T tokens and the model prepends P prompt vectors; model tuning
has no prompt, so it is fed T + P real tokens instead. Either way the encoder
runs over P + T positions, which makes the two modes (and ours and the peer)
compute over the same shapes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping

# Marks a worker's result line in its stdout (libraries may print too).
RESULT_MARKER = "BENCH_RESULT "

IMPLS = ("ours", "peft", "hf_full")
PEERS = ("peft", "hf_full")
# The tuning mode each peer performs.
PEER_MODES = {"peft": "prompt", "hf_full": "model"}
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
  # 'prompt' or 'model' tuning (peft implies prompt, hf_full model).
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
  # Model dimensions (`flops.Shapes` fields), filled in by the harness so
  # that the peer needs no JAX to read the preset table.
  shapes: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.impl not in IMPLS:
      raise ValueError(f"impl={self.impl!r} is not one of {IMPLS}.")
    if self.mode not in ("prompt", "model"):
      raise ValueError(f"mode={self.mode!r}: use 'prompt' or 'model'.")
    if self.impl in PEERS and self.mode != PEER_MODES[self.impl]:
      raise ValueError(f"{self.impl} is {PEER_MODES[self.impl]} tuning; got "
                       f"mode={self.mode!r}.")
    if self.peer_precision not in PEER_PRECISIONS:
      raise ValueError(f"peer_precision={self.peer_precision!r} is not one "
                       f"of {PEER_PRECISIONS}.")
    if self.peer_optimizer not in PEER_OPTIMIZERS:
      raise ValueError(f"peer_optimizer={self.peer_optimizer!r} is not one "
                       f"of {PEER_OPTIMIZERS}.")
    if min(self.batch, self.inputs, self.targets, self.steps) < 1:
      raise ValueError("batch, inputs, targets and steps must be >= 1.")
    if self.mode == "prompt" and self.prompt < 1:
      raise ValueError("prompt tuning needs --prompt >= 1.")

  @property
  def encoder_length(self) -> int:
    """P + T, the encoder positions in both modes."""
    return self.inputs + self.prompt

  @property
  def input_tokens(self) -> int:
    """Tokens fed per example: T (prompt mode) or T + P (model mode)."""
    return self.inputs if self.mode == "prompt" else self.inputs + self.prompt

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
    return out
