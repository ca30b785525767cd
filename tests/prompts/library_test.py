"""The prompt library reads every saved-prompt format (prompts.library).

The official google-research/prompt-tuning layout is rebuilt here as their
`Checkpointer.save_numpy` writes it: `np.save` into a file object at
`numpy_checkpoints/checkpoint_<N>/encoder.prompt.prompt.prompt` (no
extension), float32 or bfloat16.
"""

import json
import logging
import os
import re

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from prompt_tuning.models import t5_config
from prompt_tuning.prompts import peft
from prompt_tuning.prompts.library import LibraryPrompt
from prompt_tuning.prompts.library import PromptLibrary
from prompt_tuning.prompts.library import UnknownPrompt
from prompt_tuning.prompts.library import parse_spec
from prompt_tuning.prompts.library import read_prompt

H = 8


def _prompt(p, seed=0):
  return np.random.default_rng(seed).normal(size=(p, H)).astype(np.float32)


def _official(model_dir, step, array):
  directory = os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "encoder.prompt.prompt.prompt")
  with open(path, "wb") as f:  # as T5X's gfile.GFile + np.save
    np.save(f, array)
  return path


def test_npy_and_official_formats(tmp_path):
  a = _prompt(3)
  np.save(tmp_path / "a.npy", a)
  got, source = read_prompt(str(tmp_path / "a.npy"))
  np.testing.assert_array_equal(got, a)
  assert source == str(tmp_path / "a.npy")
  model_dir = str(tmp_path / "official")
  _official(model_dir, 1000, _prompt(4, 1))
  newest = _official(model_dir, 1200, _prompt(5, 2))
  # The file, its checkpoint directory, and the model directory (newest).
  for path in (newest, os.path.dirname(newest), model_dir):
    got, source = read_prompt(path)
    assert source == newest
    np.testing.assert_array_equal(got, _prompt(5, 2))


def test_official_bfloat16_save(tmp_path):
  want = _prompt(4).astype(ml_dtypes.bfloat16)
  path = _official(str(tmp_path), 7, want)
  got, _ = read_prompt(path)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want.astype(np.float32))


def test_peft_adapter_and_run_directory(tmp_path):
  config = t5_config("t5_1_1_tiny")
  prompt = _prompt(6).repeat(config.emb_dim // H, axis=1)
  peft.export_adapter(prompt, config, str(tmp_path / "adapter"))
  got, _ = read_prompt(str(tmp_path / "adapter"))
  np.testing.assert_array_equal(got, prompt)
  run = tmp_path / "run"
  (run / "prompts").mkdir(parents=True)
  with pytest.raises(ValueError, match="no prompt found"):
    read_prompt(str(run))
  got, _ = read_prompt(str(run), read_run=lambda path: prompt[:2])
  np.testing.assert_array_equal(got, prompt[:2])


@pytest.mark.parametrize("content,message", [
    (b"not numpy at all", "no NUMPY magic"),
    (None, "a floating"),
], ids=["not_npy", "int_array"])
def test_bad_files_are_refused(tmp_path, content, message):
  path = tmp_path / "bad"
  if content is None:
    with open(path, "wb") as f:
      np.save(f, np.arange(6).reshape(2, 3))
  else:
    path.write_bytes(content)
  with pytest.raises(ValueError, match=message):
    read_prompt(str(path))
  with pytest.raises(FileNotFoundError):
    read_prompt(str(tmp_path / "missing"))


def test_pickled_npy_is_refused(tmp_path):
  np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object),
          allow_pickle=True)
  with pytest.raises(ValueError, match="not a plain numeric"):
    read_prompt(str(tmp_path / "obj.npy"))


def test_library_names_tasks_widths_and_bank(tmp_path):
  for name, p in (("a", 2), ("b", 5), ("c", 3)):
    np.save(tmp_path / f"{name}.npy", _prompt(p, ord(name)))
  library = PromptLibrary.load([f"a:task_a={tmp_path}/a.npy",
                                f"b={tmp_path}/b.npy",
                                f"c:task_c={tmp_path}/c.npy"], embed_dim=H)
  assert library.names == ("a", "b", "c") and len(library) == 3
  assert library.resolve(prompt="b") == 1
  assert library.resolve(task="task_c") == 2
  assert library.resolve(task="a") == 0  # a prompt named like the task
  with pytest.raises(UnknownPrompt, match="No prompt for task 'nope'"):
    library.resolve(task="nope")
  with pytest.raises(UnknownPrompt, match="No prompt named 'zz'"):
    library.index("zz")
  bank, lengths = library.bank()
  assert bank.shape == (3, 5, H) and lengths.tolist() == [2, 5, 3]
  np.testing.assert_array_equal(bank[0, :2], library["a"].value)
  assert not bank[0, 2:].any()
  with pytest.raises(ValueError, match="width is 16: it was trained for "
                     "another model"):
    PromptLibrary.load({"a": f"{tmp_path}/a.npy"}, embed_dim=16)
  with pytest.raises(ValueError, match="used twice"):
    PromptLibrary([LibraryPrompt("x", _prompt(2), "1"),
                   LibraryPrompt("x", _prompt(2), "2")])
  with pytest.raises(ValueError, match="two prompts"):
    PromptLibrary([LibraryPrompt("x", _prompt(2), "1", "t"),
                   LibraryPrompt("y", _prompt(2), "2", "t")])


def test_parse_spec():
  assert parse_spec("a=/x/y") == ("a", "", "/x/y")
  assert parse_spec("a:rte=/x=y") == ("a", "rte", "/x=y")
  with pytest.raises(ValueError, match="NAME=PATH"):
    parse_spec("/just/a/path")


def test_adapter_errors(tmp_path):
  config = t5_config("t5_1_1_tiny")
  directory = str(tmp_path / "adapter")
  peft.export_adapter(np.zeros((2, config.emb_dim)), config, directory)
  with open(os.path.join(directory, peft.CONFIG_FILE)) as f:
    adapter = json.load(f)
  for change, message in (({"peft_type": "LORA"},
                           "only PROMPT_TUNING and P_TUNING"),
                          ({"num_transformer_submodules": 3},
                           "has 1 or 2"),
                          ({"num_transformer_submodules": 2}, "has shape"),
                          ({"num_virtual_tokens": 3}, "has shape")):
    with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
      json.dump(dict(adapter, **change), f)
    with pytest.raises(ValueError, match=message):
      peft.import_adapter(directory)
  # A P-tuning adapter is PEFT's saved prompt encoder output: a prompt.
  with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
    json.dump(dict(adapter, peft_type="P_TUNING",
                   encoder_reparameterization_type="LSTM"), f)
  assert peft.import_adapter(directory).shape == (2, config.emb_dim)
  with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
    json.dump(adapter, f)
  with pytest.raises(ValueError, match="differs from the frozen model"):
    peft.import_adapter(directory, embed_dim=8)
  os.remove(os.path.join(directory, peft.WEIGHTS_FILE))
  open(os.path.join(directory, peft.PICKLE_FILE), "wb").close()
  with pytest.raises(ValueError, match="a pickle that is never loaded"):
    peft.import_adapter(directory)


def test_official_model_directory_takes_the_numerically_newest_step(tmp_path):
  model_dir = str(tmp_path / "official")
  for step in (1000, 200, 1200):  # 1200 > 1000 > 200, not string order
    _official(model_dir, step, _prompt(2, step))
  got, source = read_prompt(model_dir)
  assert source.endswith(os.path.join("checkpoint_1200",
                                      "encoder.prompt.prompt.prompt"))
  np.testing.assert_array_equal(got, _prompt(2, 1200))
  # Neither a step without the file nor a file outside a checkpoint_<N>.
  empty = tmp_path / "empty"
  (empty / "numpy_checkpoints" / "checkpoint_9").mkdir(parents=True)
  (empty / "numpy_checkpoints" / "latest").mkdir()
  np.save(empty / "numpy_checkpoints" / "latest" /
          "encoder.prompt.prompt.prompt", _prompt(2))
  numpy_dir = os.path.join(empty, "numpy_checkpoints")
  with pytest.raises(FileNotFoundError, match=(
      rf"^{re.escape(numpy_dir)} has no checkpoint_<N>/encoder\.prompt\.prompt\.prompt; "
      r"pass the prompt file itself\.$")):
    read_prompt(str(empty))


def test_library_messages_sources_and_defaults(tmp_path):
  np.save(tmp_path / "a.npy", _prompt(2))
  one = PromptLibrary.load({"a": f"{tmp_path}/a.npy"})  # width from 'a'
  assert one.embed_dim == H and one["a"].task == ""
  assert one["a"].source == f"{tmp_path}/a.npy" and one["a"].length == 2
  run = tmp_path / "run"
  (run / "prompts").mkdir(parents=True)
  from_run = PromptLibrary.load([f"r={run}"], read_run=lambda path: _prompt(3))
  np.testing.assert_array_equal(from_run["r"].value, _prompt(3))
  with pytest.raises(ValueError,
                     match=r"^A prompt library needs at least one prompt\.$"):
    PromptLibrary([])
  with pytest.raises(ValueError, match=(
      r"^Prompt name 'x' is used twice \(s1 and s2\)\.$")):
    PromptLibrary([LibraryPrompt("x", _prompt(2), "s1"),
                   LibraryPrompt("x", _prompt(2), "s2")])
  with pytest.raises(ValueError, match=(
      r"^Task 't' has two prompts, 'x' and 'y'; name the prompt in each row "
      r"instead\.$")):
    PromptLibrary([LibraryPrompt("x", _prompt(2), "1", "t"),
                   LibraryPrompt("y", _prompt(2), "2", "t")])
  library = PromptLibrary([LibraryPrompt("a", _prompt(2), "1", "ta"),
                           LibraryPrompt("b", _prompt(2), "2")])
  assert [p.name for p in library] == ["a", "b"]
  with pytest.raises(UnknownPrompt) as e:
    library.index("zz")
  assert str(e.value) == "No prompt named 'zz' in the library (has: a, b)."
  with pytest.raises(UnknownPrompt) as e:
    library.resolve()
  assert str(e.value) == ("No prompt for task '' in the library (tasks: ta; "
                          "names: a, b).")
  with pytest.raises(UnknownPrompt) as e:
    one.resolve(task="rte")
  assert str(e.value) == ("No prompt for task 'rte' in the library (tasks: "
                          "none; names: a).")


@pytest.mark.parametrize("spec", ["/just/a/path", "a=", "a= ", "=/x", " =/x",
                                  ":rte=/x"])
def test_bad_prompt_specs(spec):
  with pytest.raises(ValueError, match=(
      rf"^Prompt spec {re.escape(repr(spec))} is not NAME=PATH or "
      r"NAME:TASK=PATH\.$")):
    parse_spec(spec)


def test_adapter_config_is_peft_prompt_tuning_for_the_encoder():
  config = t5_config("t5_1_1_tiny")
  assert peft.adapter_config(3, config) == {
      "peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM",
      "num_virtual_tokens": 3, "token_dim": config.emb_dim,
      "num_transformer_submodules": 1,
      "num_attention_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
      "tokenizer_name_or_path": None, "tokenizer_kwargs": None,
      "base_model_name_or_path": None, "revision": None,
      "inference_mode": True, "auto_mapping": None, "modules_to_save": None,
      "peft_version": peft.PEFT_VERSION}
  assert peft.adapter_config(3, config, "google/t5-v1_1-base")[
      "base_model_name_or_path"] == "google/t5-v1_1-base"


def test_export_adapter_stores_float32_with_pt_metadata(tmp_path, monkeypatch):
  config = t5_config("t5_1_1_tiny")
  directory = str(tmp_path / "adapter")
  prompt = np.random.default_rng(0).normal(size=(3, config.emb_dim))  # f64
  peft.export_adapter(prompt, config, directory, "base/t5")
  peft.export_adapter(prompt, config, directory, "base/t5")  # replaces
  weights = os.path.join(directory, peft.WEIGHTS_FILE)
  with safetensors.safe_open(weights, "numpy") as f:
    assert f.metadata() == {"format": "pt"}  # what transformers expects
    stored = f.get_tensor(peft.TENSOR)
  assert stored.dtype == np.float32
  np.testing.assert_array_equal(stored, prompt.astype(np.float32))
  with open(os.path.join(directory, peft.CONFIG_FILE)) as f:
    assert json.load(f) == peft.adapter_config(3, config, "base/t5")
  assert sorted(os.listdir(directory)) == [peft.CONFIG_FILE, peft.WEIGHTS_FILE]
  for bad in (prompt[0], prompt[:, :5]):
    with pytest.raises(ValueError, match=(
        rf"^A prompt for this model is \[P, {config.emb_dim}\]; got shape "
        rf"{re.escape(str(bad.shape))}\.$")):
      peft.export_adapter(bad, config, directory)

  def half_written(tensors, path, metadata=None):
    with open(path, "wb") as f:
      f.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
  with pytest.raises(OSError, match="disk full"):
    peft.export_adapter(prompt, config, directory)
  # The failed write leaves the previous adapter and no temporary file.
  assert sorted(os.listdir(directory)) == [peft.CONFIG_FILE, peft.WEIGHTS_FILE]
  np.testing.assert_array_equal(peft.import_adapter(directory),
                                prompt.astype(np.float32))


def test_import_adapter_messages_and_defaults(tmp_path):
  config = t5_config("t5_1_1_tiny")
  directory = str(tmp_path / "adapter")
  config_file = os.path.join(directory, peft.CONFIG_FILE)
  weights = os.path.join(directory, peft.WEIGHTS_FILE)
  os.makedirs(directory)
  with pytest.raises(FileNotFoundError, match=(
      rf"^{re.escape(directory)}: no adapter_config\.json; a PEFT adapter "
      r"directory is what save_pretrained writes\.$")):
    peft.import_adapter(directory)
  with open(config_file, "w") as f:
    f.write("{oops")
  with pytest.raises(ValueError, match=(
      rf"^{re.escape(config_file)} is not valid JSON \(Expecting property "
      r"name enclosed in double quotes: line 1 column 2 \(char 1\)\)\.$")):
    peft.import_adapter(directory)
  adapter = peft.adapter_config(2, config)
  del adapter["num_transformer_submodules"]  # PEFT's default here is 1

  def write(**change):
    with open(config_file, "w") as f:
      json.dump(dict(adapter, **change), f)

  write(peft_type="LORA")
  with pytest.raises(ValueError, match=(
      rf"^{re.escape(config_file)}: peft_type is 'LORA'; only PROMPT_TUNING "
      r"and P_TUNING adapters are soft prompts \(LORA, IA3 and PREFIX_TUNING "
      r"adapters import as run directories: pass --checkpoint\)\.$")):
    peft.import_adapter(directory)
  write(num_transformer_submodules=3)
  with pytest.raises(ValueError, match=(
      rf"^{re.escape(config_file)}: num_transformer_submodules=3; a T5 "
      r"prompt-tuning adapter has 1 or 2 \(PEFT's seq2seq default\)\.$")):
    peft.import_adapter(directory)
  write()
  with pytest.raises(FileNotFoundError, match=(
      rf"^{re.escape(directory)}: no adapter_model\.safetensors\.$")):
    peft.import_adapter(directory)
  open(os.path.join(directory, peft.PICKLE_FILE), "wb").close()
  with pytest.raises(ValueError, match=(
      rf"^{re.escape(directory)} has only adapter_model\.bin, a pickle that is "
      r"never loaded here; re-save the adapter with save_pretrained\("
      r"safe_serialization=True\)\.$")):
    peft.import_adapter(directory)
  others = {f"w{i}": np.zeros(1, np.float32) for i in range(7)}
  safetensors.numpy.save_file(others, weights)
  with pytest.raises(ValueError, match=(
      rf"^{re.escape(weights)} has no 'prompt_embeddings' tensor \(found "
      r"\['w0', 'w1', 'w2', 'w3', 'w4'\]\)\.$")):
    peft.import_adapter(directory)
  with open(weights, "wb") as f:
    f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
  with pytest.raises(ValueError, match=(
      rf"^{re.escape(weights)} is not a readable safetensors file \(Error "
      r"while deserializing header: .*\)\.$")):
    peft.import_adapter(directory)
  prompt = np.random.default_rng(0).normal(size=(2, config.emb_dim))
  safetensors.numpy.save_file({peft.TENSOR: prompt.astype(np.float16)},
                              weights)
  got = peft.import_adapter(directory, embed_dim=config.emb_dim)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, prompt.astype(np.float16))


def test_import_peft_seq2seq_default_two_submodules(tmp_path, caplog):
  """PEFT's SEQ_2_SEQ_LM default saves a [2P, H] table and prepends only its
  first P rows to the encoder input: those are the prompt."""
  config = t5_config("t5_1_1_tiny")
  directory = str(tmp_path / "adapter")
  table = np.random.default_rng(1).normal(
      size=(2 * 3, config.emb_dim)).astype(np.float32)  # [2P, H]
  os.makedirs(directory)
  adapter = dict(peft.adapter_config(3, config), num_transformer_submodules=2)
  with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
    json.dump(adapter, f)
  safetensors.numpy.save_file({peft.TENSOR: table},
                              os.path.join(directory, peft.WEIGHTS_FILE))
  with caplog.at_level(logging.INFO):
    prompt = peft.import_adapter(directory, embed_dim=config.emb_dim,
                                 model=config)
  np.testing.assert_array_equal(prompt, table[:3])
  assert "using the first 3 of its 6 rows" in caplog.text
  # A [P, H] table under num_transformer_submodules=2 is not PEFT's layout.
  safetensors.numpy.save_file({peft.TENSOR: table[:3]},
                              os.path.join(directory, peft.WEIGHTS_FILE))
  with pytest.raises(ValueError, match=(
      r"has shape \(3, 32\) but adapter_config\.json says \[num_virtual_tokens"
      r" \* num_transformer_submodules, token_dim\] = \[6, 32\]")):
    peft.import_adapter(directory)
