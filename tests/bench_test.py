"""The benchmark entry point and the speed features it measures.

`python -m prompt_tuning.bench` runs (in-process, tiny preset, two steps),
imports no TensorFlow/SeqIO/gin/torch, and counts FLOPs by the documented
formula; the compiled prompt-tuning step computes no weight gradients; the
step donates the train state and not the frozen weights; bfloat16 frozen
weights stay within bfloat16 noise of float32 ones.
"""

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.bench import flops
from prompt_tuning.bench.__main__ import main as bench_main
from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import initializers
from prompt_tuning.training import optimizers
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import create_train_state
from prompt_tuning.training.state import split_trainable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_T5_1_1 = os.path.join(ROOT, "tests", "fixtures", "hf", "t5_1_1_style")
TINY = t5_config("t5_1_1_tiny", dtype="float32", dropout_rate=0.0)


def test_flop_formula_for_xl_matches_the_hand_count():
  # T5.1.1-XL, B=32, S=512+100, L=8: the issue's ~113 TFLOP PEFT step is
  # forward + weight-input gradients; attention's second operand adds ~2.
  xl = flops.Shapes.from_t5_config(t5_config("t5_1_1_xl"))
  fwd = flops.forward_flops(xl, 32, 612, 8)
  assert fwd["total"] == pytest.approx(56.4e12, rel=0.01)
  prompt = flops.step_flops(xl, "prompt", 32, 612, 8)
  assert prompt == pytest.approx(2 * fwd["total"] + fwd["attention"])
  assert prompt == pytest.approx(115e12, rel=0.01)
  assert flops.step_flops(xl, "model", 32, 612, 8) == 3 * fwd["total"]


def test_flop_formula_agrees_with_xla_on_a_forward_pass():
  # A config where matmuls dominate, so XLA's count (which adds softmax,
  # norms and activations) is within a few percent of the matmul formula.
  config = t5_config("t5_1_1_tiny", dtype="float32", emb_dim=128,
                     num_heads=4, head_dim=32, mlp_dim=512, vocab_size=512,
                     num_encoder_layers=1, num_decoder_layers=1)
  tokens = jnp.ones((2, 32), jnp.int32)
  targets = jnp.ones((2, 8), jnp.int32)
  model = T5(config)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, targets,
                          targets)
  cost = jax.jit(model.apply).lower(params, tokens, targets,
                                    targets).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = flops.forward_flops(flops.Shapes.from_t5_config(config), 2, 32,
                             8)["total"]
  assert float(cost["flops"]) == pytest.approx(ours, rel=0.15)


def test_bench_runs_in_process_on_the_tiny_preset():
  lines = bench_main([
      "--preset", "t5_1_1_tiny", "--mode", "prompt,model", "--batch", "2",
      "--inputs", "8", "--prompt", "2", "--targets", "2", "--steps", "2",
      "--warmup", "1", "--matmul_size", "256", "--no-isolate"])
  runs = [l for l in lines if l["kind"] == "run"]
  assert [r["mode"] for r in runs] == ["prompt", "model"]
  for r in runs:
    assert "error" not in r, r.get("error")
    assert r["step_s"] > 0 and r["compile_s"] > 0
    assert r["encoder_tokens_per_s"] == pytest.approx(2 * 10 / r["step_s"])
    assert r["flops_per_step"] > 0 and r["mfu"] > 0
    assert np.isfinite(r["loss_last"])
    assert r["peak_bytes"] > 0
  assert runs[0]["params_trainable"] == 2 * TINY.emb_dim  # the prompt only
  ratio = [l for l in lines if l.get("vs") == "ours_model_tuning"]
  assert ratio and ratio[0]["step_time_ratio"] > 0


def test_bench_import_path_has_no_tensorflow_seqio_gin_or_torch():
  code = (
      "import sys\n"
      "import prompt_tuning.bench.__main__, prompt_tuning.bench.harness\n"
      "import prompt_tuning.bench.ours, prompt_tuning.bench.peer\n"
      "bad = [m for m in ('tensorflow', 'seqio', 'gin', 'torch', "
      "'transformers', 'orbax', 'tensorstore') if m in sys.modules]\n"
      "assert not bad, bad\n")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def _prompt_setup(config=TINY):
  model = PromptedT5(config, 4, initializers.random_uniform(0.5))
  batch = {"encoder_input_tokens": np.full((3, 5), 7, np.int32),
           "decoder_input_tokens": np.full((3, 2), 7, np.int32),
           "decoder_target_tokens": np.full((3, 2), 7, np.int32),
           "decoder_loss_weights": np.ones((3, 2), np.int32)}
  variables = jax.jit(model.init)(
      jax.random.PRNGKey(0), batch["encoder_input_tokens"],
      batch["decoder_input_tokens"], batch["decoder_target_tokens"])
  params = jax.tree_util.tree_map(
      lambda x: x.unbox() if hasattr(x, "unbox") else x, variables["params"],
      is_leaf=lambda x: hasattr(x, "unbox"))
  return model, params, batch


def _dot_result_shapes(lowered) -> set:
  """Result shapes of every dot_general in the lowered (StableHLO) step."""
  shapes = set()
  for line in lowered.as_text().splitlines():
    if "dot_general" in line:
      result = re.findall(r"->\s*tensor<([0-9x]+)x[a-z0-9]+>", line)
      if result:
        shapes.add(tuple(int(d) for d in result[-1].split("x")))
  return shapes


@pytest.mark.parametrize("mode", ["prompt", "model"])
def test_compiled_prompt_step_has_no_weight_gradient_products(mode):
  # A weight gradient dW = X^T dY is a product whose result has a kernel's
  # shape; the forward and the input gradients never produce one. Model
  # mode must show them (so the check can see what it looks for).
  model, params, batch = _prompt_setup()
  if mode == "model":
    model = T5(TINY)
    del params["encoder"]["prompt"]
  trainable, frozen = split_trainable(params, mode)
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  lowered = jax.jit(lambda s, f, b: step_lib.train_step(
      s, f, b, model=model, tx=tx, enable_dropout=False)).lower(
          state, frozen, batch)
  kernels = {tuple(x.shape) for x in jax.tree_util.tree_leaves(params)
             if x.ndim == 2 and x.shape[0] > 4}  # kernels, not the prompt
  weight_grads = _dot_result_shapes(lowered) & kernels
  if mode == "prompt":
    assert not weight_grads
  else:
    assert weight_grads


def test_jit_train_step_donates_the_state_not_the_frozen_weights():
  model, params, batch = _prompt_setup()
  trainable, frozen = split_trainable(params, "prompt")
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  replicated = partitioning.sharding_for((), mesh)
  like = lambda tree: jax.tree_util.tree_map(lambda _: replicated, tree)
  state = jax.device_put(create_train_state(trainable, tx,
                                            jax.random.PRNGKey(1)),
                         replicated)
  frozen = jax.device_put(frozen, replicated)
  step = step_lib.jit_train_step(model, tx, like(state), like(frozen),
                                 replicated, enable_dropout=False)
  with partitioning.mesh_context(mesh):
    new_state, _ = step(state, frozen, jax.device_put(batch, replicated))
  jax.block_until_ready(new_state)
  assert state.params["encoder"]["prompt"]["prompt"].is_deleted()
  assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(frozen))


def _loss_with_frozen_dtype(frozen_dtype):
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  run = setup.build_model(
      initial_checkpoint_path=HF_T5_1_1, model_config=None, mode="prompt",
      prompt=setup.PromptConfig(length=3, init="random_uniform"), mesh=mesh,
      rules=partitioning.logical_axis_rules(), vocabulary=None,
      rng=jax.random.PRNGKey(0), dropout_rate=0.0, frozen_dtype=frozen_dtype)
  data = np.load(os.path.join(HF_T5_1_1, "expected.npz"))
  batch = {k: data[k] for k in ("encoder_input_tokens",
                                "decoder_input_tokens",
                                "decoder_target_tokens")}
  batch["decoder_loss_weights"] = (batch["decoder_target_tokens"] > 0)
  model = run.model.clone(config=run.config.replace(dtype="float32"))
  with partitioning.mesh_context(mesh):
    loss = jax.jit(lambda p, f: step_lib.eval_step(
        p, f, batch, model=model)["loss_sum"])(run.trainable, run.frozen)
  return run, float(loss)


def test_bfloat16_frozen_weights_stay_within_bfloat16_noise():
  run32, loss32 = _loss_with_frozen_dtype(None)
  run16, loss16 = _loss_with_frozen_dtype("bfloat16")
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(run16.frozen)}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  prompt = run16.trainable["encoder"]["prompt"]["prompt"]
  assert prompt.dtype == jnp.float32  # the optimizer's dtype
  assert run16.config.param_dtype == "float32"
  assert {x.dtype for x in jax.tree_util.tree_leaves(run32.frozen)} == {
      jnp.dtype(jnp.float32)}
  # bfloat16 keeps 8 bits of mantissa: ~0.4% per weight, less on the loss.
  assert loss16 == pytest.approx(loss32, rel=1e-2)
  assert loss16 != loss32  # the weights really were rounded


def test_frozen_dtype_is_refused_in_model_mode():
  with pytest.raises(ValueError, match="model tuning freezes nothing"):
    setup.build_model(
        initial_checkpoint_path=HF_T5_1_1, model_config=None, mode="model",
        prompt=setup.PromptConfig(), mesh=None, rules=None, vocabulary=None,
        rng=jax.random.PRNGKey(0), frozen_dtype="bfloat16")


@pytest.mark.parametrize("mode", ["prompt", "model"])
def test_random_params_have_the_unrolled_models_tree(mode):
  """The bench initialises the scanned twin and unstacks its layers: the
  result must be exactly the unrolled model's parameter tree (names, shapes,
  dtypes), with distinct weights per layer."""
  from prompt_tuning.bench import ours  # pylint: disable=g-import-not-at-top
  from prompt_tuning.bench.spec import RunSpec  # pylint: disable=g-import-not-at-top
  spec = RunSpec(impl="ours", preset="t5_1_1_tiny", mode=mode, batch=2,
                 inputs=8, prompt=4, targets=4, steps=1, warmup=0,
                 frozen_dtype="float32", dtype="float32")
  config = ours.model_config(spec)
  assert not config.scan_layers
  params = ours.random_params(config, spec)
  tokens = jnp.ones((1, 1), jnp.int32)
  want = jax.eval_shape(ours.build_model(config, spec).init,
                        jax.random.PRNGKey(0), tokens, tokens, tokens)
  want = jax.tree_util.tree_map(
      lambda x: (x.shape, x.dtype), nn.unbox(want["params"]))
  got = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params)
  assert got == want
  kernel = lambda i: params["encoder"][f"layers_{i}"]["mlp"]["wo"]["kernel"]
  assert not np.array_equal(np.asarray(kernel(0)), np.asarray(kernel(1)))
