"""Tests of PEFT interchange for LoRA, IA3 and prefix tuning (methods.peft_io).

Round trips and refusals run without torch. The parity tests build each
adapter with PEFT's own API on the Hugging Face T5 of the same tiny random
model (written by `hf_export`), save it, import it into ours and compare
logits, and the other way round: export ours (random adapter values), load it
with `PeftModel.from_pretrained`, compare. Two models: T5.1.1-style (gated
GELU, untied, 2 layers: even) and T5.1.0-style (ReLU, tied and scaled logits,
3 layers: odd), both with heads * head_dim == emb_dim (PEFT's prefix view).
"""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning.methods import peft_io
from prompt_tuning.methods.peft_names import peft_names
from prompt_tuning.methods import peft_prefix
from prompt_tuning.methods import prefix as prefix_lib
from prompt_tuning.models import T5
from prompt_tuning.models import T5Config
from prompt_tuning.models import t5_config
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.pretrained import hf_export
from prompt_tuning.prompts import peft as prompt_peft

GATED = t5_config("t5_1_1_tiny", dtype="float32", dropout_rate=0.0)
RELU = T5Config(vocab_size=96, emb_dim=16, num_heads=2, head_dim=8,
                mlp_dim=24, num_encoder_layers=3, num_decoder_layers=3,
                mlp_activations=("relu",), logits_via_embedding=True,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=16, dtype="float32",
                dropout_rate=0.0)
CONFIGS = {"gated_even": GATED, "relu_odd": RELU}
TOL = 1e-4


def _wi(config):
  return "wi_0" if len(config.mlp_activations) > 1 else "wi"


def _init(config, seed=0):
  """'/'-joined unscanned name -> float32 numpy, of T5(config).init."""
  tokens = np.ones((1, 3), np.int32)
  variables = jax.jit(T5(config).init)(jax.random.PRNGKey(seed), tokens,
                                       tokens, tokens)
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
      nn.unbox(variables["params"]), sep="/").items()}


def _shapes(config):
  """'/'-joined name -> shape of T5(config)'s params, without computing them."""
  tokens = np.ones((1, 3), np.int32)
  variables = jax.eval_shape(T5(config).init, jax.random.PRNGKey(0), tokens,
                             tokens, tokens)
  return {k: v.shape for k, v in traverse_util.flatten_dict(
      nn.unbox(variables["params"]), sep="/").items()}


_FROZEN = {}


def _frozen(name):
  """The frozen params of CONFIGS[name] (cached)."""
  if name not in _FROZEN:
    _FROZEN[name] = _init(CONFIGS[name])
  return _FROZEN[name]


def _batch(config):
  """Encoder inputs (7 long, row 1 padded), decoder inputs / targets (5,
  row 1 padded): right padding, as seqio's converters produce."""
  rng = np.random.default_rng(1)
  enc = rng.integers(2, config.vocab_size, (2, 7)).astype(np.int32)
  enc[1, 5:] = 0
  tgt = rng.integers(2, config.vocab_size, (2, 5)).astype(np.int32)
  tgt[1, 3:] = 0
  dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


def _ours(config, frozen, adapter_params, adapters=AdapterConfig()):
  """Our logits [B, L, V] with `adapter_params` next to the frozen ones."""
  config = config.replace(adapters=adapters)
  flat = dict(frozen, **adapter_params)
  want = set(_shapes(config))
  assert set(flat) == want, (sorted(set(flat) - want),
                             sorted(want - set(flat)))
  params = traverse_util.unflatten_dict(
      {tuple(k.split("/")): v for k, v in flat.items()})
  enc, dec, tgt = _batch(config)
  return np.asarray(T5(config).apply({"params": params}, enc, dec, tgt))


def _max_diff(a, b, config):
  real = _batch(config)[2] > 0
  return float(np.abs(np.asarray(a) - np.asarray(b))[real].max())


def _adapter_params(config, adapters, seed):
  """Random values for the adapter params `adapters` adds to `config`."""
  base = set(_shapes(config))
  full = _shapes(config.replace(adapters=adapters))
  rng = np.random.default_rng(seed)
  added = {k: rng.uniform(-0.5, 0.5, shape).astype(np.float32)
           for k, shape in full.items() if k not in base}
  assert added
  return added


def _config_json(directory):
  with open(os.path.join(directory, prompt_peft.CONFIG_FILE)) as f:
    return json.load(f)


def _edit_config(directory, **changes):
  adapter = _config_json(directory)
  adapter.update(changes)
  with open(os.path.join(directory, prompt_peft.CONFIG_FILE), "w") as f:
    json.dump(adapter, f)


# ----------------------------------------------------------------------------
# Without torch.


def test_projection_modules_names_every_projection_once():
  modules = peft_names(GATED).modules
  assert modules["encoder/layers_1/attention/query"] == (
      "encoder.block.1.layer.0.SelfAttention.q", 32, 32)
  assert modules["decoder/layers_0/encoder_decoder_attention/out"] == (
      "decoder.block.0.layer.1.EncDecAttention.o", 32, 32)
  assert modules["decoder/layers_1/mlp/wo"] == (
      "decoder.block.1.layer.2.DenseReluDense.wo", 64, 32)
  # 2 encoder layers x (4 + 3), 2 decoder layers x (8 + 3); no lm_head.
  assert len(modules) == 2 * 7 + 2 * 11
  assert len(peft_names(RELU).modules) == 3 * 6 + 3 * 10


@pytest.mark.parametrize("targets", [
    ("query", "value"), ("key", "out", "wi_0", "wo"),
    (r"encoder/layers_\d+/attention/query", "value")])
def test_lora_round_trip(tmp_path, targets):
  adapters = AdapterConfig(lora_rank=3, lora_alpha=5.0, lora_rslora=True,
                           lora_dropout=0.1, lora_targets=targets)
  params = _adapter_params(GATED, adapters, seed=2)
  peft_io.export_lora(params, GATED, str(tmp_path), rank=3, alpha=5.0,
                      rslora=True, dropout=0.1, targets=targets,
                      base_model_name_or_path="base/t5")
  options, got = peft_io.import_lora(str(tmp_path), GATED)
  assert sorted(got) == sorted(params)
  for name in params:
    np.testing.assert_array_equal(got[name], params[name], err_msg=name)
  back = peft_io.to_adapter_config(options)
  assert (back.lora_rank, back.lora_alpha, back.lora_rslora,
          back.lora_dropout) == (3, 5.0, True, 0.1)
  # Same modules, though a regex comes back as per-path targets.
  assert set(_shapes(GATED.replace(adapters=back))) == set(
      _shapes(GATED.replace(adapters=adapters)))
  adapter = _config_json(str(tmp_path))
  assert adapter["peft_type"] == "LORA" and adapter["r"] == 3
  assert adapter["lora_alpha"] == 5 and adapter["use_rslora"] is True
  assert adapter["base_model_name_or_path"] == "base/t5"
  if targets == ("query", "value"):
    assert adapter["target_modules"] == ["q", "v"]
    assert options["targets"] == ("query", "value")


def test_ia3_round_trip(tmp_path):
  targets = ("key", "value", "wo")
  params = _adapter_params(RELU, AdapterConfig(ia3_targets=targets), 3)
  peft_io.export_ia3(params, RELU, str(tmp_path), targets=targets)
  options, got = peft_io.import_ia3(str(tmp_path), RELU)
  assert options == {"peft_type": "IA3", "targets": targets}
  assert sorted(got) == sorted(params)
  for name in params:
    np.testing.assert_array_equal(got[name], params[name], err_msg=name)
  adapter = _config_json(str(tmp_path))
  assert adapter["target_modules"] == ["k", "v", "wo"]
  assert adapter["feedforward_modules"] == ["wo"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefix_round_trip_and_block_map(tmp_path, name):
  config = CONFIGS[name]
  layers = config.num_decoder_layers
  table = np.random.default_rng(4).normal(
      size=(3, 2 * layers, config.num_heads, config.head_dim)).astype(
          np.float32)
  peft_prefix.export_prefix(table, config, str(tmp_path))
  options, got = peft_prefix.import_prefix(str(tmp_path), config)
  assert options == {"peft_type": "PREFIX_TUNING", "length": 3,
                     "attentions": ("decoder_self",)}
  np.testing.assert_array_equal(got, table)
  adapter = _config_json(str(tmp_path))
  assert (adapter["token_dim"], adapter["num_attention_heads"],
          adapter["num_layers"], adapter["num_transformer_submodules"]) == (
              config.num_heads * config.head_dim, config.num_heads, layers, 2)
  # PEFT's map (notes §1.3): L=5 -> (0,1),(4,5),(8,9),(2,3),(6,7).
  assert [prefix_lib.peft_prefix_blocks(i, 5) for i in range(5)] == [
      (0, 1), (4, 5), (8, 9), (2, 3), (6, 7)]
  assert [prefix_lib.peft_prefix_blocks(i, 2) for i in range(2)] == [
      (0, 1), (0, 1)]
  layer_params = peft_prefix.prefix_layer_params(table, config)
  assert len(layer_params) == 2 * layers
  again = peft_prefix.prefix_table(layer_params, config)
  if layers % 2:  # a permutation: every block is read once
    np.testing.assert_array_equal(again, table)
  else:  # blocks PEFT never reads come back as zeros
    used = {b for i in range(layers)
            for b in prefix_lib.peft_prefix_blocks(i, layers)}
    for block in range(2 * layers):
      want = table[:, block] if block in used else 0
      np.testing.assert_array_equal(again[:, block], want)
    layer_params["decoder/layers_1/self_attention/prefix_key"] = (
        layer_params["decoder/layers_1/self_attention/prefix_key"] + 1)
    with pytest.raises(ValueError, match="tie them before exporting"):
      peft_prefix.prefix_table(layer_params, config)


def _lora_dir(tmp_path, config=GATED, targets=("query", "value")):
  adapters = AdapterConfig(lora_rank=2, lora_alpha=4.0,
                           lora_targets=targets)
  directory = str(tmp_path / "lora")
  peft_io.export_lora(_adapter_params(config, adapters, 5), config, directory,
                      rank=2, alpha=4.0, targets=targets)
  return directory


@pytest.mark.parametrize("change,message", [
    ({"peft_type": "BOFT"}, r"peft_type is 'BOFT', not LORA; this model reads "
                            "only"),
    ({"peft_type": "IA3"}, "read it with import_ia3"),
    ({"task_type": "CAUSAL_LM"}, "task_type is 'CAUSAL_LM'"),
    ({"use_dora": True}, "use_dora=True asks for DoRA"),
    ({"lora_bias": True}, "lora_bias=True"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True"),
    ({"bias": "all"}, "bias='all'"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"trainable_token_indices": [0, 1]}, "trainable_token_indices"),
    ({"target_parameters": ["x.weight"]}, "target_parameters"),
    ({"init_lora_weights": "pissa"}, "rewrites the base weights"),
    ({"rank_pattern": {"q": 4}}, "different \\(r, alpha\\)"),
    ({"alpha_pattern": {"v": 7}}, "different \\(r, alpha\\)"),
    ({"r": 3}, "has shape \\(2, 32\\) but this model needs \\(3, 32\\)"),
    ({"target_modules": ["q", "k", "v"]}, "tensors do not match"),
    ({"target_modules": ["nope"]}, "selects none of this T5's projections"),
    ({"target_modules": "(q"}, "cannot be matched"),
])
def test_import_lora_refusals(tmp_path, change, message):
  directory = _lora_dir(tmp_path)
  _edit_config(directory, **change)
  with pytest.raises(ValueError, match=message) as e:
    peft_io.import_lora(directory, GATED)
  assert directory in str(e.value) and "\n" not in str(e.value)


def test_import_lora_patterns_and_layers_become_explicit_targets(tmp_path):
  directory = _lora_dir(tmp_path)
  # The same r and alpha everywhere through patterns is fine.
  _edit_config(directory, rank_pattern={"q": 2}, alpha_pattern={".*": 4})
  options, _ = peft_io.import_lora(directory, GATED)
  assert (options["rank"], options["alpha"]) == (2, 4.0)
  assert options["targets"] == ("query", "value")
  # layers_to_transform=[1] keeps block 1 of each stack: per-path regexes.
  directory = _lora_dir(tmp_path / "layer1")
  _edit_config(directory, layers_to_transform=[1])
  with pytest.raises(ValueError, match="tensors do not match"):
    peft_io.import_lora(directory, GATED)  # the file still has layer 0
  _, tensors = prompt_peft.read_adapter_tensors(directory)
  prompt_peft.write_adapter(
      directory, {k: v for k, v in tensors.items() if ".block.1." in k},
      _config_json(directory))
  options, params = peft_io.import_lora(directory, GATED)
  assert options["targets"] == tuple(
      f"{stack}/layers_1/{attention}/{proj}"
      for proj in ("query", "value")
      for stack, attention in (("encoder", "attention"),
                               ("decoder", "self_attention"),
                               ("decoder", "encoder_decoder_attention")))
  assert all("layers_1" in k for k in params) and len(params) == 12
  adapters = peft_io.to_adapter_config(options)
  got = set(_shapes(GATED.replace(adapters=adapters))) - set(_frozen(
      "gated_even"))
  assert got == set(params)


def test_import_lora_onto_another_model_is_refused(tmp_path):
  directory = _lora_dir(tmp_path)
  with pytest.raises(ValueError, match="tensors do not match") as e:
    peft_io.import_lora(directory, RELU)  # 3 layers, not 2
  assert directory in str(e.value)
  narrow = GATED.replace(num_heads=2)
  with pytest.raises(ValueError, match="needs \\(16, 2\\)"):
    peft_io.import_lora(directory, narrow)


def test_pickles_and_missing_files_are_refused(tmp_path):
  directory = _lora_dir(tmp_path)
  os.remove(os.path.join(directory, prompt_peft.WEIGHTS_FILE))
  with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
    peft_io.import_lora(directory, GATED)
  open(os.path.join(directory, prompt_peft.PICKLE_FILE), "wb").close()
  with pytest.raises(ValueError, match="a pickle that is never loaded"):
    peft_io.import_lora(directory, GATED)
  with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
    peft_io.import_ia3(str(tmp_path / "nothing"), GATED)


def test_import_ia3_refusals(tmp_path):
  targets = ("key", "value", "wo")
  directory = str(tmp_path)
  peft_io.export_ia3(_adapter_params(GATED, AdapterConfig(
      ia3_targets=targets), 6), GATED, directory, targets=targets)
  for change, message in (
      ({"feedforward_modules": []}, "scales the output of .*wo"),
      ({"feedforward_modules": ["wo", "k"]}, "scales the input of .*k"),
      ({"fan_in_fan_out": True}, "fan_in_fan_out"),
      ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
      ({"target_modules": ["k", "wo"]}, "tensors do not match")):
    original = _config_json(directory)
    _edit_config(directory, **change)
    with pytest.raises(ValueError, match=message) as e:
      peft_io.import_ia3(directory, GATED)
    assert directory in str(e.value)
    with open(os.path.join(directory, prompt_peft.CONFIG_FILE), "w") as f:
      json.dump(original, f)
  # Defaults (target_modules / feedforward_modules null) are PEFT's for t5.
  _edit_config(directory, target_modules=None, feedforward_modules=None)
  assert peft_io.import_ia3(directory, GATED)[0]["targets"] == targets


def test_import_prefix_refusals(tmp_path):
  directory = str(tmp_path)
  table = np.ones((3, 4, GATED.num_heads, GATED.head_dim), np.float32)
  peft_prefix.export_prefix(table, GATED, directory)
  for change, message in (
      ({"num_transformer_submodules": 1},
       "num_transformer_submodules=1 but it must be 2"),
      ({"num_layers": 3}, "num_layers=3 but it must be 2, the frozen model's "
                          "encoder layers"),
      ({"num_attention_heads": 2}, "num_attention_heads=2 but it must be 4"),
      ({"token_dim": 64}, "token_dim=64 but it must be 32, heads \\* "
                          "head_dim"),
      ({"num_virtual_tokens": None}, "num_virtual_tokens=None"),
      ({"num_virtual_tokens": 4}, "has shape \\(3, 128\\)"),
      ({"peft_type": "LORA"}, "read it with import_lora")):
    original = _config_json(directory)
    _edit_config(directory, **change)
    with pytest.raises(ValueError, match=message) as e:
      peft_prefix.import_prefix(directory, GATED)
    assert directory in str(e.value)
    with open(os.path.join(directory, prompt_peft.CONFIG_FILE), "w") as f:
      json.dump(original, f)
  # An unmerged prefix_projection encoder (MLP weights in the file).
  prompt_peft.write_adapter(
      directory, {"prompt_embeddings": table.reshape(3, -1),
                  "transform.0.weight": np.zeros((2, 2), np.float32)},
      dict(_config_json(directory), prefix_projection=True))
  with pytest.raises(ValueError, match="unmerged prefix_projection"):
    peft_prefix.import_prefix(directory, GATED)
  uneven = GATED.replace(num_decoder_layers=3)
  with pytest.raises(ValueError, match="as many decoder as encoder"):
    peft_prefix.export_prefix(table, uneven, directory)


def test_export_refuses_params_that_do_not_fit(tmp_path):
  adapters = AdapterConfig(lora_rank=2, lora_targets=("query",))
  params = _adapter_params(GATED, adapters, 7)
  with pytest.raises(ValueError, match="do not match the targets"):
    peft_io.export_lora(params, GATED, str(tmp_path), rank=2, alpha=8,
                        targets=("query", "value"))
  with pytest.raises(ValueError, match="needs \\(32, 4\\)"):
    peft_io.export_lora(params, GATED, str(tmp_path), rank=4, alpha=8,
                        targets=("query",))
  with pytest.raises(ValueError, match="select no projection"):
    peft_io.export_ia3({}, GATED, str(tmp_path), targets=("wi",))


# ----------------------------------------------------------------------------
# Parity with PEFT (torch, transformers, peft).


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """CONFIGS name -> a Hugging Face checkpoint of its frozen params."""
  dirs = {}
  for name, config in CONFIGS.items():
    directory = str(tmp_path_factory.mktemp(f"hf_{name}"))
    params = traverse_util.unflatten_dict(
        {tuple(k.split("/")): v for k, v in _frozen(name).items()})
    hf_export.save_hf(params, config, directory)
    dirs[name] = directory
  return dirs


def _torch():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  return torch, transformers, peft


def _hf_model(hf_dir):
  _, transformers, _ = _torch()
  return transformers.T5ForConditionalGeneration.from_pretrained(
      hf_dir).eval()


def _hf_logits(model, config):
  torch, _, _ = _torch()
  enc, dec, tgt = _batch(config)
  as_long = lambda x: torch.tensor(np.asarray(x, np.int64))
  with torch.no_grad():
    out = model(input_ids=as_long(enc), attention_mask=as_long(enc > 0),
                decoder_input_ids=as_long(dec),
                decoder_attention_mask=as_long(tgt > 0))
  return out.logits.float().numpy()


def _check_parity(name, ours, theirs, what):
  config = CONFIGS[name]
  diff = _max_diff(ours, theirs, config)
  base = _ours(config, _frozen(name), {})
  effect = _max_diff(base, theirs, config)
  print(f"{what} [{name}]: max |ours - PEFT| = {diff:.2e} "
        f"(adapter moves logits by {effect:.2e})")
  assert effect > 1e-2, "the adapter should change the logits"
  assert diff <= TOL, diff


LORA_CASES = {
    "qv_r4_a8": dict(r=4, lora_alpha=8, target_modules=["q", "v"]),
    "kowiwo_r2_a5_rslora": dict(r=2, lora_alpha=5, use_rslora=True,
                                target_modules=["k", "o", "WI", "wo"]),
    "encoder_only_regex": dict(r=3, lora_alpha=6,
                               target_modules=r"encoder\..*\.(q|v)"),
    "layers_to_transform": dict(r=2, lora_alpha=2, target_modules=["q", "v"],
                                layers_to_transform=[1]),
    "all_linear_excluding_cross": dict(
        r=2, lora_alpha=3, target_modules="all-linear",
        exclude_modules=r".*EncDecAttention\..*"),
    "same_r_through_patterns": dict(r=2, lora_alpha=4, target_modules=["o"],
                                    rank_pattern={"o": 2},
                                    alpha_pattern={r"block\.\d+.*": 4}),
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lora_from_peft_matches_peft(tmp_path, hf_dirs, name, case):
  torch, _, peft = _torch()
  config = CONFIGS[name]
  kwargs = dict(LORA_CASES[case])
  if isinstance(kwargs["target_modules"], list):
    kwargs["target_modules"] = [_wi(config) if t == "WI" else t
                                for t in kwargs["target_modules"]]
  torch.manual_seed(0)
  model = peft.get_peft_model(
      _hf_model(hf_dirs[name]),
      peft.LoraConfig(task_type="SEQ_2_SEQ_LM", init_lora_weights=False,
                      **kwargs)).eval()
  model.save_pretrained(str(tmp_path))
  options, params = peft_io.import_lora(str(tmp_path), config)
  assert options["rank"] == kwargs["r"]
  ours = _ours(config, _frozen(name), params,
               peft_io.to_adapter_config(options))
  _check_parity(name, ours, _hf_logits(model, config), f"LoRA {case}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ia3_from_peft_matches_peft(tmp_path, hf_dirs, name):
  torch, _, peft = _torch()
  config = CONFIGS[name]
  model = peft.get_peft_model(
      _hf_model(hf_dirs[name]),
      peft.IA3Config(task_type="SEQ_2_SEQ_LM")).eval()  # t5 defaults
  _randomize_ia3(model)
  model.save_pretrained(str(tmp_path))
  options, params = peft_io.import_ia3(str(tmp_path), config)
  assert options["targets"] == ("key", "value", "wo")
  assert len(params) == (3 * config.num_encoder_layers +
                         5 * config.num_decoder_layers)
  ours = _ours(config, _frozen(name), params,
               peft_io.to_adapter_config(options))
  _check_parity(name, ours, _hf_logits(model, config), "IA3 t5 defaults")


def test_ia3_mt5_style_targets_from_peft_match_peft(tmp_path, hf_dirs):
  """PEFT's mt5 default: k, v and wi_1 outputs, no feed-forward module."""
  _, _, peft = _torch()
  model = peft.get_peft_model(
      _hf_model(hf_dirs["gated_even"]),
      peft.IA3Config(task_type="SEQ_2_SEQ_LM",
                     target_modules=["k", "v", "wi_1"],
                     feedforward_modules=[])).eval()
  _randomize_ia3(model)
  model.save_pretrained(str(tmp_path))
  options, params = peft_io.import_ia3(str(tmp_path), GATED)
  assert options["targets"] == ("key", "value", "wi_1")
  ours = _ours(GATED, _frozen("gated_even"), params,
               peft_io.to_adapter_config(options))
  _check_parity("gated_even", ours, _hf_logits(model, GATED),
                "IA3 k, v, wi_1")


def _randomize_ia3(model):
  torch, _, _ = _torch()
  torch.manual_seed(0)
  with torch.no_grad():
    for param_name, param in model.named_parameters():
      if "ia3_l" in param_name:
        param.uniform_(0.3, 1.7)


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefix_from_peft_matches_peft(tmp_path, hf_dirs, name, projection):
  torch, _, peft = _torch()
  config = CONFIGS[name]
  torch.manual_seed(0)
  # P = 3 != encoder length 7 (PEFT once replaced cross-attention K/V when
  # they were equal).
  model = peft.get_peft_model(
      _hf_model(hf_dirs[name]),
      peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3,
                              prefix_projection=projection,
                              encoder_hidden_size=12)).eval()
  if projection:  # torch's default init leaves the MLP output small
    with torch.no_grad():
      for param_name, param in model.named_parameters():
        if "transform.2" in param_name:
          param.normal_(0.0, 1.0)
  model.save_pretrained(str(tmp_path))  # stores the merged table
  options, table = peft_prefix.import_prefix(str(tmp_path), config)
  ours = _ours(config, _frozen(name),
               peft_prefix.prefix_layer_params(table, config),
               peft_io.to_adapter_config(options))
  what = f"prefix{' (prefix_projection, merged)' if projection else ''}"
  _check_parity(name, ours, _hf_logits(model, config), what)
  # The saved adapter, reloaded by PEFT, is the same model.
  reloaded = peft.PeftModel.from_pretrained(_hf_model(hf_dirs[name]),
                                            str(tmp_path)).eval()
  _check_parity(name, ours, _hf_logits(reloaded, config), what + " reloaded")


OUR_LORA_CASES = {
    "qv": dict(lora_rank=2, lora_alpha=4.0, lora_targets=("query", "value")),
    "kowiwo_rslora": dict(lora_rank=3, lora_alpha=5.0, lora_rslora=True,
                          lora_targets=("key", "out", "WI", "wo")),
    "cross_attention_regex": dict(
        lora_rank=2, lora_alpha=3.0,
        lora_targets=(r"decoder/layers_\d+/encoder_decoder_attention/query",
                      r"encoder/layers_0/mlp/wo")),
}


@pytest.mark.parametrize("case", sorted(OUR_LORA_CASES))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lora_to_peft_matches_peft(tmp_path, hf_dirs, name, case):
  _, _, peft = _torch()
  config = CONFIGS[name]
  kwargs = dict(OUR_LORA_CASES[case])
  kwargs["lora_targets"] = tuple(_wi(config) if t == "WI" else t
                                 for t in kwargs["lora_targets"])
  adapters = AdapterConfig(**kwargs)
  params = _adapter_params(config, adapters, seed=8)
  ours = _ours(config, _frozen(name), params, adapters)
  peft_io.export_lora(params, config, str(tmp_path), rank=adapters.lora_rank,
                      alpha=adapters.lora_alpha, rslora=adapters.lora_rslora,
                      targets=adapters.lora_targets)
  model = peft.PeftModel.from_pretrained(_hf_model(hf_dirs[name]),
                                         str(tmp_path)).eval()
  adapted = {n for n, _ in model.named_modules() if n.endswith(".lora_A")}
  assert len(adapted) == len(params) // 2
  _check_parity(name, ours, _hf_logits(model, config), f"our LoRA {case}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ia3_to_peft_matches_peft(tmp_path, hf_dirs, name):
  _, _, peft = _torch()
  config = CONFIGS[name]
  for targets in (("key", "value", "wo"),
                  ("query", _wi(config), r"decoder/layers_0/mlp/wo")):
    adapters = AdapterConfig(ia3_targets=targets)
    params = {k: v + 1.0 for k, v in _adapter_params(config, adapters,
                                                     9).items()}
    ours = _ours(config, _frozen(name), params, adapters)
    directory = str(tmp_path / str(len(targets[-1])))
    peft_io.export_ia3(params, config, directory, targets=targets)
    model = peft.PeftModel.from_pretrained(_hf_model(hf_dirs[name]),
                                           directory).eval()
    _check_parity(name, ours, _hf_logits(model, config), f"our IA3 {targets}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefix_to_peft_matches_peft(tmp_path, hf_dirs, name):
  _, _, peft = _torch()
  config = CONFIGS[name]
  layers = config.num_decoder_layers
  table = np.random.default_rng(10).normal(
      size=(4, 2 * layers, config.num_heads, config.head_dim)).astype(
          np.float32)
  adapters = AdapterConfig(prefix_length=4, prefix_attentions=("decoder_self",))
  ours = _ours(config, _frozen(name),
               peft_prefix.prefix_layer_params(table, config), adapters)
  peft_prefix.export_prefix(table, config, str(tmp_path))
  model = peft.PeftModel.from_pretrained(_hf_model(hf_dirs[name]),
                                         str(tmp_path)).eval()
  _check_parity(name, ours, _hf_logits(model, config), "our prefix")


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("encoder", ["MLP", "LSTM"])
def test_p_tuning_from_peft_matches_peft(tmp_path, hf_dirs, name, encoder):
  """A PEFT P-tuning adapter (saved as its encoder's output) read as a
  prompt: our PromptedT5 gives PEFT's logits."""
  torch, _, peft = _torch()
  from prompt_tuning.prompts import PromptedT5  # pylint: disable=g-import-not-at-top
  config = CONFIGS[name]
  torch.manual_seed(0)
  model = peft.get_peft_model(_hf_model(hf_dirs[name]), peft.PromptEncoderConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3,
      encoder_reparameterization_type=encoder, encoder_hidden_size=8))
  model.eval()
  theirs = _hf_logits(model, config)
  model.save_pretrained(str(tmp_path))
  prompt = prompt_peft.import_adapter(str(tmp_path), config.emb_dim, config)
  assert prompt.shape == (3, config.emb_dim)
  params = traverse_util.unflatten_dict(
      {tuple(k.split("/")): v for k, v in _frozen(name).items()})
  params["encoder"]["prompt"] = {"prompt": prompt}
  enc, dec, tgt = _batch(config)
  ours = np.asarray(PromptedT5(config, 3).apply({"params": params}, enc, dec,
                                                tgt))
  _check_parity(name, ours, theirs, f"P-tuning {encoder} from PEFT")
