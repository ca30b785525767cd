"""Checkpointing: exact round trips, sharded restore, keep-N with the best
step, no overwrites, prompt exports and clear errors."""

import json
import logging
import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import partitioning
from prompt_tuning.training import checkpoints
from prompt_tuning.training import state_trees
from prompt_tuning.training.checkpoints import Checkpointer
from prompt_tuning.training.prompt_files import load_prompt

P_LEN, H = 5, 8


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


def make_state(prompt_len=P_LEN, seed=0, step=7, extra=None,
               optimizer=None) -> TrainState:
  """A state after one real optimizer update, so opt_state is not zeros."""
  prompt = jax.random.normal(jax.random.PRNGKey(seed), (prompt_len, H))
  params = {"encoder": {"prompt": {"prompt": prompt}}}
  if extra is not None:
    params["extra"] = extra
  optimizer = optimizer or optax.adafactor(learning_rate=0.3)
  opt_state = optimizer.init(params)
  grads = jax.tree_util.tree_map(lambda x: 0.1 * jnp.ones_like(x), params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    opt_state=opt_state, rng=jax.random.PRNGKey(seed + 1))


def abstract(state):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)


def assert_trees_equal(a, b):
  a_leaves, a_def = jax.tree_util.tree_flatten(a)
  b_leaves, b_def = jax.tree_util.tree_flatten(b)
  assert a_def == b_def
  for x, y in zip(a_leaves, b_leaves):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_bytes(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_round_trip_is_bit_exact(tmp_path):
  state = make_state()
  position = {"batches_consumed": 1200, "seed": 0}
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() is None
    ckpt.save(7, state, position)
    assert ckpt.all_steps() == [7]
  # A fresh Checkpointer, as a resumed run would make.
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 7
    restored, restored_position = ckpt.restore(abstract(state))
    # Concrete arrays work as the target too.
    again, _ = ckpt.restore(state, step=7)
  assert restored_position == position
  assert_trees_equal(restored, state)
  assert_trees_equal(again, state)
  assert isinstance(restored, TrainState)


def test_typed_prng_key_round_trips(tmp_path):
  state = make_state().replace(rng=jax.random.key(3))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"batches_consumed": 1})
    restored, _ = ckpt.restore(abstract(state))
  np.testing.assert_array_equal(jax.random.key_data(restored.rng),
                                jax.random.key_data(state.rng))


def test_sharded_restore_uses_requested_shardings(tmp_path):
  mesh = partitioning.create_mesh((4, 2))
  prompt_sharding = partitioning.sharding_for(("prompt", "prompt_embed"), mesh)
  kernel_sharding = partitioning.sharding_for(("batch", "mlp"), mesh)
  state = make_state(extra=jnp.arange(32, dtype=jnp.float32).reshape(8, 4))

  def placement(path, x):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if names[0] != "params":  # Optimizer state, step, rng: replicated.
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    if names[-1] == "extra":
      return kernel_sharding
    if names[-1] == "prompt":
      return prompt_sharding
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  shardings = jax.tree_util.tree_map_with_path(placement, state)
  sharded = jax.device_put(state, shardings)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, sharded, {"batches_consumed": 3})
    target = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state, shardings)
    restored, _ = ckpt.restore(target)
  assert_trees_equal(restored, state)
  prompt = restored.params["encoder"]["prompt"]["prompt"]
  assert prompt.sharding.is_equivalent_to(prompt_sharding, prompt.ndim)
  assert prompt.sharding.is_fully_replicated
  kernel = restored.params["extra"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("data", "model")
  assert kernel.sharding.mesh.shape == mesh.shape
  assert len(kernel.addressable_shards) == 8


def test_keep_n_keeps_the_best_and_writes_best_json(tmp_path):
  state = make_state()
  with Checkpointer(tmp_path, keep=2, best_metric="accuracy") as ckpt:
    ckpt.save(100, state, {"batches_consumed": 100}, {"accuracy": 0.9})
    for step, acc in [(200, 0.5), (300, 0.6), (400, 0.7)]:
      ckpt.save(step, state, {"batches_consumed": step}, {"accuracy": acc})
    assert ckpt.all_steps() == [100, 300, 400]
    assert ckpt.best_step() == 100
    assert not os.path.exists(tmp_path / "checkpoint_200")
    assert os.path.isdir(tmp_path / "checkpoint_100")
    # A later eval of a saved step makes it best; the old best loses its
    # protection at the next collection.
    assert ckpt.record_eval(400, {"accuracy": 0.95, "loss": 1.0})
    assert not ckpt.record_eval(300, {"accuracy": 0.95})  # Ties keep 400.
    assert not ckpt.record_eval(300, {"loss": 0.1})
    ckpt.save(500, state, {"batches_consumed": 500})
    assert ckpt.all_steps() == [400, 500]
    assert ckpt.best_step() == 400
  with open(tmp_path / "best.json") as f:
    assert json.load(f) == {"metric": "accuracy", "mode": "max",
                            "value": 0.95, "step": 400}
  # Prompt exports are never collected.
  assert sorted(os.listdir(tmp_path / "prompts")) == [
      f"step_{s}.npy" for s in (100, 200, 300, 400, 500)]
  # The best survives reopening, and a run tracking another metric is refused.
  with Checkpointer(tmp_path, keep=2, best_metric="accuracy") as ckpt:
    assert ckpt.best_step() == 400
  with pytest.raises(ValueError, match="tracks max 'accuracy' but this run "
                     "asks for min 'loss'"):
    Checkpointer(tmp_path, best_metric="loss", best_mode="min")


def test_best_mode_min_and_eval_before_save_protects(tmp_path):
  state = make_state()
  with Checkpointer(tmp_path, keep=1, best_metric="loss",
                    best_mode="min") as ckpt:
    assert ckpt.best() is None
    assert ckpt.record_eval(1, {"loss": 2.0})
    best = ckpt.best()
    assert best == {"metric": "loss", "mode": "min", "value": 2.0, "step": 1}
    best["step"] = 99  # a copy
    assert ckpt.best_step() == 1
    assert ckpt.record_eval(1, {"loss": 1.0})
    assert not ckpt.record_eval(2, {"loss": float("nan")})
    assert not ckpt.record_eval(2, {"loss": 1.5})
    assert not ckpt.record_eval(2, {"loss": 1.0})  # Ties keep step 1.
    assert ckpt.best_step() == 1
    for step in (1, 2, 3):
      ckpt.save(step, state, {"batches_consumed": step})
    assert ckpt.all_steps() == [1, 3]


def test_existing_step_is_never_overwritten(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(10, make_state(seed=0), {"batches_consumed": 10})
  before = tree_bytes(tmp_path / "checkpoint_10")
  prompt_before = (tmp_path / "prompts" / "step_10.npy").read_bytes()
  # A restarted run that forgot to restore.
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match=r"checkpoint_10 already exists; "
                       "checkpoints are never overwritten"):
      ckpt.save(10, make_state(seed=1), {"batches_consumed": 0})
    with pytest.raises(ValueError, match=r"step 5 is older than the newest "
                       r"checkpoint \(step 10\)"):
      ckpt.save(5, make_state(seed=1), {"batches_consumed": 0})
    assert ckpt.all_steps() == [10]
  assert tree_bytes(tmp_path / "checkpoint_10") == before
  assert (tmp_path / "prompts" / "step_10.npy").read_bytes() == prompt_before


def test_half_written_checkpoint_is_not_a_checkpoint(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(), {"batches_consumed": 1})
  # What a save that crashed before orbax's final rename leaves behind.
  os.makedirs(tmp_path / "checkpoint_2.orbax-checkpoint-tmp-1234" / "state")
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() == [1]
    ckpt.save(2, make_state(), {"batches_consumed": 2})
    assert ckpt.all_steps() == [1, 2]


def test_prompt_export_and_load_prompt(tmp_path):
  state = make_state()
  prompt = np.asarray(state.params["encoder"]["prompt"]["prompt"])
  later = make_state(seed=5)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"batches_consumed": 1})
    ckpt.save(2, later, {"batches_consumed": 2})
  file = tmp_path / "prompts" / "step_1.npy"
  loaded = load_prompt(file)
  assert loaded.dtype == np.float32 and loaded.shape == (P_LEN, H)
  np.testing.assert_array_equal(loaded, prompt)
  assert not [n for n in os.listdir(tmp_path / "prompts") if ".tmp" in n]
  # Run directory without best.json: the newest export.
  np.testing.assert_array_equal(
      load_prompt(tmp_path), np.asarray(later.params["encoder"]["prompt"]
                                        ["prompt"]))
  # With best.json: the best step's export.
  with Checkpointer(tmp_path, best_metric="accuracy") as ckpt:
    ckpt.record_eval(1, {"accuracy": 1.0})
  np.testing.assert_array_equal(load_prompt(tmp_path), prompt)

  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_prompt(tmp_path / "nope.npy")
  empty = tmp_path / "empty_run"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"no prompt found"):
    load_prompt(empty)
  with Checkpointer(tmp_path, best_metric="accuracy") as ckpt:
    ckpt.record_eval(99, {"accuracy": 2.0})
  with pytest.raises(FileNotFoundError, match=r"names step 99 but .*"
                     r"step_99\.npy does not exist"):
    load_prompt(tmp_path)


def test_model_tuning_state_exports_no_prompt(tmp_path):
  params = {"encoder": {"dense": jnp.ones((4, 4))}}
  state = TrainState(step=jnp.int32(1), params=params,
                     opt_state=optax.sgd(0.1).init(params),
                     rng=jax.random.PRNGKey(0))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"batches_consumed": 1})
    restored, _ = ckpt.restore(abstract(state))
  assert_trees_equal(restored, state)
  assert not os.path.exists(tmp_path / "prompts")


def test_restore_with_other_prompt_length_names_both_shapes(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(prompt_len=5), {"batches_consumed": 1})
    with pytest.raises(ValueError, match=r"checkpoint_1: params/encoder/"
                       r"prompt/prompt has shape \(5, 8\) in the checkpoint "
                       r"but \(6, 8\) in the run's state"):
      ckpt.restore(abstract(make_state(prompt_len=6)))
    other_optimizer = make_state(optimizer=optax.adam(1e-3))
    with pytest.raises(ValueError, match=r"checkpoint_1 lacks .* leaf"):
      ckpt.restore(abstract(other_optimizer))
    # Same leaves, another tree: Adafactor without update clipping.
    unclipped = make_state(prompt_len=5, optimizer=optax.adafactor(
        learning_rate=0.3, clipping_threshold=None))
    with pytest.raises(ValueError, match=r"checkpoint_1: the checkpoint's "
                       r"state does not fit this run's \(did the optimizer "
                       r"configuration change\?\)"):
      ckpt.restore(abstract(unclipped))


def test_no_checkpoint_errors(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint_<N> to "
                       "restore from"):
      ckpt.restore(abstract(make_state()))
    ckpt.save(4, make_state(), {"batches_consumed": 4})
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 3; "
                       r"available steps: \[4\]"):
      ckpt.restore(abstract(make_state()), step=3)


def test_unwritable_model_dir_fails_early(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match=r"MODEL_DIR .*a_file/run' is not usable: "
                     r".*a_file is a file, not a directory"):
    Checkpointer(blocker / "run")


def test_a_non_finite_state_is_never_saved(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(), {"batches_consumed": 1})
    bad = make_state()
    bad = bad.replace(params=jax.tree_util.tree_map(
        lambda x: x.at[0, 0].set(jnp.inf), bad.params))
    with pytest.raises(ValueError, match=r"Not saving step 2 .*NaN or "
                       r"infinite.*newest checkpoint stays step 1"):
      ckpt.save(2, bad, {"batches_consumed": 2})
    assert ckpt.all_steps() == [1]
  assert sorted(os.listdir(tmp_path / "prompts")) == ["step_1.npy"]


def _damage(path, kind):
  state_dir = path / "state"
  if kind == "truncated":
    for root, _, files in os.walk(state_dir):
      for name in files:
        if os.path.basename(root) == "d":  # the array data files
          os.truncate(os.path.join(root, name), 10)
  elif kind == "metadata":
    (state_dir / "_METADATA").write_text("{not json")
  elif kind == "no_state":
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(state_dir)


@pytest.mark.parametrize("kind", ["truncated", "metadata", "no_state"])
def test_restore_newest_skips_a_damaged_checkpoint_and_keeps_it(tmp_path,
                                                               kind, caplog):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(seed=1, step=1), {"batches_consumed": 1})
    ckpt.save(2, make_state(seed=2, step=2), {"batches_consumed": 2})
  _damage(tmp_path / "checkpoint_2", kind)
  before = tree_bytes(tmp_path / "checkpoint_2")
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match="cannot be restored"):
      ckpt.restore(abstract(make_state()), step=2)
    state, position, step = ckpt.restore_newest(abstract(make_state()))
    assert step == 1 and position == {"batches_consumed": 1}
    assert_trees_equal(state, make_state(seed=1, step=1))
    assert "Skipped checkpoint step 2" in caplog.text
    # Moved, byte for byte; the run can write step 2 again.
    assert tree_bytes(tmp_path / "damaged" / "checkpoint_2") == before
    assert ckpt.all_steps() == [1]
    ckpt.save(2, make_state(seed=2, step=2), {"batches_consumed": 2})


def test_restore_newest_skips_a_non_finite_checkpoint(tmp_path, monkeypatch,
                                                      caplog):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(seed=1, step=1), {"batches_consumed": 1})
    bad = make_state(seed=2, step=2)
    bad = bad.replace(params=jax.tree_util.tree_map(
        lambda x: x.at[0, 0].set(jnp.inf), bad.params))
    # As a run before saves were checked wrote it.
    monkeypatch.setattr(checkpoints, "all_finite", lambda tree: True)
    ckpt.save(2, bad, {"batches_consumed": 2})
    monkeypatch.undo()
  with Checkpointer(tmp_path) as ckpt:
    _, _, step = ckpt.restore_newest(abstract(make_state()))
  assert step == 1
  assert os.path.isdir(tmp_path / "damaged" / "checkpoint_2")
  assert ("Skipped checkpoint step 2: its state holds NaN or infinite values "
          "(written before saves were checked).") in caplog.text


def test_restore_newest_when_nothing_restores_changes_nothing(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.restore_newest(abstract(make_state())) is None
    ckpt.save(1, make_state(), {"batches_consumed": 1})
  _damage(tmp_path / "checkpoint_1", "metadata")
  before = tree_bytes(tmp_path)
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.DamagedCheckpointError) as one:
      ckpt.restore(abstract(make_state()), step=1)
    with pytest.raises(checkpoints.DamagedCheckpointError) as e:
      ckpt.restore_newest(abstract(make_state()))
  assert (e.value.step, e.value.path) == (1, str(tmp_path))
  assert str(e.value) == (
      f"{tmp_path} cannot be restored: none of its 1 checkpoint(s) restores "
      f"(step 1: {one.value.reason}). Nothing was changed; move them away to "
      f"start over, or use a new model_dir")
  assert tree_bytes(tmp_path) == before


def test_restore_newest_refuses_a_checkpoint_that_does_not_fit(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(prompt_len=3), {"batches_consumed": 1})
    # Not damage: an older checkpoint would not fit either.
    with pytest.raises(ValueError, match="has shape") as error:
      ckpt.restore_newest(abstract(make_state()))
    assert "cannot be restored" not in str(error.value)
  assert not os.path.exists(tmp_path / "damaged")


def test_bad_data_position_fails_before_writing(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match="data_position must be "
                       "JSON-serializable"):
      ckpt.save(1, make_state(), {"iterator": object()})
    assert ckpt.all_steps() == []
    ckpt.save(1, make_state(), {"batches_consumed": np.int64(1)})
    _, position = ckpt.restore(abstract(make_state()))
  assert position == {"batches_consumed": 1}


def test_only_the_passed_state_is_saved(tmp_path):
  # The frozen model lives next to the train state in a real loop but is not
  # part of it: the checkpoint must stay the size of what trains.
  frozen = {"encoder": {"layers": np.ones((1000, 1000), np.float32)}}
  state = make_state()
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"batches_consumed": 1})
  size = sum(len(b) for b in tree_bytes(tmp_path / "checkpoint_1").values())
  assert size < frozen["encoder"]["layers"].nbytes // 20, size


def test_a_step_damaged_again_and_again_keeps_every_copy(tmp_path, caplog):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(seed=1, step=1), {"batches_consumed": 1})
    ckpt.save(2, make_state(seed=2, step=2), {"batches_consumed": 2})
  for moved in ("checkpoint_2", "checkpoint_2.1", "checkpoint_2.2"):
    _damage(tmp_path / "checkpoint_2", "metadata")
    with Checkpointer(tmp_path) as ckpt:
      with pytest.raises(checkpoints.DamagedCheckpointError) as e:
        ckpt.restore(abstract(make_state()), step=2)
      caplog.clear()
      _, _, step = ckpt.restore_newest(abstract(make_state()))
      assert step == 1
      target = os.path.join(tmp_path, "damaged", moved)
      assert (f"Skipped checkpoint step 2: {e.value.reason}. Moved it, "
              f"unchanged, to {target}; resuming from step 1.") in caplog.text
      # The rerun writes step 2 again, and it is damaged again.
      ckpt.save(2, make_state(seed=2, step=2), {"batches_consumed": 2})
  assert sorted(os.listdir(tmp_path / "damaged")) == [
      "checkpoint_2", "checkpoint_2.1", "checkpoint_2.2"]


def test_read_echoes_are_recognised_exactly():
  echo = checkpoints._is_read_echo  # pylint: disable=protected-access
  assert echo(RuntimeError("Event loop is closed"))
  assert not echo(RuntimeError("Event loop is closed."))
  assert not echo(RuntimeError("DATA_LOSS: x"))
  for code in ("DATA_LOSS", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE",
               "INTERNAL", "UNKNOWN", "UNAVAILABLE", "INVALID_ARGUMENT",
               "PERMISSION_DENIED", "ABORTED"):
    assert echo(ValueError(f"{code}: Error reading local file"))
  assert echo(ValueError("\n  DATA_LOSS: leading space is stripped"))
  assert not echo(ValueError("Shapes differ; DATA_LOSS: not at the start"))
  assert not echo(ValueError("data_loss: lower case"))
  assert not echo(TypeError("DATA_LOSS: not a ValueError"))
  assert not echo(None)
  keep = checkpoints._ReadEchoFilter().filter  # pylint: disable=protected-access
  record = lambda error: logging.LogRecord(
      "asyncio", logging.ERROR, __file__, 1, "Task exception was never "
      "retrieved", None, (type(error), error, None) if error else None)
  assert not keep(record(ValueError("NOT_FOUND: gone")))
  assert keep(record(ValueError("a real error")))
  assert keep(record(None))


def test_damage_reasons_are_one_short_line():
  reason = checkpoints._reason  # pylint: disable=protected-access
  assert reason(ValueError("DATA_LOSS:  a\n  b\tc")) == "DATA_LOSS: a b c"
  assert reason(ValueError("")) == "ValueError"
  assert reason(ValueError("NOT_FOUND: x [source locations='y'] See full "
                           "TensorStore details: z")) == (
                               "NOT_FOUND: x [source locations='y']")
  assert reason(ValueError("x" * 200)) == "x" * 200
  assert reason(ValueError("x" * 201)) == "x" * 200 + "..."
  error = checkpoints._damaged(  # pylint: disable=protected-access
      3, "/runs/a/checkpoint_3", ValueError("DATA_LOSS:  short\n read"))
  assert isinstance(error, checkpoints.DamagedCheckpointError)
  assert (error.step, error.path, error.reason) == (
      3, "/runs/a/checkpoint_3", "DATA_LOSS: short read")
  assert str(error) == ("/runs/a/checkpoint_3 cannot be restored: "
                        "DATA_LOSS: short read")


def test_read_echo_hooks_drop_only_echoes_and_install_once(monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(("e",) + a))
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(("u", u)))
  asyncio_log = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_log, "filters", [])
  checkpoints._silence_read_echoes()  # pylint: disable=protected-access
  hook, unraisable_hook = sys.excepthook, sys.unraisablehook
  assert hook.drops_read_echoes is True
  checkpoints._silence_read_echoes()  # pylint: disable=protected-access
  assert (sys.excepthook, sys.unraisablehook) == (hook, unraisable_hook)
  assert [type(f) for f in asyncio_log.filters] == [
      checkpoints._ReadEchoFilter]  # pylint: disable=protected-access
  echo, real = ValueError("DATA_LOSS: short read"), KeyError("real")
  hook(ValueError, echo, None)
  hook(KeyError, real, "tb")
  unraisable_hook(types.SimpleNamespace(exc_value=RuntimeError(
      "Event loop is closed")))
  other = types.SimpleNamespace(exc_value=real)
  unraisable_hook(other)
  assert seen == [("e", KeyError, real, "tb"), ("u", other)]


def test_leaf_paths_and_restore_targets():
  paths = state_trees.flat_paths(
      {"opt": (1, [2, 3]), "state": make_state(step=1)})
  assert {"opt/0", "opt/1/0", "opt/1/1", "state/step", "state/rng",
          "state/params/encoder/prompt/prompt"} <= set(paths)
  assert state_trees._key_name("plain") == "plain"  # pylint: disable=protected-access
  leaf = state_trees.abstract_leaf
  host = leaf(np.zeros((2, 3), np.int8))
  assert (host.shape, host.dtype) == ((2, 3), np.int8)
  assert host.sharding == jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      "data"))
  placed = leaf(jax.device_put(jnp.zeros((8, 2)), sharding))
  assert placed.sharding == sharding and placed.shape == (8, 2)
  unplaced = leaf(jax.ShapeDtypeStruct((4,), jnp.float32))
  assert unplaced.sharding == host.sharding


def test_metrics_and_position_are_stored_as_json_or_refused(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(step=1), {"batches_consumed": np.int64(1)},
              {"accuracy": np.float32(0.5), "loss": jnp.asarray(2.0)})
    with pytest.raises(ValueError, match=(
        r"^data_position must be JSON-serializable: ndarray is not JSON "
        r"serializable\.$")):
      ckpt.save(2, make_state(step=2), {"batches_consumed": np.arange(2)})
    with pytest.raises(ValueError, match=(
        r"^metrics must be JSON-serializable: object is not JSON "
        r"serializable\.$")):
      ckpt.save(2, make_state(step=2), {"batches_consumed": 2},
                {"accuracy": object()})
    assert ckpt.all_steps() == [1]  # nothing was started for step 2
  with open(tmp_path / "checkpoint_1" / "metrics" / "metrics") as f:
    assert json.load(f) == {"accuracy": 0.5, "loss": 2.0}
  with open(tmp_path / "checkpoint_1" / "data_position" / "metadata") as f:
    assert json.load(f) == {"batches_consumed": 1}


@pytest.mark.parametrize("content,reason", [
    ("{not json", None),
    ("[1]", "its data_position is [1], not the input pipeline's position"),
    ('{"seed": 0}', "its data_position is {'seed': 0}, not the input "
     "pipeline's position"),
], ids=["not_json", "list", "no_batches_consumed"])
def test_a_damaged_data_position_is_damage(tmp_path, content, reason):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(step=1), {"batches_consumed": 1})
  (tmp_path / "checkpoint_1" / "data_position" / "metadata").write_text(
      content)
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.DamagedCheckpointError) as e:
      ckpt.restore(abstract(make_state()))
  path = str(tmp_path / "checkpoint_1")
  assert (e.value.step, e.value.path) == (1, path)
  if reason is None:  # the JSON decoder's own words
    assert e.value.reason.startswith("Expecting property name")
  else:
    assert e.value.reason == reason
  assert str(e.value) == f"{path} cannot be restored: {e.value.reason}"


@pytest.mark.parametrize("kind", ["truncated", "metadata", "no_state"])
def test_damage_names_the_step_the_directory_and_the_cause(tmp_path, kind):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, make_state(step=3), {"batches_consumed": 3})
  _damage(tmp_path / "checkpoint_3", kind)
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.DamagedCheckpointError) as e:
      ckpt.restore(abstract(make_state()), step=3)
  assert (e.value.step, e.value.path) == (3, str(tmp_path / "checkpoint_3"))
  assert e.value.reason and e.value.reason not in ("None", "NoneType")


def test_tree_mismatches_name_the_first_leaf_and_the_count(tmp_path):
  two = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(), {"batches_consumed": 1})
    where = str(tmp_path / "checkpoint_1")
    with pytest.raises(ValueError, match=(
        rf"^{re.escape(where)} lacks 8 leaf/leaves of the run's state, e\.g\. "
        r"'opt_state/0/v/extra/a'; the run's optimizer or trainable params differ "
        r"from the checkpoint's\.$")):
      ckpt.restore(abstract(make_state(extra=two)))
  with Checkpointer(tmp_path / "more") as ckpt:
    ckpt.save(1, make_state(extra=two), {"batches_consumed": 1})
    where = str(tmp_path / "more" / "checkpoint_1")
    with pytest.raises(ValueError, match=(
        rf"^{re.escape(where)} has 8 leaf/leaves the run's state lacks, "
        r"e\.g\. 'opt_state/0/v/extra/a'; the run's optimizer or trainable params "
        r"differ from the checkpoint's\.$")):
      ckpt.restore(abstract(make_state()))


def test_prompt_exports_are_float32_for_dict_states_too(tmp_path):
  state = make_state()
  bf16 = state.replace(params=jax.tree_util.tree_map(
      lambda x: x.astype(jnp.bfloat16), state.params))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, bf16, {"batches_consumed": 1})
  exported = np.load(tmp_path / "prompts" / "step_1.npy")
  assert exported.dtype == np.float32
  np.testing.assert_array_equal(
      exported, np.asarray(bf16.params["encoder"]["prompt"]["prompt"],
                           np.float32))
  as_dict = {"step": state.step, "params": state.params, "rng": state.rng}
  with Checkpointer(tmp_path / "dict") as ckpt:
    ckpt.save(1, as_dict, {"batches_consumed": 1})
  np.testing.assert_array_equal(
      np.load(tmp_path / "dict" / "prompts" / "step_1.npy"),
      state.params["encoder"]["prompt"]["prompt"])
