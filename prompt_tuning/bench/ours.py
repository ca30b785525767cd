"""Times this project's train step on random weights and synthetic tokens.

The step is the real one: `training.step.jit_train_step` over a `TrainState`
from `training.state`, with the method passed as training passes it
(reparameterisations, penalty); the model and the trainable tree are built
as training builds them, by `training.setup.make_method` and
`setup.attach_method` (the method's hooks, `PromptedT5` for the methods
with an input prompt, the new parameters), and the optimizer is the
project's Adafactor recipe (model tuning's for 'model', prompt tuning's, the
training default, for every other method). Only the inputs are synthetic:
random frozen weights from a preset instead of a checkpoint (so nothing
here needs TensorFlow, SeqIO or gin) and one batch of random full-length
token rows, placed on the device once and fed straight to the step, so the
figures measure the step and nothing upstream.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning.bench import device
from prompt_tuning.bench import flops
from prompt_tuning.bench.spec import RunSpec
from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import unscan_params
from prompt_tuning.training import optimizers
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import count_params
from prompt_tuning.training.state import create_train_state

PyTree = Any


def model_config(spec: RunSpec) -> T5Config:
  """The preset with the run's speed knobs applied."""
  return t5_config(spec.preset, dtype=spec.dtype, dropout_rate=spec.dropout,
                   scan_layers=spec.scan, remat_policy=spec.remat,
                   attention_impl=spec.attention)


def _setup():
  """`training.setup`, imported on first use: it reaches the checkpoint
  readers (orbax, TensorStore), which a benchmark worker never needs to
  import before it builds a model (and `--help` or the peers never do)."""
  from prompt_tuning.training import setup  # pylint: disable=g-import-not-at-top
  return setup


def prompt_config(spec: RunSpec):
  """The input prompt: P vectors, uniform in +-0.5 (the random init: no
  vocabulary or embedding is needed; every method's own parameters keep
  their own initializers)."""
  return _setup().PromptConfig(length=max(spec.prompt, 1),
                               init="random_uniform", uniform_scale=0.5)


def make_method(spec: RunSpec):
  """The run's method with the benchmark's options, via `setup.make_method`
  (which also gives the prompt methods the input prompt's length)."""
  options = {
      "lora": methods.LoraConfig(rank=spec.lora_rank, alpha=spec.lora_alpha),
      "prefix": methods.PrefixConfig(length=spec.prefix_length,
                                     layout=spec.prefix_layout),
      "p_tuning": methods.PTuningConfig(hidden=spec.p_tuning_hidden),
  }
  return _setup().make_method(spec.mode, prompt_config(spec), options)


def build_run(config: T5Config, spec: RunSpec, frozen: PyTree,
              mesh: jax.sharding.Mesh):
  """The method on `frozen` weights, exactly as training builds it.

  Args:
    config: the frozen model's config (float32 `param_dtype`: what the new
      parameters are created in, as `build_model` does).
    spec: the run (method and its options, seed).
    frozen: plain T5's parameters (`random_params`), or their shapes
      (`compile_only`; the embedding must then be real, see `run`).
    mesh: where the new parameters are placed.

  Returns:
    `setup.RunModel`: model, config with the method's hooks, the trainable
    tree, the frozen tree and the bound method.
  """
  setup = _setup()
  return setup.attach_method(
      config=config, params=frozen, method=make_method(spec),
      prompt=prompt_config(spec), mesh=mesh,
      rules=partitioning.logical_axis_rules(), vocabulary=None,
      rng=jax.random.PRNGKey(spec.seed + 2))


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
  """Plain T5's randomly initialised params: what a checkpoint would hold.

  Frozen weights are created in `spec.frozen_dtype` (every method but
  model tuning, which trains them in float32), so a bfloat16 XXL never
  exists in float32 on the device; what the method adds is created by
  `build_run` in float32 (the optimizer's dtype). Initialisation always
  runs the scanned model (one compiled layer) and unstacks the layers for an
  unrolled config: XLA compiles an unrolled init at ~1 s per layer (18 s
  for Small on a CPU, against 4.5 s scanned).
  """
  init_config = config.replace(scan_layers=True, remat_policy="none")
  if spec.mode != "model":
    init_config = init_config.replace(param_dtype=spec.frozen_dtype)
  tokens = jnp.ones((1, 1), jnp.int32)
  variables = jax.jit(T5(init_config).init)(jax.random.PRNGKey(spec.seed),
                                            tokens, tokens, tokens)
  params = nn.unbox(variables["params"])
  if not config.scan_layers:
    params = traverse_util.unflatten_dict(
        unscan_params(traverse_util.flatten_dict(params, sep="/")), sep="/")
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
  facts["xla_memory"] = xla_memory(compiled)
  return facts


def xla_memory(compiled) -> Optional[Dict[str, int]]:
  """The compiled program's buffer sizes (per device, for an SPMD program),
  or None where the backend does not report them."""
  try:
    memory = compiled.memory_analysis()
    return {
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
    }
  except Exception:  # pylint: disable=broad-except
    return None


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
  recipe = (optimizers.MODEL_TUNING if spec.mode == "model"
            else optimizers.PROMPT_TUNING)
  tx = optimizers.adafactor(recipe)
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  replicated = partitioning.sharding_for((), mesh)
  like = lambda tree: jax.tree_util.tree_map(lambda _: replicated, tree)

  if spec.compile_only:
    # Shapes without arrays, so an XXL step compiles (and XLA reports its
    # buffer sizes) on a machine that could never hold it. Only what the
    # method adds is real (it is small), and the embedding table, which
    # the builder reads on the host for the prompt's initializer.
    frozen = jax.eval_shape(lambda: random_params(config, spec))
    embedding = frozen["token_embedder"]["embedding"]
    frozen["token_embedder"]["embedding"] = np.zeros(embedding.shape,
                                                     embedding.dtype)
  else:
    frozen = jax.device_put(random_params(config, spec), replicated)
  built = build_run(config, spec, frozen, mesh)
  trainable, frozen = built.trainable, built.frozen
  new_state = lambda params: create_train_state(
      params, tx, jax.random.PRNGKey(spec.seed + 1))
  if spec.compile_only:
    as_shapes = lambda tree: jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    state, frozen = jax.eval_shape(new_state, as_shapes(trainable)), as_shapes(
        frozen)
  else:
    state = jax.device_put(new_state(trainable), replicated)
  step = step_lib.jit_train_step(built.model, tx, like(state), like(frozen),
                                 replicated,
                                 enable_dropout=spec.dropout > 0,
                                 method=built.method)
  batch = jax.device_put(synthetic_batch(spec, config.vocab_size), replicated)
  with partitioning.mesh_context(mesh):
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
  shapes = flops.Shapes.from_t5_config(config)
  result = {
      **spec.describe(),
      **device.describe(),
      "compile_s": compile_s,
      "flops_per_step": flops.step_flops(shapes, spec.backward, spec.batch,
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
