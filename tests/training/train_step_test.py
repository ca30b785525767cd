"""The PEFT invariants of the train step: only the prompt trains, sharded
equals single-device, microbatching equals one batch, no weight gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.pretrained.assemble import flat_names
from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import initializers
from prompt_tuning.training import optimizers
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import create_train_state
from prompt_tuning.training.state import split_trainable

CONFIG = t5_config("t5_1_1_tiny", dtype="float32", dropout_rate=0.1)
PROMPT_LENGTH = 4


def _batch(n=8, t=6, l=3, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, CONFIG.vocab_size, (n, t)).astype(np.int32)
  enc[:, -2:] = 0  # padding
  enc[:, -3] = 1  # EOS
  tgt = rng.integers(2, CONFIG.vocab_size, (n, l)).astype(np.int32)
  tgt[:, -1] = 1
  dec_in = np.pad(tgt, ((0, 0), (1, 0)))[:, :-1]
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.int32)}


@functools.lru_cache(maxsize=None)
def _init():
  model = PromptedT5(CONFIG, PROMPT_LENGTH, initializers.random_uniform(0.5))
  b = _batch()
  variables = jax.jit(model.init)(
      jax.random.PRNGKey(0), b["encoder_input_tokens"],
      b["decoder_input_tokens"], b["decoder_target_tokens"])
  params = jax.tree_util.tree_map(lambda x: np.asarray(x.unbox()),
                                  variables["params"],
                                  is_leaf=lambda x: hasattr(x, "unbox"))
  return model, params


def _model_and_params():
  """A fresh (mutable) copy of the cached tiny model's params."""
  model, params = _init()
  return model, jax.tree_util.tree_map(jnp.asarray, params)


def _step(model, tx, **kwargs):
  return jax.jit(lambda s, f, b: step_lib.train_step(s, f, b, model=model,
                                                     tx=tx, **kwargs))


def test_only_the_prompt_changes_and_frozen_is_untouched():
  model, params = _model_and_params()
  trainable, frozen = split_trainable(params, "prompt")
  assert list(flat_names(trainable)) == ["encoder/prompt/prompt"]
  frozen_before = jax.tree_util.tree_map(np.array, frozen)
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  new_state, metrics = _step(model, tx)(state, frozen, _batch())
  assert int(new_state.step) == 1
  assert metrics["tokens"] == 24
  delta = np.abs(new_state.params["encoder"]["prompt"]["prompt"] -
                 trainable["encoder"]["prompt"]["prompt"]).max()
  assert delta > 0
  for name, value in flat_names(frozen).items():
    np.testing.assert_array_equal(np.asarray(value),
                                  flat_names(frozen_before)[name], err_msg=name)


def test_model_mode_trains_every_weight():
  model, params = _model_and_params()
  t5 = T5(CONFIG)
  del params["encoder"]["prompt"]
  trainable, frozen = split_trainable(params, "model")
  assert frozen == {}
  tx = optimizers.adafactor(optimizers.MODEL_TUNING)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  new_state, _ = _step(t5, tx)(state, frozen, _batch())
  kernel = lambda p: p["decoder"]["layers_1"]["mlp"]["wo"]["kernel"]
  assert np.abs(kernel(new_state.params) - kernel(trainable)).max() > 0
  del model


def test_prompt_mode_has_no_weight_gradients_in_the_compiled_step():
  model, params = _model_and_params()
  trainable, frozen = split_trainable(params, "prompt")
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  lowered = _step(model, tx).lower(state, frozen, _batch())
  # The step's outputs are the new state (prompt-shaped leaves, optimizer
  # statistics, step, rng) and scalar metrics: no frozen-weight-shaped
  # output, and all outputs together are a few prompts' worth of numbers.
  outputs = jax.tree_util.tree_leaves(lowered.out_info)
  out_shapes = {tuple(x.shape) for x in outputs}
  prompt_shape = (PROMPT_LENGTH, CONFIG.emb_dim)
  # (The tiny relpos table [4 heads, 32 buckets] has the prompt's shape.)
  weight_shapes = {tuple(x.shape) for x in jax.tree_util.tree_leaves(frozen)
                   if x.ndim >= 2} - {prompt_shape}
  assert not out_shapes & weight_shapes
  prompt_size = PROMPT_LENGTH * CONFIG.emb_dim
  assert sum(int(np.prod(x.shape)) for x in outputs) < 4 * prompt_size
  # And the compiled step computes nothing frozen-shaped as a gradient:
  # jax.grad over the prompt alone is what train_step differentiates.
  grads = jax.grad(lambda p: step_lib.eval_step(
      p, frozen, _batch(), model=model)["loss_sum"])(trainable)
  assert list(flat_names(grads)) == ["encoder/prompt/prompt"]


def test_microbatching_equals_one_batch():
  model, params = _model_and_params()
  trainable, frozen = split_trainable(params, "prompt")
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  one, m1 = _step(model, tx, enable_dropout=False)(state, frozen, _batch())
  four, m4 = _step(model, tx, enable_dropout=False, num_microbatches=4)(
      state, frozen, _batch())
  np.testing.assert_allclose(m4["loss_sum"], m1["loss_sum"], rtol=1e-5)
  np.testing.assert_allclose(four.params["encoder"]["prompt"]["prompt"],
                             one.params["encoder"]["prompt"]["prompt"],
                             atol=1e-6)
  with pytest.raises(ValueError, match=(
      r"^Batch size 8 is not divisible by num_microbatches=3\.")):
    _step(model, tx, num_microbatches=3)(state, frozen, _batch())


def test_sharded_step_equals_single_device_step():
  model, params = _model_and_params()
  trainable, frozen = split_trainable(params, "prompt")
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  single, m_single = _step(model, tx)(state, frozen, _batch())

  mesh = partitioning.create_mesh((4, 2))
  rules = partitioning.logical_axis_rules()
  frozen_sharded = jax.tree_util.tree_map(
      lambda box: jax.device_put(
          box.value,
          partitioning.sharding_for(box.names, mesh, rules, box.value.shape)),
      _boxed_frozen(model), is_leaf=lambda x: hasattr(x, "unbox"))
  frozen_sharded = jax.tree_util.tree_map(
      lambda value, like: jax.device_put(np.asarray(value), like.sharding),
      frozen, frozen_sharded)
  trainable_shardings = jax.tree_util.tree_map(
      lambda x: partitioning.sharding_for(("prompt", "prompt_embed"), mesh,
                                          rules, x.shape), trainable)
  shardings = setup.state_shardings(state, trainable_shardings, mesh)
  sharded_state = jax.device_put(state, shardings)
  step = step_lib.jit_train_step(
      model, tx, shardings,
      jax.tree_util.tree_map(lambda x: x.sharding, frozen_sharded),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  with partitioning.mesh_context(mesh, rules):
    new_state, metrics = step(sharded_state, frozen_sharded,
                              partitioning.shard_batch(_batch(), mesh))
  prompt = new_state.params["encoder"]["prompt"]["prompt"]
  assert prompt.sharding.is_fully_replicated
  kernel = frozen_sharded["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  np.testing.assert_allclose(float(metrics["loss_sum"]),
                             float(m_single["loss_sum"]), rtol=1e-5)
  np.testing.assert_allclose(prompt,
                             single.params["encoder"]["prompt"]["prompt"],
                             atol=1e-5)


def _boxed_frozen(model):
  b = _batch()
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), b["encoder_input_tokens"],
      b["decoder_input_tokens"], b["decoder_target_tokens"]))["params"]
  boxed = dict(boxed)
  encoder = dict(boxed["encoder"])
  del encoder["prompt"]
  boxed["encoder"] = encoder
  return jax.tree_util.tree_map(
      lambda box: box.replace_boxed(jnp.zeros(box.value.shape,
                                              box.value.dtype)),
      boxed, is_leaf=lambda x: hasattr(x, "unbox"))


def test_unknown_mode_and_missing_prompt_are_errors():
  _, params = _model_and_params()
  with pytest.raises(ValueError, match="Unknown tuning mode 'soft'"):
    split_trainable(params, "soft")
  del params["encoder"]["prompt"]
  with pytest.raises(ValueError, match="build the model with PromptedT5"):
    split_trainable(params, "prompt")


def test_step_outputs_equal_a_step_written_out_by_hand():
  import optax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts import merge_params  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import losses  # pylint: disable=g-import-not-at-top
  model, params = _model_and_params()
  trainable, frozen = split_trainable(params, "prompt")
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(1))
  batch = _batch()
  rng, step_rng = jax.random.split(state.rng)

  def by_hand(dropout, factor):
    def loss_fn(p):
      logits = model.apply(
          {"params": merge_params(p, frozen)}, batch["encoder_input_tokens"],
          batch["decoder_input_tokens"], batch["decoder_target_tokens"],
          enable_dropout=dropout, rngs={"dropout": step_rng} if dropout else {})
      return losses.cross_entropy_with_z_loss(
          logits, batch["decoder_target_tokens"],
          batch["decoder_loss_weights"], 1e-4, factor)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, _ = tx.update(grads, state.opt_state, trainable)
    return metrics, grads, optax.apply_updates(trainable, updates)

  @jax.jit
  def run(state, frozen, batch):  # the defaults: dropout on, z_loss 1e-4
    return step_lib.train_step(state, frozen, batch, model=model, tx=tx)

  @jax.jit
  def run_normalized(state, frozen, batch):
    return step_lib.train_step(state, frozen, batch, model=model, tx=tx,
                               enable_dropout=False,
                               loss_normalizing_factor=7.0)

  for got, (metrics, grads, params_after) in (
      (run(state, frozen, batch), by_hand(True, None)),
      (run_normalized(state, frozen, batch), by_hand(False, 7.0))):
    new_state, got_metrics = got
    np.testing.assert_array_equal(new_state.rng, rng)
    assert int(new_state.step) == int(state.step) + 1
    for name, value in metrics.items():
      np.testing.assert_allclose(got_metrics[name], value, rtol=1e-5)
    np.testing.assert_allclose(got_metrics["grad_norm"],
                               optax.tree.norm(grads), rtol=1e-5)
    prompt = new_state.params["encoder"]["prompt"]["prompt"]
    np.testing.assert_allclose(
        prompt, params_after["encoder"]["prompt"]["prompt"], atol=1e-6)
    assert bool(got_metrics["state_finite"])
    np.testing.assert_allclose(got_metrics["params_max_abs"],
                               np.abs(np.asarray(prompt)).max(), rtol=1e-6)
  # Dropout and the normalizing factor both change the loss.
  assert not np.isclose(run(state, frozen, batch)[1]["loss_sum"],
                        run_normalized(state, frozen, batch)[1]["loss_sum"])
