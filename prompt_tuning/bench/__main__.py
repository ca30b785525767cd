"""`python -m prompt_tuning.bench`: time our train step against HF PEFT.

Parses flags and hands a grid of `RunSpec`s to `harness.run`; prints one
JSON line per run, then ratio lines (and a table of them on stderr).
Comma-separated values of --preset, --method (or its first spelling
--mode), --remat, --attention, --frozen_dtype, --dtype and --prefix_layout
span a grid. A peer runs each listed method it has (PEFT: prompt, p_tuning,
prefix, ia3, lora; HF full fine-tuning: model), or, when none is listed,
its own default (PEFT prompt tuning, HF full fine-tuning), so that `--mode
'' --peer peft` still times PEFT prompt tuning alone. No TensorFlow, SeqIO
or gin is imported on this path (random weights, synthetic tokens), and
torch only when a peer is requested. Example:

  python -m prompt_tuning.bench --preset t5_1_1_small \\
    --method prompt,prefix,lora --prefix_layout li_liang,peft \\
    --batch 8 --inputs 128 --prompt 20 --targets 8 --steps 10 --warmup 2 \\
    --peer peft --peer_python /path/to/torch/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

from prompt_tuning.bench.spec import METHODS
from prompt_tuning.bench.spec import PEER_METHODS
from prompt_tuning.bench.spec import PEER_MODES
from prompt_tuning.bench.spec import PEER_OPTIMIZERS
from prompt_tuning.bench.spec import PEER_PRECISIONS
from prompt_tuning.bench.spec import PREFIX_LAYOUTS
from prompt_tuning.bench.spec import RESULT_MARKER
from prompt_tuning.bench.spec import RunSpec

_PEER_CHOICES = ("none", "peft", "hf_full", "all")


def _list(value: str) -> List[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def parse_flags(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m prompt_tuning.bench",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", type=_list, default=["t5_1_1_base"],
                 help="model preset(s), e.g. t5_1_1_xl")
  p.add_argument("--method", "--mode", dest="mode", type=_list,
                 default=["prompt"],
                 help=f"method(s) ours runs: {', '.join(METHODS)} (--mode "
                 "is the first spelling)")
  p.add_argument("--batch", type=int, default=32, help="B")
  p.add_argument("--inputs", type=int, default=512, help="T, input tokens")
  p.add_argument("--prompt", type=int, default=100, help="P, prompt length")
  p.add_argument("--targets", type=int, default=8, help="L, target tokens")
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps")
  p.add_argument("--remat", type=_list, default=["none"],
                 help="none, dots_saveable, dots_with_no_batch_dims_saveable, "
                 "full")
  p.add_argument("--scan", action=argparse.BooleanOptionalAction,
                 default=False, help="scan over layers")
  p.add_argument("--attention", type=_list, default=["xla"],
                 help="xla (reference) and/or fused")
  p.add_argument("--frozen_dtype", type=_list, default=["bfloat16"],
                 help="storage dtype of the frozen weights (prompt mode)")
  p.add_argument("--dtype", type=_list, default=["bfloat16"],
                 help="our activation/matmul dtype")
  p.add_argument("--lora_rank", type=int, default=8, help="LoRA's r")
  p.add_argument("--lora_alpha", type=float, default=8.0,
                 help="LoRA's alpha (the update is scaled by alpha / r)")
  p.add_argument("--prefix_length", type=int, default=10,
                 help="prefix tuning's key/value positions per attention")
  p.add_argument("--prefix_layout", type=_list, default=["li_liang"],
                 help="ours: li_liang (encoder self, decoder self, cross "
                 "attention) and/or peft (decoder self only, PEFT's: the "
                 "like-for-like comparison)")
  p.add_argument("--p_tuning_hidden", type=int, default=0,
                 help="P-tuning's MLP width (0: the model width)")
  p.add_argument("--dropout", type=float, default=0.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--compile_only", action="store_true",
                 help="ours: compile from shapes, report XLA's buffer sizes, "
                 "do not run (sizes XL/XXL on a small machine)")
  p.add_argument("--peer", choices=_PEER_CHOICES, default="none",
                 help="HF runs of the same shapes: PEFT prompt tuning, HF "
                 "full fine-tuning, or both")
  p.add_argument("--peer_precision", choices=PEER_PRECISIONS, default="auto")
  p.add_argument("--peer_optimizer", choices=PEER_OPTIMIZERS,
                 default="adafactor")
  p.add_argument("--peer_python", default=None,
                 help="interpreter with torch/transformers/peft (default: "
                 "this one)")
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction,
                 default=True, help="one process per run (honest peaks)")
  p.add_argument("--run_timeout", type=float, default=1800.0,
                 help="seconds before an isolated run is abandoned")
  p.add_argument("--matmul_size", type=int, default=None,
                 help="side of the timed peak product (default 8192 on "
                 "accelerators, 2048 on CPU)")
  p.add_argument("--output", default=None,
                 help="also append the JSON lines to this file")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  flags = p.parse_args(argv)
  for name, values, known in (("--method", flags.mode, METHODS),
                              ("--prefix_layout", flags.prefix_layout,
                               PREFIX_LAYOUTS)):
    unknown = [v for v in values if v not in known]
    if unknown:
      p.error(f"{name}: {', '.join(unknown)} not known; use some of "
              f"{', '.join(known)}.")
  return flags


def build_specs(flags: argparse.Namespace) -> List[RunSpec]:
  """Per preset: the peers' runs (each listed method a peer has, else its
  default), then the grid of our runs."""
  common = dict(batch=flags.batch, inputs=flags.inputs, prompt=flags.prompt,
                targets=flags.targets, steps=flags.steps, warmup=flags.warmup,
                dropout=flags.dropout, seed=flags.seed,
                compile_only=flags.compile_only,
                peer_precision=flags.peer_precision,
                peer_optimizer=flags.peer_optimizer,
                lora_rank=flags.lora_rank, lora_alpha=flags.lora_alpha,
                prefix_length=flags.prefix_length,
                p_tuning_hidden=flags.p_tuning_hidden)
  peers = {"none": (), "peft": ("peft",), "hf_full": ("hf_full",),
           "all": ("peft", "hf_full")}[flags.peer]
  specs = []
  for preset in flags.preset:
    for impl in peers:
      methods = ([m for m in flags.mode if m in PEER_METHODS[impl]] or
                 [PEER_MODES[impl]])
      for method in methods:
        specs.append(RunSpec(impl=impl, preset=preset, mode=method,
                             prefix_layout="peft", **common))
    for mode in flags.mode:
      # Model tuning has no frozen weights: one run, whatever the list.
      frozen = flags.frozen_dtype if mode != "model" else ["float32"]
      # Only prefix tuning has a layout (the default elsewhere, unreported).
      layouts = flags.prefix_layout if mode == "prefix" else ["li_liang"]
      for layout in layouts:
        for remat in flags.remat:
          for attention in flags.attention:
            for frozen_dtype in frozen:
              for dtype in flags.dtype:
                specs.append(RunSpec(
                    impl="ours", preset=preset, mode=mode, remat=remat,
                    scan=flags.scan, attention=attention,
                    frozen_dtype=frozen_dtype, dtype=dtype,
                    prefix_layout=layout, **common))
  return specs


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  """Runs the benchmark; returns the emitted lines (for tests)."""
  flags = parse_flags(argv)
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.bench import harness
  if flags.worker:
    result = harness.run_worker(json.loads(flags.worker))
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return [result]
  out = open(flags.output, "a", encoding="utf-8") if flags.output else None

  def emit(line: Dict[str, Any]) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
      out.write(text + "\n")
      out.flush()

  try:
    lines = harness.run(build_specs(flags), isolate=flags.isolate,
                        peer_python=flags.peer_python,
                        run_timeout=flags.run_timeout,
                        matmul_size=flags.matmul_size, emit=emit)
    # For people: stdout stays JSON lines only.
    print(harness.table(lines), file=sys.stderr, flush=True)
    return lines
  finally:
    if out:
      out.close()


if __name__ == "__main__":
  main(sys.argv[1:])
