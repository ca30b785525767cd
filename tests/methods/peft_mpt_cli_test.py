"""Multitask prompts (mode 'mpt') through `prompt_tools export-peft` and
`import-peft`, as PEFT MULTITASK_PROMPT_TUNING adapters.

Without torch: a trained 'mpt' run exports and imports back to the same tree,
bit for bit, and the imported run evaluates as the run did; other modes and
placements, and missing or miscounted `--tasks`, are one `error:` line. With
torch (peft_io_test's two models and helpers): an adapter made with PEFT's
own API (P = 4, r = 3, 3 tasks; s = 1 and PEFT's seq2seq default s = 2)
imported through the CLI gives PEFT's encoder-side logits, and a run's
export loads in `PeftModel.from_pretrained` with our logits.
"""

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest

from prompt_tuning import methods
from prompt_tuning import prompt_tools
from prompt_tuning.methods import base as method_base
from prompt_tuning.methods import peft_multitask
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import peft as prompt_peft
from prompt_tuning.training import loop
from prompt_tuning.training import optimizers
from prompt_tuning.training import records
from prompt_tuning.training import runs
from prompt_tuning.training import setup
from prompt_tuning.training import step as step_lib
from tests import tiny_tasks
from tests.methods.peft_io_test import CONFIGS
from tests.methods.peft_io_test import _batch
from tests.methods.peft_io_test import _check_parity
from tests.methods.peft_io_test import _hf_model
from tests.methods.peft_io_test import _lora_dir
from tests.methods.peft_io_test import _torch
from tests.methods.peft_io_test import hf_dirs  # pylint: disable=unused-import (a fixture)

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")
LENGTHS = {"inputs": 32, "targets": 4}
MIXTURE = "tiny_mix"
TASKS = ("tiny_copy", "tiny_classify")
MESH = (4, 2)
# PEFT-made adapters: sizes no other MPT test uses (multitask_test: P = 3).
P, RANK, NUM_TASKS = 4, 3, 3


def _cli(argv):
  """(exit status, stdout, stderr) of `prompt_tools.main(argv)`."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = prompt_tools.main(argv)
  return code, out.getvalue(), err.getvalue()


def _one_error_line(err):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def _trained_mpt_run(directory, frozen):
  """One step of 'mpt' multitask prompt tuning on tiny_mix (T5X frozen);
  `loop.train`'s result."""
  tiny_tasks.register()
  return loop.train(
      model_dir=directory, initial_checkpoint_path=frozen,
      model_config=CONFIG, mixture_or_task_name=MIXTURE,
      task_feature_lengths=LENGTHS, mode="multitask_prompt",
      prompt=setup.PromptConfig(length=3, init="sampled_vocab"),
      multitask_prompt=methods.MultitaskPromptConfig(mode="mpt", rank=2),
      optimizer=optimizers.AdafactorConfig(learning_rate=0.3),
      schedule=loop.TrainConfig(train_steps=1, batch_size=8,
                                checkpoint_period=1, eval_period=1,
                                log_period=1),
      mesh_shape=MESH)


def _tree(directory):
  """The '/'-joined trainable tree of a run's chosen checkpoint (numpy)."""
  params, _ = runs.restore_trainable(runs.find_run(directory))
  return {k: np.asarray(v) for k, v in
          method_base.flat(jax.device_get(params)).items()}


def _method_record(directory):
  with open(os.path.join(directory, records.METHOD_FILE)) as f:
    return json.load(f)


# ----------------------------------------------------------------------------
# Without torch.


def test_cli_round_trip_is_bit_exact_and_evaluates(frozen, tmp_path):
  run = str(tmp_path / "run")
  trained = _trained_mpt_run(run, frozen)
  adapter, imported = str(tmp_path / "adapter"), str(tmp_path / "imported")
  model = ["--checkpoint", frozen, "--model", "t5_1_1_tiny"]
  code, out, err = _cli(["export-peft", "--run", run, "--output_dir",
                         adapter] + model)
  assert code == 0, err
  # The run's task index (the mixture's subtasks, as training bound them)
  # is PEFT's task ids; PEFT's config has no field for names: the line says.
  tasks = tuple(_method_record(run)["options"]["tasks"])
  assert sorted(tasks) == sorted(TASKS)
  assert out.strip() == (f"wrote PEFT adapter {adapter} (task_ids: "
                         f"0={tasks[0]}, 1={tasks[1]})")
  with open(os.path.join(adapter, prompt_peft.CONFIG_FILE)) as f:
    config = json.load(f)
  assert (config["peft_type"], config["num_tasks"], config["num_ranks"],
          config["num_virtual_tokens"],
          config["num_transformer_submodules"]) == (
              "MULTITASK_PROMPT_TUNING", 2, 2, 3, 1)

  code, out, err = _cli(["import-peft", "--adapter", adapter, "--output",
                         imported, "--tasks", ",".join(tasks)] + model)
  assert code == 0, err
  assert out.startswith(f"wrote multitask_prompt run directory {imported}")
  options = _method_record(imported)["options"]
  assert (options["mode"], options["tasks"], options["length"],
          options["rank"]) == ("mpt", list(tasks), 3, 2)
  ours, back = _tree(run), _tree(imported)
  assert sorted(back) == ["multitask/cols", "multitask/rows",
                          "multitask/shared"]
  assert sorted(ours) == sorted(back)
  for name in ours:
    np.testing.assert_array_equal(back[name], ours[name], err_msg=name)

  # Evaluation reads the imported run as the run's own last evaluation.
  flat = runs.evaluate(prompt_path=imported, initial_checkpoint_path=frozen,
                       model_config=CONFIG, mixture_or_task_name=MIXTURE,
                       task_feature_lengths=LENGTHS, batch_size=8,
                       mesh_shape=MESH)
  for key in ("eval/loss", "tiny_classify/accuracy"):
    np.testing.assert_allclose(flat[key], trained["eval"][key], rtol=1e-6,
                               err_msg=key)


@pytest.mark.parametrize("options,message", [
    ({"mode": "add"}, "PEFT's MULTITASK_PROMPT_TUNING is only the 'mpt' "
                      "combination"),
    ({"mode": "project"}, "a multitask prompt of mode 'project' has no PEFT "
                          "form: train MultitaskPromptConfig.mode = 'mpt'"),
    ({"mode": "mpt", "placement": "suffix"},
     "a 'suffix' placement has no PEFT form"),
])
def test_export_refusals_are_one_line(frozen, tmp_path, options, message):
  run = tmp_path / "run"
  run.mkdir()
  (run / records.METHOD_FILE).write_text(json.dumps(
      {"method": "multitask_prompt", "options": dict(options, tasks=TASKS),
       "version": 1}))
  code, _, err = _cli(["export-peft", "--run", str(run), "--checkpoint",
                       frozen, "--model", "t5_1_1_tiny", "--output_dir",
                       str(tmp_path / "out")])
  line = _one_error_line(err)
  assert code == 1 and message in line and \
      "a multitask_prompt run cannot be a PEFT adapter" in line, line
  assert not (tmp_path / "out").exists()


def _random_mpt(config, seed):
  """'mpt' tables of NUM_TASKS tasks, P = 4, r = 3, all ~ N(0, 1)."""
  rng = np.random.default_rng(seed)
  shapes = {"multitask/shared": (P, config.emb_dim),
            "multitask/cols": (NUM_TASKS, P, RANK),
            "multitask/rows": (NUM_TASKS, RANK, config.emb_dim)}
  return {k: rng.normal(size=shape).astype(np.float32)
          for k, shape in shapes.items()}


@pytest.mark.parametrize("tasks,given", [
    (None, 0), ("a,b", 2), ("a,b,c,d", 4), ("a,,b", 2)])
def test_import_needs_one_task_name_per_task(frozen, tmp_path, tasks, given):
  adapter = peft_multitask.export_mpt(_random_mpt(CONFIG, 0), CONFIG,
                                     str(tmp_path / "adapter"))
  out = tmp_path / "out"
  argv = ["import-peft", "--adapter", adapter, "--output", str(out),
          "--checkpoint", frozen, "--model", "t5_1_1_tiny"]
  code, _, err = _cli(argv + (["--tasks", tasks] if tasks else []))
  line = _one_error_line(err)
  assert code == 1 and line == (
      f"error: {adapter}: the MPT adapter has 3 tasks (PEFT's task ids 0..2) "
      f"but {given} task names were given: name all 3, in task-id order "
      f"(--tasks NAME,NAME,...).")
  assert not out.exists()


def test_tasks_flag_is_only_for_mpt_adapters(tmp_path):
  lora = _lora_dir(tmp_path)
  code, _, err = _cli(["import-peft", "--adapter", lora, "--output",
                       str(tmp_path / "out"), "--tasks", "a,b"])
  assert code == 1 and _one_error_line(err) == (
      f"error: --tasks names the tasks of a MULTITASK_PROMPT_TUNING adapter; "
      f"{lora} is LORA: drop --tasks.")


# ----------------------------------------------------------------------------
# Parity with PEFT (torch, transformers, peft).


def _our_logits(run_dir, hf_dir, config, task_ids):
  """Our logits [B, L, V] for peft_io_test's batch, the run rebuilt as
  evaluation rebuilds it, each row prompted by its task."""
  tiny_tasks.register()
  run = runs._build(run_dir, hf_dir, None, MIXTURE, "prefix", MESH, False,  # pylint: disable=protected-access
                    dtype="float32")
  enc, dec, tgt = _batch(config)
  params = step_lib.full_params(run.method, run.trainable, run.frozen)
  prompt = step_lib.example_prompt(run.method, run.trainable,
                                   {"task_ids": np.asarray(task_ids)})
  return np.asarray(run.model.apply({"params": params}, enc, dec, tgt,
                                    prompt=prompt))


def _peft_logits(model, config, task_ids):
  """PEFT's logits with the encoder prompted, as its `generate` does.

  With s = 1 this is PEFT's own forward (given labels, which it shifts into
  the decoder inputs: it drops `decoder_input_ids`). With s = 2 its forward
  also prompts the decoder, so the encoder side is built as `generate`
  builds it: the first P rows of `get_prompt` before the input embeddings.
  """
  torch, _, _ = _torch()
  enc, dec, tgt = _batch(config)
  as_long = lambda x: torch.tensor(np.asarray(x, np.int64))
  ids = as_long(task_ids)
  with torch.no_grad():
    if model.peft_config["default"].num_transformer_submodules == 1:
      out = model(input_ids=as_long(enc), attention_mask=as_long(enc > 0),
                  labels=as_long(tgt), decoder_attention_mask=as_long(tgt > 0),
                  task_ids=ids)
    else:
      prompts = model.get_prompt(batch_size=len(enc), task_ids=ids)[:, :P]
      embedded = torch.cat([prompts, model.word_embeddings(as_long(enc))], 1)
      mask = torch.cat([torch.ones(len(enc), P, dtype=torch.long),
                        as_long(enc > 0)], 1)
      out = model.get_base_model()(
          inputs_embeds=embedded, attention_mask=mask,
          decoder_input_ids=as_long(dec),
          decoder_attention_mask=as_long(tgt > 0))
  return out.logits.float().numpy()


@pytest.mark.parametrize("submodules", [1, 2])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_peft_made_adapter_imports_through_the_cli(tmp_path, hf_dirs, name,
                                                   submodules):
  torch, _, peft = _torch()
  config, hf_dir = CONFIGS[name], hf_dirs[name]
  torch.manual_seed(0)
  model = peft.get_peft_model(
      _hf_model(hf_dir), peft.MultitaskPromptTuningConfig(
          task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, num_ranks=RANK,
          num_tasks=NUM_TASKS, num_transformer_submodules=submodules)).eval()
  encoder = model.prompt_encoder["default"]
  with torch.no_grad():  # PEFT's N(0, 0.02) start barely moves the logits
    encoder.prefix_task_cols.normal_()
    encoder.prefix_task_rows.normal_()
  adapter, out = str(tmp_path / "adapter"), str(tmp_path / "imported")
  model.save_pretrained(adapter)
  tasks = ("tiny_copy", "tiny_classify", "tiny_classify_scored")
  code, said, err = _cli(["import-peft", "--adapter", adapter, "--output", out,
                          "--checkpoint", hf_dir, "--tasks", ",".join(tasks)])
  assert code == 0 and said.startswith(
      f"wrote multitask_prompt run directory {out}"), err
  assert _method_record(out)["options"]["tasks"] == list(tasks)
  task_ids = [2, 0]
  ours = _our_logits(out, hf_dir, config, task_ids)
  _check_parity(name, ours, _peft_logits(model, config, task_ids),
                f"PEFT-made MPT (s={submodules}) through import-peft")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_run_loads_in_peft(tmp_path, hf_dirs, name):
  _, _, peft = _torch()
  config, hf_dir = CONFIGS[name], hf_dirs[name]
  method = methods.MultitaskPromptConfig(mode="mpt", length=P, rank=RANK,
                                         tasks=("a", "b", "c"))
  run = runs.write_adapter_run(str(tmp_path / "run"), method,
                               method_base.nested(_random_mpt(config, 3)))
  adapter = str(tmp_path / "adapter")
  code, said, err = _cli(["export-peft", "--run", run, "--checkpoint", hf_dir,
                          "--output_dir", adapter])
  assert code == 0 and said.strip().endswith("(task_ids: 0=a, 1=b, 2=c)"), err
  model = peft.PeftModel.from_pretrained(_hf_model(hf_dir), adapter).eval()
  task_ids = [1, 2]
  _check_parity(name, _our_logits(run, hf_dir, config, task_ids),
                _peft_logits(model, config, task_ids),
                "our MPT export through PeftModel.from_pretrained")
