"""Inputs in other dtypes are read the same everywhere and announced.

`prompts.npy` is the one reader of prompt `.npy` files: a bfloat16 prompt as
T5X's `np.save` writes it (2-byte void records) round-trips exactly; float16
and float64 are cast to float32 with one log line; anything else is refused
with one line naming the file, and `from_file`, the library and
`load_prompt` (eval/infer PROMPT_PATH) agree file by file. A bfloat16-stored
frozen checkpoint upcast in a float32 run is announced; a PEFT adapter's
heads and layers are checked against the model; and serving with
dtype='float32' computes what the float32 train-time evaluation computes.
"""

import io
import logging
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import seqio

from prompt_tuning.models import t5_config
from prompt_tuning.pretrained import hf_export
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import from_file
from prompt_tuning.prompts import npy
from prompt_tuning.prompts import peft
from prompt_tuning.prompts.library import read_prompt
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.training import evaluation
from prompt_tuning.training import inference
from prompt_tuning.training.inference import DecodeConfig
from prompt_tuning.training.prompt_files import load_prompt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CHECKPOINT = os.path.join(ROOT, "tasks", "quickstart_checkpoint")
RNG = jax.random.PRNGKey(0)


def _values(p=3, h=8, seed=0):
  return np.random.default_rng(seed).normal(size=(p, h)).astype(np.float32)


def _save(path, array):
  with open(path, "wb") as f:  # as T5X's gfile.GFile + np.save
    np.save(f, array)
  return str(path)


def _casts(caplog):
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith("Prompt file ")]


def test_bfloat16_as_np_save_writes_it_round_trips_exactly(tmp_path, caplog):
  want = _values().astype(ml_dtypes.bfloat16)
  path = _save(tmp_path / "encoder.prompt.prompt.prompt", want)
  with open(path, "rb") as f:  # what np.save wrote: raw 2-byte records
    header = f.read(128)
  assert re.search(rb"'descr': '[<|]V2'", header), header
  with caplog.at_level(logging.WARNING):
    for got in (npy.read(path), npy.read(open(path, "rb"), path),
                npy.read(io.BytesIO(open(path, "rb").read()), "buffer")):
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, want.astype(np.float32))
      # float32 -> bfloat16 again gives the stored bits back.
      np.testing.assert_array_equal(got.astype(ml_dtypes.bfloat16).view(
          np.uint16), want.view(np.uint16))
  assert _casts(caplog)[0] == (f"Prompt file {path} is bfloat16 [3, 8]: cast "
                               "to float32 (exact).")
  assert _casts(caplog)[2] == ("Prompt file buffer is bfloat16 [3, 8]: cast "
                               "to float32 (exact).")


def test_a_stream_is_read_from_where_it_stands(tmp_path):
  """A caller's stream past other bytes: the magic is checked there, and
  np.load must start there too (not at byte 0)."""
  want = _values()
  stream = io.BytesIO(b"head" + open(_save(tmp_path / "p.npy", want),
                                     "rb").read())
  stream.seek(4)
  np.testing.assert_array_equal(npy.read(stream, "stream"), want)


@pytest.mark.parametrize("dtype, how", [
    (np.float16, "exact"), (np.float64, "rounded to float32's precision")])
def test_float16_and_float64_are_cast_with_one_line(tmp_path, caplog, dtype,
                                                    how):
  stored = _values().astype(dtype)
  path = _save(tmp_path / "p.npy", stored)
  with caplog.at_level(logging.WARNING):
    got = npy.read(path)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, stored.astype(np.float32))
  assert _casts(caplog) == [f"Prompt file {path} is {np.dtype(dtype).name} "
                            f"[3, 8]: cast to float32 ({how})."]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(npy.read(_save(
        tmp_path / "f32.npy", _values().astype(">f4"))), _values())
  assert not _casts(caplog)  # float32 (either byte order) is read silently


def _bad_files(tmp_path):
  """name -> (path, the message's tail after the path)."""
  cases = {
      "int": (np.ones((3, 8), np.int32),
              r" holds a int32 array of shape \(3, 8\); a prompt is a "
              r"floating \[P, H\] array \(float32, bfloat16, float16 or "
              r"float64\)\."),
      "bool": (np.ones((3, 8), bool), r" holds a bool array of shape"),
      "complex": (np.ones((3, 8), np.complex64), r" holds a complex64 array"),
      "void4": (np.zeros((3, 8), "V4"), r" holds a \|V4 array"),
      "one_d": (np.ones(8, np.float32), r" holds a float32 array of shape "
                r"\(8,\)"),
      "nan": (np.full((3, 8), np.nan, np.float16),
              r" contains NaN or inf values\."),
      "big": (np.full((3, 8), 1e300), r" holds float64 values beyond "
              r"float32's range; a prompt is stored as float32\."),
  }
  out = {}
  for name, (array, tail) in cases.items():
    out[name] = (_save(tmp_path / f"{name}.npy", array), tail)
  pickled = str(tmp_path / "pickled.npy")
  np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  out["pickled"] = (pickled, r" is not a plain numeric \.npy array "
                    r"\(Object arrays cannot be loaded when allow_pickle="
                    r"False\); save prompts with np\.save\(path, np\.asarray"
                    r"\(prompt, np\.float32\)\)\.")
  text = tmp_path / "text.npy"
  text.write_text("not numpy\n")
  out["not_npy"] = (str(text), r" is not a \.npy file \(no NUMPY magic\); "
                    r"save prompts with np\.save\.")
  whole = open(_save(tmp_path / "whole.npy", _values(50, 64)), "rb").read()
  cut = tmp_path / "cut.npy"
  cut.write_bytes(whole[:len(whole) // 2])
  out["truncated"] = (str(cut), r" is not a readable \.npy array \(.*\); it "
                      r"may be truncated: save it again\.")
  # A damaged header that claims a shape no machine can hold: numpy's
  # MemoryError was a traceback.
  huge = tmp_path / "huge_header.npy"
  with open(huge, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**7)})
    f.write(bytes(64))
  out["huge_header"] = (str(huge), r" is not a readable \.npy array "
                        r"\(Unable to allocate .*\); it may be truncated: "
                        r"save it again\.")
  return out


def test_every_reader_refuses_the_same_files_in_one_line(tmp_path):
  for name, (path, tail) in _bad_files(tmp_path).items():
    line = "^" + re.escape(path) + tail + ("$" if tail.endswith(r"\.") else "")
    for read in (npy.read, from_file, lambda p: read_prompt(p)[0],
                 load_prompt):
      with pytest.raises(ValueError, match=line) as e:
        read(path)
      assert "\n" not in str(e.value), (name, read)


def test_every_reader_takes_the_same_files(tmp_path, caplog):
  stored = {"f32": _values(), "bf16": _values().astype(ml_dtypes.bfloat16),
            "f16": _values().astype(np.float16), "f64": _values().astype(np.float64)}
  for name, array in stored.items():
    path = _save(tmp_path / f"{name}.npy", array)
    want = np.asarray(array, np.float32)
    with caplog.at_level(logging.WARNING):
      caplog.clear()
      got = [npy.read(path), np.asarray(from_file(path)(RNG, (3, 8))),
             read_prompt(path)[0], load_prompt(path)]
    for value in got:
      np.testing.assert_array_equal(value, want)
    # One announcement per read, the same from every reader.
    casts = _casts(caplog)
    assert len(casts) == (0 if name == "f32" else 4), casts
    assert len(set(casts)) <= 1


def test_peft_import_announces_its_cast_and_checks_heads_and_layers(
    tmp_path, caplog):
  config = t5_config("t5_1_1_tiny")
  directory = str(tmp_path / "adapter")
  prompt = _values(2, config.emb_dim)
  peft.export_adapter(prompt, config, directory)
  weights = os.path.join(directory, peft.WEIGHTS_FILE)
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  safetensors.numpy.save_file({peft.TENSOR: prompt.astype(np.float16)},
                              weights)
  with caplog.at_level(logging.WARNING):
    got = peft.import_adapter(directory, config.emb_dim, config)
  np.testing.assert_array_equal(got, prompt.astype(np.float16))
  assert _casts(caplog) == [f"Prompt file {weights} is float16 [2, "
                            f"{config.emb_dim}]: cast to float32 (exact)."]
  config_file = re.escape(os.path.join(directory, peft.CONFIG_FILE))
  with pytest.raises(ValueError, match=(
      rf"^{config_file}: num_attention_heads={config.num_heads} but the "
      rf"frozen model has 8 attention heads: the adapter was trained for "
      r"another model\.$")):
    peft.import_adapter(directory, config.emb_dim, config.replace(num_heads=8))
  with pytest.raises(ValueError, match=(
      rf"^{config_file}: num_layers={config.num_encoder_layers} but the "
      r"frozen model has 5 encoder layers")):
    peft.import_adapter(directory, config.emb_dim,
                        config.replace(num_encoder_layers=5))


def _upcasts(caplog):
  return [r.getMessage() for r in caplog.records
          if "stores its weights in" in r.getMessage()]


def test_a_bfloat16_checkpoint_in_a_float32_run_is_announced(tmp_path,
                                                              caplog):
  config, params = load_pretrained(CHECKPOINT)
  bf16 = str(tmp_path / "bf16")
  hf_export.save_hf(params, config, bf16, dtype="bfloat16")
  with caplog.at_level(logging.WARNING):
    _, upcast = load_pretrained(bf16)
  assert _upcasts(caplog) == [
      f"{bf16} stores its weights in bfloat16; this run holds them in "
      "float32 (upcast exactly, so their precision is bfloat16's) and "
      "computes in bfloat16."]
  # Upcast exactly: the float32 weights are the bfloat16 values.
  leaf = upcast["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  assert leaf.dtype == jnp.float32
  np.testing.assert_array_equal(leaf, np.asarray(
      params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]).astype(
          ml_dtypes.bfloat16).astype(np.float32))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    # Kept in bfloat16 (what was asked for), or a float32 checkpoint: silent.
    load_pretrained(bf16, param_dtype="bfloat16")
    load_pretrained(CHECKPOINT)
  assert not _upcasts(caplog)


def test_float32_serving_scores_match_the_float32_train_time_evaluation(
    tmp_path):
  """MixedRunner.rank in float32 against `inference._rank` (the train-time
  evaluation's scorer) on a float32 PromptedT5; bfloat16 serving is off by
  bfloat16's rounding."""
  vocab = seqio.ByteVocabulary()
  config, frozen = load_pretrained(CHECKPOINT)
  table = np.asarray(frozen["token_embedder"]["embedding"])
  prompt = table[vocab.encode("sentiment: ")]  # [P, H]
  texts = ["a wonderful, moving film", "dull and far too long",
           "I loved every minute", "a waste of time", "great acting",
           "boring", "charming and funny", "terrible plot"]
  tokens = np.zeros((len(texts), 64), np.int32)
  for i, text in enumerate(texts):
    ids = list(vocab.encode(text)) + [1]
    tokens[i, :len(ids)] = ids
  candidates = evaluation.label_candidates(("positive", "negative"), vocab, 16)
  model = PromptedT5(config.replace(dtype="float32"), prompt.shape[0])
  reference = np.asarray(jax.jit(lambda *a: inference._rank(  # pylint: disable=protected-access
      *a, model=model))({"encoder": {"prompt": {"prompt": prompt}}}, frozen,
                        {"encoder_input_tokens": tokens}, candidates))
  library = frozen_lib.load_library({"sent": _save(tmp_path / "p.npy",
                                                   prompt)})
  errors = {}
  for dtype in ("float32", "bfloat16"):
    served = frozen_lib.load_frozen(CHECKPOINT, dtype=dtype)
    assert served.config.dtype == dtype
    runner = frozen_lib.MixedRunner(served, library,
                                    DecodeConfig(rank_classification=True))
    scores = runner.rank(tokens, np.zeros(len(texts), np.int32),
                         np.broadcast_to(candidates, (len(texts),) +
                                         candidates.shape))
    errors[dtype] = float(np.max(np.abs(scores - reference)))
  assert errors["float32"] < 1e-4, errors
  assert errors["bfloat16"] > 100 * errors["float32"], errors
  with pytest.raises(ValueError, match=(
      r"^dtype='float16': serving computes in one of bfloat16, float32\.$")):
    frozen_lib.load_frozen(CHECKPOINT, dtype="float16")

