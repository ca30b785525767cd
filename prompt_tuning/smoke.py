"""Model smoke run: load a T5 checkpoint, run it sharded, decode, check logits.

`python -m prompt_tuning.smoke` loads the tiny Hugging Face T5.1.1 checkpoint
committed under tests/fixtures (or any `--checkpoint`: HF directory or T5X
checkpoint with `--preset`), shards it over all local devices, computes
teacher-forced logits, greedy-decodes, and, where the checkpoint directory has
an `expected.npz` of reference logits (as the fixtures do), prints the largest
difference from them. It needs no network and runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from prompt_tuning import partitioning
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.models import T5
from prompt_tuning.models import decoding
from prompt_tuning.models import t5_config

_DEFAULT_CHECKPOINT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
    "fixtures", "hf", "t5_1_1_style")


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default=_DEFAULT_CHECKPOINT,
                      help="HF directory or T5X checkpoint path.")
  parser.add_argument("--preset", default=None,
                      help="T5 preset name; required for T5X checkpoints.")
  parser.add_argument("--dtype", default="float32",
                      help="activation dtype (float32 or bfloat16).")
  parser.add_argument("--scan_layers", action="store_true")
  parser.add_argument("--mesh_shape", default="-1,1",
                      help="data,model mesh shape; -1 fills.")
  parser.add_argument("--max_decode_length", type=int, default=8)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(argv)
  print(f"jax {jax.__version__}, devices: {jax.device_count()} x "
        f"{jax.devices()[0].platform}")
  config = None
  if args.preset:
    config = t5_config(args.preset)
  mesh = partitioning.create_mesh(
      tuple(int(s) for s in args.mesh_shape.split(",")))
  try:
    if config is None:
      config, _ = load_pretrained(args.checkpoint)  # reads config.json
    config = config.replace(dtype=args.dtype, scan_layers=args.scan_layers)
    start = time.perf_counter()
    config, params = load_pretrained(args.checkpoint, config=config,
                                     mesh=mesh)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  count = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"loaded {args.checkpoint} in {time.perf_counter() - start:.2f}s: "
        f"{count:,} parameters, mesh {dict(mesh.shape)}")

  expected_file = os.path.join(args.checkpoint, "expected.npz")
  if os.path.isfile(expected_file):
    data = dict(np.load(expected_file))
    batch = {k: data[k] for k in ("encoder_input_tokens",
                                  "decoder_input_tokens",
                                  "decoder_target_tokens")}
  else:
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, config.vocab_size, (2, 7)).astype(np.int32)
    batch = {"encoder_input_tokens": tokens,
             "decoder_input_tokens": np.zeros((2, 4), np.int32),
             "decoder_target_tokens": np.ones((2, 4), np.int32)}
    data = None
  # Replicate the batch to a multiple of the data-parallel size.
  reps = mesh.shape["data"]
  sharded = partitioning.shard_batch(
      {k: np.tile(v, (reps, 1)) for k, v in batch.items()}, mesh)
  model = T5(config)
  with partitioning.mesh_context(mesh):
    logits = jax.jit(lambda p, b: model.apply({"params": p}, **b))(params,
                                                                   sharded)
  logits = np.asarray(logits)[:len(batch["encoder_input_tokens"])]
  print(f"logits {logits.shape} {logits.dtype}, mean {logits.mean():+.4f}, "
        f"std {logits.std():.4f}")
  if data is not None and "logits" in data:
    real = batch["decoder_target_tokens"] > 0
    diff = np.abs(logits[real] - data["logits"][real]).max()
    print(f"max |logits - reference| at real positions: {diff:.2e}")

  start = time.perf_counter()
  tokens = decoding.greedy_decode(model, params,
                                  batch["encoder_input_tokens"],
                                  args.max_decode_length)
  print(f"greedy decode ({time.perf_counter() - start:.2f}s incl. compile):")
  for row in np.asarray(tokens):
    print("  ", row.tolist())
  return 0


if __name__ == "__main__":
  sys.exit(main())
