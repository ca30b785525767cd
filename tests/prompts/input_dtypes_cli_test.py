"""The input cases of `input_dtypes_test`, through the real entry points.

Each command runs in a subprocess as a user types it: exit codes, the one
`error:` line of a refusal (nothing written), and the one line that announces
a cast. `import-peft --checkpoint` checks an adapter's width against the
frozen model (Hugging Face and T5X) and, without it, says it did not;
`train` with a float16 initial prompt on a bfloat16-stored frozen checkpoint
announces both; the gin `infer` and `prompt_tools infer` read a bfloat16
prompt as T5X saves it, and serving takes `--dtype float32`.
"""

import json
import os
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import seqio

from prompt_tuning.models import t5_config
from prompt_tuning.pretrained import hf_export
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.prompts import peft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CHECKPOINT = "tasks/quickstart_checkpoint"  # Hugging Face, H = 64
TASK = "quickstart_sentiment_taskless"
QUICKSTART_WIDTH = 64
TINY_WIDTH = t5_config("t5_1_1_tiny").emb_dim  # the T5X `frozen` fixture


def _run(module, *args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)  # one device, as on a laptop
  return subprocess.run([sys.executable, "-m", f"prompt_tuning.{module}",
                         *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _lines(result, pattern):
  return [l for l in result.stderr.splitlines() if re.search(pattern, l)]


def _ok(result):
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert not _lines(result, "^error:"), result.stderr[-3000:]


def _error(result, code=1):
  assert result.returncode == code, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = _lines(result, "^error:")
  assert len(errors) == 1, result.stderr[-3000:]
  return errors[0]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
  """width -> a PEFT adapter directory of 3 virtual tokens."""
  root = tmp_path_factory.mktemp("adapters")
  out = {}
  for width, preset in ((QUICKSTART_WIDTH, None), (TINY_WIDTH, "tiny")):
    config = (t5_config("t5_1_1_tiny") if preset else
              load_pretrained(os.path.join(ROOT, CHECKPOINT))[0])
    prompt = np.random.default_rng(width).normal(size=(3, width))
    out[width] = peft.export_adapter(prompt.astype(np.float32), config,
                                     str(root / f"adapter_{width}"))
  return out


def _import(adapter, output, *flags):
  return _run("prompt_tools", "import-peft", "--adapter", adapter,
              "--output", output, *flags)


@pytest.mark.parametrize("fmt", ["hf", "t5x"])
def test_import_peft_checks_the_width_against_the_checkpoint(
    tmp_path, adapters, frozen, fmt):
  checkpoint, width, wrong = ((CHECKPOINT, QUICKSTART_WIDTH, TINY_WIDTH)
                              if fmt == "hf" else
                              (frozen, TINY_WIDTH, QUICKSTART_WIDTH))
  good = str(tmp_path / "good.npy")
  result = _import(adapters[width], good, "--checkpoint", checkpoint)
  _ok(result)
  assert result.stdout == f"wrote prompt [3, {width}] to {good}\n"
  assert not _lines(result, "not checked"), result.stderr
  assert np.load(good).shape == (3, width)
  bad = str(tmp_path / "bad.npy")
  line = _error(_import(adapters[wrong], bad, "--checkpoint", checkpoint))
  assert line == (f"error: {adapters[wrong]}: the adapter's token_dim {wrong} "
                  f"differs from the frozen model's width {width}.")
  assert not os.path.exists(bad)


def test_import_peft_without_a_checkpoint_says_the_width_is_unchecked(
    tmp_path, adapters):
  output = str(tmp_path / "p.npy")
  result = _import(adapters[TINY_WIDTH], output)
  _ok(result)
  unchecked = _lines(result, "not checked")
  assert len(unchecked) == 1 and unchecked[0].endswith(
      f"{adapters[TINY_WIDTH]}: the prompt's width {TINY_WIDTH} was not "
      "checked against a frozen model; pass --checkpoint PATH (the model it "
      "is for) to check it."), result.stderr[-3000:]
  assert np.load(output).shape == (3, TINY_WIDTH)


def test_import_peft_with_a_preset_that_disagrees_with_the_t5x_table(
    tmp_path, adapters, frozen):
  line = _error(_import(adapters[TINY_WIDTH], str(tmp_path / "p.npy"),
                        "--checkpoint", frozen, "--model", "t5_1_1_small"))
  assert re.fullmatch(
      rf"error: {re.escape(frozen)}/checkpoint_0: the token embedding is "
      rf"{TINY_WIDTH} wide but --model has emb_dim 512; pass the "
      r"checkpoint's preset\.", line), line


def test_train_announces_a_float16_prompt_and_a_bfloat16_checkpoint(
    tmp_path):
  config, params = load_pretrained(os.path.join(ROOT, CHECKPOINT))
  bf16 = str(tmp_path / "bf16_checkpoint")
  hf_export.save_hf(params, config, bf16, dtype="bfloat16")
  table = np.asarray(params["token_embedder"]["embedding"])
  prompt_file = str(tmp_path / "init.npy")
  np.save(prompt_file, table[:10].astype(np.float16))  # PROMPT_LENGTH = 10
  model_dir = tmp_path / "run"
  result = _run(
      "train", "--gin_file=runs/quickstart.gin", f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{bf16}'",
      "--gin.PromptConfig.init='from_file'",
      f"--gin.PromptConfig.file='{prompt_file}'", "--gin.TRAIN_STEPS=1",
      "--gin.TrainConfig.eval_at_start=False",
      "--gin.TrainConfig.eval_period=0", "--gin.TrainConfig.checkpoint_period=1")
  _ok(result)
  casts = _lines(result, r"Prompt file .* cast to float32")
  assert len(casts) == 1, result.stderr[-3000:]
  assert casts[0].endswith(f"Prompt file {prompt_file} is float16 [10, 64]: "
                           "cast to float32 (exact).")
  upcasts = _lines(result, "stores its weights in")
  assert len(upcasts) == 1, result.stderr[-3000:]
  assert upcasts[0].endswith(
      f"{bf16} stores its weights in bfloat16; this run holds them in float32 "
      "(upcast exactly, so their precision is bfloat16's) and computes in "
      "bfloat16.")
  assert os.path.exists(model_dir / "prompts" / "step_1.npy")


@pytest.fixture(scope="module")
def bf16_prompt(tmp_path_factory):
  """A working quickstart prompt ('sentiment: ' embedded), saved in bfloat16
  as T5X's Checkpointer.save_numpy writes it (np.save into a file object)."""
  _, params = load_pretrained(os.path.join(ROOT, CHECKPOINT))
  table = np.asarray(params["token_embedder"]["embedding"])
  path = str(tmp_path_factory.mktemp("official") /
             "encoder.prompt.prompt.prompt")
  with open(path, "wb") as f:
    ids = seqio.ByteVocabulary().encode("sentiment: ")
    np.save(f, table[ids].astype(ml_dtypes.bfloat16))
  return path


def test_gin_infer_reads_a_bfloat16_prompt_and_announces_it(tmp_path,
                                                            bf16_prompt):
  output = tmp_path / "predictions.jsonl"
  result = _run(
      "infer", "--gin_file=models/from_checkpoint.gin",
      "--gin_file=runs/infer.gin", "--task_module=prompt_tuning.tasks.quickstart",
      f"--gin.INITIAL_CHECKPOINT_PATH='{CHECKPOINT}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.PROMPT_PATH='{bf16_prompt}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
      f"--gin.OUTPUT_PATH='{output}'")
  _ok(result)
  casts = _lines(result, r"Prompt file .* cast to float32")
  assert len(casts) == 1 and casts[0].endswith(
      f"Prompt file {bf16_prompt} is bfloat16 [11, 64]: cast to float32 "
      "(exact)."), result.stderr[-3000:]
  assert output.exists()


def test_serving_takes_dtype_float32_and_refuses_others(tmp_path,
                                                        bf16_prompt):
  rows = tmp_path / "rows.jsonl"
  rows.write_text("".join(json.dumps({"task": TASK, "inputs": text}) + "\n"
                          for text in ("a wonderful film", "dull and long")))
  common = ["--checkpoint", CHECKPOINT, "--prompt", f"sent:{TASK}={bf16_prompt}",
            "--input", rows, "--inputs_length", 64, "--targets_length", 16,
            "--batch_size", 2, "--rank_classification",
            "--task_module", "prompt_tuning.tasks.quickstart"]
  output = tmp_path / "out.jsonl"
  # The gin entry point's --mixed form is prompt_tools infer.
  result = _run("infer", "--mixed", *common, "--dtype", "float32",
                "--output", output)
  _ok(result)
  casts = _lines(result, "cast to float32")
  assert len(casts) == 1 and casts[0].endswith(
      f"Prompt file {bf16_prompt} is bfloat16 [11, 64]: cast to float32 "
      "(exact)."), result.stderr[-3000:]
  predictions = [json.loads(l)["prediction"] for l in
                 output.read_text().splitlines()]
  assert len(predictions) == 2 and set(predictions) <= {"positive",
                                                         "negative"}
  result = _run("prompt_tools", "infer", *common, "--dtype", "float16",
                "--output", tmp_path / "never.jsonl")
  assert result.returncode == 2, result.stderr
  assert re.search(r"argument --dtype: invalid choice: 'float16' \(choose "
                   r"from '?bfloat16'?, '?float32'?\)", result.stderr)
  assert not (tmp_path / "never.jsonl").exists()
