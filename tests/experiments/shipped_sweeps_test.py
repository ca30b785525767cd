"""Every sweep file in gin_configs/sweeps/ loads, expands to unique names and
checks (gin, tasks, best metrics), and the mini-study's ladder is committed."""

import glob
import json
import os

import pytest

from prompt_tuning import sweep as sweep_cli
from prompt_tuning.experiments import sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FILES = sorted(glob.glob(os.path.join(ROOT, "gin_configs", "sweeps",
                                      "*.toml")))
PAPER_STUDIES = ("size_curve", "prompt_length", "prompt_init",
                 "lm_adaptation", "mrqa_domain_shift",
                 "paraphrase_domain_shift", "mini_study",
                 # Figure 1's question on decoder-only LMs.
                 "decoder_size_curve")


def test_one_file_per_paper_study():
  assert sorted(os.path.basename(f)[:-5] for f in FILES) == sorted(
      PAPER_STUDIES)


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_sweep_file_checks(path, monkeypatch):
  monkeypatch.setenv("LM10K_CHECKPOINTS", "/lm10k")
  monkeypatch.setenv("LM50K_CHECKPOINTS", "/lm50k")
  monkeypatch.setenv("QWEN_CHECKPOINTS", "/qwen")
  sweep = sweeps.load(path)
  assert sweep.reproduces and sweep.checkpoints
  runs = sweeps.expand(sweep)
  assert len({r.name for r in runs}) == len(runs)
  assert all(set(r.point) == {a.name for a in sweep.axes} for r in runs)
  with open(path, encoding="utf-8") as f:
    assert f.readline().startswith("#")  # says what it reproduces
  # Every config parses and names a registered task (the CLI's check; the
  # paper's checkpoints, vocabulary and TFDS data are not on a test machine).
  sweep_cli.validate(sweep, runs, "/tmp/never_written", check_inputs=False)


def test_lm_adaptation_needs_its_private_checkpoints(monkeypatch):
  monkeypatch.delenv("LM10K_CHECKPOINTS", raising=False)
  with pytest.raises(sweeps.SweepError, match="LM10K_CHECKPOINTS"):
    sweeps.load(os.path.join(ROOT, "gin_configs", "sweeps",
                             "lm_adaptation.toml"))


def test_size_curve_covers_the_paper_grid():
  sweep = sweeps.load(os.path.join(ROOT, "gin_configs", "sweeps",
                                   "size_curve.toml"))
  runs = sweeps.expand(sweep)
  # 5 sizes x 7 methods (the paper's prompt and model tuning, and the other
  # five parameter-efficient methods) x 8 tasks x 3 seeds.
  assert len(runs) == 5 * 7 * 8 * 3
  assert {r.point["method"] for r in runs} == {
      "prompt", "model", "deep_prompt", "prefix", "p_tuning", "ia3", "lora"}
  lora = next(r for r in runs if r.point["method"] == "lora")
  assert "METHOD = 'lora'" in lora.bindings
  xxl = next(r for r in runs if r.point["model"] == "xxl")
  assert ("INITIAL_CHECKPOINT_PATH = 'gs://t5-data/pretrained_models/t5x/"
          "t5_1_1_lm100k_xxl/checkpoint_1100000'") in xxl.bindings
  assert "models/t5_1_1_lm100k_xxl.gin" in xxl.gin_files
  wsc = next(r for r in runs if "wsc" in r.task)
  assert wsc.best_metric == "taskless_super_glue_wsc_v102_simple_eval/score"


def test_decoder_size_curve_names_each_preset_with_its_checkpoint(
    monkeypatch):
  monkeypatch.setenv("QWEN_CHECKPOINTS", "/qwen")
  sweep = sweeps.load(os.path.join(ROOT, "gin_configs", "sweeps",
                                   "decoder_size_curve.toml"))
  runs = sweeps.expand(sweep)
  assert len(runs) == 7 * 4 * 8 * 3
  big = next(r for r in runs if r.point["model"] == "72b")
  assert "DECODER_PRESET = 'qwen2_5_72b'" in big.bindings
  assert "INITIAL_CHECKPOINT_PATH = '/qwen/Qwen2.5-72B'" in big.bindings
  assert big.gin_files[0] == "models/decoder_preset.gin"


def test_mini_study_ladder_is_committed_and_small():
  sweep = sweeps.load(os.path.join(ROOT, "gin_configs", "sweeps",
                                   "mini_study.toml"))
  assert len(sweep.seeds) >= 2
  sizes = []
  for value in sweep.axis("model").values:
    (binding,) = value.bindings
    directory = os.path.join(ROOT, binding.split("'")[1])
    with open(os.path.join(directory, "config.json")) as f:
      config = json.load(f)
    sizes.append(os.path.getsize(os.path.join(directory,
                                              "model.safetensors")))
    assert config["model_type"] == "t5"
  assert len(sizes) >= 3 and sizes == sorted(sizes)
  assert all(b >= 2 * a for a, b in zip(sizes, sizes[1:]))  # clearly apart
  assert sum(sizes) < 5 * 2**20
  assert {v.name for v in sweep.axis("method").values} == {
      "prompt", "model", "deep_prompt", "prefix", "ia3", "lora"}
