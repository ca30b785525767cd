"""Tests of the Hugging Face writer (prompt_tuning.pretrained.hf_export).

Round trips through `load_pretrained` must be bit-exact, and re-exporting the
committed fixtures (written by transformers 4.57) must reproduce transformers'
own tensors and config keys, which checks the layout independently of our
reader's name table.
"""

import json
import os

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained import hf_export
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.models import T5
from prompt_tuning.models import T5Config
from prompt_tuning.models import t5_config

# The committed fixtures live in tests/fixtures/, one folder up.
FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "fixtures", "hf")

UNTIED_GATED = t5_config("t5_1_1_tiny", num_decoder_layers=3,
                         dtype="float32")
TIED_RELU = T5Config(vocab_size=96, emb_dim=20, num_heads=2, head_dim=8,
                     mlp_dim=28, num_encoder_layers=2, num_decoder_layers=2,
                     mlp_activations=("relu",), logits_via_embedding=True,
                     relative_attention_num_buckets=8,
                     relative_attention_max_distance=16, dtype="float32")


def _random_params(config, seed=0):
  tokens = np.ones((1, 3), np.int32)
  variables = jax.jit(T5(config).init)(jax.random.PRNGKey(seed), tokens,
                                       tokens, tokens)
  return variables["params"]  # boxed (LogicallyPartitioned) leaves


def _flat(params):
  """'/'-joined names -> numpy arrays, boxes removed."""
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(nn.unbox(params), sep="/").items()}


@pytest.mark.parametrize("config", [UNTIED_GATED, TIED_RELU],
                         ids=["untied_gated", "tied_relu"])
def test_round_trip_is_bit_exact(tmp_path, config):
  params = _random_params(config)
  hf_export.save_hf(params, config, str(tmp_path))
  loaded_config, loaded = load_pretrained(str(tmp_path))
  for field in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                "num_encoder_layers", "num_decoder_layers",
                "logits_via_embedding", "relative_attention_num_buckets",
                "relative_attention_max_distance", "dropout_rate"):
    assert getattr(loaded_config, field) == getattr(config, field), field
  assert tuple(loaded_config.mlp_activations) == config.mlp_activations
  want, got = _flat(params), _flat(loaded)
  assert sorted(want) == sorted(got)
  for name in want:
    assert got[name].dtype == np.float32
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  with open(tmp_path / "config.json") as f:
    written = json.load(f)
  assert written["tie_word_embeddings"] is config.logits_via_embedding
  assert written["feed_forward_proj"] == (
      "relu" if config is TIED_RELU else "gated-gelu")


def test_scanned_params_are_written_per_layer(tmp_path):
  config = UNTIED_GATED.replace(scan_layers=True)
  params = _random_params(config)
  hf_export.save_hf(params, config, str(tmp_path))
  _, scanned = load_pretrained(str(tmp_path), config=config)
  want, got = _flat(params), _flat(scanned)
  assert sorted(want) == sorted(got)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("fixture", ["t5_1_1_style", "t5_1_0_style"])
def test_reexported_fixture_matches_transformers(tmp_path, fixture):
  source = os.path.join(FIXTURES, fixture)
  config, params = load_pretrained(source)
  hf_export.save_hf(params, config, str(tmp_path))
  theirs = hf.read_safetensors_header(os.path.join(source, hf.WEIGHTS_FILE))
  ours = hf.read_safetensors_header(str(tmp_path / hf.WEIGHTS_FILE))
  # transformers also saves the encoder/decoder copies of `shared`.
  expected = {n for n in theirs if not n.endswith("embed_tokens.weight")}
  assert set(ours) == expected
  for name in expected:
    np.testing.assert_array_equal(hf.load_tensor(ours[name]),
                                  hf.load_tensor(theirs[name]), err_msg=name)
  with open(os.path.join(source, hf.CONFIG_FILE)) as f:
    their_config = json.load(f)
  with open(tmp_path / hf.CONFIG_FILE) as f:
    our_config = json.load(f)
  for key in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers",
              "num_decoder_layers", "vocab_size", "feed_forward_proj",
              "dense_act_fn", "is_gated_act",
              "relative_attention_num_buckets",
              "relative_attention_max_distance", "layer_norm_epsilon"):
    assert our_config[key] == their_config[key], key
  assert our_config["tie_word_embeddings"] == their_config.get(
      "tie_word_embeddings", True)


def test_bfloat16_storage(tmp_path):
  params = _random_params(TIED_RELU)
  hf_export.save_hf(params, TIED_RELU, str(tmp_path), dtype="bfloat16")
  tensors = hf.read_safetensors_header(str(tmp_path / hf.WEIGHTS_FILE))
  assert {t.dtype for t in tensors.values()} == {"BF16"}
  _, loaded = load_pretrained(str(tmp_path))
  want, got = _flat(params), _flat(loaded)
  for name in want:
    np.testing.assert_array_equal(
        got[name], want[name].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_mismatched_params_are_refused(tmp_path):
  params = _random_params(UNTIED_GATED)
  with pytest.raises(ValueError, match="logits_dense"):
    hf_export.save_hf(params, UNTIED_GATED.replace(logits_via_embedding=True),
                      str(tmp_path))
  with pytest.raises(ValueError, match="shape"):
    hf_export.save_hf(params, UNTIED_GATED.replace(vocab_size=400),
                      str(tmp_path))
  assert not os.path.exists(tmp_path / hf.WEIGHTS_FILE)


def test_inexpressible_activation_is_refused(tmp_path):
  config = TIED_RELU.replace(mlp_activations=("gelu", "gelu"))
  with pytest.raises(ValueError, match="no Hugging Face T5 equivalent"):
    hf_export.save_hf({}, config, str(tmp_path))
