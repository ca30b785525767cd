"""Standalone evaluation, inference and PEFT interchange for every method.

A run records its method (method.json, `methods.records`); `runs.evaluate`
and `runs.infer` given a run directory of any method rebuild that model and
restore its checkpoint's trainable tree, and must score exactly what the
run's own evaluation scored at that step. `prompt_tools export-peft` turns a
LoRA run into a PEFT adapter that PEFT loads onto the Hugging Face export of
the same frozen model with equal logits; `import-peft` turns a PEFT-made
LoRA adapter into a run directory that evaluates. Short runs of the tiny T5
on the in-memory tasks; errors a user can cause are one line.
"""

import importlib.util
import json
import os
import shutil

import jax
import numpy as np
import pytest

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning import prompt_tools
from prompt_tuning.methods import base as method_base
from prompt_tuning.methods import peft_io
from prompt_tuning.methods import records as method_records
from prompt_tuning.models import t5_config
from prompt_tuning.pretrained import hf_export
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.prompts import merge_params
from prompt_tuning.training import loop
from prompt_tuning.training import optimizers
from prompt_tuning.training import records
from prompt_tuning.training import runs
from prompt_tuning.training import setup
from prompt_tuning.training.inference import DecodeConfig
from tests import tiny_tasks

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")
LENGTHS = {"inputs": 32, "targets": 4}
TASK = "tiny_classify"
MESH = (4, 2)


def _train(model_dir, frozen, mode, steps, **kwargs):
  tiny_tasks.register()
  schedule = dict(train_steps=steps, batch_size=8, checkpoint_period=1,
                  eval_period=1, log_period=1)
  schedule.update(kwargs.pop("schedule", {}))
  loop.train(
      model_dir=model_dir, initial_checkpoint_path=frozen,
      model_config=CONFIG, mixture_or_task_name=TASK,
      task_feature_lengths=LENGTHS, mode=mode,
      prompt=setup.PromptConfig(length=3, init="sampled_vocab"),
      optimizer=optimizers.AdafactorConfig(learning_rate=0.3),
      schedule=loop.TrainConfig(**schedule), mesh_shape=MESH, **kwargs)
  return model_dir


def _lora_run(directory, frozen, steps):
  """LoRA steps, each saved and evaluated; best.json by eval/loss."""
  return _train(directory, frozen, "lora", steps,
                lora=methods.LoraConfig(rank=2, alpha=4.0),
                schedule=dict(best_metric="eval/loss", best_mode="min"))


def _evaluate(path, frozen, **kwargs):
  tiny_tasks.register()
  return runs.evaluate(prompt_path=path, initial_checkpoint_path=frozen,
                       model_config=CONFIG, mixture_or_task_name=TASK,
                       task_feature_lengths=LENGTHS, batch_size=8,
                       mesh_shape=MESH, **kwargs)


def _one_line(error):
  text = str(error.value)
  assert "\n" not in text, text
  return text


# ----------------------------------------------------------------------------
# method.json


@pytest.mark.parametrize("method", [
    methods.PromptTuning(length=7, placement="suffix", wayward_gamma=0.5),
    methods.DeepPromptConfig(length=4, mode="add"),
    methods.PrefixConfig(length=2, attentions=("cross",), hidden=8),
    methods.PTuningConfig(length=5, encoder="lstm", hidden=6, num_layers=1),
    methods.IA3Config(targets=("key", "wi_1")),
    methods.LoraConfig(rank=3, alpha=5.0, rslora=True,
                       targets=(r"encoder/layers_\d+/attention/query",)),
    methods.ModelTuning(),
])
def test_method_json_round_trips(method):
  bound = method.bind(CONFIG) if isinstance(
      method, methods.PrefixConfig) else method
  record = json.loads(json.dumps(method_records.to_json(bound)))
  assert record["method"] == method.name and record["version"] == 1
  assert "config" not in record["options"]
  assert "wayward_target" not in record["options"]
  back = method_records.from_json(record)
  assert type(back) is type(method) and back == method


@pytest.mark.parametrize("record,message", [
    ({"method": "lorra", "options": {}}, "'lorra' is not a method. Did you "
                                         "mean 'lora'?"),
    ({"method": "lora", "options": {"rnk": 2}}, "LoraConfig has no option "
                                                "'rnk'"),
    ({"method": "lora", "options": {"rank": 0}}, "rank must be >= 1"),
    ({"method": "lora", "options": {}, "version": 2}, "version 2"),
    (["lora"], "not a method record"),
])
def test_method_json_errors_are_one_line(record, message):
  with pytest.raises(ValueError, match=message) as e:
    method_records.from_json(record, "run/method.json")
  assert _one_line(e).startswith("run/method.json: ")


def test_find_run_leaves_other_paths_to_the_prompt_readers(tmp_path):
  official = tmp_path / "numpy_checkpoints" / "checkpoint_3"
  official.mkdir(parents=True)
  assert runs.find_run(str(official)) is None
  assert runs.find_run(str(tmp_path / "prompt.npy")) is None
  old = tmp_path / "old_run"
  old.mkdir()
  assert runs.find_run(str(old)) is None  # no records: not a run of ours
  (old / records.PARAMETERS_FILE).write_text(json.dumps({"mode": "prompt"}))
  assert runs.find_run(str(old)) is None  # prompt tuning: its exports
  with pytest.raises(ValueError, match="has no method.json") as e:
    runs.find_run(str(old / "checkpoint_2"))
  _one_line(e)
  (old / records.PARAMETERS_FILE).write_text(json.dumps({"mode": "ia3"}))
  saved = runs.find_run(str(old / "checkpoint_2"))
  assert (saved.method, saved.step, saved.recorded) == (
      methods.IA3Config(), 2, False)


# ----------------------------------------------------------------------------
# eval / infer of run directories


def test_eval_and_export_of_a_lora_run(frozen, hf_frozen, tmp_path):
  """One trained run for both (each costs a compiled train step)."""
  lora_run = _lora_run(str(tmp_path / "lora"), frozen, 2)
  with open(os.path.join(lora_run, records.METHOD_FILE)) as f:
    assert json.load(f) == {
        "method": "lora", "version": 1,
        "options": {"rank": 2, "alpha": 4.0, "dropout": 0.0,
                    "rslora": False, "targets": ["query", "value"]}}
  history = records.read_eval_history(lora_run)
  with open(os.path.join(lora_run, "best.json")) as f:
    best = json.load(f)["step"]
  flat = _evaluate(lora_run, frozen, output_dir=str(tmp_path / "eval"))
  assert flat.keys() == history[best].keys()
  for key, value in history[best].items():
    assert flat[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
  # A checkpoint_<N> path picks that step; the two steps differ.
  other = 3 - best
  flat = _evaluate(os.path.join(lora_run, f"checkpoint_{other}"), frozen)
  assert flat["eval/loss"] == pytest.approx(history[other]["eval/loss"],
                                            rel=1e-5)
  assert history[1]["eval/loss"] != history[2]["eval/loss"]
  if all(importlib.util.find_spec(m) for m in ("torch", "transformers",
                                                 "peft")):
    _check_export(lora_run, frozen, hf_frozen, str(tmp_path / "adapter"))


def test_infer_on_an_ia3_run(frozen, tmp_path):
  run = _train(str(tmp_path / "ia3"), frozen, "ia3", 1)
  out = str(tmp_path / "predictions.jsonl")
  n = runs.infer(prompt_path=run, initial_checkpoint_path=frozen,
                 model_config=CONFIG, mixture_or_task_name=TASK,
                 task_feature_lengths=LENGTHS, output_path=out, batch_size=8,
                 mesh_shape=MESH)
  assert n == tiny_tasks.NUM_VALIDATION
  with open(out) as f:
    got = [json.loads(line)["prediction"] for line in f]
  with open(os.path.join(run, "eval", "predictions", TASK,
                         "step_1.jsonl")) as f:
    want = [json.loads(line)["prediction"] for line in f]
  assert got == want


def test_deep_prompt_run_is_read_from_its_checkpoint(frozen, tmp_path):
  # No steps: the baseline evaluation and checkpoint_0. Its prompt export
  # is only the input prompt; the checkpoint holds the layer prompts too.
  run = _train(str(tmp_path / "deep"), frozen, "deep_prompt", 0,
               deep_prompt=methods.DeepPromptConfig(mode="add"),
               schedule=dict(eval_at_start=True))
  assert os.path.exists(os.path.join(run, "prompts", "step_0.npy"))
  flat = _evaluate(run, frozen)
  want = records.read_eval_history(run)[0]
  for key, value in want.items():
    assert flat[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
  code, err = _cli(["export-peft", "--run", run, "--checkpoint", frozen,
                    "--model", "t5_1_1_tiny", "--output_dir",
                    str(tmp_path / "out")])
  assert code == 1 and "a deep_prompt run cannot be a PEFT adapter: PEFT " \
      "has no per-layer encoder prompts" in err


def _run_dir(tmp_path, record):
  directory = tmp_path / "run"
  directory.mkdir()
  (directory / records.METHOD_FILE).write_text(json.dumps(record))
  return str(directory)


def test_run_directory_errors_are_one_line(frozen, tmp_path):
  lora_run = _lora_run(str(tmp_path / "lora"), frozen, 0)  # checkpoint_0
  empty = _run_dir(tmp_path, {"method": "ia3", "options": {}, "version": 1})
  with pytest.raises(FileNotFoundError, match="no checkpoint_<N> to restore "
                     "the ia3 parameters") as e:
    _evaluate(empty, frozen)
  _one_line(e)
  with pytest.raises(FileNotFoundError, match="no checkpoint_7; available "
                     "steps: \\[0\\]") as e:
    _evaluate(os.path.join(lora_run, "checkpoint_7"), frozen)
  _one_line(e)
  edited = str(tmp_path / "edited")
  shutil.copytree(lora_run, edited)
  with open(os.path.join(edited, records.METHOD_FILE), "w") as f:
    json.dump({"method": "lora", "options": {"rank": 4, "alpha": 4.0},
               "version": 1}, f)
  with pytest.raises(ValueError, match="The lora model rebuilt from .*'s "
                     "method.json does not fit its checkpoint_") as e:
    _evaluate(edited, frozen)
  _one_line(e)
  with open(os.path.join(edited, records.METHOD_FILE), "w") as f:
    json.dump({"method": "lora", "options": {"rank": 2, "bias": 1}}, f)
  with pytest.raises(ValueError, match="LoraConfig has no option 'bias'"):
    _evaluate(edited, frozen)


# ----------------------------------------------------------------------------
# PEFT interchange


def _cli(argv):
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  err, out = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    code = prompt_tools.main(argv)
  lines = err.getvalue().strip().splitlines()
  return code, (lines[-1] if lines else out.getvalue())


@pytest.mark.parametrize("record,message", [
    ({"method": "prefix", "options": {"layout": "li_liang"}},
     "a prefix run cannot be a PEFT adapter: PEFT's PREFIX_TUNING feeds only "
     "the decoder's self-attention"),
    ({"method": "model", "options": {}},
     "a model run cannot be a PEFT adapter: model tuning changes every "
     "weight"),
])
def test_export_peft_refusals(frozen, tmp_path, record, message):
  run = _run_dir(tmp_path, record)
  code, err = _cli(["export-peft", "--run", run, "--checkpoint", frozen,
                    "--model", "t5_1_1_tiny", "--output_dir",
                    str(tmp_path / "out")])
  assert code == 1 and err.startswith("error: ") and message in err, err


def _torch():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  return torch, transformers, peft


def _rebuilt(path, frozen):
  tiny_tasks.register()
  return runs._build(path, frozen, CONFIG, TASK, "prefix", MESH,  # pylint: disable=protected-access
                     False)


def _batch():
  rng = np.random.default_rng(1)
  enc = rng.integers(2, CONFIG.vocab_size, (2, 7)).astype(np.int32)
  enc[1, 5:] = 0
  tgt = rng.integers(2, CONFIG.vocab_size, (2, 5)).astype(np.int32)
  tgt[1, 3:] = 0
  dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


def _our_logits(run):
  params = merge_params(run.model_params(run.trainable), run.frozen)
  enc, dec, tgt = _batch()
  return np.asarray(run.model.apply({"params": params}, enc, dec, tgt))


def _hf_logits(model):
  torch, _, _ = _torch()
  enc, dec, tgt = _batch()
  as_long = lambda x: torch.tensor(np.asarray(x, np.int64))
  with torch.no_grad():
    out = model(input_ids=as_long(enc), attention_mask=as_long(enc > 0),
                decoder_input_ids=as_long(dec),
                decoder_attention_mask=as_long(tgt > 0))
  return out.logits.float().numpy()


@pytest.fixture(scope="module")
def hf_frozen(frozen, tmp_path_factory):
  """The frozen tiny T5 as a Hugging Face checkpoint."""
  mesh = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
  _, params = load_pretrained(frozen, CONFIG, mesh,
                              partitioning.logical_axis_rules())
  directory = str(tmp_path_factory.mktemp("hf_frozen"))
  hf_export.save_hf(jax.device_get(params), CONFIG, directory)
  return directory


def _real(a, b):
  mask = _batch()[2] > 0
  return float(np.abs(a - b)[mask].max())


def _check_export(lora_run, frozen, hf_frozen, out):
  """export-peft of the run -> PEFT on the HF export: our logits."""
  _, transformers, peft = _torch()
  code, _ = _cli(["export-peft", "--run", lora_run, "--checkpoint", frozen,
                  "--model", "t5_1_1_tiny", "--output_dir", out])
  assert code == 0
  with open(os.path.join(out, "adapter_config.json")) as f:
    adapter = json.load(f)
  assert adapter["peft_type"] == "LORA" and adapter["r"] == 2
  base = transformers.T5ForConditionalGeneration.from_pretrained(
      hf_frozen).eval()
  theirs = _hf_logits(peft.PeftModel.from_pretrained(base, out).eval())
  run = _rebuilt(lora_run, frozen)
  ours = _our_logits(run)
  plain = _hf_logits(transformers.T5ForConditionalGeneration.from_pretrained(
      hf_frozen).eval())
  assert _real(ours, plain) > 1e-3  # the trained LoRA moves the logits
  assert _real(ours, theirs) <= 1e-4


def test_import_peft_of_a_peft_made_lora_adapter_evaluates(frozen, hf_frozen,
                                                           tmp_path):
  torch, transformers, peft = _torch()
  torch.manual_seed(0)
  model = peft.get_peft_model(
      transformers.T5ForConditionalGeneration.from_pretrained(
          hf_frozen).eval(),
      peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=2, lora_alpha=4,
                      target_modules=["q", "k"],
                      init_lora_weights=False)).eval()
  adapter = str(tmp_path / "adapter")
  model.save_pretrained(adapter)
  out = str(tmp_path / "imported")
  code, err = _cli(["import-peft", "--adapter", adapter, "--output", out])
  assert code == 1 and "pass --checkpoint PATH" in err, err
  code, said = _cli(["import-peft", "--adapter", adapter, "--output", out,
                     "--checkpoint", frozen, "--model", "t5_1_1_tiny"])
  assert code == 0 and said.startswith(f"wrote lora run directory {out}")
  with open(os.path.join(out, records.METHOD_FILE)) as f:
    assert json.load(f)["options"]["targets"] == ["query", "key"]
  code, err = _cli(["import-peft", "--adapter", adapter, "--output", out,
                    "--checkpoint", frozen, "--model", "t5_1_1_tiny"])
  assert code == 1 and "already holds a run" in err, err
  # The run directory's model is PEFT's, and evaluates.
  run = _rebuilt(out, frozen)
  assert _real(_our_logits(run), _hf_logits(model)) <= 1e-4
  _, params = peft_io.import_lora(adapter, CONFIG)
  for name, value in method_base.flat(jax.device_get(run.trainable)).items():
    np.testing.assert_array_equal(value, params[name], err_msg=name)
  flat = _evaluate(out, frozen, decode=DecodeConfig())
  assert 0.0 <= flat[f"{TASK}/accuracy"] <= 1.0 and "eval/loss" in flat
