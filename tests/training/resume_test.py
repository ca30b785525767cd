"""Resume is exact: N straight steps equal k steps + restart + (N - k) steps
(prompt, optimizer state, rng and data position), on a (data=4, model=2)
mesh; and a non-finite loss stops the run keeping the last good checkpoint."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prompt_tuning.training.checkpoints import Checkpointer
from prompt_tuning.models import t5_config
from prompt_tuning.training import loop
from prompt_tuning.training import optimizers
from prompt_tuning.training import setup
from tests import tiny_tasks

CONFIG = t5_config("t5_1_1_tiny", dtype="float32")


def _train(model_dir, frozen, steps, **optimizer):
  tiny_tasks.register()
  return loop.train(
      model_dir=model_dir, initial_checkpoint_path=frozen,
      model_config=CONFIG, mixture_or_task_name="tiny_classify",
      task_feature_lengths={"inputs": 32, "targets": 4},
      prompt=setup.PromptConfig(length=3, init="sampled_vocab"),
      optimizer=optimizers.AdafactorConfig(**optimizer),
      schedule=loop.TrainConfig(train_steps=steps, batch_size=8,
                                checkpoint_period=2, eval_period=0,
                                log_period=1),
      mesh_shape=(4, 2))


def _prompt(model_dir, step):
  return np.load(os.path.join(model_dir, "prompts", f"step_{step}.npy"))


def test_resume_is_exact(tmp_path, frozen):
  straight = str(tmp_path / "straight")
  resumed = str(tmp_path / "resumed")
  _train(straight, frozen, 4)
  _train(resumed, frozen, 2)
  assert not os.path.exists(os.path.join(resumed, "checkpoint_4"))
  _train(resumed, frozen, 4)
  np.testing.assert_array_equal(_prompt(resumed, 4), _prompt(straight, 4))
  for run in (straight, resumed):
    assert sorted(os.listdir(os.path.join(run, "prompts"))) == [
        "step_2.npy", "step_4.npy"]
  # Optimizer state, rng and data position, leaf by leaf.
  a = _restore_raw(straight, 4)
  b = _restore_raw(resumed, 4)
  assert a[1] == b[1] and a[1]["batches_consumed"] == 4
  for x, y in zip(jax.tree_util.tree_leaves(a[0]),
                  jax.tree_util.tree_leaves(b[0])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _restore_raw(model_dir, step):
  """(state leaves, data position) of a checkpoint, restored on the host."""
  path = os.path.join(model_dir, f"checkpoint_{step}", "state")
  state = ocp.StandardCheckpointer().restore(path)
  with Checkpointer(model_dir) as ckpt:
    _, position = ckpt.restore(state, step)
  return state, position


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                   frozen):
  model_dir = str(tmp_path / "nan")
  _train(model_dir, frozen, 2)
  good = _prompt(model_dir, 2)
  # An infinite learning rate makes the prompt, and so the loss, NaN.
  with pytest.raises(loop.NonFiniteLossError, match=r"at step \d+.*last good "
                     r"checkpoint in .* is step \d+"):
    _train(model_dir, frozen, 6, learning_rate=float("inf"))
  with Checkpointer(model_dir) as ckpt:
    latest = ckpt.latest_step()
  # Nothing non-finite was saved, and the pre-existing checkpoint survived.
  assert np.isfinite(_prompt(model_dir, latest)).all()
  np.testing.assert_array_equal(_prompt(model_dir, 2), good)
