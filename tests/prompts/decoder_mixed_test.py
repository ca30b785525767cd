"""Decoder-only rows with different prompts in one batch equal each alone.

Rows are left-padded, prompts of different lengths; sliding windows shorter
than the rows (Mistral-style on every layer, Gemma 2's on every other) make
any padding between real rows visible, so the layout must keep it in front.
The reference for a row is that row, unpadded, with its prompt spliced in by
hand, decoded and scored alone.
"""

import numpy as np
import pytest

from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.models.decoder_only import generate
from prompt_tuning.prompts import decoder_mixed
from prompt_tuning.prompts import mixed
from prompt_tuning.prompts.decoder_model import input_rows
from tests.models import decoder_only_test as lm_test


@pytest.mark.parametrize("placement", ["prefix", "after_first"])
@pytest.mark.parametrize("name", sorted(lm_test.CACHED))
def test_each_row_equals_its_prompt_alone(name, placement):
  config = lm_test.CACHED[name]
  model = DecoderOnlyLM(config)
  params = lm_test._random_params(model, seed=4)  # pylint: disable=protected-access
  rng = np.random.default_rng(1)
  prompts = [rng.normal(0, 0.5, (n, config.emb_dim)).astype(np.float32)
             for n in (2, 4, 3)]
  bank, lengths = mixed.stack_prompts(prompts)
  tokens, mask = lm_test._batch(left=True)  # pylint: disable=protected-access
  ids = np.array([2, 0, 1], np.int32)
  never = lm_test.VOCAB + 1
  got = np.asarray(decoder_mixed.generate(
      model, params, bank, lengths, ids, tokens, mask, 5,
      placement=placement, eos_id=never))
  targets = np.array([[3, 4], [5, 0], [6, 7]], np.int32)
  target_mask = targets > 0
  scores = np.asarray(decoder_mixed.score(
      model, params, bank, lengths, ids, tokens, mask, targets, target_mask,
      placement=placement))
  for b in range(len(tokens)):
    real = tokens[b][mask[b]][None]
    embedded = np.asarray(model.apply({"params": params}, real,
                                      method="embed"))[0]
    prompt = np.asarray(input_rows(config, prompts[ids[b]]))
    cut = 0 if placement == "prefix" else 1
    rows = np.concatenate([embedded[:cut], prompt, embedded[cut:]])[None]
    ones = np.ones(rows.shape[:2], bool)
    want = np.asarray(generate.generate_embedded(
        model, params, rows, ones, 5, eos_id=never))
    np.testing.assert_array_equal(got[b], want[0], err_msg=f"row {b}")
    alone = np.asarray(generate.score(model, params, rows, ones,
                                      targets[b:b + 1],
                                      target_mask[b:b + 1]))
    np.testing.assert_allclose(scores[b], alone[0], rtol=1e-5, atol=1e-5)
