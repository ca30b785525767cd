"""Tests of the lazy T5X checkpoint readers (legacy msgpack+TensorStore, orbax).

Checkpoints are written by tests/t5x_fixtures.py in T5X's on-disk formats from
a few-KB fake parameter dict with T5X names; no model is built. Frozen weights
must come back bit for bit, so every comparison is exact.
"""

import os
import shutil

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prompt_tuning.pretrained import t5x
from tests import t5x_fixtures


def _fake_params():
  rng = np.random.default_rng(0)
  shapes = {
      "token_embedder/embedding": (11, 6),
      "encoder/relpos_bias/rel_embedding": (2, 4),
      "encoder/layers_0/pre_attention_layer_norm/scale": (6,),
      "encoder/layers_0/attention/key/kernel": (6, 4),
      "encoder/layers_0/attention/out/kernel": (4, 6),
      "encoder/encoder_norm/scale": (6,),
      "decoder/layers_0/mlp/wi_0/kernel": (6, 5),
      "decoder/logits_dense/kernel": (6, 11),
  }
  return {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in shapes.items()}


PARAMS = _fake_params()


def _assert_loads_exactly(loaders, expected):
  assert sorted(loaders) == sorted(expected)
  for name, want in expected.items():
    got = loaders[name]()
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype, name
    assert got.shape == want.shape, name
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def _zarr_dirs(ckpt_dir):
  return sorted(d for d in os.listdir(ckpt_dir)
                if os.path.isfile(os.path.join(ckpt_dir, d, ".zarray")))


# ------------------------------------------------------------------- legacy


@pytest.mark.parametrize("style", ["current", "flaxformer"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_legacy_round_trip(tmp_path, style, dtype):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(
      str(tmp_path), 7, PARAMS, style=style, dtype=dtype)
  assert t5x.is_t5x_legacy(ckpt_dir)
  assert not t5x.is_t5x_orbax(ckpt_dir)
  want_dtype = ml_dtypes.bfloat16 if dtype else np.float32
  expected = {k: v.astype(want_dtype) for k, v in PARAMS.items()}
  _assert_loads_exactly(t5x.read_t5x_legacy(ckpt_dir), expected)


def test_fixture_writes_t5x_legacy_format(tmp_path):
  """The fixture is only useful if it matches T5X; check what it wrote."""
  current = t5x_fixtures.write_t5x_legacy(str(tmp_path / "a"), 1, PARAMS)
  old = t5x_fixtures.write_t5x_legacy(
      str(tmp_path / "b"), 1, PARAMS, style="flaxformer", dtype="bfloat16")
  contents = t5x_fixtures.read_checkpoint_file(current)
  assert contents["version"] == 3
  spec = contents["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"]
  assert spec["kvstore"] == {"driver": "file",
                             "path": "target.encoder.encoder_norm.scale/"}
  assert spec["dtype"] == "float32"
  assert spec["metadata"]["compressor"] == {"id": "gzip", "level": 1}
  state = contents["optimizer"]["state"]
  assert state["step"].code == 1
  assert state["param_states"]["decoder"]["logits_dense"]["kernel"][
      "v_row"].code == 1
  # Every target leaf and the unfactored 'v' statistics are zarr arrays.
  dirs = _zarr_dirs(current)
  assert len([d for d in dirs if d.startswith("target.")]) == len(PARAMS)
  assert "state.param_states.encoder.encoder_norm.scale.v" in dirs
  # Edge chunks are padded: chunks do not divide the shape.
  meta = contents["optimizer"]["target"]["token_embedder"]["embedding"][
      "metadata"]
  assert all(s % c for s, c in zip(meta["shape"], meta["chunks"]))

  contents = t5x_fixtures.read_checkpoint_file(old)
  target = contents["optimizer"]["target"]
  assert target["encoder"]["encoder_norm"]["scale"].code == 1
  assert target["encoder"]["relpos_bias"]["rel_embedding"].code == 1
  spec = target["encoder"]["layers_0"]["attention"]["key"]["kernel"]
  assert spec["kvstore"] == {
      "driver": "gfile", "path": "target.encoder.layers_0.attention.key.kernel"}
  assert "dtype" not in spec and spec["metadata"]["dtype"] == "bfloat16"
  assert not any(d.startswith("state.") for d in _zarr_dirs(old))
  with open(os.path.join(old, "target.token_embedder.embedding",
                         ".zarray")) as f:
    assert '"bfloat16"' in f.read()


def test_flaxformer_float32_zarr_dtype(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(
      str(tmp_path), 1, PARAMS, style="flaxformer")
  spec = t5x_fixtures.read_checkpoint_file(ckpt_dir)["optimizer"]["target"][
      "token_embedder"]["embedding"]
  assert spec["metadata"]["dtype"] == "<f4"


def test_find_accepts_every_path_form(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path), 42, PARAMS)
  for path in (str(tmp_path), str(tmp_path) + "/", ckpt_dir, ckpt_dir + "/",
               os.path.join(ckpt_dir, "checkpoint")):
    found = t5x.find_t5x_checkpoint(path)
    assert found == ckpt_dir, path
    _assert_loads_exactly(t5x.read_t5x_legacy(found), PARAMS)


def test_find_picks_newest_complete_step(tmp_path):
  model_dir = str(tmp_path)
  t5x_fixtures.write_t5x_legacy(model_dir, 9, PARAMS)  # 9 < 10 as an integer
  newest = t5x_fixtures.write_t5x_legacy(model_dir, 10, PARAMS)
  t5x_fixtures.write_t5x_legacy(model_dir, 2, PARAMS)
  # Decoys: an unfinished write, an empty step dir, odd names, a plain file.
  shutil.copytree(newest, os.path.join(model_dir, "checkpoint_50.tmp-1234"))
  os.makedirs(os.path.join(model_dir, "checkpoint_60"))
  shutil.copytree(newest, os.path.join(model_dir, "checkpoint_7x"))
  with open(os.path.join(model_dir, "checkpoint_70"), "w") as f:
    f.write("not a dir")
  assert t5x.find_t5x_checkpoint(model_dir) == newest


def test_find_mixes_legacy_and_orbax_steps(tmp_path):
  t5x_fixtures.write_t5x_legacy(str(tmp_path), 100, PARAMS)
  newest = t5x_fixtures.write_t5x_orbax(str(tmp_path), 200, PARAMS)
  assert t5x.find_t5x_checkpoint(str(tmp_path)) == newest


def test_legacy_reads_lazily(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path), 3, PARAMS)
  removed = "decoder/logits_dense/kernel"
  removed_dir = os.path.join(ckpt_dir, "target.decoder.logits_dense.kernel")
  loaders = t5x.read_t5x_legacy(ckpt_dir)
  # Removing arrays after listing them, and all optimizer state, only breaks
  # the loader of the removed parameter.
  shutil.rmtree(removed_dir)
  for name in _zarr_dirs(ckpt_dir):
    if name.startswith("state."):
      shutil.rmtree(os.path.join(ckpt_dir, name))
  expected = {k: v for k, v in PARAMS.items() if k != removed}
  _assert_loads_exactly({k: loaders[k] for k in expected}, expected)
  with pytest.raises(FileNotFoundError,
                     match=f"parameter '{removed}' is missing: no "
                     f"{removed_dir}/.zarray"):
    loaders[removed]()
  # Listing never opens arrays, so it works on the damaged checkpoint too.
  assert sorted(t5x.read_t5x_legacy(ckpt_dir)) == sorted(PARAMS)


def test_legacy_ignores_spec_path_and_driver(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path / "a"), 3, PARAMS)
  contents = t5x_fixtures.read_checkpoint_file(ckpt_dir)
  spec = contents["optimizer"]["target"]["token_embedder"]["embedding"]
  spec["kvstore"] = {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                     "path": "/elsewhere/checkpoint_3/target.foo/"}
  t5x_fixtures.write_checkpoint_file(ckpt_dir, contents)
  # A moved checkpoint reads from its new place.
  moved = str(tmp_path / "moved")
  shutil.move(str(tmp_path / "a"), moved)
  found = t5x.find_t5x_checkpoint(moved)
  _assert_loads_exactly(t5x.read_t5x_legacy(found), PARAMS)


def test_legacy_reads_flax_chunked_inline_array(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path), 3, PARAMS)
  contents = t5x_fixtures.read_checkpoint_file(ckpt_dir)
  flat = PARAMS["token_embedder/embedding"].reshape(-1)
  contents["optimizer"]["target"]["token_embedder"]["embedding"] = {
      "__msgpack_chunked_array__": True,
      "shape": {"0": 11, "1": 6},
      "chunks": {"0": flat[:40], "1": flat[40:]},
  }
  t5x_fixtures.write_checkpoint_file(ckpt_dir, contents)
  _assert_loads_exactly(t5x.read_t5x_legacy(ckpt_dir), PARAMS)


# -------------------------------------------------------------------- orbax


@pytest.mark.parametrize("layout,use_ocdbt", [("state", True),
                                              ("state", False),
                                              ("root", True)])
def test_orbax_round_trip(tmp_path, layout, use_ocdbt):
  ckpt_dir = t5x_fixtures.write_t5x_orbax(
      str(tmp_path), 5, PARAMS, layout=layout, use_ocdbt=use_ocdbt)
  assert t5x.is_t5x_orbax(ckpt_dir)
  assert not t5x.is_t5x_legacy(ckpt_dir)
  assert t5x.find_t5x_checkpoint(str(tmp_path)) == ckpt_dir
  _assert_loads_exactly(t5x.read_t5x_orbax(ckpt_dir), PARAMS)


def test_relative_paths(tmp_path, monkeypatch):
  t5x_fixtures.write_t5x_legacy(str(tmp_path / "legacy"), 1, PARAMS)
  t5x_fixtures.write_t5x_orbax(str(tmp_path / "orbax"), 1, PARAMS)
  monkeypatch.chdir(tmp_path)
  _assert_loads_exactly(
      t5x.read_t5x_legacy(t5x.find_t5x_checkpoint("legacy")), PARAMS)
  _assert_loads_exactly(
      t5x.read_t5x_orbax(t5x.find_t5x_checkpoint("orbax")), PARAMS)


def test_orbax_bfloat16_and_item_dir(tmp_path):
  params = {k: v.astype(ml_dtypes.bfloat16) for k, v in PARAMS.items()}
  ckpt_dir = t5x_fixtures.write_t5x_orbax(str(tmp_path), 5, params)
  # The item directory itself is accepted too.
  item_dir = os.path.join(ckpt_dir, "state")
  assert t5x.find_t5x_checkpoint(item_dir) == item_dir
  _assert_loads_exactly(t5x.read_t5x_orbax(item_dir), params)


# ------------------------------------------------------------------- errors


def test_find_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope' does not exist; pass"):
    t5x.find_t5x_checkpoint(str(tmp_path / "nope"))
  os.makedirs(tmp_path / "checkpoint_4")
  with pytest.raises(FileNotFoundError, match="No T5X checkpoint in .*; pass"):
    t5x.find_t5x_checkpoint(str(tmp_path))
  (tmp_path / "model.msgpack").write_bytes(b"")
  with pytest.raises(ValueError, match="is a file but not a T5X `checkpoint`"):
    t5x.find_t5x_checkpoint(str(tmp_path / "model.msgpack"))


def test_legacy_missing_msgpack(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match="No T5X `checkpoint` msgpack file in"):
    t5x.read_t5x_legacy(str(tmp_path))


def test_legacy_corrupt_msgpack(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path), 3, PARAMS)
  path = os.path.join(ckpt_dir, "checkpoint")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match="checkpoint is not valid msgpack"):
    t5x.read_t5x_legacy(ckpt_dir)


@pytest.mark.parametrize("contents,match", [
    ([1, 2], r"not a T5X checkpoint: no 'version' field \(top-level keys \[\]"),
    ({"optimizer": {}}, r"no 'version' field \(top-level keys \['optimizer'\]"),
    ({"target": {}, "state": {}}, "looks like an orbax checkpoint"),
    ({"version": 99, "optimizer": {}}, "version 99; this reader knows"),
    ({"version": 3, "optimizer": {"state": {}}}, "no 'optimizer/target'"),
    ({"version": 3, "optimizer": {"target": {}}}, "empty 'optimizer/target'"),
    ({"version": 3, "optimizer": {"target": {"a": {"b": "text"}}}},
     "Parameter 'a/b' .* unsupported value of type str"),
    ({"version": 3, "optimizer": {"target": {"a": {
        "driver": "n5", "kvstore": {"driver": "file", "path": "target.a/"}}}}},
     "Parameter 'a' uses TensorStore driver 'n5'"),
])
def test_legacy_rejects_non_t5x_msgpack(tmp_path, contents, match):
  t5x_fixtures.write_checkpoint_file(str(tmp_path), contents)
  with pytest.raises(ValueError, match=match):
    t5x.read_t5x_legacy(str(tmp_path))


def test_legacy_corrupt_inline_array(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(
      str(tmp_path), 3, PARAMS, style="flaxformer")
  contents = t5x_fixtures.read_checkpoint_file(ckpt_dir)
  norm = contents["optimizer"]["target"]["encoder"]["encoder_norm"]
  norm["scale"] = type(norm["scale"])(1, norm["scale"].data[:-3])
  t5x_fixtures.write_checkpoint_file(ckpt_dir, contents)
  loaders = t5x.read_t5x_legacy(ckpt_dir)
  with pytest.raises(ValueError, match="Inline array of parameter "
                     "'encoder/encoder_norm/scale' is corrupt"):
    loaders["encoder/encoder_norm/scale"]()


def _edit_spec(ckpt_dir, edit):
  contents = t5x_fixtures.read_checkpoint_file(ckpt_dir)
  edit(contents["optimizer"]["target"]["token_embedder"]["embedding"])
  t5x_fixtures.write_checkpoint_file(ckpt_dir, contents)
  return t5x.read_t5x_legacy(ckpt_dir)["token_embedder/embedding"]


def test_legacy_rejects_uint16_bfloat16(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path), 3, PARAMS)
  loader = _edit_spec(ckpt_dir, lambda s: s.update(dtype="uint16"))
  with pytest.raises(ValueError, match="'token_embedder/embedding' .* "
                     "bfloat16 stored as uint16"):
    loader()


def test_legacy_rejects_shape_mismatch(tmp_path):
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path), 3, PARAMS)
  loader = _edit_spec(ckpt_dir, lambda s: s["metadata"].update(shape=[6, 11]))
  with pytest.raises(ValueError, match=r"holds shape \(11, 6\) but the "
                     r"`checkpoint` file says \(6, 11\)"):
    loader()


def test_orbax_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No orbax checkpoint in"):
    t5x.read_t5x_orbax(str(tmp_path))
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / "checkpoint_1"),
                      {"params": {"w": np.ones(3, np.float32)}})
  with pytest.raises(ValueError, match=r"has no 'target' parameter tree "
                     r"\(top-level keys \['params'\]\)"):
    t5x.read_t5x_orbax(str(tmp_path / "checkpoint_1"))


def test_remote_paths():
  # Reading from a GCS server: tests/gcs_test.py.
  assert t5x._kvstore("gs://bucket/run/checkpoint_5/target.x") == {
      "driver": "gcs", "bucket": "bucket",
      "path": "run/checkpoint_5/target.x/"}
  with pytest.raises(ValueError, match="only local, gs:// and s3://"):
    t5x._kvstore("hdfs://cluster/x")
