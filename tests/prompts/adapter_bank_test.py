"""Per-example adapters: a mixed batch equals each entry run alone.

Entries of one library differ in method, rank, targets, scale, prefix
attentions and lengths, and prompt length. The reference for an entry is
the model training and evaluation use for it alone (`PromptedT5`, or `T5`
without an input prompt, with the entry's own `AdapterConfig`), a separate
code path from the per-example model, the bank's padding and the gather.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from prompt_tuning.methods import base
from prompt_tuning.models import T5
from prompt_tuning.models import decoding
from prompt_tuning.models import t5_config
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.t5 import unscan_params
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import adapter_bank
from prompt_tuning.prompts import mixed

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")

# (own adapters, input prompt length) per entry.
LIBRARY_A = [
    (AdapterConfig(ia3_targets=("key", "value", "wo")), 0),
    (AdapterConfig(lora_rank=2, lora_alpha=4.0,
                   lora_targets=("query", "value")), 0),
    (AdapterConfig(lora_rank=3, lora_alpha=2.0, lora_rslora=True,
                   lora_targets=("wo", r"encoder/layers_\d+/attention/key"),
                   ia3_targets=("value",)), 2),
    (AdapterConfig(prefix_length=2, prefix_attentions=(
        "encoder_self", "decoder_self", "cross")), 0),
    (AdapterConfig(prefix_length=3, prefix_attentions=("decoder_self",)), 0),
    (AdapterConfig(), 4),  # a plain prompt
]
LIBRARY_B = [  # deep prompts (encoder and decoder), beside the others
    (AdapterConfig(layer_prompt_length=3, decoder_layer_prompt_length=3), 3),
    (AdapterConfig(layer_prompt_length=2), 2),
    (AdapterConfig(decoder_layer_prompt_length=4,
                   prefix_length=2, prefix_attentions=("cross",)), 5),
    (AdapterConfig(ia3_targets=("wo",)), 0),
    (AdapterConfig(), 1),
]


def _tokens():
  tokens = np.array([[5, 6, 7, 1, 0, 0], [3, 4, 1, 0, 0, 0],
                     [9, 8, 7, 6, 5, 1], [2, 1, 0, 0, 0, 0]] * 3, np.int32)
  targets = np.array([[8, 9, 1, 0], [4, 1, 0, 0], [3, 3, 3, 1],
                      [7, 1, 0, 0]] * 3, np.int32)
  return tokens, np.pad(targets, ((0, 0), (1, 0)))[:, :-1], targets


def _reference_model(own, length):
  config = CONFIG.replace(adapters=own)
  return PromptedT5(config, prompt_length=length) if length else T5(config)


def _entry(k, own, length, frozen_names):
  """Entry k's own parameters (random, so nothing is an identity) and its
  input prompt; the frozen weights are shared by all."""
  tokens, inputs, targets = _tokens()
  tree = jax.eval_shape(lambda: _reference_model(own, length).init(
      jax.random.PRNGKey(0), tokens[:1], inputs[:1], targets[:1])["params"])
  names = {n: v for n, v in base.flat(nn.unbox(tree)).items()
           if n not in frozen_names}
  rng = np.random.default_rng(100 + k)
  params = {n: rng.normal(0.0, 0.5, v.shape).astype(np.float32)
            for n, v in names.items()}
  prompt = params.pop("encoder/prompt/prompt",
                      np.zeros((0, CONFIG.emb_dim), np.float32))
  return prompt, params


def _frozen(scan_layers):
  tokens, inputs, targets = _tokens()
  model = T5(CONFIG.replace(scan_layers=scan_layers))
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), tokens,
                                        inputs, targets)["params"])
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _bank(library, frozen_flat, scan_layers):
  entries, prompts = [], []
  for k, (own, length) in enumerate(library):
    prompt, params = _entry(k, own, length, frozen_flat)
    entries.append((own, params))
    prompts.append(prompt)
  union = adapter_bank.union_config(entries)
  config = CONFIG.replace(adapters=union, scan_layers=scan_layers)
  tokens, inputs, targets = _tokens()
  shapes = jax.eval_shape(lambda: T5(config).init(
      jax.random.PRNGKey(0), tokens[:1], inputs[:1], targets[:1])["params"])
  model_shapes = adapter_bank.hook_shapes(
      {n: v.shape for n, v in base.flat(nn.unbox(shapes)).items()},
      per_example=True)
  own_shapes = [{n: v.shape for n, v in params.items()}
                for _, params in entries]
  bank = adapter_bank.AdapterBank.build(entries, model_shapes, own_shapes)
  return bank, T5(config), entries, prompts


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("library", ["A", "B"])
def test_mixed_batch_equals_each_entry_alone(library, scan_layers):
  library = {"A": LIBRARY_A, "B": LIBRARY_B}[library]
  frozen = _frozen(scan_layers)
  frozen_flat = base.flat(frozen)
  plain_frozen = base.nested(unscan_params(frozen_flat))
  bank, model, entries, prompts = _bank(
      library, set(unscan_params(frozen_flat)), scan_layers)
  prompt_bank, lengths = mixed.stack_prompts(prompts)
  tokens, inputs, targets = _tokens()
  ids = np.arange(len(tokens), dtype=np.int32) % len(library)
  arrays = {n: jnp.asarray(a) for n, a in bank.arrays.items()}
  got = mixed.logits(model, frozen, prompt_bank, lengths, ids, tokens, inputs,
                     targets, adapters=arrays)
  greedy = mixed.predict(model, frozen, prompt_bank, lengths, ids, tokens,
                         max_decode_length=4, adapters=arrays)
  beam = mixed.predict(model, frozen, prompt_bank, lengths, ids, tokens,
                       max_decode_length=4, method="beam", beam_size=3,
                       adapters=arrays)
  real = targets > 0
  for k, ((own, params), prompt) in enumerate(zip(entries, prompts)):
    rows = ids == k
    reference = _reference_model(own, len(prompt))
    tree = dict(unscan_params(base.flat(plain_frozen)), **params)
    if len(prompt):
      tree["encoder/prompt/prompt"] = prompt
    tree = base.nested(tree)
    want = reference.apply({"params": tree}, tokens[rows], inputs[rows],
                           targets[rows])
    np.testing.assert_allclose(np.asarray(got)[rows][real[rows]],
                               np.asarray(want)[real[rows]], atol=1e-4,
                               rtol=1e-4, err_msg=f"entry {k}")
    if scan_layers:
      continue  # decoding is the same code; one layout suffices
    np.testing.assert_array_equal(
        np.asarray(greedy)[rows],
        decoding.greedy_decode(reference, tree, tokens[rows], 4))
    best, _ = decoding.beam_search(reference, tree, tokens[rows], 4,
                                   beam_size=3)
    np.testing.assert_array_equal(np.asarray(beam)[rows], best[:, 0])
  # The entries really differ (padding is not all that runs).
  firsts = [np.asarray(got)[ids == k][0] for k in range(len(library))]
  assert all(not np.allclose(firsts[0], f, atol=1e-3) for f in firsts[1:])


def test_libraries_no_single_model_serves_are_refused_in_one_line():
  with pytest.raises(ValueError, match="'add' with ones that 'replace'"):
    adapter_bank.union_config([
        (AdapterConfig(layer_prompt_length=2, layer_prompt_mode="add"), {}),
        (AdapterConfig(layer_prompt_length=2), {})])
  with pytest.raises(ValueError, match="decoder self-attention prefixes"):
    adapter_bank.union_config([
        (AdapterConfig(decoder_layer_prompt_length=2), {}),
        (AdapterConfig(prefix_length=2, prefix_attentions=("decoder_self",)),
         {})])


def test_an_entry_for_another_model_is_refused_by_name():
  own = AdapterConfig(ia3_targets=("key",))
  name = "encoder/layers_0/attention/key/ia3_scaling"
  with pytest.raises(ValueError, match="entry 0: .*first difference: "
                     f"'{name}'"):
    adapter_bank.AdapterBank.build(
        [(own, {name: np.ones(7, np.float32)})], {},
        [{name: (CONFIG.num_heads * CONFIG.head_dim,)}])
