"""Times this project's train step on random weights and synthetic tokens.

The step is the real one: `training.step.jit_train_step` over a `TrainState`
from `training.state`, the model is `PromptedT5` (prompt tuning) or `T5`
(model tuning) from a preset, and the optimizer is the project's Adafactor
recipe for the mode. Only the inputs are synthetic: random weights (no
checkpoint, so nothing here needs TensorFlow, SeqIO, gin or orbax) and one
batch of random full-length token rows, placed on the device once and fed
straight to the step, so the figures measure the step and nothing upstream.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning import partitioning
from prompt_tuning.bench import device
from prompt_tuning.bench import flops
from prompt_tuning.bench.spec import RunSpec
from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import unscan_params
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import initializers
from prompt_tuning.training import optimizers
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import PROMPT_PATH
from prompt_tuning.training.state import count_params
from prompt_tuning.training.state import create_train_state
from prompt_tuning.training.state import split_trainable

PyTree = Any


def model_config(spec: RunSpec) -> T5Config:
  """The preset with the run's speed knobs applied."""
  return t5_config(spec.preset, dtype=spec.dtype, dropout_rate=spec.dropout,
                   scan_layers=spec.scan, remat_policy=spec.remat,
                   attention_impl=spec.attention)


def build_model(config: T5Config, spec: RunSpec) -> nn.Module:
  """`PromptedT5` with a P-vector prompt (prompt mode) or plain `T5`."""
  if spec.mode == "prompt":
    return PromptedT5(config, spec.prompt, initializers.random_uniform(0.5))
  return T5(config)


def synthetic_batch(spec: RunSpec, vocab_size: int) -> Dict[str, np.ndarray]:
  """Random full-length rows (no padding), EOS-terminated.

  Returns:
    `encoder_input_tokens` [B, T] (prompt mode) or [B, T + P] (model
    mode), `decoder_input_tokens`, `decoder_target_tokens`,
    `decoder_loss_weights` [B, L].
  """
  rng = np.random.default_rng(spec.seed)
  shape_in = (spec.batch, spec.input_tokens)
  enc = rng.integers(2, vocab_size, shape_in).astype(np.int32)
  enc[:, -1] = 1
  tgt = rng.integers(2, vocab_size, (spec.batch, spec.targets)).astype(
      np.int32)
  tgt[:, -1] = 1
  dec_in = np.pad(tgt, ((0, 0), (1, 0)))[:, :-1]  # [B, L]: shifted right
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": np.ones_like(tgt)}


def random_params(config: T5Config, spec: RunSpec) -> PyTree:
  """Randomly initialised params, frozen ones in `spec.frozen_dtype`.

  The model is initialised with `param_dtype=frozen_dtype`, so a bfloat16
  XXL never exists in float32 on the device; the prompt, which trains, is
  then cast back to float32 (the optimizer's dtype). Initialisation always
  runs the scanned model (one compiled layer) and unstacks the layers for an
  unrolled config: XLA compiles an unrolled init at ~1 s per layer (18 s
  for Small on a CPU, against 4.5 s scanned).
  """
  init_config = config.replace(scan_layers=True, remat_policy="none")
  if spec.mode == "prompt":
    init_config = init_config.replace(param_dtype=spec.frozen_dtype)
  model = build_model(init_config, spec)
  tokens = jnp.ones((1, 1), jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(spec.seed), tokens,
                                  tokens, tokens)
  params = nn.unbox(variables["params"])
  if not config.scan_layers:
    params = traverse_util.unflatten_dict(
        unscan_params(traverse_util.flatten_dict(params, sep="/")), sep="/")
  if spec.mode == "prompt":
    node = params
    for name in PROMPT_PATH[:-1]:
      node = node[name]
    node[PROMPT_PATH[-1]] = node[PROMPT_PATH[-1]].astype(jnp.float32)
  return params


def _timed_steps(step, state, frozen, batch, warmup: int,
                 steps: int) -> Tuple[list, list]:
  """Runs warm-up then timed steps; returns (seconds per step, losses)."""
  losses = []
  for _ in range(warmup):
    state, metrics = step(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    losses.append(float(metrics["loss_sum"] / metrics["tokens"]))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    losses.append(float(metrics["loss_sum"] / metrics["tokens"]))
  return times, losses


def _compiled_facts(compiled) -> Dict[str, Any]:
  """XLA's own FLOP count and buffer sizes, where the backend reports them.

  XLA's FLOPs include rematerialised work and elementwise operations, so
  they are a cross-check on, not a replacement for, `flops.step_flops`.
  """
  facts: Dict[str, Any] = {}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    facts["xla_flops"] = float(cost["flops"]) if cost else None
  except Exception:  # pylint: disable=broad-except
    facts["xla_flops"] = None
  try:
    # Whether XLA kept any cuDNN fused attention (fused runs on a GPU).
    facts["cudnn_attention"] = "cudnn$fmha" in compiled.as_text()
  except Exception:  # pylint: disable=broad-except
    facts["cudnn_attention"] = None
  try:
    memory = compiled.memory_analysis()
    facts["xla_memory"] = {
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
    }
  except Exception:  # pylint: disable=broad-except
    facts["xla_memory"] = None
  return facts


def run(spec: RunSpec) -> Dict[str, Any]:
  """Compiles and times our train step for `spec`.

  Args:
    spec: the configuration (impl must be 'ours').

  Returns:
    One result record (the harness adds MFU against the measured matmul
    peak; see `harness` for the fields).
  """
  if spec.impl != "ours":
    raise ValueError(f"ours.run got impl={spec.impl!r}.")
  config = model_config(spec)
  model = build_model(config, spec)
  recipe = (optimizers.PROMPT_TUNING if spec.mode == "prompt"
            else optimizers.MODEL_TUNING)
  tx = optimizers.adafactor(recipe)

  def init_state():
    trainable, frozen = split_trainable(random_params(config, spec),
                                        spec.mode)
    return create_train_state(trainable, tx,
                              jax.random.PRNGKey(spec.seed + 1)), frozen

  # compile_only: shapes without arrays, so an XXL step compiles (and XLA
  # reports its buffer sizes) on a machine that could never hold it.
  state, frozen = (jax.eval_shape(init_state) if spec.compile_only
                   else init_state())
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  replicated = partitioning.sharding_for((), mesh)
  like = lambda tree: jax.tree_util.tree_map(lambda _: replicated, tree)
  step = step_lib.jit_train_step(model, tx, like(state), like(frozen),
                                 replicated,
                                 enable_dropout=spec.dropout > 0)
  batch = jax.device_put(synthetic_batch(spec, config.vocab_size), replicated)
  if not spec.compile_only:
    state = jax.device_put(state, like(state))
    frozen = jax.device_put(frozen, like(frozen))
  with partitioning.mesh_context(mesh):
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
  shapes = flops.Shapes.from_t5_config(config)
  result = {
      **spec.describe(),
      **device.describe(),
      "compile_s": compile_s,
      "flops_per_step": flops.step_flops(shapes, spec.mode, spec.batch,
                                         spec.encoder_length, spec.targets),
      "params_trainable": count_params(state.params),
      "params_frozen": count_params(frozen),
      **_compiled_facts(compiled),
  }
  if spec.compile_only:
    return result
  times, losses = _timed_steps(compiled, state, frozen, batch, spec.warmup,
                               spec.steps)
  peak_bytes, memory_source = device.peak_memory()
  step_s = statistics.median(times)
  return {
      **result,
      "step_s": step_s,
      "step_s_min": min(times),
      "encoder_tokens_per_s": spec.batch * spec.encoder_length / step_s,
      "peak_bytes": peak_bytes,
      "memory_source": memory_source,
      "loss_first": losses[0],
      "loss_last": losses[-1],
  }
