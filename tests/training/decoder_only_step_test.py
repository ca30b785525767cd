"""The one train step on a decoder-only LM's rows, written out by hand.

Task examples become LM rows (`data.decoder_features`); the train step
(unchanged: gradients for the prompt only, the frozen LM a separate
argument) reads them through `PromptedDecoderOnly`. The loss it reports is
checked against the plain LM fed [prompt; row] with the cross-entropy of
the target tokens only, and a few steps train the prompt.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow as tf

from prompt_tuning.data import decoder_features
from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import create_train_state
from tests.models import decoder_only_test as lm_test

P = 3


def _batch():
  examples = [{"inputs": [5, 6, 7], "targets": [9, 1]},
              {"inputs": [8], "targets": [10, 11, 1]},
              {"inputs": [5, 5, 5, 5], "targets": [9, 1]},
              {"inputs": [12, 13], "targets": [10, 1]}]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32)})
  rows = list(decoder_features.convert(
      ds, {"inputs": 4, "targets": 3}, bos_id=2).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_decoder_only_train_step_by_hand():
  config = lm_test.CACHED["gemma2"]
  plain = DecoderOnlyLM(config)
  frozen = lm_test._random_params(plain)  # pylint: disable=protected-access
  model = PromptedDecoderOnly(config, prompt_length=P)
  prompt = np.random.default_rng(0).uniform(
      -0.5, 0.5, (P, config.emb_dim)).astype(np.float32)
  trainable = {"decoder": {"prompt": {"prompt": jnp.asarray(prompt)}}}
  batch = _batch()
  got = step_lib.eval_step(trainable, frozen, batch, model=model, z_loss=0.0)

  # By hand: the plain LM over [prompt (scaled as Gemma scales inputs); row].
  embedded = np.asarray(plain.apply({"params": frozen},
                                    batch["decoder_input_tokens"],
                                    method="embed"))
  scaled = prompt * np.float32(config.emb_dim ** 0.5)
  want_loss, want_tokens = 0.0, 0.0
  for b in range(len(embedded)):
    rows = np.concatenate([scaled, embedded[b]])[None]
    mask = np.concatenate([np.ones(P, bool),
                           batch["decoder_mask"][b] > 0])[None]
    logits = plain.apply({"params": frozen}, rows, mask,
                         method="forward_embedded")[0, P:]
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    weights = batch["decoder_loss_weights"][b]
    picked = log_probs[np.arange(len(weights)),
                       batch["decoder_target_tokens"][b]]
    want_loss -= float(np.sum(picked * weights))
    want_tokens += float(weights.sum())
  np.testing.assert_allclose(float(got["loss_sum"]), want_loss, rtol=1e-5)
  assert float(got["tokens"]) == want_tokens == 9.0

  # Training moves the prompt only, and the loss falls.
  tx = optax.adafactor(learning_rate=0.3)
  state = create_train_state(trainable, tx, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: step_lib.train_step(s, frozen, b, model=model,
                                                   tx=tx))
  first = None
  for _ in range(25):
    state, metrics = step(state, batch)
    first = float(metrics["loss_sum"]) if first is None else first
  last = float(step_lib.eval_step(state.params, frozen, batch, model=model,
                                  z_loss=0.0)["loss_sum"])
  assert last < 0.8 * first, (first, last)
  assert jax.tree_util.tree_structure(state.params) == \
      jax.tree_util.tree_structure(trainable)
