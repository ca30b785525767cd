"""`python -m prompt_tuning.bench.decoder`: a decoder-only LM's prompt step
against HF PEFT's CAUSAL_LM prompt tuning, and its memory on a mesh.

The decoder-only counterpart of `python -m prompt_tuning.bench`. Ours is the
real train step (`training.step.jit_train_step`) of the model and trainable
tree that training builds (`training.setup.attach_method`: a
`PromptedDecoderOnly`, P prompt rows before every row), on random frozen
weights of a preset (`models.decoder_only.PRESETS`) or of the shapes given
by flags, with the prompt-tuning Adafactor recipe. The peer
(`bench.decoder_peer`, a subprocess, optionally another Python with torch)
builds `AutoModelForCausalLM` from the same config (`hf_decoder_config`,
what our export writes) and wraps it in `peft.PromptTuningConfig(
task_type=CAUSAL_LM)`. Both see the same random rows `inputs targets`
(no padding), loss on the targets only, and run the same steps.

`--compile_only` compiles our step without creating the frozen weights
(shapes only, placed by the rules table on `--mesh`, FSDP with `--fsdp`)
and prints XLA's per-device buffer sizes: the memory estimate of a step
that no machine here could run. With `--mesh 1,16` on a CPU, set
`XLA_FLAGS=--xla_force_host_platform_device_count=16` first. Example:

  python -m prompt_tuning.bench.decoder --family llama --layers 4 \\
    --batch 4 --inputs 64 --targets 8 --prompt 20 --steps 5 --peer peft
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.bench.spec import RESULT_MARKER

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class DecoderBench:
  """One decoder-only benchmark configuration (JSON-able)."""

  # A decoder-only preset name; '' builds the shapes below.
  preset: str = ""
  family: str = "llama"
  vocab_size: int = 32000
  emb_dim: int = 512
  num_heads: int = 8
  num_kv_heads: int = 4
  head_dim: int = 64
  mlp_dim: int = 1408
  num_layers: int = 8
  batch: int = 4
  inputs: int = 64
  targets: int = 8
  prompt: int = 20
  steps: int = 5
  warmup: int = 2
  seed: int = 0
  # Compute and frozen-weight storage dtypes of ours.
  dtype: str = "float32"
  frozen_dtype: str = "float32"
  mesh: Tuple[int, int] = (1, 1)
  fsdp: bool = False
  # Gradient accumulation over this many slices of the batch (training's
  # TrainConfig.num_microbatches): what bounds a large step's activations.
  microbatches: int = 1
  # models.config.REMAT_POLICIES: recompute each layer in the backward pass.
  remat: str = "none"
  compile_only: bool = False

  def describe(self) -> Dict[str, Any]:
    """The configuration as a record: a preset's own shapes, not the
    shape flags' defaults."""
    out = dataclasses.asdict(self)
    config = self.config()
    for name in ("vocab_size", "emb_dim", "num_heads", "num_kv_heads",
                 "head_dim", "mlp_dim", "num_layers", "family"):
      out[name] = getattr(config, name)
    return out

  def config(self):
    """Our DecoderConfig of this configuration."""
    from prompt_tuning.models.decoder_only import DecoderConfig  # pylint: disable=g-import-not-at-top
    from prompt_tuning.models.decoder_only import decoder_config  # pylint: disable=g-import-not-at-top
    if self.preset:
      return decoder_config(self.preset, dtype=self.dtype,
                            remat_policy=self.remat)
    gemma = self.family == "gemma2"
    return DecoderConfig(
        vocab_size=self.vocab_size, emb_dim=self.emb_dim,
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
        head_dim=self.head_dim, mlp_dim=self.mlp_dim,
        num_layers=self.num_layers,
        family="gemma2" if gemma else "llama",
        qkv_bias=self.family == "qwen2", tie_embeddings=gemma,
        activation="gelu" if gemma else "silu",
        sliding_window=4096 if gemma else 0,
        sliding_layers="even" if gemma else "none",
        query_pre_attn_scalar=float(self.head_dim) if gemma else 0.0,
        attn_softcap=50.0 if gemma else 0.0,
        final_softcap=30.0 if gemma else 0.0, eos_id=1, dtype=self.dtype,
        remat_policy=self.remat)

  def rows(self) -> np.ndarray:
    """[B, T + L] random token rows (the same for ours and the peer)."""
    rng = np.random.default_rng(self.seed)
    return rng.integers(3, self.config().vocab_size,
                        (self.batch, self.inputs + self.targets))


def _our_batch(bench: DecoderBench) -> Dict[str, np.ndarray]:
  """The rows as `data.decoder_features` makes them: loss on the targets."""
  rows = bench.rows().astype(np.int32)
  length = rows.shape[1]
  columns = np.arange(length)
  weights = (columns >= bench.inputs - 1) & (columns < length - 1)
  return {
      "decoder_input_tokens": rows,
      "decoder_target_tokens": np.pad(rows[:, 1:], ((0, 0), (0, 1))),
      "decoder_loss_weights": np.broadcast_to(
          weights, rows.shape).astype(np.int32),
      "decoder_mask": np.ones_like(rows),
  }


def run_ours(bench: DecoderBench) -> Dict[str, Any]:
  """Compiles (and unless compile_only, times) our prompt step."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning.bench import ours  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.decoder_only import DecoderOnlyLM  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pretrained.assemble import abstract_params  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import optimizers  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import setup  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training.state import count_params  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training.state import create_train_state  # pylint: disable=g-import-not-at-top

  config = bench.config().replace(param_dtype=bench.frozen_dtype)
  # The first data x model devices (a benchmark may use fewer than there
  # are, e.g. one of 8 forced host devices).
  mesh = partitioning.create_mesh(
      bench.mesh, devices=jax.devices()[:int(np.prod(bench.mesh))])
  rules = partitioning.logical_axis_rules(bench.fsdp)
  boxed = abstract_params(config)
  frozen_shardings = partitioning.shardings(boxed, mesh, rules)
  shapes = nn.unbox(boxed)
  if bench.compile_only:
    # Shapes only, but the embedding, which the builder reads on the host.
    structs = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes, frozen_shardings)
    table = structs["token_embedder"]["embedding"]
    frozen = dict(structs, token_embedder={
        "embedding": np.zeros(table.shape, table.dtype)})
  else:
    init = jax.jit(lambda key: nn.unbox(DecoderOnlyLM(config).init(
        key, np.ones((1, 1), np.int32))["params"]),
                   out_shardings=frozen_shardings)
    frozen = init(jax.random.PRNGKey(bench.seed))
  prompt = setup.PromptConfig(length=bench.prompt, init="random_uniform")
  built = setup.attach_method(
      config=config.replace(param_dtype="float32"), params=frozen,
      method=setup.make_method("prompt", prompt), prompt=prompt,
      mesh=mesh, rules=rules, vocabulary=None,
      rng=jax.random.PRNGKey(bench.seed + 2))
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(built.trainable, tx,
                             jax.random.PRNGKey(bench.seed + 1))
  state_shardings = setup.state_shardings(state, built.trainable_shardings(),
                                          mesh)
  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data"))
  step = step_lib.jit_train_step(built.model, tx, state_shardings,
                                 frozen_shardings, batch_sharding,
                                 method=built.method,
                                 num_microbatches=bench.microbatches)
  batch = _our_batch(bench)
  if bench.compile_only:
    frozen = structs
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=batch_sharding)
             for k, v in batch.items()}
  else:
    frozen = built.frozen
    batch = jax.device_put(batch, batch_sharding)
  state = jax.device_put(state, state_shardings)
  with partitioning.mesh_context(mesh, rules):
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
  result = {
      "impl": "ours", **bench.describe(),
      "backend": jax.devices()[0].platform,
      "devices": int(np.prod(bench.mesh)), "compile_s": compile_s,
      "params_trainable": count_params(state.params),
      "params_frozen": sum(int(np.prod(s.shape))
                           for s in jax.tree_util.tree_leaves(shapes)),
      "xla_memory_per_device": ours.xla_memory(compiled),
  }
  if bench.compile_only:
    return result
  times, losses = [], []
  with partitioning.mesh_context(mesh, rules):
    for i in range(bench.warmup + bench.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, frozen, batch)
      jax.block_until_ready((state, metrics))
      if i >= bench.warmup:
        times.append(time.perf_counter() - start)
      losses.append(float(metrics["loss_sum"] / metrics["tokens"]))
  return {**result, "step_s": statistics.median(times),
          # The process's peak RSS (the peer reports its own likewise on a
          # CPU); on an accelerator the buffer sizes above say more.
          "peak_rss_bytes": resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss * 1024,
          "loss_first": losses[0], "loss_last": losses[-1]}


def run_peer(bench: DecoderBench, python: str = "") -> Dict[str, Any]:
  """PEFT's step in a subprocess (`bench.decoder_peer`)."""
  from prompt_tuning.pretrained.hf_export import hf_decoder_config  # pylint: disable=g-import-not-at-top
  payload = {"bench": dataclasses.asdict(bench),
             "hf_config": hf_decoder_config(bench.config(), "float32"),
             "rows": bench.rows().tolist()}
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  done = subprocess.run(
      [python or sys.executable, "-m", "prompt_tuning.bench.decoder_peer",
       json.dumps(payload)], capture_output=True, text=True, env=env,
      check=False)
  for line in done.stdout.splitlines():
    if line.startswith(RESULT_MARKER):
      return json.loads(line[len(RESULT_MARKER):])
  return {"impl": "peft", "error": (done.stderr.strip().splitlines() or
                                    ["no output"])[-1]}


def _pair(value: str) -> Tuple[int, int]:
  data, model = (int(v) for v in value.split(","))
  return data, model


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  p = argparse.ArgumentParser(prog="python -m prompt_tuning.bench.decoder",
                              description=__doc__.split("\n\n")[0])
  defaults = DecoderBench()
  p.add_argument("--preset", default="", help="a decoder-only preset, e.g. "
                 "llama3_1_8b; '' uses the shape flags")
  p.add_argument("--family", default=defaults.family,
                 choices=("llama", "qwen2", "gemma2"))
  for name, flag in (("vocab_size", "vocab"), ("emb_dim", "width"),
                     ("num_heads", "heads"), ("num_kv_heads", "kv_heads"),
                     ("head_dim", "head_dim"), ("mlp_dim", "mlp"),
                     ("num_layers", "layers"), ("batch", "batch"),
                     ("inputs", "inputs"), ("targets", "targets"),
                     ("prompt", "prompt"), ("steps", "steps"),
                     ("microbatches", "microbatches"),
                     ("warmup", "warmup"), ("seed", "seed")):
    p.add_argument(f"--{flag}", dest=name, type=int,
                   default=getattr(defaults, name))
  p.add_argument("--dtype", default=defaults.dtype)
  p.add_argument("--frozen_dtype", default=defaults.frozen_dtype)
  p.add_argument("--mesh", type=_pair, default=defaults.mesh,
                 help="data,model (e.g. 1,16)")
  p.add_argument("--fsdp", action="store_true")
  p.add_argument("--remat", default=defaults.remat,
                 help="none, dots_saveable, dots_with_no_batch_dims_saveable "
                 "or full")
  p.add_argument("--compile_only", action="store_true")
  p.add_argument("--peer", choices=("none", "peft"), default="none")
  p.add_argument("--peer_python", default="",
                 help="a Python with torch, transformers and peft")
  args = vars(p.parse_args(argv))
  peer, python = args.pop("peer"), args.pop("peer_python")
  bench = DecoderBench(**args)
  lines = []
  if peer == "peft" and not bench.compile_only:
    lines.append(run_peer(bench, python))  # first: it frees the device
    print(json.dumps(lines[-1]), flush=True)
  lines.append(run_ours(bench))
  print(json.dumps(lines[-1]), flush=True)
  if len(lines) == 2 and "step_s" in lines[0]:
    ratio = {"kind": "ratio", "peft_step_s_over_ours":
             lines[0]["step_s"] / lines[1]["step_s"]}
    print(json.dumps(ratio), flush=True)
    lines.append(ratio)
  return lines


if __name__ == "__main__":
  main()
