"""Prefixes, LoRA and IA3 on decoder-only LMs against PEFT's CAUSAL_LM ones.

Our LM with learned per-layer key/value prefixes equals a random HF Llama /
Qwen2 / Gemma 2 under PEFT's prefix (float32, 1e-4): our table exported
loads in `PeftModel.from_pretrained`, and a PEFT-made adapter imports as
the same table; likewise LoRA and IA3 adapters on the q/k/v/o and
gate/up/down projections (those need the torch extra). Without torch: cached decoding
with a prefix equals the uncached forward, a prefix is the KV cache of real
rows before the input (HF's meaning, positions included), and the PEFT
files round trip with grouped-query heads.
"""

import json
import os

import jax
import numpy as np
import pytest

from prompt_tuning.methods import base
from prompt_tuning.methods import peft_io
from prompt_tuning.methods import peft_prefix
from prompt_tuning.methods.prefix import PrefixConfig
from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.pretrained import hf_decoder
from tests.models import decoder_only_test as lm_test

P = 3


def _table(config, length=P, seed=0):
  method = PrefixConfig(length=length).bind(config)
  shape = method.reparameterisation(config)["prefix/table"][0]
  return np.random.default_rng(seed).normal(0, 1.0, shape).astype(np.float32)


def _with_prefix(params, table, config):
  out = jax.tree_util.tree_map(lambda x: x, params)
  for name, value in peft_prefix.prefix_layer_params(table, config).items():
    node = out
    *parents, leaf = name.split("/")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return out


def _prefixed(config, length=P):
  method = PrefixConfig(length=length).bind(config)
  return DecoderOnlyLM(config, method.adapters(config))


def _hf_base(name, tmp_path):
  """(torch, peft, a random HF LM of shape `name`, our float32 config and
  host params for it)."""
  torch, _ = lm_test._torch()  # pylint: disable=protected-access
  peft_lib = pytest.importorskip("peft")
  hf_model = lm_test._hf_model(name, str(tmp_path / "base"))  # pylint: disable=protected-access
  config, params = hf_decoder.load_host(str(tmp_path / "base"))
  return torch, peft_lib, hf_model, config.replace(dtype="float32"), params


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2", "gemma2"])
def test_equals_peft_causal_lm_prefix_tuning_both_ways(name, tmp_path):
  torch, peft_lib, hf_model, config, params = _hf_base(name, tmp_path)
  tokens, mask = lm_test._batch(left=False)  # pylint: disable=protected-access
  table = _table(config, seed=1)
  ours = np.asarray(_prefixed(config).apply(
      {"params": _with_prefix(params, table, config)}, tokens, mask))
  plain = np.asarray(DecoderOnlyLM(config).apply({"params": params}, tokens,
                                                 mask))
  assert np.abs(ours - plain)[mask].max() > 1e-2  # the prefix matters

  # Ours exported, loaded by PEFT.
  adapter = peft_prefix.export_prefix(table, config, str(tmp_path / "ours"))
  loaded = peft_lib.PeftModel.from_pretrained(hf_model, adapter).eval()
  theirs = lm_test._hf_logits(loaded, tokens, mask)  # pylint: disable=protected-access
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4, rtol=1e-4)

  # PEFT's own, made with its API, imported.
  made = peft_lib.get_peft_model(
      lm_test._hf_model(name, str(tmp_path / "base2")),  # pylint: disable=protected-access
      peft_lib.PrefixTuningConfig(task_type="CAUSAL_LM",
                                  num_virtual_tokens=P + 1))
  with torch.no_grad():
    made.prompt_encoder["default"].embedding.weight.normal_(0, 1.0)
  made.save_pretrained(str(tmp_path / "made"))
  options, imported = peft_prefix.import_prefix(str(tmp_path / "made"),
                                                config)
  assert options["length"] == P + 1
  assert imported.shape == (P + 1, 2 * config.num_layers,
                            config.num_kv_heads, config.head_dim)
  theirs = lm_test._hf_logits(made.eval(), tokens, mask)  # pylint: disable=protected-access
  ours = np.asarray(_prefixed(config, P + 1).apply(
      {"params": _with_prefix(params, imported, config)}, tokens, mask))
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4, rtol=1e-4)


def test_cached_decoding_with_a_prefix_equals_the_full_forward():
  """Windows shorter than the rows count the prefix columns in both."""
  config = lm_test.CACHED["llama_window"]
  model = _prefixed(config)
  params = lm_test._random_params(model)  # pylint: disable=protected-access
  tokens, mask = lm_test._batch(left=True)  # pylint: disable=protected-access
  lm_test.greedy_is_the_full_forward(model, params, tokens, mask, 5)
  # The prefix changes the logits (so the check above is not vacuous).
  plain_params = jax.tree_util.tree_map(lambda x: x, params)
  for i in range(config.num_layers):
    attention = plain_params["decoder"][f"layers_{i}"]["self_attention"]
    del attention["prefix_key"], attention["prefix_value"]
  unprefixed = np.asarray(DecoderOnlyLM(config).apply(
      {"params": plain_params}, tokens, mask))
  prefixed = np.asarray(model.apply({"params": params}, tokens, mask))
  assert np.abs(unprefixed - prefixed)[mask].max() > 1e-2


def test_a_prefix_is_the_cache_of_rows_before_the_input():
  """HF's meaning of a prefix (a P-column KV cache): with each layer's
  prefix set to the keys (rotated at positions 0..P-1) and values the plain
  LM computes for P real rows, the prefixed LM's logits on the input equal
  the plain LM's on [those rows; input] at the input's columns. Sliding
  windows count the prefix columns too."""
  from prompt_tuning.models.decoder_only import model as model_lib  # pylint: disable=g-import-not-at-top
  config = lm_test.CACHED["llama_window"]
  plain = DecoderOnlyLM(config)
  params = lm_test._random_params(plain)  # pylint: disable=protected-access
  tokens, mask = lm_test._batch(left=False)  # pylint: disable=protected-access
  rows = np.random.default_rng(7).integers(0, lm_test.VOCAB, (1, P))
  _, seen = plain.apply({"params": params}, rows, capture_intermediates=True,
                        mutable=["intermediates"])
  inputs = [plain.apply({"params": params}, rows, method="embed")] + [
      seen["intermediates"]["decoder"][f"layers_{i}"]["__call__"][0]
      for i in range(config.num_layers - 1)]
  prefixed = dict(params, decoder=dict(params["decoder"]))
  inverse = model_lib.inverse_frequencies(config)
  for i, h in enumerate(inputs):
    layer = params["decoder"][f"layers_{i}"]
    normed = model_lib.Norm(config.norm_eps, dtype="float32").apply(
        {"params": layer["pre_self_attention_layer_norm"]}, h)
    project = lambda name: (normed @ layer["self_attention"][name]["kernel"]
                            ).reshape(P, config.num_kv_heads,
                                      config.head_dim)
    key = model_lib.rotate(project("key")[None], np.arange(P)[None],
                           inverse)[0]
    prefixed["decoder"][f"layers_{i}"] = dict(
        layer, self_attention=dict(layer["self_attention"],
                                   prefix_key=key,
                                   prefix_value=project("value")))
  got = np.asarray(_prefixed(config).apply({"params": prefixed}, tokens,
                                           mask))
  both = np.concatenate([np.repeat(rows, len(tokens), 0), tokens], axis=1)
  both_mask = np.concatenate([np.ones((len(tokens), P), bool), mask], axis=1)
  want = np.asarray(plain.apply({"params": params}, both, both_mask))[:, P:]
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-5, rtol=1e-5)


def test_peft_files_round_trip_with_grouped_query_heads(tmp_path):
  config = lm_test.CACHED["gemma2"]
  table = _table(config, length=2)
  adapter = peft_prefix.export_prefix(table, config, str(tmp_path / "a"),
                                      base_model_name_or_path="base")
  with open(os.path.join(adapter, "adapter_config.json")) as f:
    saved = json.load(f)
  assert (saved["task_type"], saved["num_transformer_submodules"],
          saved["num_layers"], saved["num_attention_heads"],
          saved["token_dim"]) == ("CAUSAL_LM", 1, config.num_layers,
                                  config.num_kv_heads,
                                  config.num_kv_heads * config.head_dim)
  options, got = peft_prefix.import_prefix(adapter, config)
  np.testing.assert_array_equal(got, table)
  assert options["length"] == 2
  params = peft_prefix.prefix_layer_params(table, config)
  np.testing.assert_array_equal(
      params["decoder/layers_1/self_attention/prefix_value"], table[:, 3])
  np.testing.assert_array_equal(peft_prefix.prefix_table(params, config),
                                table)
  other = config.replace(num_layers=config.num_layers + 1)
  with pytest.raises(ValueError, match="num_layers=3 but it must be 4"):
    peft_prefix.import_prefix(adapter, other)


@pytest.mark.parametrize("name, kind", [("llama_gqa", "lora"),
                                        ("qwen2", "ia3"),
                                        ("gemma2", "lora")])
def test_lora_and_ia3_equal_peft_causal_lm_both_ways(name, kind, tmp_path):
  """Ours exported loads in PEFT with our logits; PEFT's own (made with its
  API on other modules, weights moved off their init) imports and gives
  PEFT's logits."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.adapters import AdapterConfig  # pylint: disable=g-import-not-at-top
  torch, peft_lib, hf_model, config, params = _hf_base(name, tmp_path)
  tokens, mask = lm_test._batch(left=False)  # pylint: disable=protected-access
  rng = np.random.default_rng(3)

  def ours_logits(hooks, names):
    full = base.nested(dict(base.flat(params), **names))
    return np.asarray(DecoderOnlyLM(config, hooks).apply(
        {"params": full}, tokens, mask))

  def moved(hooks):
    init = nn.unbox(DecoderOnlyLM(config, hooks).init(
        jax.random.PRNGKey(1), tokens)["params"])
    return {k: np.asarray(v) + rng.normal(0, 0.3, v.shape).astype(np.float32)
            for k, v in base.flat(init).items()
            if k.rsplit("/", 1)[-1] in ("lora_a", "lora_b", "ia3_scaling")}

  if kind == "lora":
    targets = ("query", "value", "wi_0", "wo")
    hooks = AdapterConfig(lora_rank=2, lora_alpha=4.0, lora_targets=targets)
    names = moved(hooks)
    adapter = peft_io.export_lora(names, config, str(tmp_path / "ours"),
                                  rank=2, alpha=4.0, targets=targets)
    made_config = peft_lib.LoraConfig(
        task_type="CAUSAL_LM", r=3, lora_alpha=6,
        target_modules=["k_proj", "o_proj", "up_proj"],
        init_lora_weights=False)
  else:
    targets = ("key", "value", "wo")
    hooks = AdapterConfig(ia3_targets=targets)
    names = moved(hooks)
    adapter = peft_io.export_ia3(names, config, str(tmp_path / "ours"),
                                 targets=targets)
    made_config = peft_lib.IA3Config(
        task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj", "down_proj"],
        feedforward_modules=["down_proj"])
  ours = ours_logits(hooks, names)
  plain = np.asarray(DecoderOnlyLM(config).apply({"params": params}, tokens,
                                                 mask))
  assert np.abs(ours - plain)[mask].max() > 1e-2  # the adapter matters
  loaded = peft_lib.PeftModel.from_pretrained(hf_model, adapter).eval()
  theirs = lm_test._hf_logits(loaded, tokens, mask)  # pylint: disable=protected-access
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4, rtol=1e-4)

  made = peft_lib.get_peft_model(
      lm_test._hf_model(name, str(tmp_path / "base2")), made_config)  # pylint: disable=protected-access
  with torch.no_grad():
    for key, value in made.named_parameters():
      if "ia3_l" in key:
        value.normal_(1.0, 0.3)
  made.save_pretrained(str(tmp_path / "made"))
  reader = peft_io.import_lora if kind == "lora" else peft_io.import_ia3
  options, imported = reader(str(tmp_path / "made"), config)
  theirs = lm_test._hf_logits(made.eval(), tokens, mask)  # pylint: disable=protected-access
  got = ours_logits(peft_io.to_adapter_config(options), imported)
  np.testing.assert_allclose(got[mask], theirs[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["llama_gqa", "gemma2"])
def test_mpt_equals_peft_causal_lm_both_ways(name, tmp_path):
  """PEFT's MULTITASK_PROMPT_TUNING on a causal LM (task ids per row) gives
  our prompted LM's logits with each row's task prompt; the adapter files
  go both ways."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from prompt_tuning import methods  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods import peft_multitask  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly  # pylint: disable=g-import-not-at-top
  torch, peft_lib, hf_model, config, params = _hf_base(name, tmp_path)
  tokens, mask = lm_test._batch(left=False)  # pylint: disable=protected-access
  rank, tasks = 2, 3
  made = peft_lib.get_peft_model(
      lm_test._hf_model(name, str(tmp_path / "base2")),  # pylint: disable=protected-access
      peft_lib.MultitaskPromptTuningConfig(
          task_type="CAUSAL_LM", num_virtual_tokens=P, num_tasks=tasks,
          num_ranks=rank))
  encoder = made.prompt_encoder["default"]
  with torch.no_grad():
    encoder.embedding.weight.normal_(0, 0.5)
    encoder.prefix_task_cols.normal_(1.0, 0.5)
    encoder.prefix_task_rows.normal_(1.0, 0.5)
  made.save_pretrained(str(tmp_path / "made"))
  options, names = peft_multitask.import_mpt(str(tmp_path / "made"), config)
  assert (options["length"], options["rank"], options["num_tasks"]) == (
      P, rank, tasks)
  task_ids = np.array([2, 0, 1])

  def peft_logits(model):
    with torch.no_grad():
      return model.eval()(
          input_ids=torch.tensor(tokens, dtype=torch.long),
          attention_mask=torch.tensor(mask, dtype=torch.long),
          task_ids=torch.tensor(task_ids, dtype=torch.long)).logits.numpy()

  theirs = peft_logits(made)
  method = methods.MultitaskPromptConfig(
      mode="mpt", length=P, rank=rank,
      tasks=("a", "b", "c")).bind(config)
  prompts = method.prompts(base.nested({k: jnp.asarray(v)
                                        for k, v in names.items()}),
                           jnp.asarray(task_ids))
  full = dict(params, decoder=dict(params["decoder"], prompt={
      "prompt": np.zeros((P, config.emb_dim), np.float32)}))
  ours = np.asarray(PromptedDecoderOnly(config, prompt_length=P).apply(
      {"params": full}, tokens, mask, prompt=prompts))
  np.testing.assert_allclose(theirs[:, P:][mask], ours[mask], atol=1e-4,
                             rtol=1e-4)
  again = peft_multitask.export_mpt(names, config, str(tmp_path / "ours"))
  loaded = peft_lib.PeftModel.from_pretrained(hf_model, again)
  np.testing.assert_allclose(peft_logits(loaded)[:, P:][mask], ours[mask],
                             atol=1e-4, rtol=1e-4)
