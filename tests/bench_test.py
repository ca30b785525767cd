"""The benchmark entry point and the speed features it measures.

`python -m prompt_tuning.bench` runs (in-process, tiny preset, two steps),
imports no TensorFlow/SeqIO/gin/torch, and counts FLOPs by the documented
formula; the compiled prompt-tuning step computes no weight gradients; the
step donates the train state and not the frozen weights; bfloat16 frozen
weights stay within bfloat16 noise of float32 ones. Methods: `--method`
(and its first spelling `--mode`) parses into the grid with the peers each
method has; every method runs one step on the tiny preset and trains what
training builds; with torch installed, PEFT's method counts as ours does.
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

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning.bench import flops
from prompt_tuning.bench import spec as spec_lib
from prompt_tuning.bench.__main__ import build_specs
from prompt_tuning.bench.__main__ import main as bench_main
from prompt_tuning.bench.__main__ import parse_flags
from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import initializers
from prompt_tuning.training import optimizers
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import count_params
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
  # Plain T5's tree for every method: what a checkpoint holds.
  want = jax.eval_shape(T5(config).init, jax.random.PRNGKey(0), tokens,
                        tokens, tokens)
  want = jax.tree_util.tree_map(
      lambda x: (x.shape, x.dtype), nn.unbox(want["params"]))
  got = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params)
  assert got == want
  kernel = lambda i: params["encoder"][f"layers_{i}"]["mlp"]["wo"]["kernel"]
  assert not np.array_equal(np.asarray(kernel(0)), np.asarray(kernel(1)))


ALL_METHODS = "prompt,deep_prompt,prefix,p_tuning,ia3,lora,model"


def test_bench_method_lists_agree_with_the_methods_package():
  # spec.py imports no JAX, so it spells the names out (every method the
  # bench can feed its synthetic batch; the list may trail the package's).
  assert set(spec_lib.METHODS) <= set(methods.METHODS)
  assert spec_lib.PROMPT_METHODS == tuple(
      m for m in methods.PROMPT_METHODS if m in spec_lib.METHODS)
  assert set(spec_lib.METHOD_FIELDS) <= set(methods.METHODS)


def test_method_flag_parses_into_the_grid_with_each_methods_peer():
  flags = parse_flags(["--method", ALL_METHODS, "--peer", "all",
                       "--prefix_layout", "li_liang,peft", "--lora_rank",
                       "4", "--prefix_length", "5"])
  assert flags.mode == ALL_METHODS.split(",")
  specs = build_specs(flags)
  peers = [(s.impl, s.mode) for s in specs if s.impl != "ours"]
  # deep_prompt has no PEFT peer; model's peer is HF full fine-tuning.
  assert peers == [("peft", "prompt"), ("peft", "prefix"),
                   ("peft", "p_tuning"), ("peft", "ia3"), ("peft", "lora"),
                   ("hf_full", "model")]
  ours = [(s.mode, s.prefix_layout) for s in specs if s.impl == "ours"]
  assert ours == [("prompt", "li_liang"), ("deep_prompt", "li_liang"),
                  ("prefix", "li_liang"), ("prefix", "peft"),
                  ("p_tuning", "li_liang"), ("ia3", "li_liang"),
                  ("lora", "li_liang"), ("model", "li_liang")]
  assert all(s.lora_rank == 4 and s.prefix_length == 5 for s in specs)
  assert [s.prefix_layout for s in specs if s.impl == "peft"] == ["peft"] * 5
  # Methods without an input prompt are fed the prompt's positions as tokens.
  by_mode = {s.mode: s for s in specs if s.impl == "ours"}
  assert by_mode["p_tuning"].input_tokens == flags.inputs
  assert by_mode["lora"].input_tokens == flags.inputs + flags.prompt
  assert {s.backward for s in specs if s.mode == "prefix"} == {
      "prompt", "decoder"}
  # Only a run's own method options are reported.
  assert "lora_rank" not in by_mode["prompt"].describe()
  assert by_mode["lora"].describe()["lora_rank"] == 4


def test_mode_keeps_its_first_meaning():
  specs = build_specs(parse_flags(["--mode", "prompt,model",
                                   "--peer", "peft"]))
  assert [(s.impl, s.mode) for s in specs] == [
      ("peft", "prompt"), ("ours", "prompt"), ("ours", "model")]
  # No method listed: each peer runs its own (PEFT prompt, HF full).
  specs = build_specs(parse_flags(["--mode", "", "--peer", "all"]))
  assert [(s.impl, s.mode) for s in specs] == [("peft", "prompt"),
                                               ("hf_full", "model")]
  # A listed method without a PEFT peer leaves PEFT its default.
  specs = build_specs(parse_flags(["--method", "deep_prompt",
                                   "--peer", "peft"]))
  assert [(s.impl, s.mode) for s in specs] == [("peft", "prompt"),
                                               ("ours", "deep_prompt")]


@pytest.mark.parametrize("argv", [["--method", "adapter"],
                                  ["--prefix_layout", "p_tuning_v2"]])
def test_unknown_method_or_layout_is_one_line(argv, capsys):
  with pytest.raises(SystemExit):
    parse_flags(argv)
  assert "not known" in capsys.readouterr().err


def test_flop_backwards_order_and_the_decoder_only_count():
  small = flops.Shapes.from_t5_config(t5_config("t5_1_1_small"))
  count = lambda kind: flops.step_flops(small, kind, 4, 84, 8)
  assert count("decoder") < count("prompt") < count("model")
  fwd = flops.forward_flops(small, 4, 84, 8)
  # Nothing trains in the encoder: the backward is the decoder's and the
  # head's input gradients, the cross keys/values being constants.
  assert count("decoder") == pytest.approx(
      fwd["total"] + fwd["decoder_weights"] + fwd["head"] +
      2 * fwd["decoder_self"] + fwd["cross"])
  assert fwd["weights"] == pytest.approx(
      fwd["total"] - fwd["attention"])


# Trainable parameters on t5_1_1_tiny (H=32, 4 heads of 8, F=64, 2 + 2
# layers), P=2 prompt vectors, P'=10 prefix positions, LoRA r=8: by hand.
_H, _A, _F, _P, _PREFIX, _R = 32, 32, 64, 2, 10, 8
TINY_TRAINABLE = {
    "prompt": _P * _H,
    "deep_prompt": 3 * _P * _H,  # the input prompt + one per encoder layer
    ("prefix", "li_liang"): _PREFIX * 2 * 6 * _A,  # k, v of 6 attentions
    ("prefix", "peft"): _PREFIX * 2 * 2 * _A,  # PEFT's [P', 2 L A] table
    "p_tuning": _P * _H + 3 * (_H * _H + _H),  # embedding + 3-layer MLP
    "ia3": 6 * 2 * _A + 4 * _F,  # k, v of 6 attentions; wo of 4 MLPs
    "lora": 6 * 2 * (_H * _R + _R * _A),  # q, v of 6 attentions
}


def test_bench_runs_one_step_of_every_method_on_the_tiny_preset():
  lines = bench_main([
      "--preset", "t5_1_1_tiny", "--method", ALL_METHODS, "--prefix_layout",
      "li_liang,peft", "--batch", "2", "--inputs", "8", "--prompt", "2",
      "--targets", "2", "--steps", "1", "--warmup", "0", "--dtype",
      "float32", "--frozen_dtype", "float32", "--matmul_size", "256",
      "--no-isolate"])
  runs = [l for l in lines if l["kind"] == "run"]
  assert len(runs) == 8
  for r in runs:
    assert "error" not in r, r.get("error")
    assert r["step_s"] > 0 and np.isfinite(r["loss_last"])
    assert r["flops_per_step"] > 0
    key = r["mode"] if r["mode"] != "prefix" else ("prefix",
                                                   r["prefix_layout"])
    if r["mode"] == "model":
      assert r["params_frozen"] == 0
    else:
      assert r["params_trainable"] == TINY_TRAINABLE[key], key
  ratios = {l["method"] for l in lines if l.get("vs") == "ours_model_tuning"}
  assert ratios == set(ALL_METHODS.split(",")) - {"model"}


def _fixture_config():
  from prompt_tuning.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  config, _ = load_pretrained(HF_T5_1_1, None)
  return config


@pytest.mark.parametrize("mode", ALL_METHODS.split(","))
def test_bench_trains_what_training_builds(mode):
  """Random frozen weights through the bench's builder give the trainable
  tree (names, shapes, dtypes) that `setup.build_model` gives on a real
  checkpoint of the same shapes, and the same bound method. (The fixture
  has 2 encoder and 3 decoder layers, which PEFT's prefix layout refuses;
  the tiny run above counts that layout.)"""
  from prompt_tuning.bench import ours  # pylint: disable=g-import-not-at-top
  spec = spec_lib.RunSpec(
      impl="ours", preset="t5_1_1_tiny", mode=mode, batch=2, inputs=4,
      prompt=3, targets=2, steps=1, warmup=0, frozen_dtype="float32",
      dtype="float32")
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  run = setup.build_model(
      initial_checkpoint_path=HF_T5_1_1, model_config=None, mode=mode,
      prompt=ours.prompt_config(spec), mesh=mesh,
      rules=partitioning.logical_axis_rules(), vocabulary=None,
      rng=jax.random.PRNGKey(0), dropout_rate=0.0,
      method=ours.make_method(spec))
  config = _fixture_config().replace(dropout_rate=0.0)
  built = ours.build_run(config, spec, ours.random_params(config, spec),
                         mesh)
  shapes = lambda tree: jax.tree_util.tree_map(
      lambda x: (x.shape, x.dtype), tree)
  assert shapes(built.trainable) == shapes(run.trainable)
  assert count_params(built.trainable) == count_params(run.trainable) > 0
  assert built.method == run.method
  assert type(built.model) is type(run.model)


@pytest.mark.parametrize("mode", ["prompt", "p_tuning", "prefix", "ia3",
                                  "lora"])
def test_peft_peer_trains_what_ours_trains(mode):
  """PEFT's method on the same shapes trains as many parameters as ours
  (its prompt tables hold 2P rows on a seq2seq model, one per submodule, of
  which the encoder sees P), and its step runs."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  pytest.importorskip("peft")
  import dataclasses  # pylint: disable=g-import-not-at-top
  from prompt_tuning.bench import harness  # pylint: disable=g-import-not-at-top
  from prompt_tuning.bench import peer  # pylint: disable=g-import-not-at-top
  spec = spec_lib.RunSpec(
      impl="peft", preset="t5_1_1_tiny", mode=mode, batch=2, inputs=8,
      prompt=2, targets=2, steps=1, warmup=0, prefix_layout="peft")
  spec = dataclasses.replace(spec, shapes=harness.shapes_of(spec.preset))
  result = peer.run(spec)
  key = ("prefix", "peft") if mode == "prefix" else mode
  extra = {"prompt": _P * _H, "p_tuning": _P * _H}.get(mode, 0)
  assert result["params_trainable"] == TINY_TRAINABLE[key] + extra
  assert np.isfinite(result["loss_last"]) and result["step_s"] > 0
  assert result["flops_per_step"] == flops.step_flops(
      flops.Shapes(**spec.shapes), spec.backward, 2, 10, 2)
