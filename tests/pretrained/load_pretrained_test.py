"""load_pretrained end to end: HF parity, T5X legacy/orbax into the model, errors."""

import os

import jax
import numpy as np
import pytest

from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.pretrained.assemble import flat_names
from prompt_tuning.models import T5
from prompt_tuning.models import t5_config
from tests import t5x_fixtures

HF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "fixtures", "hf")


def _hf_logits(name, **overrides):
  path = os.path.join(HF_DIR, name)
  config, params = load_pretrained(path)
  config = config.replace(dtype="float32", **overrides)
  if overrides:
    config, params = load_pretrained(path, config=config)
  data = np.load(os.path.join(path, "expected.npz"))
  logits = T5(config).apply({"params": params}, data["encoder_input_tokens"],
                            data["decoder_input_tokens"],
                            data["decoder_target_tokens"])
  real = data["decoder_target_tokens"] > 0
  return config, np.asarray(logits)[real], data["logits"][real]


@pytest.mark.parametrize("name", ["t5_1_1_style", "t5_1_0_style"])
@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_hugging_face(name, scan):
  config, ours, theirs = _hf_logits(name, scan_layers=scan)
  assert config.logits_via_embedding == (name == "t5_1_0_style")
  assert config.scan_layers == scan
  # Logits reach ~30: 1e-4 absolute is float32 round-off, not a near match.
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def _tiny_params(config, seed=0):
  tokens = np.ones((1, 3), np.int32)
  variables = T5(config).init(jax.random.PRNGKey(seed), tokens, tokens,
                              tokens)
  return {k: np.asarray(v.unbox()) for k, v in
          flat_names(variables["params"]).items()}


@pytest.mark.parametrize("style,dtype", [("current", None),
                                         ("flaxformer", None),
                                         ("current", "bfloat16")])
def test_t5x_legacy_checkpoint_loads_bit_exact(tmp_path, style, dtype):
  config = t5_config("t5_1_1_tiny", dtype="float32")
  flat = _tiny_params(config)
  t5x_fixtures.write_t5x_legacy(str(tmp_path), 100, flat, style=style,
                                dtype=dtype)
  t5x_fixtures.write_t5x_legacy(str(tmp_path), 7, _tiny_params(config, 1))
  _, params = load_pretrained(str(tmp_path), config=config)
  loaded = flat_names(params)
  assert set(loaded) == set(flat)
  for name, value in flat.items():
    want = value
    if dtype == "bfloat16":  # saved rounded, read back exactly that
      want = value.astype(jax.numpy.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded[name]), want,
                                  err_msg=name)


def test_t5x_orbax_checkpoint_fills_a_scanned_model(tmp_path):
  config = t5_config("t5_1_1_tiny", dtype="float32")
  flat = _tiny_params(config)
  t5x_fixtures.write_t5x_orbax(str(tmp_path), 3, flat)
  scanned = config.replace(scan_layers=True)
  _, params = load_pretrained(str(tmp_path / "checkpoint_3"), config=scanned)
  kernel = params["decoder"]["layers"]["mlp"]["wi_1"]["kernel"]
  assert kernel.shape == (2,) + flat["decoder/layers_0/mlp/wi_1/kernel"].shape
  np.testing.assert_array_equal(kernel[1],
                                flat["decoder/layers_1/mlp/wi_1/kernel"])


def test_config_is_required_for_t5x(tmp_path):
  config = t5_config("t5_1_1_tiny")
  t5x_fixtures.write_t5x_legacy(str(tmp_path), 1, _tiny_params(config))
  with pytest.raises(ValueError, match="carry no model config"):
    load_pretrained(str(tmp_path))


def test_missing_parameter_is_named(tmp_path):
  config = t5_config("t5_1_1_tiny")
  flat = _tiny_params(config)
  del flat["encoder/layers_1/mlp/wo/kernel"]
  t5x_fixtures.write_t5x_legacy(str(tmp_path), 1, flat)
  with pytest.raises(ValueError,
                     match=r"encoder/layers_1/mlp/wo/kernel is missing"):
    load_pretrained(str(tmp_path), config=config)


def test_shape_mismatch_names_parameter_and_both_shapes(tmp_path):
  config = t5_config("t5_1_1_tiny")
  t5x_fixtures.write_t5x_legacy(str(tmp_path), 1, _tiny_params(config))
  wider = config.replace(mlp_dim=96)
  with pytest.raises(ValueError, match=r"coder/layers_0/mlp/wi_0/kernel has "
                     r"shape \(32, 64\) in the checkpoint but the model "
                     r"config expects \(32, 96\)"):
    load_pretrained(str(tmp_path), config=wider)


def test_untied_checkpoint_into_tied_config_is_an_error(tmp_path):
  config = t5_config("t5_1_1_tiny")
  t5x_fixtures.write_t5x_legacy(str(tmp_path), 1, _tiny_params(config))
  with pytest.raises(ValueError, match="decoder/logits_dense/kernel that the "
                     "model config has no place for"):
    load_pretrained(str(tmp_path),
                    config=config.replace(logits_via_embedding=True))


def test_hf_config_must_agree_with_given_config():
  path = os.path.join(HF_DIR, "t5_1_1_style")
  config, _ = load_pretrained(path)
  with pytest.raises(ValueError, match=r"config.mlp_activations=\('relu',\) "
                     "disagrees with the checkpoint's config.json"):
    load_pretrained(path, config=config.replace(mlp_activations=("relu",)))


def test_nothing_at_path_is_a_clear_error(tmp_path):
  with pytest.raises((FileNotFoundError, ValueError), match="checkpoint"):
    load_pretrained(str(tmp_path / "nope"), config=t5_config("t5_1_1_tiny"))
