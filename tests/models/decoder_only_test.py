"""Decoder-only LMs against Hugging Face transformers, and their loader.

Random HF models of each family and several shapes (GQA ratios, head dims,
tied or untied embeddings, biases, rotary scalings, sliding windows,
Gemma 2's soft-capping on and off) are saved with `save_pretrained` and
read by `pretrained.hf_decoder`; our logits must equal HF's eager forward
(float32, 1e-4) on right- and left-padded batches. Needs the torch extra;
the loader's refusals do not.
"""

import json
import os

import numpy as np
import pytest

from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.models.decoder_only import config as config_lib
from prompt_tuning.models.decoder_only import model as model_lib
from prompt_tuning.pretrained import hf_decoder

# name -> (HF config class name, its kwargs)
SHAPES = {
    "llama_gqa": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
        intermediate_size=48, tie_word_embeddings=False)),
    "llama3_rope_tied_bias": ("LlamaConfig", dict(
        num_attention_heads=6, num_key_value_heads=3, hidden_size=36,
        head_dim=10, intermediate_size=40, tie_word_embeddings=True,
        attention_bias=True, rope_theta=500000.0, rope_scaling=dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=4))),
    "mistral_window": ("MistralConfig", dict(
        num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
        intermediate_size=64, sliding_window=3, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(
        num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
        intermediate_size=40, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="linear", factor=2.0))),
    "gemma2": ("Gemma2Config", dict(
        num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
        head_dim=12, intermediate_size=40, sliding_window=3,
        query_pre_attn_scalar=20, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0)),
    "gemma2_no_caps": ("Gemma2Config", dict(
        num_attention_heads=2, num_key_value_heads=2, hidden_size=24,
        head_dim=8, intermediate_size=32, sliding_window=16,
        query_pre_attn_scalar=8, attn_logit_softcapping=None,
        final_logit_softcapping=None)),
}
VOCAB = 61


def _torch():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  return torch, transformers


def _hf_model(name, directory):
  torch, transformers = _torch()
  cls, kwargs = SHAPES[name]
  config = getattr(transformers, cls)(vocab_size=VOCAB, num_hidden_layers=3,
                                      max_position_embeddings=64, **kwargs)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model_cls = {"Gemma3TextConfig": "Gemma3ForCausalLM"}.get(
      cls, cls.replace("Config", "ForCausalLM"))
  model = getattr(transformers, model_cls)(config).eval()
  with torch.no_grad():
    for name_, p in model.named_parameters():
      # Far from the init's near-identity, so every piece matters.
      p.copy_(torch.randn_like(p) * (0.3 if "norm" in name_ else 0.2) +
              (1.0 if "norm" in name_ and "gemma" not in cls.lower() else 0))
  model.save_pretrained(directory, safe_serialization=True)
  return model


def _hf_logits(model, tokens, mask, positions=None):
  """A transformers (or PEFT) causal LM's float32 logits for our batch."""
  torch, _ = _torch()
  as_long = lambda x: torch.tensor(x, dtype=torch.long)
  extra = {} if positions is None else {"position_ids": as_long(positions)}
  with torch.no_grad():
    return model(input_ids=as_long(tokens), attention_mask=as_long(mask),
                 **extra).logits.float().numpy()


def _batch(left):
  rng = np.random.default_rng(4)
  tokens = rng.integers(0, VOCAB, (3, 8)).astype(np.int32)
  mask = np.ones((3, 8), bool)
  if left:
    mask[1, :3] = False
    mask[2, :1] = False
  else:
    mask[1, 5:] = False
    mask[2, 7:] = False
  return tokens, mask


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_logits_equal_transformers(name, tmp_path):
  _torch()  # skips without the torch extra
  hf_model = _hf_model(name, str(tmp_path))
  config, params = hf_decoder.load_host(str(tmp_path), dtype="float32")
  config = config.replace(dtype="float32")
  model = DecoderOnlyLM(config)
  for left in (False, True):
    tokens, mask = _batch(left)
    positions = np.asarray(model_lib.default_positions(mask))
    ours = np.asarray(model.apply({"params": params}, tokens, mask,
                                  positions))
    theirs = _hf_logits(hf_model, tokens, mask, positions)
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4,
                               rtol=1e-4, err_msg=f"{name} left={left}")
  assert np.abs(ours[mask]).max() > 0.1  # not a degenerate model


def test_config_json_reading_refuses_what_is_not_implemented():
  base = dict(model_type="llama", vocab_size=10, hidden_size=8,
              num_attention_heads=2, intermediate_size=16,
              num_hidden_layers=1)
  assert config_lib.from_hf(base).num_kv_heads == 2
  cases = [
      (dict(model_type="gpt2"), "model_type 'gpt2' is not a decoder-only"),
      (dict(rope_scaling={"rope_type": "yarn", "factor": 2}),
       "rope_scaling type 'yarn' is not implemented"),
      (dict(hidden_act="relu"), "activation 'relu' is not implemented"),
      (dict(mlp_bias=True), "mlp_bias = true is not implemented"),
      (dict(model_type="qwen2", use_sliding_window=True),
       "use_sliding_window = true is not implemented"),
      (dict(num_key_value_heads=3), "must be a multiple of num_kv_heads=3"),
  ]
  for change, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      config_lib.from_hf(dict(base, **change), "x/config.json")
    assert "\n" not in str(error.value)


def test_presets_build_abstractly():
  """Every preset's parameter count is its published size (abstract init:
  nothing is allocated)."""
  expected_billions = {"llama3_2_1b": 1.24, "llama3_1_8b": 8.03,
                       "qwen2_5_0_5b": 0.49, "qwen2_5_7b": 7.62,
                       "gemma2_2b": 2.61, "gemma2_9b": 9.24}
  count = lambda name: sum(int(np.prod(s)) for _, s in model_lib.param_shapes(
      config_lib.decoder_config(name)))
  for name, billions in expected_billions.items():
    assert abs(count(name) / 1e9 - billions) < 0.01, (name, count(name))
  # Gemma 3 1B to the parameter: 262144 x 1152 tied embeddings, 26 layers
  # of q/k/v/o (4 and 1 heads of 256), a 6912-wide gated MLP, four norms
  # and the q/k norms.
  layer = (1152 * 1024 * 2 + 1152 * 256 * 2 + 3 * 1152 * 6912 + 4 * 1152 +
           2 * 256)
  assert count("gemma3_1b") == 262144 * 1152 + 26 * layer + 1152
  assert count("gemma3_1b") == 999_885_952  # the published size


def test_loader_refuses_missing_unexpected_and_misshaped_tensors(tmp_path):
  from prompt_tuning.pretrained import hf_export  # pylint: disable=g-import-not-at-top
  hf = dict(model_type="llama", vocab_size=10, hidden_size=8,
            num_attention_heads=2, intermediate_size=16, num_hidden_layers=1,
            tie_word_embeddings=True)
  config = config_lib.from_hf(hf)
  tensors = {}
  for _, (theirs, shape, transpose) in hf_decoder.param_map(config).items():
    tensors[theirs] = np.zeros(shape[::-1] if transpose else shape,
                               np.float32)

  def write(directory, table):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
      json.dump(hf, f)
    hf_export.write_safetensors(os.path.join(directory, "model.safetensors"),
                                table)
    return directory

  good = write(str(tmp_path / "good"), tensors)
  assert set(hf_decoder.read_hf_decoder(good)[1]) == set(
      hf_decoder.param_map(config))
  missing = dict(tensors)
  del missing["model.norm.weight"]
  extra = dict(tensors, **{"model.layers.0.mlp.extra.weight":
                           np.zeros(2, np.float32)})
  shaped = dict(tensors, **{"model.norm.weight": np.zeros(9, np.float32)})
  for name, table, message in [
      ("missing", missing, r"decoder/decoder_norm/scale \(Hugging Face "
       r"model.norm.weight\) is missing"),
      ("extra", extra, r"1 tensor\(s\) this llama model has no place for "
       r"\(first: 'model.layers.0.mlp.extra.weight'\)"),
      ("shaped", shaped, r"has shape \[9\] but config.json implies \[8\]")]:
    with pytest.raises(ValueError, match=message) as error:
      hf_decoder.read_hf_decoder(write(str(tmp_path / name), table))
    assert "\n" not in str(error.value)


CACHED = {
    "llama_window": config_lib.DecoderConfig(
        vocab_size=VOCAB, emb_dim=32, num_heads=4, num_kv_heads=2,
        head_dim=8, mlp_dim=48, num_layers=2, sliding_window=3,
        sliding_layers="all", rope_type="llama3", rope_factor=4.0,
        rope_original_max_positions=4, dtype="float32"),
    "gemma2": config_lib.DecoderConfig(
        vocab_size=VOCAB, emb_dim=24, num_heads=2, num_kv_heads=1,
        head_dim=12, mlp_dim=32, num_layers=3, family="gemma2",
        activation="gelu", sliding_window=4, sliding_layers="even",
        query_pre_attn_scalar=16.0, attn_softcap=5.0, final_softcap=3.0,
        tie_embeddings=True, dtype="float32"),
}


def _random_params(model, seed=0):
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  tokens = np.zeros((1, 4), np.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), tokens)["params"])
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def greedy_is_the_full_forward(model, params, tokens, mask, steps):
  """Greedy decoding with the KV cache, checked step by step against the
  uncached forward over the growing sequence; returns [B, steps]."""
  from prompt_tuning.models.decoder_only import generate  # pylint: disable=g-import-not-at-top
  greedy = np.asarray(generate.generate(model, params, tokens, mask, steps,
                                        eos_id=VOCAB + 1))
  seq, seq_mask = tokens, mask
  for i in range(steps):
    logits = np.asarray(model.apply({"params": params}, seq, seq_mask))
    np.testing.assert_array_equal(greedy[:, i], logits[:, -1].argmax(-1),
                                  err_msg=f"step {i}")
    seq = np.concatenate([seq, greedy[:, i:i + 1]], axis=1)
    seq_mask = np.concatenate([seq_mask, np.ones((len(seq), 1), bool)],
                              axis=1)
  return greedy


@pytest.mark.parametrize("name", sorted(CACHED))
def test_cached_decoding_equals_the_full_forward(name):
  """Greedy with the KV cache (prefill, then one column per step) picks what
  the uncached forward over the growing sequence picks, step by step; beam
  search with one beam and near-zero-temperature sampling agree with it."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.decoder_only import generate  # pylint: disable=g-import-not-at-top
  model = DecoderOnlyLM(CACHED[name])
  params = _random_params(model)
  tokens, mask = _batch(left=True)
  never = VOCAB + 1  # no EOS: every row decodes every step
  steps = 6
  greedy = greedy_is_the_full_forward(model, params, tokens, mask, steps)
  beam = generate.generate(model, params, tokens, mask, steps, eos_id=never,
                           method="beam", beam_size=1)
  np.testing.assert_array_equal(beam, greedy)
  # Three beams share each row's prefilled cache: the best of them is at
  # least as likely as the greedy path here (both scored from scratch).
  wide = generate.generate(model, params, tokens, mask, steps, eos_id=never,
                           method="beam", beam_size=3, alpha=0.0)
  x = model.apply({"params": params}, tokens, method="embed")
  full = np.ones_like(greedy, bool)
  likelihood = lambda t: np.asarray(generate.score(model, params, x, mask, t,
                                                   full))
  assert np.all(likelihood(wide) >= likelihood(greedy) - 1e-4)
  assert not np.array_equal(wide, greedy)
  sampled = generate.generate(model, params, tokens, mask, steps,
                              eos_id=never, method="sample",
                              temperature=1e-6, rng=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(sampled, greedy)
  hot = [np.asarray(generate.generate(
      model, params, tokens, mask, steps, eos_id=never, method="sample",
      temperature=5.0, rng=jax.random.PRNGKey(s))) for s in range(2)]
  assert not np.array_equal(hot[0], hot[1])  # sampling samples


def test_score_is_the_teacher_forced_log_likelihood():
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.decoder_only import generate  # pylint: disable=g-import-not-at-top
  model = DecoderOnlyLM(CACHED["llama_window"])
  params = _random_params(model, seed=2)
  tokens, mask = _batch(left=True)
  targets = np.array([[5, 6, 7], [8, 9, 0], [4, 0, 0]], np.int32)
  target_mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
  x = model.apply({"params": params}, tokens, method="embed")
  got = np.asarray(generate.score(model, params, x, mask, targets,
                                  target_mask))
  for b in range(3):
    want, seq, seq_mask = 0.0, tokens[b:b + 1], mask[b:b + 1]
    for j in range(int(target_mask[b].sum())):
      logits = model.apply({"params": params}, seq, seq_mask)[0, -1]
      want += float(jax.nn.log_softmax(logits)[targets[b, j]])
      seq = np.concatenate([seq, targets[b:b + 1, j:j + 1]], axis=1)
      seq_mask = np.concatenate([seq_mask, [[True]]], axis=1)
    np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)


def test_loading_onto_a_mesh_reads_blocks_and_shards_by_the_rules(tmp_path):
  """A checkpoint written without torch (our own random weights through the
  loader's own name map) loads onto a (4, 2) mesh: every array equals the
  host load and is sharded as the rules table says (heads and MLP over
  `model`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods import base  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pretrained import hf_export  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pretrained import load_decoder_only  # pylint: disable=g-import-not-at-top
  hf = dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=16,
            num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=24, num_hidden_layers=2,
            tie_word_embeddings=False)
  config = config_lib.from_hf(hf)
  rng = np.random.default_rng(0)
  tensors = {}
  for theirs, shape, transpose in hf_decoder.param_map(config).values():
    tensors[theirs] = rng.normal(size=shape[::-1] if transpose else shape
                                 ).astype(np.float32)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  hf_export.write_safetensors(str(tmp_path / "model.safetensors"), tensors)
  _, host = hf_decoder.load_host(str(tmp_path))
  mesh = partitioning.create_mesh((4, 2), jax.devices()[:8])
  _, placed = load_decoder_only(str(tmp_path), mesh,
                                partitioning.logical_axis_rules())
  host, placed = base.flat(host), base.flat(placed)
  assert set(host) == set(placed)
  for name, array in placed.items():
    np.testing.assert_array_equal(np.asarray(array), host[name], name)
  spec = placed["decoder/layers_0/self_attention/query/kernel"].sharding.spec
  assert tuple(spec) == (None, "model")
  assert tuple(placed["decoder/layers_1/mlp/wo/kernel"].sharding.spec) == (
      "model", None)


EXPORTED = dict(CACHED, qwen2_biases=config_lib.DecoderConfig(
    vocab_size=VOCAB, emb_dim=24, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=32, num_layers=2, qkv_bias=True, tie_embeddings=True,
    rope_type="linear", rope_factor=2.0, dtype="float32"))


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_export_reads_back_in_our_loader_and_in_transformers(name, tmp_path):
  from prompt_tuning.pretrained import hf_export  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods import base  # pylint: disable=g-import-not-at-top
  config = EXPORTED[name]
  model = DecoderOnlyLM(config)
  params = _random_params(model, seed=5)
  hf_export.save_hf_decoder(params, config, str(tmp_path))
  found, host = hf_decoder.load_host(str(tmp_path))
  assert found.replace(dtype="float32") == config
  for key, value in base.flat(params).items():
    np.testing.assert_array_equal(base.flat(host)[key], np.asarray(value))
  tokens, mask = _batch(left=False)
  ours = np.asarray(model.apply({"params": params}, tokens, mask))
  try:
    _, transformers = _torch()
  except pytest.skip.Exception:
    return  # the torch extra is absent: our own reader was checked above
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation="eager").eval()
  positions = np.asarray(model_lib.default_positions(mask))
  theirs = _hf_logits(hf_model, tokens, mask, positions)
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)


def test_export_refuses_what_no_hf_type_expresses(tmp_path):
  from prompt_tuning.pretrained import hf_export  # pylint: disable=g-import-not-at-top
  config = EXPORTED["qwen2_biases"].replace(sliding_window=4,
                                            sliding_layers="even")
  with pytest.raises(ValueError, match="No Hugging Face qwen2 config "
                     "expresses this model: sliding_window would read back "
                     "as 0, not 4") as error:
    hf_export.hf_decoder_config(config)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["qwen2_biases", "gemma2"])
def test_lora_and_ia3_hooks_on_decoder_only_models(name):
  """The T5 methods' hooks apply by projection name: at their initial
  values the LM is unchanged, and LoRA and IA3 merged into the kernels (and
  the biases) equal the adapted LM."""
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods import base  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods import ia3 as ia3_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.adapters import AdapterConfig  # pylint: disable=g-import-not-at-top
  config = EXPORTED[name]
  hooks = AdapterConfig(lora_rank=2, lora_alpha=4.0,
                        lora_targets=("query", "value", "wi_0"),
                        ia3_targets=("key", "value", "wo"))
  plain, adapted = DecoderOnlyLM(config), DecoderOnlyLM(config, hooks)
  frozen = _random_params(plain, seed=6)
  tokens, mask = _batch(left=False)
  init = nn.unbox(adapted.init(jax.random.PRNGKey(1), tokens)["params"])
  new = {k: v for k, v in base.flat(init).items()
         if k.rsplit("/", 1)[-1] in ("lora_a", "lora_b", "ia3_scaling")}
  assert any(k.endswith("self_attention/key/ia3_scaling") for k in new)
  assert any(k.endswith("mlp/wi_0/lora_b") for k in new)
  full = base.nested(dict(base.flat(frozen), **new))
  want = np.asarray(plain.apply({"params": frozen}, tokens, mask))
  np.testing.assert_allclose(
      np.asarray(adapted.apply({"params": full}, tokens, mask)), want,
      atol=1e-5, rtol=1e-5)
  rng = np.random.default_rng(2)
  moved = {k: v + rng.normal(0, 0.3, v.shape).astype(np.float32)
           for k, v in new.items()}
  full = base.nested(dict(base.flat(frozen), **moved))
  got = np.asarray(adapted.apply({"params": full}, tokens, mask))
  assert not np.allclose(got, want, atol=1e-3)
  # IA3 scales a projection's output before LoRA's update is added, so
  # IA3 is folded first.
  merged = lora_lib.merge(ia3_lib.merge(full), hooks.lora_scaling)
  np.testing.assert_allclose(
      np.asarray(plain.apply({"params": merged}, tokens, mask)), got,
      atol=1e-4, rtol=1e-4)


GEMMA3 = ("Gemma3TextConfig", dict(
    num_attention_heads=4, num_key_value_heads=2, hidden_size=32, head_dim=8,
    intermediate_size=40, sliding_window=3, query_pre_attn_scalar=12,
    rope_local_base_freq=100.0, rope_theta=10000.0,
    rope_scaling=dict(rope_type="linear", factor=4.0),
    layer_types=["sliding_attention", "sliding_attention",
                 "full_attention"]))


def test_gemma3_logits_prompt_and_export_equal_transformers(tmp_path):
  """Gemma 3's text model: q/k norms, local layers with their own rotary
  base, global layers with linear scaling, every third layer global; and a
  prompt, unscaled as PEFT's inputs_embeds are there."""
  _, transformers = _torch()
  peft_lib = pytest.importorskip("peft")
  SHAPES["gemma3"] = GEMMA3
  try:
    hf_model = _hf_model("gemma3", str(tmp_path / "base"))
  finally:
    del SHAPES["gemma3"]
  config, params = hf_decoder.load_host(str(tmp_path / "base"))
  assert (config.family, config.sliding_layers, config.sliding_pattern,
          config.qk_norm) == ("gemma3", "pattern", 3, True)
  config = config.replace(dtype="float32")
  model = DecoderOnlyLM(config)
  tokens, mask = _batch(left=False)
  positions = np.asarray(model_lib.default_positions(mask))
  ours = np.asarray(model.apply({"params": params}, tokens, mask, positions))
  theirs = _hf_logits(hf_model, tokens, mask, positions)
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)
  # A prompt through PEFT (exported by us, loaded by PEFT).
  from prompt_tuning.prompts import peft  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly  # pylint: disable=g-import-not-at-top
  prompt = np.random.default_rng(2).normal(0, 0.5, (3, config.emb_dim)
                                           ).astype(np.float32)
  full = dict(params, decoder=dict(params["decoder"],
                                   prompt={"prompt": prompt}))
  prompted = np.asarray(PromptedDecoderOnly(config, prompt_length=3).apply(
      {"params": full}, tokens, mask))
  loaded = peft_lib.PeftModel.from_pretrained(
      hf_model, peft.export_adapter(prompt, config, str(tmp_path / "a")))
  via_peft = _hf_logits(loaded, tokens, mask)[:, 3:]
  np.testing.assert_allclose(prompted[mask], via_peft[mask], atol=1e-4,
                             rtol=1e-4)
  # Our export reads back in transformers.
  from prompt_tuning.pretrained import hf_export  # pylint: disable=g-import-not-at-top
  hf_export.save_hf_decoder(params, config, str(tmp_path / "out"))
  again = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "out"), attn_implementation="eager").eval()
  back = _hf_logits(again, tokens, mask, positions)
  np.testing.assert_allclose(back[mask], ours[mask], atol=1e-4, rtol=1e-4)


def test_remat_keeps_logits_gradients_and_cached_decoding(policy="full"):
  """A rematerialised stack is the same function with the same gradients
  (here of a prefix and deep prompts), and decodes through the KV cache."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.adapters import AdapterConfig  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly  # pylint: disable=g-import-not-at-top
  config = CACHED["gemma2"]
  hooks = AdapterConfig(prefix_length=2, prefix_attentions=("decoder_self",),
                        layer_prompt_length=3)
  make = lambda cfg: PromptedDecoderOnly(cfg, hooks, prompt_length=3)
  plain, remat = make(config), make(config.replace(remat_policy=policy))
  params = _random_params(plain)
  tokens, mask = _batch(left=False)
  weights = np.random.default_rng(1).normal(size=(3, 8, VOCAB))

  def loss(model):
    return lambda p: jax.numpy.sum(model.apply({"params": p}, tokens, mask) *
                                   weights)

  # Remat keeps fewer activations for the backward pass.
  def kept(model):  # bytes the backward pass's closure holds
    _, backward = jax.vjp(loss(model), params)
    return sum(x.size * x.dtype.itemsize
               for x in jax.tree_util.tree_leaves(backward))
  assert kept(remat) < kept(plain)
  want, want_grad = jax.value_and_grad(loss(plain))(params)
  got, got_grad = jax.value_and_grad(loss(remat))(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got_grad)[0],
                          jax.tree_util.tree_leaves(want_grad)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  greedy_is_the_full_forward(DecoderOnlyLM(config.replace(
      remat_policy=policy)), _random_params(DecoderOnlyLM(config)),
                             *_batch(left=True), 3)
  with pytest.raises(ValueError, match="remat_policy='some' is not one of"):
    config.replace(remat_policy="some")
