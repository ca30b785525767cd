"""Every method through the one loop: what trains, how it reaches the model.

Each method is built as a run builds it (`setup.build_model` on a tiny T5X
checkpoint) and checked for: exactly its own parameters train (and only
those are differentiated in the compiled step), its hooks start from the
frozen model where the method says so, the reparameterisations and merges
compute what they claim, and a run resumes bit-exactly. LoRA's train step is
also written out by hand through a plain T5 with merged kernels.
"""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning.methods import base as method_base
from prompt_tuning.methods import ia3 as ia3_lib
from prompt_tuning.methods import lora as lora_lib
from prompt_tuning.methods import p_tuning as p_tuning_lib
from prompt_tuning.methods import prefix as prefix_lib
from prompt_tuning.methods import wayward
from prompt_tuning.models import T5
from prompt_tuning.models import t5 as t5_lib
from prompt_tuning.models import t5_config
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.prompts import merge_params
from prompt_tuning.training import loop
from prompt_tuning.training import optimizers
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import create_train_state
from tests import tiny_tasks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = t5_config("t5_1_1_tiny", dtype="float32")
P = 3

# Method -> (options, the trainable names it must have, as regexes).
CASES = {
    "prompt": (None, [r"encoder/prompt/prompt"]),
    "deep_prompt": (methods.DeepPromptConfig(mode="add",
                                             stacks=("encoder", "decoder")),
                    [r"encoder/prompt/prompt",
                     r"(encoder|decoder)/layers_\d/layer_prompt"]),
    "prefix": (methods.PrefixConfig(length=2),
               [r"prefix/table"]),
    "p_tuning": (methods.PTuningConfig(encoder="lstm", hidden=8,
                                       num_layers=1),
                 [r"prompt_encoder/(embedding|lstm_0_(forward|backward)/"
                  r"(w_ih|w_hh|b_ih|b_hh)|mlp_[01]/(kernel|bias))"]),
    "ia3": (methods.IA3Config(),
            [r"(encoder|decoder)/layers_\d/(attention|self_attention|"
             r"encoder_decoder_attention)/(key|value)/ia3_scaling",
             r"(encoder|decoder)/layers_\d/mlp/wo/ia3_scaling"]),
    "lora": (methods.LoraConfig(rank=2, alpha=4.0),
             [r"(encoder|decoder)/layers_\d/(attention|self_attention|"
              r"encoder_decoder_attention)/(query|value)/lora_[ab]"]),
}


def _batch(n=8, t=6, l=3, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, CONFIG.vocab_size, (n, t)).astype(np.int32)
  enc[:, -2:] = 0
  enc[:, -3] = 1
  tgt = rng.integers(2, CONFIG.vocab_size, (n, l)).astype(np.int32)
  tgt[:, -1] = 1
  return {"encoder_input_tokens": enc,
          "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.int32)}


class _Vocab:
  """Token i for the i-th letter: enough for a wayward text."""

  def encode(self, s):
    return [2 + (ord(c) % 50) for c in s]


@functools.lru_cache(maxsize=None)
def _run(frozen_path, name, gamma=0.0):
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  prompt = setup.PromptConfig(length=P, init="random_uniform",
                              wayward_gamma=gamma, text="ab")
  options, _ = CASES.get(name, (None, None))
  method = setup.make_method(name, prompt, {name: options} if options else {})
  return setup.build_model(
      initial_checkpoint_path=frozen_path, model_config=CONFIG, mode=name,
      prompt=prompt, mesh=mesh, rules=partitioning.logical_axis_rules(),
      vocabulary=_Vocab(), rng=jax.random.PRNGKey(0), dtype="float32",
      method=method)


def _grads(run, trainable, batch):
  return jax.grad(lambda p: step_lib.eval_step(
      p, run.frozen, batch, model=run.model, method=run.method)["loss_sum"])(
          trainable)


@pytest.mark.parametrize("name", sorted(CASES))
def test_exactly_the_methods_parameters_train(frozen, name):
  run = _run(frozen, name)
  import re  # pylint: disable=g-import-not-at-top
  names = list(method_base.flat(run.trainable))
  patterns = CASES[name][1]
  assert names and all(any(re.fullmatch(p, n) for p in patterns)
                       for n in names), names
  for p in patterns:  # and every kind is there
    assert any(re.fullmatch(p, n) for n in names), p
  # Nothing trainable is frozen too, and the frozen tree is the checkpoint's.
  assert not set(names) & set(method_base.flat(run.frozen))
  assert not any("lora" in n or "ia3" in n or "prefix" in n or "prompt" in n
                 for n in method_base.flat(run.frozen))
  # Every trainable leaf gets a gradient; for 'add' deep prompts the input
  # prompt too (with 'replace' it would be overwritten by layer 0).
  grads = method_base.flat(_grads(run, run.trainable, _batch()))
  dead = [n for n, g in grads.items() if not np.any(np.asarray(g))]
  if name == "lora":
    # lora_b = 0 at start, so lora_a's gradient is 0 (as in PEFT).
    dead = [n for n in dead if not n.endswith("lora_a")]
  assert not dead, dead


@pytest.mark.parametrize("name", ["ia3", "lora", "prefix"])
def test_no_frozen_weight_is_an_output_of_the_compiled_step(frozen, name):
  run = _run(frozen, name)
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(run.trainable, tx, jax.random.PRNGKey(1))
  step = jax.jit(functools.partial(step_lib.train_step, model=run.model,
                                   tx=tx, method=run.method))
  lowered = step.lower(state, run.frozen, _batch())
  outputs = jax.tree_util.tree_leaves(lowered.out_info)
  trainable_size = sum(int(np.prod(x.shape)) for x in
                       jax.tree_util.tree_leaves(run.trainable))
  # New state (params, Adafactor's unfactored statistics), step, rng and
  # scalar metrics: a few times the method's parameters, never a weight.
  assert sum(int(np.prod(x.shape)) for x in outputs) < 4 * trainable_size
  frozen_size = sum(int(np.prod(x.shape)) for x in
                    jax.tree_util.tree_leaves(run.frozen))
  assert 4 * trainable_size < frozen_size


def test_hooks_at_their_initial_values_are_the_frozen_model(frozen):
  batch = _batch()
  plain = _run(frozen, "model")
  reference = plain.model.apply({"params": plain.trainable},
                                batch["encoder_input_tokens"],
                                batch["decoder_input_tokens"],
                                batch["decoder_target_tokens"])
  for name in ("ia3", "lora"):
    run = _run(frozen, name)
    got = run.model.apply({"params": merge_params(run.trainable, run.frozen)},
                          batch["encoder_input_tokens"],
                          batch["decoder_input_tokens"],
                          batch["decoder_target_tokens"])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(reference),
                                  err_msg=name)


def _randomised(tree, seed=3):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("name,merge", [
    ("lora", lambda p: lora_lib.merge(p, 4.0 / 2)),
    ("ia3", ia3_lib.merge)])
def test_merged_for_serving_equals_the_adapted_model(frozen, name, merge):
  run = _run(frozen, name)
  trainable = _randomised(run.trainable)
  batch = _batch()
  args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
          batch["decoder_target_tokens"])
  adapted = run.model.apply(
      {"params": merge_params(trainable, run.frozen)}, *args)
  merged = T5(CONFIG).apply(
      {"params": merge(merge_params(trainable, run.frozen))}, *args)
  np.testing.assert_allclose(np.asarray(merged), np.asarray(adapted),
                             atol=2e-5, rtol=1e-5)
  assert not np.allclose(np.asarray(adapted), np.asarray(
      _run(frozen, "model").model.apply(
          {"params": _run(frozen, "model").trainable}, *args)), atol=1e-3)


def test_lora_train_step_written_out_by_hand(frozen):
  """One Adafactor step of LoRA, recomputed through a plain T5 whose
  targeted kernels are W + alpha/r * A @ B: the gradient with respect to
  A and B, the update, and the loss all equal train_step's."""
  run = _run(frozen, "lora")
  trainable = _randomised(run.trainable)
  batch = _batch()
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  scaling = 4.0 / 2
  plain = T5(CONFIG)

  def loss(adapter):
    params = method_base.flat(run.frozen)
    for name, value in method_base.flat(adapter).items():
      if name.endswith("lora_a"):
        stem = name[:-len("lora_a")]
        b = method_base.flat(adapter)[stem + "lora_b"]
        params[stem + "kernel"] = params[stem + "kernel"] + scaling * value @ b
    logits = plain.apply({"params": method_base.nested(params)},
                         batch["encoder_input_tokens"],
                         batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"])
    logp = jax.nn.log_softmax(logits)
    target = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None],
                                 axis=-1)[..., 0]
    z = jax.scipy.special.logsumexp(logits, axis=-1)
    weights = batch["decoder_loss_weights"]
    return jnp.sum((-target + 1e-4 * jnp.square(z)) * weights)

  value, grads = jax.value_and_grad(loss)(trainable)
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  expected = optax.apply_updates(trainable, updates)

  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  new_state, metrics = step_lib.train_step(
      state, run.frozen, batch, model=run.model, tx=tx, enable_dropout=False,
      method=run.method)
  np.testing.assert_allclose(float(metrics["loss_sum"]) +
                             float(metrics["z_loss_sum"]), float(value),
                             rtol=1e-5)
  for name, want in method_base.flat(expected).items():
    np.testing.assert_allclose(
        np.asarray(method_base.flat(new_state.params)[name]),
        np.asarray(want), atol=1e-5, rtol=1e-4, err_msg=name)


def test_p_tuning_and_prefix_reparameterisations_are_merged_once(frozen):
  for name, options, produced in (
      ("p_tuning", methods.PTuningConfig(encoder="mlp", hidden=5),
       "encoder/prompt/prompt"),
      ("prefix", methods.PrefixConfig(length=2, hidden=7),
       "decoder/layers_1/encoder_decoder_attention/prefix_value")):
    method = setup.make_method(name, setup.PromptConfig(length=P),
                               {name: options}).bind(CONFIG)
    trainable = method_base.nested({
        n: jnp.ones(shape) * 0.1 for n, (shape, _, _) in
        method.reparameterisation(CONFIG).items()})
    merged = method.model_params(trainable)
    assert produced in method_base.flat(merged)
    assert not any(n.startswith(("prompt_encoder/", "prefix/"))
                   for n in method_base.flat(merged))
    # Merging a merged tree changes nothing (what evaluation and serving do).
    assert method_base.flat(method.model_params(merged)).keys() == \
        method_base.flat(merged).keys()


def test_prefix_layouts_feed_the_documented_layers():
  li = methods.PrefixConfig(length=2).bind(CONFIG)
  assert li.blocks(CONFIG)[:3] == [("encoder_self", 0, 0, 1),
                                   ("encoder_self", 1, 2, 3),
                                   ("decoder_self", 0, 4, 5)]
  assert li.num_blocks(CONFIG) == 2 * (2 + 2 + 2)
  five = CONFIG.replace(num_encoder_layers=5, num_decoder_layers=5)
  peft = methods.PrefixConfig(length=2, layout="peft").bind(five)
  assert [(k, v) for _, _, k, v in peft.blocks(five)] == [
      (0, 1), (4, 5), (8, 9), (2, 3), (6, 7)]
  table = jnp.arange(2 * 10 * 4 * 8, dtype=jnp.float32).reshape(2, 10, 4, 8)
  merged = method_base.flat(peft.model_params({"prefix": {"table": table}}))
  np.testing.assert_array_equal(
      merged["decoder/layers_1/self_attention/prefix_key"], table[:, 4])
  scanned = five.replace(scan_layers=True)
  stacked = method_base.flat(methods.PrefixConfig(
      length=2, layout="peft").bind(scanned).model_params(
          {"prefix": {"table": table}}))
  np.testing.assert_array_equal(
      stacked["decoder/layers/self_attention/prefix_value"][3], table[:, 3])
  with pytest.raises(ValueError, match="as many decoder layers"):
    methods.PrefixConfig(layout="peft").bind(
        CONFIG.replace(num_decoder_layers=3))


def test_lstm_prompt_encoder_is_pytorchs():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  width, hidden, length = 6, 4, 5
  lstm = torch.nn.LSTM(width, hidden, num_layers=2, bidirectional=True,
                       batch_first=True)
  head = torch.nn.Sequential(torch.nn.Linear(2 * hidden, 2 * hidden),
                             torch.nn.ReLU(),
                             torch.nn.Linear(2 * hidden, width))
  embedding = torch.randn(length, width)
  with torch.no_grad():
    want = head(lstm(embedding[None])[0])[0].numpy()
  names = {"prompt_encoder/embedding": embedding.numpy()}
  for layer in range(2):
    for direction, suffix in (("forward", ""), ("backward", "_reverse")):
      for ours, theirs in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"),
                           ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
        names[f"prompt_encoder/lstm_{layer}_{direction}/{ours}"] = getattr(
            lstm, f"{theirs}_l{layer}{suffix}").detach().numpy()
  for i, j in ((0, 0), (1, 2)):
    names[f"prompt_encoder/mlp_{i}/kernel"] = head[j].weight.detach().numpy().T
    names[f"prompt_encoder/mlp_{i}/bias"] = head[j].bias.detach().numpy()
  got = p_tuning_lib.encode({k: jnp.asarray(v) for k, v in names.items()},
                            "lstm", 2)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_wayward_penalty_is_the_official_distance(frozen):
  run = _run(frozen, "prompt", gamma=0.5)
  target = wayward.discrete_prompt(
      np.asarray(run.frozen["token_embedder"]["embedding"]), _Vocab(),
      "ab", P)
  np.testing.assert_array_equal(target[2], 0)  # past the text's 2 tokens
  np.testing.assert_array_equal(target[0], np.asarray(
      run.frozen["token_embedder"]["embedding"])[2 + ord("a") % 50])
  np.testing.assert_array_equal(run.method.wayward_target, target)
  prompt = np.asarray(run.trainable["encoder"]["prompt"]["prompt"])
  want = 0.5 * np.sum((prompt - run.method.wayward_target) ** 2) / P
  np.testing.assert_allclose(float(run.method.penalty(run.trainable)), want,
                             rtol=1e-6)
  # Added to what is differentiated, not to the reported loss.
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(run.trainable, tx, jax.random.PRNGKey(1))
  _, with_penalty = step_lib.train_step(state, run.frozen, _batch(),
                                        model=run.model, tx=tx,
                                        enable_dropout=False,
                                        method=run.method)
  _, without = step_lib.train_step(state, run.frozen, _batch(),
                                   model=run.model, tx=tx,
                                   enable_dropout=False)
  assert float(with_penalty["loss_sum"]) == float(without["loss_sum"])
  assert float(with_penalty["grad_norm"]) != float(without["grad_norm"])


def _train(model_dir, frozen_path, steps, name):
  tiny_tasks.register()
  options = CASES[name][0]
  kwargs = {name: options} if options is not None else {}
  return loop.train(
      model_dir=model_dir, initial_checkpoint_path=frozen_path,
      model_config=CONFIG, mixture_or_task_name="tiny_classify",
      task_feature_lengths={"inputs": 32, "targets": 4}, mode=name,
      prompt=setup.PromptConfig(length=P, init="sampled_vocab"),
      optimizer=optimizers.AdafactorConfig(learning_rate=0.01),
      schedule=loop.TrainConfig(train_steps=steps, batch_size=8,
                                checkpoint_period=2, eval_period=0,
                                log_period=1),
      mesh_shape=(4, 2), **kwargs)


def _leaves(model_dir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = ocp.StandardCheckpointer().restore(
      os.path.join(model_dir, f"checkpoint_{step}", "state"))
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(state)}


# One method with hooks in the frozen model (sharded over the model axis) and
# one whose trainable tree is a reparameterisation: each compiles the step
# twice, so the other methods rely on the same code path.
@pytest.mark.parametrize("name", ["lora", "p_tuning"])
def test_resume_is_bit_exact(tmp_path, frozen, name):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  _train(straight, frozen, 4, name)
  _train(resumed, frozen, 2, name)
  _train(resumed, frozen, 4, name)
  a, b = _leaves(straight, 4), _leaves(resumed, 4)
  assert a.keys() == b.keys() and any("params" in k for k in a)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]),
                                  err_msg=key)
  params = [k for k in a if k.startswith("['params']")]
  before = _leaves(straight, 2)
  assert any(not np.array_equal(a[k], before[k]) for k in params)


def _cli(*bindings):
  return subprocess.run(
      [sys.executable, "-m", "prompt_tuning.train",
       "--gin_file=runs/quickstart.gin", "--gin.MODEL_DIR='/nonexistent/x'",
       *bindings], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PROMPT_TUNING_COMPILATION_CACHE="off"))


@pytest.mark.parametrize("binding,message", [
    ("--gin.METHOD='lorra'",
     "error: METHOD = 'lorra' is not a method. Did you mean 'lora'?"),
    ("--gin.LoraConfig.rank=0", "error: LoraConfig.rank must be >= 1"),
    ("--gin.IA3Config.targets=['k']",
     "error: IA3 targets: 'k' is not a projection of T5"),
    ("--gin.PrefixConfig.layout='hf'",
     "error: PrefixConfig.layout = 'hf' is not one of"),
    ("--gin.DeepPromptConfig.stacks=['encoder','dec']",
     "error: DeepPromptConfig.stacks = ('encoder', 'dec'): give one or both"),
])
def test_gin_errors_for_methods_are_one_line(binding, message):
  result = _cli("--gin.METHOD='lora'", binding)
  # Values gin parsed fine but the method refuses: a user error (exit 1,
  # as for every refused setting), one line, no traceback.
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(message), last
  assert "Traceback" not in result.stderr


def test_adapter_targets_match_names_and_paths():
  from prompt_tuning.models import adapters  # pylint: disable=g-import-not-at-top
  path = ("decoder", "layers_3", "self_attention", "query")
  assert adapters.matches(("query",), path)
  assert not adapters.matches(("value",), path)
  assert adapters.matches((r"decoder/layers_\d+/self_attention/query",), path)
  assert not adapters.matches((r"encoder/.*",), path)
  with pytest.raises(ValueError, match="not a regular expression"):
    AdapterConfig(lora_rank=1, lora_targets=("encoder/(",))


def test_decoder_layer_prompts_are_replaced_prompt_positions():
  """The reference runs P real decoder positions in front of the targets and
  overwrites them with each layer's prompt before the layer (a method
  interceptor on the plain T5): the tokens' logits are the adapted model's,
  which computes those positions' keys and values as a prefix instead."""
  length = 3
  ad = AdapterConfig(decoder_layer_prompt_length=length)
  model, plain = T5(CONFIG.replace(adapters=ad)), T5(CONFIG)
  tokens = np.array([[5, 6, 7, 1, 0], [3, 4, 1, 0, 0]], np.int32)
  targets = np.array([[8, 9, 1, 0], [4, 1, 0, 0]], np.int32)
  inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  params = _randomised(nn.unbox(jax.jit(model.init)(
      jax.random.PRNGKey(0), tokens, inputs, targets)["params"]), seed=7)
  prompts = {name: params["decoder"][name].pop("layer_prompt")
             for name in params["decoder"] if name.startswith("layers_")}
  assert len(prompts) == CONFIG.num_decoder_layers
  adapted = model.apply({"params": _with_prompts(params, prompts)}, tokens,
                        inputs, targets)

  def replace(next_fun, args, kwargs, context):
    if (isinstance(context.module, t5_lib.DecoderLayer) and
        context.method_name == "__call__"):
      prompt = prompts[context.module.name][None].astype(args[0].dtype)
      x = jnp.concatenate([jnp.broadcast_to(
          prompt, (args[0].shape[0],) + prompt.shape[1:]),
                           args[0][:, length:]], axis=1)
      args = (x,) + args[1:]
    return next_fun(*args, **kwargs)

  pad = lambda x: np.pad(x, ((0, 0), (length, 0)), constant_values=2)
  with nn.intercept_methods(replace):
    reference = plain.apply({"params": params}, tokens, pad(inputs),
                            pad(targets))[:, length:]
  real = targets > 0
  np.testing.assert_allclose(np.asarray(adapted)[real],
                             np.asarray(reference)[real], atol=1e-5,
                             rtol=1e-5)
  # and the prompt matters
  assert not np.allclose(adapted, plain.apply({"params": params}, tokens,
                                              inputs, targets), atol=1e-3)


def _with_prompts(params, prompts):
  out = jax.tree_util.tree_map(lambda x: x, params)
  for name, prompt in prompts.items():
    out["decoder"][name] = dict(out["decoder"][name], layer_prompt=prompt)
  return out


_DECODING_HOOKS = {
    "prefixes": AdapterConfig(
        lora_rank=2, lora_targets=("query", "value", "wo"),
        ia3_targets=("key", "value", "wo"), prefix_length=2,
        prefix_attentions=("encoder_self", "decoder_self", "cross")),
    "layer_prompts": AdapterConfig(
        lora_rank=2, lora_targets=("key", "value"), ia3_targets=("key",),
        prefix_length=2, prefix_attentions=("cross",),
        decoder_layer_prompt_length=3),
}


@pytest.mark.parametrize("hooks", sorted(_DECODING_HOOKS))
@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_with_every_hook_equals_teacher_forcing(scan_layers,
                                                                hooks):
  """Prefixes on all three attentions (the decoder's self-attention ones in
  front of the KV cache, with their position bias), or decoder per-layer
  prompts (a computed prefix), with LoRA and IA3: each cached decoding step
  gives the teacher-forced logits."""
  from prompt_tuning.models import decoding  # pylint: disable=g-import-not-at-top
  ad = _DECODING_HOOKS[hooks]
  config = CONFIG.replace(adapters=ad, scan_layers=scan_layers)
  model = T5(config)
  tokens = np.array([[5, 6, 7, 1, 0], [3, 4, 1, 0, 0]], np.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, tokens[:, :3],
                               tokens[:, :3])["params"]
  params = _randomised(nn.unbox(params), seed=5)
  length = 4
  encoded, mask = model.apply({"params": params}, tokens,
                              method="encode_with_mask")
  targets = jax.random.randint(jax.random.PRNGKey(2), (2, length), 2,
                               config.vocab_size)
  inputs = decoding.shift_right(targets)
  expected = model.apply({"params": params}, encoded, mask, inputs,
                         jnp.ones_like(inputs), method="decode")
  cache = decoding.init_cache(model, params, encoded, mask, length)
  for i in range(length):
    logits, cache = decoding.decode_step(model, params, cache, encoded, mask,
                                         inputs[:, i], jnp.int32(i),
                                         max_decode_length=length)
    np.testing.assert_allclose(logits, expected[:, i], atol=1e-4, rtol=1e-4)
