"""Sharded loads read only the blocks the devices hold, and equal whole reads.

A process that places a frozen array on a mesh asks its readers for the
blocks its devices hold; here every device is this process's, so the blocks
still tile each array, but no single read may cover a sharded array whole,
no block may be read twice, and the placed params must be the bits that
reading each array whole gives.
"""

import logging
import os
import re

import jax
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.models import t5_config
from prompt_tuning.pretrained import LoadStats
from prompt_tuning.pretrained import assemble_params
from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.pretrained import t5x
from prompt_tuning.pretrained.assemble import BlockLoader
from prompt_tuning.pretrained.assemble import flat_names
from tests import t5x_fixtures
from tests.pretrained.load_pretrained_test import _tiny_params

HF_T5_1_1 = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "fixtures", "hf", "t5_1_1_style")


def _recording(loaders):
  """The same loaders, noting each read as (name, index or None = whole)."""
  reads = []

  def wrap(name, loader):
    if isinstance(loader, BlockLoader):
      def read(index=None):
        reads.append((name, index))
        return loader(index)
      return BlockLoader(read=read, shape=loader.shape)

    def whole():
      reads.append((name, None))
      return loader()
    return whole

  return {name: wrap(name, loader) for name, loader in loaders.items()}, reads


def _block_shape(shape, index):
  return tuple(len(range(n)[s]) for n, s in zip(shape, index))


def _assert_sliced_and_exact(config, loaders, mesh):
  recorded, reads = _recording(loaders)
  placed = flat_names(assemble_params(config, recorded, "test", mesh))
  whole = flat_names(assemble_params(config, loaders, "test"))  # no mesh
  assert set(placed) == set(whole)
  for name, array in placed.items():
    assert array.dtype == whole[name].dtype, name
    np.testing.assert_array_equal(np.asarray(array), np.asarray(whole[name]),
                                  err_msg=name)
  assert reads and all(index is not None for _, index in reads), (
      "a BlockLoader was read whole on a mesh")
  keys = [(name, tuple((s.start, s.stop) for s in index))
          for name, index in reads]
  assert len(keys) == len(set(keys)), "a block was read twice"
  sharded = 0
  for name, index in reads:
    target = (re.sub(r"/layers_\d+/", "/layers/", name) if config.scan_layers
              else name)
    if placed[target].sharding.is_fully_replicated:
      continue
    sharded += 1
    shape = tuple(loaders[name].shape())
    assert _block_shape(shape, index) != shape, (
        f"{name}: one read covers the whole sharded array")
  assert sharded, "the mesh sharded nothing"


@pytest.mark.parametrize("mesh_shape", [(1, 8), (2, 4)])
@pytest.mark.parametrize("scan", [False, True])
def test_t5x_tensorstore_reads_only_device_blocks(tmp_path, mesh_shape, scan):
  config = t5_config("t5_1_1_tiny", dtype="float32", scan_layers=scan)
  ckpt_dir = t5x_fixtures.write_t5x_legacy(
      str(tmp_path), 1, _tiny_params(config.replace(scan_layers=False)),
      dtype="bfloat16")  # read as bfloat16, cast to float32 per block
  loaders = t5x.read_t5x_legacy(ckpt_dir)
  assert all(isinstance(loader, BlockLoader) for loader in loaders.values())
  _assert_sliced_and_exact(config, loaders,
                           partitioning.create_mesh(mesh_shape))


@pytest.mark.parametrize("mesh_shape", [(1, 8), (2, 4)])
@pytest.mark.parametrize("scan,param_dtype", [(False, "float32"),
                                              (True, "bfloat16")])
def test_hf_safetensors_reads_only_device_blocks(mesh_shape, scan,
                                                 param_dtype):
  config, loaders = hf.read_hf(HF_T5_1_1)
  config = config.replace(scan_layers=scan, param_dtype=param_dtype)
  _assert_sliced_and_exact(config, loaders,
                           partitioning.create_mesh(mesh_shape))


def test_loaders_that_cannot_slice_are_read_whole_once(tmp_path):
  config = t5_config("t5_1_1_tiny", dtype="float32")
  ckpt_dir = t5x_fixtures.write_t5x_legacy(str(tmp_path), 1,
                                           _tiny_params(config),
                                           style="flaxformer")
  loaders = t5x.read_t5x_legacy(ckpt_dir)
  inline = [n for n, l in loaders.items() if not isinstance(l, BlockLoader)]
  assert inline  # flaxformer keeps scales and relpos tables inline
  recorded, reads = _recording(loaders)
  placed = flat_names(assemble_params(config, recorded, "test",
                                      partitioning.create_mesh((2, 4))))
  for name in inline:
    assert reads.count((name, None)) == 1, name
    np.testing.assert_array_equal(np.asarray(placed[name]), loaders[name]())


def test_stats_count_each_block_once():
  stats = LoadStats()
  config, loaders = hf.read_hf(HF_T5_1_1)
  assemble_params(config, loaders, "test", partitioning.create_mesh((2, 4)),
                  stats=stats)
  # One process holds every device: its distinct blocks tile each array.
  assert stats.arrays == len(flat_names(assemble_params(config, loaders,
                                                        "test")))
  assert stats.bytes_read == stats.bytes_total == sum(
      np.asarray(loader()).nbytes for loader in loaders.values())


def test_sharded_load_logs_bytes_time_and_peak_rss(caplog):
  with caplog.at_level(logging.INFO):
    load_pretrained(HF_T5_1_1, mesh=partitioning.create_mesh((2, 4)))
  lines = [r.getMessage() for r in caplog.records
           if "frozen arrays" in r.getMessage()]
  assert len(lines) == 1, lines
  assert re.fullmatch(
      rf"Process {jax.process_index()}: Loaded \d+ frozen arrays "
      r"\([\d.]+ (B|KiB|MiB|GiB) of [\d.]+ (B|KiB|MiB|GiB)\) in [\d.]+s; "
      r"peak host RSS \d+ MiB", lines[0]), lines[0]
  caplog.clear()
  with caplog.at_level(logging.INFO):
    load_pretrained(HF_T5_1_1)  # no mesh: nothing sharded, no line
  assert not [r for r in caplog.records if "frozen arrays" in r.getMessage()]
