"""Tests of the Hugging Face T5 reader (prompt_tuning.pretrained.hf).

The committed fixtures under tests/fixtures/hf/ were written by transformers
4.57 (tests/fixtures/make_hf_fixtures.py); these tests need numpy only. Raw
tensors are read back here with an independent few-line safetensors parser,
and sharded, bfloat16, transformers-5.x-style and broken checkpoints are
written into tmp_path by a small safetensors writer below.
"""

import json
import os
import shutil
import struct

import ml_dtypes
import numpy as np
import pytest

from prompt_tuning.pretrained import hf

# The committed fixtures live in tests/fixtures/, one folder up.
FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "fixtures", "hf")
UNTIED = os.path.join(FIXTURES, "t5_1_1_style")
TIED = os.path.join(FIXTURES, "t5_1_0_style")

_DTYPE_NAMES = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype("int64"): "I64",
}


def write_safetensors(path, tensors):
  """Writes {name: array} as a safetensors file (8-byte-aligned header)."""
  header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, array in tensors.items():
    data = np.ascontiguousarray(array).tobytes()
    header[name] = {"dtype": _DTYPE_NAMES[array.dtype],
                    "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def read_raw(path):
  """Independent safetensors reader (float32 only): {name: [HF layout]}."""
  with open(path, "rb") as f:
    data = f.read()
  (length,) = struct.unpack("<Q", data[:8])
  header = json.loads(data[8:8 + length])
  header.pop("__metadata__", None)
  out = {}
  for name, info in header.items():
    assert info["dtype"] == "F32"
    begin, end = info["data_offsets"]
    buf = data[8 + length + begin:8 + length + end]
    out[name] = np.frombuffer(buf, "<f4").reshape(info["shape"])
  return out


def copy_fixture(src, tmp_path, name="ckpt"):
  dst = tmp_path / name
  shutil.copytree(src, dst)
  return dst


def rewrite_config(ckpt, **changes):
  """Edits config.json; a value of None deletes the key."""
  with open(ckpt / "config.json") as f:
    config = json.load(f)
  for key, value in changes.items():
    if value is None:
      config.pop(key, None)
    else:
      config[key] = value
  with open(ckpt / "config.json", "w") as f:
    json.dump(config, f)


def expected_names(enc_layers, dec_layers, gated, untied):
  """The T5X names a checkpoint must produce, spelled out independently."""
  wi = ["wi_0", "wi_1"] if gated else ["wi"]
  names = {"token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
           "encoder/encoder_norm/scale", "decoder/relpos_bias/rel_embedding",
           "decoder/decoder_norm/scale"}
  for i in range(enc_layers):
    p = f"encoder/layers_{i}/"
    names |= {p + "pre_attention_layer_norm/scale",
              p + "pre_mlp_layer_norm/scale", p + "mlp/wo/kernel"}
    names |= {p + f"attention/{x}/kernel"
              for x in ("query", "key", "value", "out")}
    names |= {p + f"mlp/{w}/kernel" for w in wi}
  for i in range(dec_layers):
    p = f"decoder/layers_{i}/"
    names |= {p + "pre_self_attention_layer_norm/scale",
              p + "pre_cross_attention_layer_norm/scale",
              p + "pre_mlp_layer_norm/scale", p + "mlp/wo/kernel"}
    names |= {p + f"{a}/{x}/kernel"
              for a in ("self_attention", "encoder_decoder_attention")
              for x in ("query", "key", "value", "out")}
    names |= {p + f"mlp/{w}/kernel" for w in wi}
  if untied:
    names.add("decoder/logits_dense/kernel")
  return names


# --- fixtures as written by transformers 4.x --------------------------------


def test_is_hf_checkpoint(tmp_path):
  assert hf.is_hf_checkpoint(UNTIED)
  assert hf.is_hf_checkpoint(TIED)
  assert not hf.is_hf_checkpoint(str(tmp_path))
  assert not hf.is_hf_checkpoint(os.path.join(UNTIED, "config.json"))
  (tmp_path / "config.json").write_text("{}")
  assert not hf.is_hf_checkpoint(str(tmp_path))
  (tmp_path / "model.safetensors.index.json").write_text("{}")
  assert hf.is_hf_checkpoint(str(tmp_path))


def test_untied_config():
  config, _ = hf.read_hf(UNTIED)
  assert (config.vocab_size, config.emb_dim, config.num_heads,
          config.head_dim, config.mlp_dim) == (64, 16, 3, 6, 24)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert config.mlp_activations == ("gelu", "linear")
  assert not config.logits_via_embedding
  assert config.relative_attention_num_buckets == 8
  assert config.relative_attention_max_distance == 16
  assert config.dropout_rate == pytest.approx(0.1)
  # Compute dtypes are the caller's choice, not the checkpoint's.
  assert (config.dtype, config.param_dtype) == ("bfloat16", "float32")


def test_tied_config():
  config, _ = hf.read_hf(TIED)
  assert (config.vocab_size, config.emb_dim, config.num_heads,
          config.head_dim, config.mlp_dim) == (48, 20, 2, 8, 28)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 2)
  assert config.mlp_activations == ("relu",)
  # 4.x config.json omits tie_word_embeddings when it is the default (true).
  with open(os.path.join(TIED, "config.json")) as f:
    assert "tie_word_embeddings" not in json.load(f)
  assert config.logits_via_embedding
  assert config.relative_attention_num_buckets == 32
  assert config.relative_attention_max_distance == 128


@pytest.mark.parametrize("path,gated,untied", [(UNTIED, True, True),
                                               (TIED, False, False)])
def test_names_and_shapes(path, gated, untied):
  config, loaders = hf.read_hf(path)
  assert set(loaders) == expected_names(config.num_encoder_layers,
                                        config.num_decoder_layers, gated,
                                        untied)
  d, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
  qkv = config.num_heads * config.head_dim
  buckets = config.relative_attention_num_buckets
  for name, load in loaders.items():
    array = load()
    assert array.dtype == np.float32, name  # stored dtype, not cast
    if name == "token_embedder/embedding":
      shape = (v, d)
    elif name == "decoder/logits_dense/kernel":
      shape = (d, v)
    elif name.endswith("rel_embedding"):
      shape = (config.num_heads, buckets)
    elif name.endswith("/scale"):
      shape = (d,)
    elif name.endswith("out/kernel"):
      shape = (qkv, d)
    elif "attention/" in name:
      shape = (d, qkv)
    elif name.endswith("wo/kernel"):
      shape = (f, d)
    else:
      shape = (d, f)
    assert array.shape == shape, name


def test_values_are_transposed_into_our_layout():
  _, loaders = hf.read_hf(UNTIED)
  raw = read_raw(os.path.join(UNTIED, "model.safetensors"))
  pairs = {
      "token_embedder/embedding": ("shared.weight", False),
      "decoder/logits_dense/kernel": ("lm_head.weight", True),
      "encoder/relpos_bias/rel_embedding":
          ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias"
           ".weight", True),
      "decoder/relpos_bias/rel_embedding":
          ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias"
           ".weight", True),
      "encoder/layers_1/attention/query/kernel":
          ("encoder.block.1.layer.0.SelfAttention.q.weight", True),
      "encoder/layers_0/attention/out/kernel":
          ("encoder.block.0.layer.0.SelfAttention.o.weight", True),
      "decoder/layers_2/encoder_decoder_attention/key/kernel":
          ("decoder.block.2.layer.1.EncDecAttention.k.weight", True),
      "decoder/layers_1/pre_cross_attention_layer_norm/scale":
          ("decoder.block.1.layer.1.layer_norm.weight", False),
      "decoder/layers_2/mlp/wi_1/kernel":
          ("decoder.block.2.layer.2.DenseReluDense.wi_1.weight", True),
      "decoder/layers_0/pre_mlp_layer_norm/scale":
          ("decoder.block.0.layer.2.layer_norm.weight", False),
      "encoder/encoder_norm/scale": ("encoder.final_layer_norm.weight", False),
  }
  for ours, (theirs, transpose) in pairs.items():
    want = raw[theirs].T if transpose else raw[theirs]
    np.testing.assert_array_equal(loaders[ours](), want, err_msg=ours)
  # Spot values, so that a reader and this test cannot share one mistake.
  q = raw["encoder.block.1.layer.0.SelfAttention.q.weight"]  # [H*k, d]
  assert loaders["encoder/layers_1/attention/query/kernel"]()[3, 17] == q[17, 3]
  bias = raw["encoder.block.0.layer.0.SelfAttention.relative_attention_bias"
             ".weight"]  # [buckets, H]
  assert loaders["encoder/relpos_bias/rel_embedding"]()[2, 5] == bias[5, 2]
  # Layer norms were randomised by the fixture script: no two are equal.
  norms = [loaders[n]() for n in loaders if n.endswith("/scale")]
  assert len({a.tobytes() for a in norms}) == len(norms)


def test_tied_checkpoint_uses_embedding_not_duplicates():
  _, loaders = hf.read_hf(TIED)
  raw = read_raw(os.path.join(TIED, "model.safetensors"))
  assert "lm_head.weight" not in raw
  np.testing.assert_array_equal(loaders["token_embedder/embedding"](),
                                raw["shared.weight"])
  np.testing.assert_array_equal(
      loaders["encoder/layers_0/mlp/wi/kernel"](),
      raw["encoder.block.0.layer.1.DenseReluDense.wi.weight"].T)


def test_embed_tokens_duplicates_are_ignored(tmp_path):
  ckpt = copy_fixture(TIED, tmp_path)
  raw = read_raw(ckpt / "model.safetensors")
  raw["encoder.embed_tokens.weight"] = raw["shared.weight"]
  raw["decoder.embed_tokens.weight"] = raw["shared.weight"]
  write_safetensors(ckpt / "model.safetensors", raw)
  _, loaders = hf.read_hf(str(ckpt))
  _, want = hf.read_hf(TIED)
  assert set(loaders) == set(want)


def test_expected_npz_layout():
  for path in (UNTIED, TIED):
    config, _ = hf.read_hf(path)
    e = np.load(os.path.join(path, "expected.npz"))
    assert e["encoder_input_tokens"].shape == (2, 7)
    assert e["decoder_target_tokens"].shape == (2, 5)
    assert e["encoder_input_tokens"].dtype == np.int32
    np.testing.assert_array_equal(e["decoder_input_tokens"][:, 0], 0)
    np.testing.assert_array_equal(e["decoder_input_tokens"][:, 1:],
                                  e["decoder_target_tokens"][:, :-1])
    assert e["encoder_input_tokens"][1, -1] == 0
    assert e["decoder_target_tokens"][1, -1] == 0
    assert e["logits"].shape == (2, 5, config.vocab_size)
    assert e["logits"].dtype == np.float32
    assert e["logits"].std() > 1.0  # far from a trivial all-zero forward


# --- other storage layouts --------------------------------------------------


def test_sharded_index_reads_the_same(tmp_path):
  ckpt = tmp_path / "sharded"
  ckpt.mkdir()
  shutil.copy(os.path.join(UNTIED, "config.json"), ckpt)
  raw = read_raw(os.path.join(UNTIED, "model.safetensors"))
  names = sorted(raw)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for shard, shard_names in shards.items():
    write_safetensors(ckpt / shard, {n: raw[n] for n in shard_names})
    weight_map.update({n: shard for n in shard_names})
  (ckpt / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": 0}, "weight_map": weight_map}))

  assert hf.is_hf_checkpoint(str(ckpt))
  config, loaders = hf.read_hf(str(ckpt))
  want_config, want = hf.read_hf(UNTIED)
  assert config == want_config
  assert set(loaders) == set(want)
  for name in want:
    np.testing.assert_array_equal(loaders[name](), want[name](), err_msg=name)


def test_index_naming_missing_shard(tmp_path):
  ckpt = tmp_path / "sharded"
  ckpt.mkdir()
  shutil.copy(os.path.join(UNTIED, "config.json"), ckpt)
  (ckpt / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"shared.weight": "model-00001-of-00002.safetensors"}}))
  with pytest.raises(ValueError, match="model-00001-of-00002.safetensors.*"
                     "does not exist"):
    hf.read_hf(str(ckpt))


def test_bfloat16_and_other_dtypes(tmp_path):
  rng = np.random.default_rng(0)
  values = rng.normal(size=(3, 5)).astype(np.float32)
  tensors = {"bf16": values.astype(ml_dtypes.bfloat16),
             "f16": values.astype(np.float16),
             "f64": values.astype(np.float64),
             "f32": values}
  write_safetensors(tmp_path / "t.safetensors", tensors)
  header = hf.read_safetensors_header(str(tmp_path / "t.safetensors"))
  assert header["bf16"].dtype == "BF16"
  for name, want in tensors.items():
    got = hf.load_tensor(header[name])
    assert got.dtype == want.dtype, name
    np.testing.assert_array_equal(got, want)
  # Exact bit patterns: 1.0 is 0x3F80 in bfloat16.
  write_safetensors(tmp_path / "one.safetensors",
                    {"x": np.ones((2,), ml_dtypes.bfloat16)})
  header = hf.read_safetensors_header(str(tmp_path / "one.safetensors"))
  assert hf.load_tensor(header["x"]).view(np.uint16).tolist() == [0x3F80] * 2


def test_bfloat16_checkpoint(tmp_path):
  ckpt = copy_fixture(UNTIED, tmp_path)
  raw = read_raw(ckpt / "model.safetensors")
  write_safetensors(ckpt / "model.safetensors",
                    {n: a.astype(ml_dtypes.bfloat16) for n, a in raw.items()})
  _, loaders = hf.read_hf(str(ckpt))
  kernel = loaders["decoder/layers_1/self_attention/value/kernel"]()
  assert kernel.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(
      kernel, raw["decoder.block.1.layer.0.SelfAttention.v.weight"].T.astype(
          ml_dtypes.bfloat16))


def test_unsupported_dtype_fails_on_load(tmp_path):
  write_safetensors(tmp_path / "t.safetensors",
                    {"ids": np.arange(4, dtype=np.int64)})
  header = hf.read_safetensors_header(str(tmp_path / "t.safetensors"))
  with pytest.raises(ValueError, match="'ids' has dtype I64"):
    hf.load_tensor(header["ids"])


# --- the transformers 5.x config dialect ------------------------------------


def v5_config(ckpt, scale):
  """What transformers 5.x writes: tie_word_embeddings always true, plus the
  scale in scale_decoder_outputs (configuration_t5.py, T5Config.__post_init__).
  """
  rewrite_config(ckpt, tie_word_embeddings=True, scale_decoder_outputs=scale,
                 transformers_version="5.24.0")


def test_v5_untied_unscaled(tmp_path):
  ckpt = copy_fixture(UNTIED, tmp_path)
  v5_config(ckpt, scale=False)
  config, loaders = hf.read_hf(str(ckpt))
  # lm_head in the file means untied, whatever tie_word_embeddings says.
  assert not config.logits_via_embedding
  assert "decoder/logits_dense/kernel" in loaders


def test_v5_tied_scaled(tmp_path):
  ckpt = copy_fixture(TIED, tmp_path)
  v5_config(ckpt, scale=True)
  config, loaders = hf.read_hf(str(ckpt))
  assert config.logits_via_embedding
  assert "decoder/logits_dense/kernel" not in loaders


def test_v5_untied_but_scaled_is_refused(tmp_path):
  ckpt = copy_fixture(UNTIED, tmp_path)
  v5_config(ckpt, scale=True)
  with pytest.raises(ValueError, match="lm_head.weight.*scale_decoder_outputs"
                     "=true.*set \"scale_decoder_outputs\": false"):
    hf.read_hf(str(ckpt))


def test_v5_unscaled_without_lm_head_is_refused(tmp_path):
  ckpt = copy_fixture(TIED, tmp_path)
  v5_config(ckpt, scale=False)
  with pytest.raises(ValueError, match="scale_decoder_outputs=false.*no "
                     "lm_head.weight"):
    hf.read_hf(str(ckpt))


# --- config_from_hf ---------------------------------------------------------

_BASE = dict(vocab_size=32, d_model=8, num_heads=2, d_kv=4, d_ff=16,
             num_layers=3)


@pytest.mark.parametrize("proj,want", [
    ("relu", ("relu",)),
    ("gated-gelu", ("gelu", "linear")),
    ("gated-relu", ("relu", "linear")),
    ("gated-silu", ("silu", "linear")),
    ("gelu_new", ("gelu",)),
])
def test_activations(proj, want):
  config = hf.config_from_hf(dict(_BASE, feed_forward_proj=proj),
                             has_lm_head=False)
  assert config.mlp_activations == want


def test_defaults_for_absent_keys():
  config = hf.config_from_hf(_BASE, has_lm_head=False)
  assert config.num_decoder_layers == 3  # HF: "default = symmetry"
  assert config.relative_attention_num_buckets == 32
  assert config.relative_attention_max_distance == 128
  assert config.mlp_activations == ("relu",)
  assert config.logits_via_embedding  # no tie_word_embeddings key: tied
  config = hf.config_from_hf(dict(_BASE, num_decoder_layers=None),
                             has_lm_head=False)
  assert config.num_decoder_layers == 3


def test_v4_tied_with_stray_lm_head_stays_tied():
  # transformers 4.x's tie_weights() replaces lm_head by shared on load.
  config = hf.config_from_hf(dict(_BASE, tie_word_embeddings=True),
                             has_lm_head=True)
  assert config.logits_via_embedding


def test_exact_gelu_is_refused():
  with pytest.raises(ValueError, match="activation 'gelu'.*no exact "
                     "flax.linen equivalent"):
    hf.config_from_hf(dict(_BASE, feed_forward_proj="gelu"), has_lm_head=False)


@pytest.mark.parametrize("proj", ["gated-gelu-new", "fancy-relu"])
def test_malformed_feed_forward_proj(proj):
  with pytest.raises(ValueError, match="is not 'ACT' or 'gated-ACT'"):
    hf.config_from_hf(dict(_BASE, feed_forward_proj=proj), has_lm_head=False)


def test_other_model_type_is_refused():
  with pytest.raises(ValueError, match="model_type 'umt5' is not T5"):
    hf.config_from_hf(dict(_BASE, model_type="umt5"), has_lm_head=False)


def test_missing_shape_key_is_refused():
  config = dict(_BASE)
  del config["d_kv"]
  with pytest.raises(ValueError, match="lacks 'd_kv'"):
    hf.config_from_hf(config, has_lm_head=False)


def test_other_layer_norm_epsilon_is_refused():
  with pytest.raises(ValueError, match="layer_norm_epsilon=1e-05"):
    hf.config_from_hf(dict(_BASE, layer_norm_epsilon=1e-5), has_lm_head=False)


# --- errors -----------------------------------------------------------------


def test_missing_config(tmp_path):
  shutil.copy(os.path.join(TIED, "model.safetensors"), tmp_path)
  with pytest.raises(ValueError, match=f"No config.json in {tmp_path}"):
    hf.read_hf(str(tmp_path))


def test_pickle_only_checkpoint_is_refused(tmp_path):
  shutil.copy(os.path.join(TIED, "config.json"), tmp_path)
  # Not a real pickle: the reader must refuse by name, never open it.
  (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(ValueError, match="only pytorch_model.bin.*never loads.*"
                     "safe_serialization=True"):
    hf.read_hf(str(tmp_path))


def test_no_weights(tmp_path):
  shutil.copy(os.path.join(TIED, "config.json"), tmp_path)
  with pytest.raises(ValueError, match="No model.safetensors or "
                     "model.safetensors.index.json in"):
    hf.read_hf(str(tmp_path))


def test_missing_parameter(tmp_path):
  ckpt = copy_fixture(UNTIED, tmp_path)
  raw = read_raw(ckpt / "model.safetensors")
  del raw["decoder.block.2.layer.1.EncDecAttention.o.weight"]
  write_safetensors(ckpt / "model.safetensors", raw)
  with pytest.raises(ValueError, match=(
      "Parameter decoder/layers_2/encoder_decoder_attention/out/kernel "
      r"\(Hugging Face decoder.block.2.layer.1.EncDecAttention.o.weight\) "
      f"is missing from {ckpt}/model.safetensors")):
    hf.read_hf(str(ckpt))


def test_untied_config_without_lm_head(tmp_path):
  ckpt = copy_fixture(UNTIED, tmp_path)
  raw = read_raw(ckpt / "model.safetensors")
  del raw["lm_head.weight"]
  write_safetensors(ckpt / "model.safetensors", raw)
  with pytest.raises(ValueError, match="tie_word_embeddings=false.*no "
                     "lm_head.weight"):
    hf.read_hf(str(ckpt))


def test_shape_mismatch(tmp_path):
  ckpt = copy_fixture(UNTIED, tmp_path)
  rewrite_config(ckpt, d_kv=4)
  with pytest.raises(ValueError, match=r"encoder/layers_0/attention/query/"
                     r"kernel.*has shape \[18, 16\] but config.json implies "
                     r"\[12, 16\]"):
    hf.read_hf(str(ckpt))


_HEADER = json.dumps({"x": {"dtype": "F32", "shape": [4],
                             "data_offsets": [0, 16]}}).encode()


# The messages are the safetensors library's (0.8), after our preamble.
@pytest.mark.parametrize("data,message", [
    (b"\x01\x02", "header too small"),
    (struct.pack("<Q", 1 << 40) + b"{}", "header too large"),
    (struct.pack("<Q", 4) + b"\xff\xfe{[", "invalid UTF-8 in header"),
    (struct.pack("<Q", 2) + b"[]", "invalid JSON in header"),
    # Data region 8 bytes long, offsets claim 16.
    (struct.pack("<Q", len(_HEADER)) + _HEADER + b"\0" * 8,
     "incomplete metadata, file not fully covered"),
    (struct.pack("<Q", len(_HEADER)) + _HEADER.replace(b"[4]", b"[3]") +
     b"\0" * 16, "invalid shape, data type, or offset for tensor"),
], ids=["short", "huge", "not_json", "not_object", "past_end", "wrong_size"])
def test_corrupt_header(tmp_path, data, message):
  ckpt = copy_fixture(TIED, tmp_path)
  (ckpt / "model.safetensors").write_bytes(data)
  with pytest.raises(ValueError, match=f"Corrupt safetensors header in "
                     f"{ckpt}/model.safetensors: {message}"):
    hf.read_hf(str(ckpt))


def test_truncated_data_fails_on_load(tmp_path):
  ckpt = copy_fixture(TIED, tmp_path)
  data = (ckpt / "model.safetensors").read_bytes()
  header = hf.read_safetensors_header(str(ckpt / "model.safetensors"))
  # Headers are checked against the file size when opened...
  (ckpt / "model.safetensors").write_bytes(data[:-4])
  with pytest.raises(ValueError, match="Corrupt safetensors header"):
    hf.read_hf(str(ckpt))
  # ...and a loader whose file shrank afterwards fails instead of returning
  # a short array.
  entry = header["shared.weight"]
  with pytest.raises(ValueError, match="cannot read 'shared.weight': the "
                     "file is truncated or changed"):
    hf.load_tensor(entry)


def test_loaders_read_at_call_time(tmp_path):
  ckpt = copy_fixture(TIED, tmp_path)
  file = ckpt / "model.safetensors"
  _, loaders = hf.read_hf(str(ckpt))
  # Overwrite the embedding's bytes in place after read_hf returned: the
  # loader must see the new values, i.e. read_hf kept no tensor data. The
  # offset comes from the header, parsed here independently.
  data = bytearray(file.read_bytes())
  (length,) = struct.unpack("<Q", bytes(data[:8]))
  begin, end = json.loads(bytes(data[8:8 + length]))["shared.weight"][
      "data_offsets"]
  offset = 8 + length + begin
  size = 48 * 20 * 4
  assert end - begin == size
  data[offset:offset + size] = np.full((48, 20), 7.0, "<f4").tobytes()
  file.write_bytes(bytes(data))
  np.testing.assert_array_equal(loaders["token_embedder/embedding"](), 7.0)
