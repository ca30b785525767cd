"""Mixed serving of run directories of every method that can share a model.

Run directories of IA3, LoRA, prefix tuning (with its MLP
reparameterisation, merged on reading), deep prompts (encoder and decoder)
and prompt tuning go into one library; one batch names them all. The
reference for each row is that run rebuilt the way `eval`/`infer` rebuild it
(`runs._build`: the method's own model, its checkpoint restored), so the
reading of run directories, the bank and the per-example model are all
checked against the one training code path.
"""

import jax
import numpy as np
import pytest

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning.models import T5
from prompt_tuning.models import decoding
from prompt_tuning.models import t5_config
from prompt_tuning.prompts import merge_params
from prompt_tuning.prompts import mixed
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.serving import library_entries
from prompt_tuning.training import runs
from prompt_tuning.training import setup
from prompt_tuning.training.inference import DecodeConfig
from tests import tiny_tasks

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")
TASK = "tiny_classify"
MESH = (4, 2)
RUNS = {
    "ia3": methods.IA3Config(),
    "lora": methods.LoraConfig(rank=2, alpha=4.0,
                               targets=("query", "value", "wo")),
    "prefix": methods.PrefixConfig(length=2, hidden=6,
                                   attentions=("encoder_self", "cross")),
    "deep_prompt": methods.DeepPromptConfig(length=3,
                                            stacks=("encoder", "decoder")),
    "prompt": methods.PromptTuning(length=4),
}


def _write_run(directory, frozen, name):
  """A run directory of `name` with random (not initial) parameters."""
  tiny_tasks.register()
  method = RUNS[name]
  prompt = setup.PromptConfig(length=getattr(method, "length", 3),
                              init="random_uniform")
  run = setup.build_model(
      initial_checkpoint_path=frozen, model_config=CONFIG, mode=name,
      prompt=prompt, mesh=partitioning.create_mesh((1, 1),
                                                   jax.devices()[:1]),
      rules=partitioning.logical_axis_rules(), vocabulary=None,
      rng=jax.random.PRNGKey(len(name)), dtype="float32",
      method=setup.make_method(name, prompt, {name: method}))
  leaves, treedef = jax.tree_util.tree_flatten(run.trainable)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  trainable = jax.tree_util.tree_unflatten(treedef, [
      np.asarray(x) + 0.5 * np.asarray(jax.random.normal(k, x.shape))
      for x, k in zip(leaves, keys)])
  return runs.write_adapter_run(directory, run.method, trainable)


def _batch():
  rng = np.random.default_rng(3)
  enc = rng.integers(2, CONFIG.vocab_size, (8, 7)).astype(np.int32)
  enc[1::2, 5:] = 0
  enc[:, 4] = 1
  tgt = rng.integers(2, CONFIG.vocab_size, (8, 4)).astype(np.int32)
  tgt[::3, 3:] = 0
  dec = np.concatenate([np.zeros((8, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


@pytest.fixture(scope="module")
def library_runs(frozen, tmp_path_factory):
  root = tmp_path_factory.mktemp("mixed_runs")
  return {name: _write_run(str(root / name), frozen, name) for name in RUNS}


def test_a_batch_of_every_method_equals_each_run_alone(frozen, library_runs):
  tiny_tasks.register()
  model = frozen_lib.load_frozen(frozen, CONFIG, mesh_shape=MESH)
  library = frozen_lib.load_library(library_runs, config=model.config)
  assert library.has_adapters and [p.length for p in library] == [
      0, 0, 0, 3, 4]
  bank = library_entries.build_bank(library, model.config)
  served = T5(model.config.replace(adapters=bank.config))
  prompts, lengths = library.bank()
  enc, dec, tgt = _batch()
  ids = np.array([0, 1, 2, 3, 4, 3, 2, 1], np.int32)
  with partitioning.mesh_context(model.mesh, model.rules):
    got = np.asarray(mixed.logits(served, model.params, prompts, lengths,
                                  ids, enc, dec, tgt,
                                  adapters=bank.arrays))
  runner = frozen_lib.MixedRunner(model, library, DecodeConfig(),
                                  max_decode_length=4)
  greedy = runner.predict(enc, ids)
  for k, name in enumerate(library.names):
    rows = ids == k
    run = runs._build(library_runs[name], frozen, CONFIG, TASK, "prefix",  # pylint: disable=protected-access
                      MESH, False)
    params = merge_params(run.model_params(run.trainable), run.frozen)
    want = np.asarray(run.model.apply({"params": params}, enc[rows],
                                      dec[rows], tgt[rows]))
    real = tgt[rows] > 0
    np.testing.assert_allclose(got[rows][real], want[real], atol=1e-4,
                               rtol=1e-4, err_msg=name)
    np.testing.assert_array_equal(
        greedy[rows], decoding.greedy_decode(run.model, params, enc[rows], 4),
        err_msg=name)


def test_entries_that_cannot_share_the_model_are_refused(frozen,
                                                         library_runs,
                                                         tmp_path):
  tiny_tasks.register()
  model = frozen_lib.load_frozen(frozen, CONFIG, mesh_shape=MESH)
  with pytest.raises(ValueError, match="placement='prefix'"):
    frozen_lib.MixedRunner(model, frozen_lib.load_library(
        {"d": library_runs["deep_prompt"]}, config=model.config),
                           placement="suffix")
  tuned = str(tmp_path / "model_run")
  runs.write_adapter_run(tuned, methods.ModelTuning(), {"x": np.zeros(1)})
  with pytest.raises(ValueError, match="model-tuning run .* serve it as its "
                     "own model") as error:
    frozen_lib.load_library({"m": tuned}, config=model.config)
  assert "\n" not in str(error.value)
  # Without the model's config (e.g. ensembles) an adapter run is no prompt.
  with pytest.raises((ValueError, FileNotFoundError)):
    frozen_lib.load_library({"l": library_runs["lora"]},
                            model.config.emb_dim)
