"""Prompt tuning of decoder-only LMs: the prompted model, against PEFT.

A random HF Llama/Qwen2/Gemma 2 is saved and read back; our
`PromptedDecoderOnly` with a prompt equals PEFT's CAUSAL_LM prompt tuning
with that prompt (float32, 1e-4, right-padded rows), our exported adapter
loads in `PeftModel.from_pretrained` with the same logits, and a PEFT-made
adapter imports as the same prompt. Without torch, the placements and the
positions are checked against the plain LM fed the prompt as rows.
"""

import numpy as np
import pytest

from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.models.decoder_only import config as config_lib
from prompt_tuning.pretrained import hf_decoder
from prompt_tuning.prompts import peft
from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly
from tests.models import decoder_only_test as lm_test

P = 4


def _with_prompt(params, prompt):
  decoder = dict(params["decoder"], prompt={"prompt": prompt})
  return dict(params, decoder=decoder)


def _prompt(width, seed=0):
  return np.random.default_rng(seed).normal(0, 0.5, (P, width)).astype(
      np.float32)


@pytest.mark.parametrize("placement", ["prefix", "after_first"])
def test_prompt_rows_and_positions(placement):
  """The prompted LM equals the plain LM fed [rows with the prompt spliced
  in], positions counting the prompt; logits come back at token columns."""
  config = lm_test.CACHED["llama_window"]
  plain = DecoderOnlyLM(config)
  params = lm_test._random_params(plain)  # pylint: disable=protected-access
  prompt = _prompt(config.emb_dim)
  tokens, mask = lm_test._batch(left=False)  # pylint: disable=protected-access
  model = PromptedDecoderOnly(config, prompt_length=P, placement=placement)
  got = np.asarray(model.apply({"params": _with_prompt(params, prompt)},
                               tokens, mask))
  assert got.shape == tokens.shape + (config.vocab_size,)
  embedded = np.asarray(plain.apply({"params": params}, tokens,
                                    method="embed"))
  cut = 0 if placement == "prefix" else 1
  for b in range(len(tokens)):
    rows = np.concatenate([embedded[b, :cut], prompt, embedded[b, cut:]])
    row_mask = np.concatenate([mask[b, :cut], np.ones(P, bool),
                               mask[b, cut:]])
    logits = np.asarray(plain.apply(
        {"params": params}, rows[None], row_mask[None],
        method="forward_embedded"))[0]
    want = np.concatenate([logits[:cut], logits[cut + P:]])
    np.testing.assert_allclose(got[b][mask[b]], want[mask[b]], atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2", "gemma2"])
def test_equals_peft_causal_lm_prompt_tuning_both_ways(name, tmp_path):
  torch, _ = lm_test._torch()  # pylint: disable=protected-access
  peft_lib = pytest.importorskip("peft")
  hf_model = lm_test._hf_model(name, str(tmp_path / "base"))  # pylint: disable=protected-access
  config, params = hf_decoder.load_host(str(tmp_path / "base"))
  config = config.replace(dtype="float32")
  prompt = _prompt(config.emb_dim, seed=1)
  tokens, mask = lm_test._batch(left=False)  # pylint: disable=protected-access
  ours = np.asarray(PromptedDecoderOnly(config, prompt_length=P).apply(
      {"params": _with_prompt(params, prompt)}, tokens, mask))

  def peft_logits(model):
    with torch.no_grad():
      out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long)).logits
    return out.numpy()[:, P:]  # PEFT returns the virtual tokens' rows too

  # Ours exported, loaded by PEFT.
  adapter = peft.export_adapter(prompt, config, str(tmp_path / "adapter"))
  loaded = peft_lib.PeftModel.from_pretrained(hf_model, adapter).eval()
  np.testing.assert_allclose(peft_logits(loaded)[mask], ours[mask],
                             atol=1e-4, rtol=1e-4)
  # PEFT's own, made with its API, imported.
  made = peft_lib.get_peft_model(
      lm_test._hf_model(name, str(tmp_path / "base2")),  # pylint: disable=protected-access
      peft_lib.PromptTuningConfig(task_type="CAUSAL_LM",
                                  num_virtual_tokens=P + 1))
  with torch.no_grad():
    made.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
  made.save_pretrained(str(tmp_path / "made"))
  imported = peft.import_adapter(str(tmp_path / "made"), config.emb_dim,
                                 config)
  assert imported.shape == (P + 1, config.emb_dim)
  theirs = peft_logits(made.eval())
  ours = np.asarray(PromptedDecoderOnly(config, prompt_length=P + 1).apply(
      {"params": _with_prompt(params, imported)}, tokens, mask))
  np.testing.assert_allclose(theirs[:, 1:][mask], ours[mask], atol=1e-4,
                             rtol=1e-4)


def test_adapter_for_another_family_is_refused(tmp_path):
  t5_adapter = str(tmp_path / "t5")
  from prompt_tuning.models import t5_config  # pylint: disable=g-import-not-at-top
  t5 = t5_config("t5_1_1_tiny")
  peft.export_adapter(np.zeros((2, t5.emb_dim), np.float32), t5, t5_adapter)
  decoder = config_lib.DecoderConfig(
      vocab_size=10, emb_dim=t5.emb_dim, num_heads=t5.num_heads,
      num_kv_heads=t5.num_heads, head_dim=8, mlp_dim=8,
      num_layers=t5.num_encoder_layers)
  with pytest.raises(ValueError, match="task_type=SEQ_2_SEQ_LM but the "
                     "frozen model takes CAUSAL_LM adapters"):
    peft.import_adapter(t5_adapter, t5.emb_dim, decoder)



@pytest.mark.parametrize("mode", ["replace", "add"])
def test_deep_prompts_enter_every_layer_at_the_prompt_rows(mode):
  """Layer by layer, with the plain LM's own layers: before layer i the
  input prompt's rows are replaced by (or added to) `layers_i/layer_prompt`;
  the other rows, positions and the mask are the plain prompted LM's."""
  from prompt_tuning.models.adapters import AdapterConfig  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.decoder_only import model as model_lib  # pylint: disable=g-import-not-at-top
  config = lm_test.CACHED["gemma2"]
  adapters = AdapterConfig(layer_prompt_length=P, layer_prompt_mode=mode)
  model = PromptedDecoderOnly(config, adapters, prompt_length=P)
  params = lm_test._random_params(model)  # pylint: disable=protected-access
  tokens, mask = lm_test._batch(left=False)  # pylint: disable=protected-access
  got = np.asarray(model.apply({"params": params}, tokens, mask))

  x, full_mask, columns = model.apply({"params": params}, tokens, mask,
                                      method="prompted")
  positions = model_lib.default_positions(full_mask)
  for i in range(config.num_layers):
    layer = dict(params["decoder"][f"layers_{i}"])
    prompt = layer.pop("layer_prompt")
    x = np.array(x)  # a writable copy
    x[:, :P] = prompt + (x[:, :P] if mode == "add" else 0)
    x = model_lib.DecoderOnlyLayer(config, config.sliding(i)).apply(
        {"params": layer}, x, full_mask, positions)
  plain = dict(params, decoder={k: v for k, v in params["decoder"].items()
                                if k != "prompt"})
  y = model_lib.Norm(config.norm_eps, 1.0, "float32").apply(
      {"params": plain["decoder"]["decoder_norm"]}, x)
  logits = model_lib.softcap(np.asarray(y) @ np.asarray(
      plain["token_embedder"]["embedding"]).T, config.final_softcap)
  want = np.take_along_axis(np.asarray(logits), np.asarray(columns)[..., None],
                            axis=1)
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-5, rtol=1e-5)
