"""Runs on decoder-only HF checkpoints through the commands T5 runs use:
training, the exported prompt, evaluation from the run directory, decoded
predictions and label ranking against the plain prompted forward pass, and
the one-line refusals of what the family does not take."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning.data import decoder_features
from prompt_tuning.data import pipeline
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only import DecoderConfig
from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.pretrained import is_decoder_only
from prompt_tuning.prompts.decoder_model import input_rows
from prompt_tuning.pretrained.hf_export import save_hf_decoder
from prompt_tuning.serving import analysis
from prompt_tuning.serving import ensemble as ensemble_lib
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.serving import mixed
from prompt_tuning.training import inference
from prompt_tuning.training import loop
from prompt_tuning.training import records
from prompt_tuning.training import runs
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from tests import tiny_tasks

tiny_tasks.register()

LENGTHS = {"inputs": 24, "targets": 8}
CONFIGS = {
    "llama": DecoderConfig(
        vocab_size=128, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
        mlp_dim=32, num_layers=2, eos_id=1, dtype="float32"),
    # Sliding windows shorter than the rows, soft caps, the sqrt(H) input
    # scale (the prompt's rows too) and a BOS at the start of every row.
    # Untied: tied random weights predict the last token (EOS) everywhere.
    "gemma2": DecoderConfig(
        vocab_size=128, emb_dim=24, num_heads=2, num_kv_heads=1, head_dim=12,
        mlp_dim=32, num_layers=3, family="gemma2", activation="gelu",
        sliding_window=5, sliding_layers="even", query_pre_attn_scalar=16.0,
        attn_softcap=5.0, final_softcap=3.0, bos_id=2,
        eos_id=1, dtype="float32"),
}


@pytest.fixture(scope="module")
def checkpoints_dir(tmp_path_factory):
  out = {}
  for name, config in CONFIGS.items():
    path = str(tmp_path_factory.mktemp(name))
    params = DecoderOnlyLM(config).init(
        jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
    # Larger weights than the init's: predictions that depend on the prompt.
    params = jax.tree_util.tree_map(lambda x: x * 3.0, params)
    save_hf_decoder(params, config, path)
    out[name] = path
  return out


def _build(path, mode="prompt", placement="prefix", length=3,
           dtype="float32", **kw):
  mesh = partitioning.create_mesh((-1, 1))
  return setup.build_model(
      initial_checkpoint_path=path, model_config=kw.pop("model_config", None),
      mode=mode, prompt=setup.PromptConfig(
          length=length, placement=placement, init="random_uniform"),
      mesh=mesh, rules=partitioning.logical_axis_rules(),
      vocabulary=tiny_tasks.VOCABULARY, rng=jax.random.PRNGKey(1),
      dtype=dtype, **kw)


def _batch(run, task="tiny_copy"):
  padded = next(pipeline.evaluation_dataset(
      task, LENGTHS, "validation", 8, converter=run.feature_converter()))
  return {k: jnp.asarray(v) for k, v in padded.features.items()}


def test_a_preset_sets_the_runs_dtype_and_remat(checkpoints_dir):
  run = _build(checkpoints_dir["llama"], dtype=None,
               model_config=CONFIGS["llama"].replace(
                   dtype="bfloat16", remat_policy="full"))
  assert (run.config.dtype, run.config.remat_policy) == ("bfloat16", "full")
  assert run.model.config.remat_policy == "full"


def test_the_checkpoint_decides_the_family(checkpoints_dir, frozen):
  assert is_decoder_only(checkpoints_dir["llama"])
  assert not is_decoder_only(frozen)  # a T5X checkpoint
  assert not is_decoder_only("/nonexistent/path")
  run = _build(checkpoints_dir["gemma2"])
  assert run.decoder_only and run.prompt_path == ("decoder", "prompt",
                                                  "prompt")
  assert jax.tree_util.tree_map(lambda x: x.shape, run.trainable) == {
      "decoder": {"prompt": {"prompt": (3, 24)}}}
  converter = run.feature_converter()
  assert isinstance(converter, decoder_features.DecoderOnlyConverter)
  assert converter.row_bos_id == 2
  batch = _batch(run)
  assert set(batch) == set(decoder_features.FEATURES)
  assert batch["decoder_input_tokens"].shape == (8, 24 + 8 + 1)
  assert np.all(np.asarray(batch["decoder_input_tokens"])[:, 0] == 2)


def _greedy_reference(run, params, batch, steps):
  """Greedy continuation of each row's context by the plain prompted
  forward pass (no cache), one row at a time, one token at a time."""
  full = step_lib.full_params(run.method, params, run.frozen)
  tokens = np.asarray(batch["decoder_input_tokens"])
  weights = np.asarray(batch["decoder_loss_weights"])
  out = np.zeros((len(tokens), steps), np.int32)
  for b in range(len(tokens)):
    context = int(np.argmax(weights[b])) + 1
    row = list(tokens[b, :context])
    for i in range(steps):
      logits = run.model.apply({"params": full}, jnp.asarray([row]))
      token = int(jnp.argmax(logits[0, -1]))
      out[b, i] = token
      if token == 1:
        break
      row.append(token)
  return out


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3"])
def test_text_init_is_the_lm_own_embedded_text(tmp_path, family):
  """A prompt initialised from text enters the stack as the LM's own rows
  for that text: Gemma 2 scales prompt and tokens by sqrt(H), Gemma 3 only
  tokens (inside its lookup), so its table is scaled for the init."""
  config = CONFIGS["gemma2" if family != "llama" else "llama"]
  if family == "gemma3":
    config = config.replace(family="gemma3", sliding_layers="pattern",
                            sliding_pattern=3, qk_norm=True,
                            rope_local_theta=100.0, attn_softcap=0.0,
                            final_softcap=0.0)
  params = DecoderOnlyLM(config).init(
      jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
  save_hf_decoder(params, config, str(tmp_path))
  text = "abc"
  run = setup.build_model(
      initial_checkpoint_path=str(tmp_path), model_config=None,
      mode="prompt", prompt=setup.PromptConfig(length=3, init="from_text",
                                               text=text),
      mesh=partitioning.create_mesh((-1, 1)),
      rules=partitioning.logical_axis_rules(),
      vocabulary=tiny_tasks.VOCABULARY, rng=jax.random.PRNGKey(1),
      dtype="float32")
  assert run.config.family == family
  prompt = run.trainable["decoder"]["prompt"]["prompt"]
  full = step_lib.full_params(run.method, run.trainable, run.frozen)
  tokens = jnp.asarray([tiny_tasks.VOCABULARY.encode(text)])
  own = run.model.apply({"params": full}, tokens, method="embed")[0]
  np.testing.assert_allclose(input_rows(run.config, prompt), own, rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("name, placement, mode", [
    ("llama", "prefix", "prompt"), ("gemma2", "after_first", "prompt"),
    ("llama", "prefix", "deep_prompt")])
def test_predictions_are_the_prompted_lm_greedy_choices(checkpoints_dir, name,
                                                        placement, mode):
  """Cached decoding of left-padded contexts (deep prompts replacing the
  prompt's rows in the prefill) picks what the uncached forward over
  right-padded rows picks (prefixes: tests/models/decoder_peft_test.py)."""
  run = _build(checkpoints_dir[name], placement=placement, mode=mode)
  batch = _batch(run)
  got = np.asarray(inference._predict(
      run.trainable, run.frozen, batch, model=run.model,
      decode=inference.DecodeConfig(), length=6, method=run.method))
  want = _greedy_reference(run, run.trainable, batch, 6)
  np.testing.assert_array_equal(got, want)
  if name != "llama":
    return  # this random Gemma predicts the same tokens whatever the input
  # The prompt matters: another prompt predicts something else somewhere.
  other = jax.tree_util.tree_map(lambda x: -x, run.trainable)
  assert not np.array_equal(
      got, np.asarray(inference._predict(
          other, run.frozen, batch, model=run.model,
          decode=inference.DecodeConfig(), length=6, method=run.method)))


@pytest.mark.parametrize("mode", ["prompt", "deep_prompt"])
def test_ranking_scores_are_the_teacher_forced_log_likelihoods(
    checkpoints_dir, mode):
  run = _build(checkpoints_dir["gemma2"], mode=mode)
  batch = _batch(run, "tiny_classify")
  # 'no' EOS and a candidate holding a token 0 before its EOS.
  candidates = jnp.asarray([[113, 114, 1, 0], [0, 5, 1, 0]], jnp.int32)
  got = np.asarray(inference._rank(run.trainable, run.frozen, batch,
                                   candidates, model=run.model,
                                   method=run.method))
  full = step_lib.full_params(run.method, run.trainable, run.frozen)
  tokens = np.asarray(batch["decoder_input_tokens"])
  weights = np.asarray(batch["decoder_loss_weights"])
  for b in range(len(tokens)):
    context = list(tokens[b, :int(np.argmax(weights[b])) + 1])
    for c, real in enumerate(([113, 114, 1], [0, 5, 1])):
      logits = run.model.apply({"params": full},
                               jnp.asarray([context + real[:-1]]))
      log_probs = jax.nn.log_softmax(logits[0, len(context) - 1:])
      want = sum(float(log_probs[i, t]) for i, t in enumerate(real))
      np.testing.assert_allclose(got[b, c], want, rtol=1e-4, atol=1e-4)


def _schedule(steps=4):
  return loop.TrainConfig(train_steps=steps, batch_size=8, eval_period=steps,
                          checkpoint_period=steps, log_period=2,
                          eval_split="validation")


def test_train_then_evaluate_the_run_directory(checkpoints_dir, tmp_path):
  model_dir = str(tmp_path / "run")
  result = loop.train(
      model_dir=model_dir, initial_checkpoint_path=checkpoints_dir["llama"],
      model_config=None, mixture_or_task_name="tiny_classify",
      task_feature_lengths=LENGTHS, mode="prompt",
      prompt=setup.PromptConfig(length=4, init="class_labels",
                                class_labels=("yes", "no")),
      schedule=_schedule(), decode=inference.DecodeConfig(
          rank_classification=True))
  assert result["step"] == 4
  assert np.isfinite(result["train"]["loss"])
  assert "tiny_classify/accuracy" in result["eval"]
  prompt = np.load(os.path.join(model_dir, "prompts", "step_4.npy"))
  assert prompt.shape == (4, 16)
  # eval rebuilds the model from the run directory: the training's final
  # evaluation, number for number.
  flat = runs.evaluate(
      prompt_path=model_dir, initial_checkpoint_path=checkpoints_dir["llama"],
      model_config=None, mixture_or_task_name="tiny_classify",
      task_feature_lengths=LENGTHS, batch_size=8,
      decode=inference.DecodeConfig(rank_classification=True))
  for key in ("eval/loss", "tiny_classify/accuracy"):
    np.testing.assert_allclose(flat[key], result["eval"][key], rtol=1e-5)
  # And the exported .npy file, as a prompt file.
  from_file = runs.evaluate(
      prompt_path=os.path.join(model_dir, "prompts", "step_4.npy"),
      initial_checkpoint_path=checkpoints_dir["llama"], model_config=None,
      mixture_or_task_name="tiny_classify", task_feature_lengths=LENGTHS,
      batch_size=8, decode=inference.DecodeConfig(rank_classification=True))
  np.testing.assert_allclose(from_file["eval/loss"], flat["eval/loss"],
                             rtol=1e-6)
  # export-peft: a CAUSAL_LM prompt adapter of the run's prompt; import-peft
  # checked against the same checkpoint gives it back.
  adapter, _, saved = _export_peft(model_dir, checkpoints_dir["llama"],
                                   tmp_path)
  assert saved["task_type"] == "CAUSAL_LM"
  back = str(tmp_path / "back.npy")
  assert analysis.import_peft(adapter_dir=adapter, output_path=back,
                              checkpoint=checkpoints_dir["llama"]) == (4, 16)
  np.testing.assert_array_equal(np.load(back), prompt)
  # Nearest tokens read the LM's embedding table.
  near = analysis.nearest_tokens(
      prompt_path=model_dir, initial_checkpoint_path=checkpoints_dir["llama"],
      k=2, task="tiny_classify")
  assert len(near) == 4


def _export_peft(model_dir, checkpoint, tmp_path):
  """export-peft of a run: (adapter directory, its tasks, its config)."""
  adapter, tasks = analysis.export_peft(
      prompt_path=model_dir, initial_checkpoint_path=checkpoint,
      output_dir=str(tmp_path / "adapter"))
  with open(os.path.join(adapter, "adapter_config.json")) as f:
    return adapter, tasks, json.load(f)


def _import_evaluates_the_same(adapter, checkpoint, task, want, tmp_path,
                               tasks=()):
  """import-peft of an adapter as a run directory, evaluated on `task`: its
  loss is `want`'s; returns the imported run's method name."""
  imported = str(tmp_path / "imported")
  name = analysis.import_peft_run(adapter_dir=adapter, output_dir=imported,
                                  checkpoint=checkpoint, tasks=tasks)
  again = runs.evaluate(
      prompt_path=imported, initial_checkpoint_path=checkpoint,
      model_config=None, mixture_or_task_name=task,
      task_feature_lengths=LENGTHS, batch_size=8)
  np.testing.assert_allclose(again["eval/loss"], want["eval/loss"],
                             rtol=1e-5)
  return name


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("rank", [False, True])
def test_mixed_serving_and_ensembles_equal_each_prompt_alone(
    checkpoints_dir, tmp_path, rank):
  """Rows naming two prompts, served in one batch stream, predict what
  `infer` predicts with each prompt alone; the ensemble's per-prompt
  scores are each prompt's `eval` scores."""
  path = checkpoints_dir["llama"]
  rng = np.random.RandomState(0)
  files = {}
  for name in ("a", "b"):
    files[name] = str(tmp_path / f"{name}.npy")
    np.save(files[name], rng.uniform(-3, 3, (2 + (name == "b"), 16))
            .astype(np.float32))
  task = "tiny_classify"
  decode = inference.DecodeConfig(rank_classification=rank)
  alone = {}
  for name, prompt in files.items():
    out = str(tmp_path / f"infer_{name}.jsonl")
    runs.infer(prompt_path=prompt, initial_checkpoint_path=path,
               model_config=None, mixture_or_task_name=task,
               task_feature_lengths=LENGTHS, output_path=out, batch_size=8,
               decode=decode, placement="after_first", dtype="float32")
    alone[name] = _read_jsonl(out)
  rows = [{"inputs": r["inputs"], "prompt": "ab"[i % 2], "task": task}
          for i, r in enumerate(alone["a"])]
  with open(tmp_path / "rows.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  served = str(tmp_path / "served.jsonl")
  mixed.infer_mixed(
      input_path=str(tmp_path / "rows.jsonl"),
      prompts=[f"a={files['a']}", f"b={files['b']}"],
      initial_checkpoint_path=path, output_path=served,
      task_feature_lengths=LENGTHS, batch_size=8, decode=decode,
      placement="after_first", dtype="float32")
  got = _read_jsonl(served)
  assert [r["prediction"] for r in got] == [
      alone[r["prompt"]][i]["prediction"] for i, r in enumerate(rows)]
  # The two prompts disagree somewhere: the rows really used their own.
  assert any(x["prediction"] != y["prediction"]
             for x, y in zip(alone["a"], alone["b"]))
  report = ensemble_lib.evaluate_ensemble(
      prompts=[f"a={files['a']}", f"b={files['b']}"],
      initial_checkpoint_path=path, mixture_or_task_name=task,
      task_feature_lengths=LENGTHS, batch_size=8, decode=decode,
      placement="after_first", dtype="float32")[task]
  for name, prompt in files.items():
    flat = runs.evaluate(
        prompt_path=prompt, initial_checkpoint_path=path, model_config=None,
        mixture_or_task_name=task, task_feature_lengths=LENGTHS,
        batch_size=8, decode=decode, placement="after_first",
        dtype="float32")
    assert report["prompts"][name]["accuracy"] == pytest.approx(
        flat[f"{task}/accuracy"])


def test_multitask_prompts_on_a_decoder_only_lm(checkpoints_dir, tmp_path):
  """A prompt per task of a mixture: each example's task picks its prompt,
  in training and in evaluation; eval from the run directory agrees."""
  model_dir = str(tmp_path / "mpt")
  result = loop.train(
      model_dir=model_dir, initial_checkpoint_path=checkpoints_dir["llama"],
      model_config=None, mixture_or_task_name="tiny_mix",
      task_feature_lengths=LENGTHS, mode="multitask_prompt",
      prompt=setup.PromptConfig(length=3, init="random_uniform"),
      multitask_prompt=methods.MultitaskPromptConfig(mode="mpt"),
      schedule=_schedule(2))
  assert {"tiny_copy/accuracy", "tiny_classify/accuracy"} <= set(
      result["eval"])
  method = records.read_method(model_dir)
  assert method.name == "multitask_prompt"
  assert sorted(method.tasks) == ["tiny_classify", "tiny_copy"]
  flat = runs.evaluate(
      prompt_path=model_dir, initial_checkpoint_path=checkpoints_dir["llama"],
      model_config=None, mixture_or_task_name="tiny_mix",
      task_feature_lengths=LENGTHS, batch_size=8)
  np.testing.assert_allclose(flat["eval/loss"], result["eval"]["eval/loss"],
                             rtol=1e-5)
  # Mode 'mpt' is PEFT's MULTITASK_PROMPT_TUNING (CAUSAL_LM), tasks named
  # in task-index order; imported back, it evaluates the same.
  adapter, tasks, saved = _export_peft(model_dir, checkpoints_dir["llama"],
                                       tmp_path)
  assert saved["task_type"] == "CAUSAL_LM"
  assert _import_evaluates_the_same(
      adapter, checkpoints_dir["llama"], "tiny_mix", flat, tmp_path,
      tasks) == "multitask_prompt"


def test_serving_refusals_are_one_line(checkpoints_dir, tmp_path):
  frozen = frozen_lib.load_frozen(checkpoints_dir["llama"])
  assert isinstance(frozen.model, DecoderOnlyLM)
  np.save(tmp_path / "p.npy", np.zeros((2, 16), np.float32))
  library = frozen_lib.load_library([f"p={tmp_path / 'p.npy'}"], 16)
  with pytest.raises(ValueError, match="prompts go at one of"):
    frozen_lib.make_runner(frozen, library, placement="suffix")


@pytest.mark.parametrize("mode", ["lora", "ia3", "p_tuning", "prefix",
                                  "deep_prompt"])
def test_adapter_methods_train_on_a_decoder_only_lm(checkpoints_dir, tmp_path,
                                                    mode):
  model_dir = str(tmp_path / mode)
  result = loop.train(
      model_dir=model_dir, initial_checkpoint_path=checkpoints_dir["gemma2"],
      model_config=None, mixture_or_task_name="tiny_copy",
      task_feature_lengths=LENGTHS, mode=mode, schedule=_schedule(2))
  assert result["step"] == 2 and np.isfinite(result["train"]["loss"])
  assert records.read_method(model_dir).name == mode
  # eval rebuilds the adapted LM from the run directory's method.json.
  flat = runs.evaluate(
      prompt_path=model_dir, initial_checkpoint_path=checkpoints_dir["gemma2"],
      model_config=None, mixture_or_task_name="tiny_copy",
      task_feature_lengths=LENGTHS, batch_size=8)
  np.testing.assert_allclose(flat["eval/loss"], result["eval"]["eval/loss"],
                             rtol=1e-5)
  if mode == "deep_prompt":
    with pytest.raises(ValueError, match="PEFT has no per-layer"):
      analysis.export_peft(prompt_path=model_dir,
                           initial_checkpoint_path=checkpoints_dir["gemma2"],
                           output_dir=str(tmp_path / "adapter"))
    return
  # Merged, P-tuning's prompt is a PEFT prompt adapter (as PEFT saves it);
  # the others are PEFT's LORA, IA3 and PREFIX_TUNING adapters.
  adapter, _, saved = _export_peft(model_dir, checkpoints_dir["gemma2"],
                                   tmp_path)
  assert saved["task_type"] == "CAUSAL_LM"
  assert saved["peft_type"] == {"p_tuning": "PROMPT_TUNING", "lora": "LORA",
                                "ia3": "IA3", "prefix": "PREFIX_TUNING"}[mode]
  if mode == "p_tuning":
    return
  # ... and comes back as a run directory that evaluates the same.
  assert _import_evaluates_the_same(
      adapter, checkpoints_dir["gemma2"], "tiny_copy", flat, tmp_path) == mode


@pytest.mark.parametrize("change, message", [
    (dict(placement="suffix"), "placement = 'suffix'"),
    (dict(model_config=T5Config(vocab_size=128, emb_dim=16, num_heads=2,
                                head_dim=8, mlp_dim=32, num_encoder_layers=1,
                                num_decoder_layers=1)),
     "MODEL_CONFIG is a T5Config"),
    (dict(model_config=CONFIGS["llama"].replace(num_layers=3)),
     "differs from .* in num_layers"),
])
def test_what_a_decoder_only_run_refuses(checkpoints_dir, change, message):
  with pytest.raises(ValueError, match=message):
    _build(checkpoints_dir["llama"], **change)
