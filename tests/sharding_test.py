"""Sharding on 8 fake CPU devices with a (data=4, model=2) mesh."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning import partitioning
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.models import T5

HF_T5_1_1 = os.path.join(os.path.dirname(__file__), "fixtures", "hf",
                         "t5_1_1_style")


def test_eight_devices():
  assert jax.device_count() == 8


def test_create_mesh_fills_and_rejects_bad_shapes():
  mesh = partitioning.create_mesh((-1, 2))
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert dict(partitioning.create_mesh((2, -1)).shape) == {"data": 2,
                                                          "model": 4}
  with pytest.raises(ValueError, match=r"mesh_shape=\(-1, 3\) does not divide "
                     r"the 8 devices"):
    partitioning.create_mesh((-1, 3))
  with pytest.raises(ValueError, match=r"needs 6 devices but 8 are available"):
    partitioning.create_mesh((3, 2))
  with pytest.raises(ValueError, match="at most one entry may be -1"):
    partitioning.create_mesh((-1, -1))


def test_shard_batch_requires_divisible_batch():
  mesh = partitioning.create_mesh((4, 2))
  batch = partitioning.shard_batch({"x": np.zeros((8, 3), np.int32)}, mesh)
  assert batch["x"].sharding.spec == P("data", None)
  with pytest.raises(ValueError, match="Batch size 6 is not divisible by the "
                     "data-parallel size 4"):
    partitioning.shard_batch({"x": np.zeros((6, 3))}, mesh)


def test_shard_global_batch_and_to_host_round_trip():
  mesh = partitioning.create_mesh((4, 2))
  x = np.arange(24, dtype=np.int32).reshape(8, 3)
  batch = partitioning.shard_global_batch({"x": x}, mesh)
  assert batch["x"].sharding.spec == P("data", None)
  np.testing.assert_array_equal(partitioning.to_host(batch["x"]), x)
  with pytest.raises(ValueError, match="Batch size 6 is not divisible"):
    partitioning.shard_global_batch({"x": x[:6]}, mesh)


class _FakeMesh:
  """Just what the layout check reads: devices [data, model], shape."""

  def __init__(self, process_of):  # [data][model] -> process index
    self.devices = np.empty((len(process_of), len(process_of[0])), object)
    for index in np.ndindex(self.devices.shape):
      self.devices[index] = type("Device", (), {
          "process_index": process_of[index[0]][index[1]]})()
    self.shape = {"data": self.devices.shape[0],
                  "model": self.devices.shape[1]}


def test_data_layout_follows_where_the_model_axis_lies():
  layout = partitioning.data_layout  # [data][model] -> process index below
  # Model parallelism within each process: one input shard per process.
  assert layout(_FakeMesh([[0, 0], [1, 1]]), 1) == (1, 2)
  # The model axis spans both processes: they are replicas for the input.
  assert layout(_FakeMesh([[0, 1], [0, 1]]), 1) == (0, 1)
  assert layout(_FakeMesh([[0, 1], [2, 3]]), 3) == (1, 2)
  # Overlapping, different sets of data shards: no per-process split.
  with pytest.raises(ValueError, match="different sets of data shards"):
    layout(_FakeMesh([[0, 0], [0, 1], [1, 1]]), 0)


@pytest.mark.parametrize("scan,fsdp", [(False, False), (True, True)])
def test_loaded_params_are_sharded_by_the_rules(scan, fsdp):
  mesh = partitioning.create_mesh((4, 2))
  rules = partitioning.logical_axis_rules(fsdp=fsdp)
  config, _ = load_pretrained(HF_T5_1_1)
  config, params = load_pretrained(
      HF_T5_1_1, config=config.replace(scan_layers=scan), mesh=mesh,
      rules=rules)
  embed = "data" if fsdp else None
  layer = (lambda t: t["layers"]) if scan else (lambda t: t["layers_0"])
  lead = (None,) if scan else ()
  enc = layer(params["encoder"])
  expect = {
      "token_embedder": (params["token_embedder"]["embedding"],
                         P("model", embed)),
      "query": (enc["attention"]["query"]["kernel"],
                P(*lead, embed, "model")),
      "out": (enc["attention"]["out"]["kernel"], P(*lead, "model", embed)),
      "wo": (enc["mlp"]["wo"]["kernel"], P(*lead, "model", embed)),
      "norm": (enc["pre_mlp_layer_norm"]["scale"], P(*lead, embed)),
      # 3 heads do not split 2 ways: the tiny table is replicated instead.
      "relpos": (params["encoder"]["relpos_bias"]["rel_embedding"],
                 P(None, None)),
      "logits": (params["decoder"]["logits_dense"]["kernel"],
                 P(embed, "model")),
  }
  for name, (array, spec) in expect.items():
    assert array.sharding.mesh == mesh, name
    assert array.sharding.spec == spec, (name, array.sharding.spec)


def test_sharded_forward_equals_unsharded():
  config, params = load_pretrained(HF_T5_1_1)
  config = config.replace(dtype="float32")
  data = np.load(os.path.join(HF_T5_1_1, "expected.npz"))
  # The fixture batch has 2 rows; tile it to 8 so `data`=4 splits it.
  batch = {k: np.tile(data[k], (4, 1)) for k in
           ("encoder_input_tokens", "decoder_input_tokens",
            "decoder_target_tokens")}
  model = T5(config)
  single = model.apply({"params": params}, **batch)

  mesh = partitioning.create_mesh((4, 2))
  rules = partitioning.logical_axis_rules()
  _, sharded_params = load_pretrained(HF_T5_1_1, config=config, mesh=mesh)
  sharded_batch = partitioning.shard_batch(batch, mesh)

  forward = jax.jit(lambda p, b: model.apply({"params": p}, **b))
  with partitioning.mesh_context(mesh, rules):
    logits = forward(sharded_params, sharded_batch)
  assert logits.sharding.spec[0] == "data"
  real = batch["decoder_target_tokens"] > 0
  # Sharded matmuls add partial sums in another order, and XLA's CPU
  # kernels differ by instruction set: measured 5.5e-6 on logits up to 16
  # (a few float32 ULPs). 4e-6 of the largest logit holds on any x86-64 CPU.
  np.testing.assert_allclose(np.asarray(logits)[real],
                             np.asarray(single)[real],
                             atol=4e-6 * np.abs(np.asarray(single)).max())
