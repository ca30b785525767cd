"""The prompt library reads every saved-prompt format (prompts.library).

The official google-research/prompt-tuning layout is rebuilt here as their
`Checkpointer.save_numpy` writes it: `np.save` into a file object at
`numpy_checkpoints/checkpoint_<N>/encoder.prompt.prompt.prompt` (no
extension), float32 or bfloat16.
"""

import json
import os

import ml_dtypes
import numpy as np
import pytest

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
  for change, message in (({"peft_type": "LORA"}, "only PROMPT_TUNING"),
                          ({"num_transformer_submodules": 2},
                           "prompts the decoder too"),
                          ({"num_virtual_tokens": 3}, "has shape")):
    with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
      json.dump(dict(adapter, **change), f)
    with pytest.raises(ValueError, match=message):
      peft.import_adapter(directory)
  with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
    json.dump(adapter, f)
  with pytest.raises(ValueError, match="differs from the frozen model"):
    peft.import_adapter(directory, embed_dim=8)
  os.remove(os.path.join(directory, peft.WEIGHTS_FILE))
  open(os.path.join(directory, peft.PICKLE_FILE), "wb").close()
  with pytest.raises(ValueError, match="a pickle that is never loaded"):
    peft.import_adapter(directory)
