"""Multitask prompts: the combinations, the task feature, mixed batches, and
PEFT's multitask prompt tuning (MPT) on the encoder."""

import dataclasses

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning.data import pipeline
from prompt_tuning.methods import base as method_base
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import merge_params
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from tests import tiny_tasks

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")
TASKS = ("tiny_copy", "tiny_classify")
P = 3


def _method(mode, **kwargs):
  init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -0.5, 0.5)
  method = methods.MultitaskPromptConfig(mode=mode, tasks=TASKS, length=P,
                                         **kwargs).bind(CONFIG)
  return dataclasses.replace(method, prompt_init=init)


def _trainable(method, seed=0):
  specs = method.reparameterisation(CONFIG)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(specs))
  return method_base.nested({
      name: init(key, shape) + 0.1 * jax.random.normal(key, shape)
      for key, (name, (shape, _, init)) in zip(keys, sorted(specs.items()))})


@pytest.mark.parametrize("mode", methods.multitask.MODES)
def test_each_mode_is_the_official_combination(mode):
  method = _method(mode)
  trainable = _trainable(method)
  names = method_base.flat(trainable)
  shared = np.asarray(names["multitask/shared"])
  task_ids = jnp.array([1, 0, 1])
  got = np.asarray(method.prompts(trainable, task_ids))
  for row, t in enumerate([1, 0, 1]):
    if mode == "add":
      want = shared + names["multitask/tasks"][t]
    elif mode == "concat":
      want = np.concatenate([shared, names["multitask/tasks"][t]], axis=0)
    elif mode == "concat_features":
      want = np.concatenate([shared, names["multitask/tasks"][t]], axis=1)
    elif mode == "project":
      kernel, bias = names["multitask/kernels"][t], names["multitask/biases"][t]
      want = np.einsum("ps,os->po", shared, kernel) + bias
    else:
      want = shared * (names["multitask/cols"][t] @ names["multitask/rows"][t])
    np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-6,
                               err_msg=f"{mode} row {row}")
  assert got.shape == (3, method.prompt_length(), CONFIG.emb_dim)


def test_initial_prompts_start_from_the_shared_init():
  for mode in ("add", "project", "concat_features"):
    method = _method(mode)
    specs = method.reparameterisation(CONFIG)
    key = jax.random.PRNGKey(4)
    trainable = method_base.nested({n: init(key, shape) for n, (
        shape, _, init) in specs.items()})
    prompts = np.asarray(method.task_prompts(trainable))
    # Every task's prompt is the run initializer's prompt at step 0.
    np.testing.assert_allclose(prompts[0], prompts[1], err_msg=mode)
    np.testing.assert_allclose(
        prompts[0], np.asarray(method.prompt_init(key, (P, CONFIG.emb_dim))),
        rtol=1e-6, err_msg=mode)


def test_a_mixed_batch_equals_each_task_alone(frozen):
  """Rows of different tasks in one batch get exactly their task's prompt."""
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  method = methods.MultitaskPromptConfig(mode="add", tasks=TASKS)
  prompt = setup.PromptConfig(length=P, init="random_uniform")
  run = setup.build_model(
      initial_checkpoint_path=frozen, model_config=CONFIG,
      mode="multitask_prompt", prompt=prompt, mesh=mesh,
      rules=partitioning.logical_axis_rules(), vocabulary=None,
      rng=jax.random.PRNGKey(0), dtype="float32",
      method=setup.make_method("multitask_prompt", prompt,
                               {"multitask_prompt": method}))
  trainable = _trainable(run.method, seed=2)
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, CONFIG.vocab_size, (4, 6)).astype(np.int32)
  targets = rng.integers(2, CONFIG.vocab_size, (4, 3)).astype(np.int32)
  batch = {"encoder_input_tokens": tokens,
           "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
           "decoder_target_tokens": targets,
           "decoder_loss_weights": np.ones_like(targets),
           "task_ids": np.array([0, 1, 1, 0], np.int32)}
  full = merge_params(run.method.model_params(trainable), run.frozen)
  mixed = run.model.apply(
      {"params": full}, tokens, batch["decoder_input_tokens"], targets,
      prompt=run.method.example_prompt(trainable, batch))
  for task in (0, 1):
    alone = run.model.apply(
        {"params": full}, tokens, batch["decoder_input_tokens"], targets,
        prompt=run.method.task_prompts(trainable)[task])
    rows = batch["task_ids"] == task
    np.testing.assert_allclose(np.asarray(mixed)[rows],
                               np.asarray(alone)[rows], atol=1e-5)
  assert not np.allclose(np.asarray(mixed)[0], np.asarray(mixed)[1])
  # The train and eval steps read the feature; without it, one clear line.
  metrics = step_lib.eval_step(trainable, run.frozen, batch, model=run.model,
                               method=run.method)
  assert float(metrics["tokens"]) == 12
  del batch["task_ids"]
  with pytest.raises(ValueError, match="no 'task_ids' feature"):
    step_lib.eval_step(trainable, run.frozen, batch, model=run.model,
                       method=run.method)


def test_batches_carry_each_examples_task():
  tiny_tasks.register()
  index = {"tiny_copy": 0, "tiny_classify": 1}
  batches = pipeline.get_dataset(
      "tiny_mix", {"inputs": 32, "targets": 8}, split="train",
      global_batch_size=16, shuffle=True, seed=3, repeat=True,
      task_index=index)
  batch = next(batches)
  ids = batch[pipeline.TASK_ID_FEATURE]
  assert ids.shape == (16,) and set(ids.tolist()) == {0, 1}
  # Resuming skips to the same stream.
  again = pipeline.get_dataset(
      "tiny_mix", {"inputs": 32, "targets": 8}, split="train",
      global_batch_size=16, shuffle=True, seed=3, repeat=True,
      task_index=index, skip_batches=1)
  following = next(batches)
  np.testing.assert_array_equal(next(again)[pipeline.TASK_ID_FEATURE],
                                following[pipeline.TASK_ID_FEATURE])
  evaluation = list(pipeline.evaluation_dataset(
      "tiny_mix", {"inputs": 32, "targets": 8}, "validation", 8,
      task_index=index))
  tagged = np.concatenate([b.features[pipeline.TASK_ID_FEATURE][:b.num_examples]
                           for b in evaluation])
  # The tasks with a validation split one after another, each tagged.
  with_split = [index[t.name] for t in __import__("seqio").get_subtasks(
      pipeline.get_task_or_mixture("tiny_mix")) if "validation" in t.splits]
  blocks = [int(v) for i, v in enumerate(tagged) if i == 0 or
            v != tagged[i - 1]]
  assert blocks == with_split
  with pytest.raises(ValueError, match="has no index among"):
    next(pipeline.get_dataset(
        "tiny_mix", {"inputs": 32, "targets": 8}, split="train",
        global_batch_size=16, shuffle=True, seed=3, repeat=True,
        task_index={"tiny_copy": 0}))


def test_mpt_equals_pefts_on_the_encoder(tmp_path):
  """PEFT's MULTITASK_PROMPT_TUNING with num_transformer_submodules=1 (the
  encoder only) gives the same logits as mode 'mpt' with its weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  from prompt_tuning.models import T5  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pretrained import hf_export  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts import PromptedT5  # pylint: disable=g-import-not-at-top
  config = CONFIG
  tokens_1 = np.ones((1, 1), np.int32)
  params = jax.tree_util.tree_map(
      np.asarray, jax.jit(T5(config).init)(jax.random.PRNGKey(0), tokens_1,
                                          tokens_1, tokens_1)["params"])
  params = jax.tree_util.tree_map(lambda x: np.asarray(x.unbox()) if hasattr(
      x, "unbox") else x, params, is_leaf=lambda x: hasattr(x, "unbox"))
  hf_dir = str(tmp_path / "hf")
  hf_export.save_hf(params, config, hf_dir)
  base = transformers.T5ForConditionalGeneration.from_pretrained(
      hf_dir, torch_dtype=torch.float32)
  rank, tasks = 2, 2
  model = peft.get_peft_model(base, peft.MultitaskPromptTuningConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, num_tasks=tasks,
      num_ranks=rank, num_transformer_submodules=1))
  encoder = model.prompt_encoder["default"]
  method = _method("mpt", rank=rank)
  names = {
      "multitask/shared": encoder.embedding.weight.detach().numpy(),
      "multitask/cols": np.random.default_rng(1).normal(
          0, 0.5, (tasks, P, rank)).astype(np.float32),
      "multitask/rows": np.random.default_rng(2).normal(
          0, 0.5, (tasks, rank, config.emb_dim)).astype(np.float32)}
  with torch.no_grad():
    encoder.prefix_task_cols.copy_(torch.tensor(names["multitask/cols"]))
    encoder.prefix_task_rows.copy_(torch.tensor(names["multitask/rows"]))
  trainable = method_base.nested({k: jnp.asarray(v) for k, v in names.items()})
  rng = np.random.default_rng(3)
  tokens = rng.integers(2, config.vocab_size, (2, 5)).astype(np.int32)
  tokens[1, 3:] = 0
  targets = rng.integers(2, config.vocab_size, (2, 3)).astype(np.int32)
  task_ids = np.array([1, 0])
  decoder_inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  prompted = PromptedT5(config, P)
  ours = prompted.apply(
      {"params": merge_params({"encoder": {"prompt": {"prompt": jnp.zeros(
          (P, config.emb_dim))}}}, params)}, tokens, decoder_inputs, targets,
      prompt=method.prompts(trainable, jnp.asarray(task_ids)))
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
                   labels=torch.tensor(targets, dtype=torch.long),
                   task_ids=torch.tensor(task_ids, dtype=torch.long)).logits
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4)


@pytest.mark.parametrize("submodules", [1, 2])
def test_mpt_adapter_files_both_ways(tmp_path, submodules):
  """A PEFT-made MPT adapter imports to the same prompts PEFT computes; our
  export loads in PEFT with the same tables."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  from prompt_tuning.methods import peft_multitask  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import T5  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pretrained import hf_export  # pylint: disable=g-import-not-at-top
  ones = np.ones((1, 1), np.int32)
  params = jax.tree_util.tree_map(
      np.asarray, jax.jit(T5(CONFIG).init)(jax.random.PRNGKey(0), ones, ones,
                                          ones)["params"])
  hf_dir = str(tmp_path / "hf")
  hf_export.save_hf(jax.tree_util.tree_map(
      lambda x: np.asarray(getattr(x, "value", x)), params,
      is_leaf=lambda x: hasattr(x, "value")), CONFIG, hf_dir)
  torch.manual_seed(0)
  model = peft.get_peft_model(
      transformers.T5ForConditionalGeneration.from_pretrained(hf_dir),
      peft.MultitaskPromptTuningConfig(
          task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, num_tasks=3,
          num_ranks=2, num_transformer_submodules=submodules))
  encoder = model.prompt_encoder["default"]
  with torch.no_grad():
    encoder.prefix_task_cols.normal_()
    encoder.prefix_task_rows.normal_()
    task_ids = torch.tensor([2, 0])
    indices = torch.arange(P * submodules)[None].expand(2, -1)
    theirs = encoder(indices, task_ids)[:, :P].numpy()
  model.save_pretrained(str(tmp_path / "peft"))
  options, names = peft_multitask.import_mpt(str(tmp_path / "peft"), CONFIG)
  assert options == {"mode": "mpt", "length": P, "rank": 2, "num_tasks": 3}
  method = methods.MultitaskPromptConfig(
      mode="mpt", rank=2, length=P,
      tasks=peft_multitask.task_names(3)).bind(CONFIG)
  trainable = method_base.nested({k: jnp.asarray(v) for k, v in names.items()})
  ours = np.asarray(method.prompts(trainable, jnp.array([2, 0])))
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # Ours -> PEFT: the same tables back.
  peft_multitask.export_mpt(names, CONFIG, str(tmp_path / "ours"))
  reloaded = peft.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(hf_dir),
      str(tmp_path / "ours"))
  with torch.no_grad():
    again = reloaded.prompt_encoder["default"](
        torch.arange(P)[None].expand(2, -1), task_ids).numpy()
  np.testing.assert_allclose(again, ours, atol=1e-5)
