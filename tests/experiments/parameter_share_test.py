"""The paper's Figure 4 from the configs: exact counts worked out by hand on
the tiny preset, the builder's own trainable tree, the paper's prompt sizes,
the report's per-run share column (new and old parameters.json) and the
figure and table it writes."""

import csv
import os

import jax
import numpy as np
import pytest

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning import report
from prompt_tuning.experiments import parameter_share
from prompt_tuning.experiments import summary
from prompt_tuning.methods import base as method_base
from prompt_tuning.models import t5_config
from prompt_tuning.training import records
from prompt_tuning.training import setup

TINY = "t5_1_1_tiny"
CONFIG = t5_config(TINY)
# t5_1_1_tiny: V=384, H=32, 4 heads of 8 (HD = heads * head_dim = 32),
# mlp 64 (gated: wi_0, wi_1, wo), 2 encoder and 2 decoder layers.
V, H, HD, M, E, D, HEADS = 384, 32, 4 * 8, 64, 2, 2, 4
BUCKETS = 32
P = 7


def _count(method):
  return parameter_share.count("x", method, TINY).trainable_parameters


def test_frozen_model_by_hand():
  encoder_layer = 4 * H * HD + 3 * H * M + 2 * H  # q k v o, mlp, 2 norms
  decoder_layer = 8 * H * HD + 3 * H * M + 3 * H  # self + cross, 3 norms
  expected = (V * H +  # token embedding
              BUCKETS * HEADS + E * encoder_layer + H +  # relpos, norm
              BUCKETS * HEADS + D * decoder_layer + H +
              H * V)  # T5.1.1's untied logits
  share = parameter_share.count("model", methods.ModelTuning(), TINY)
  assert share.model_parameters == expected
  assert share.trainable_parameters == expected and share.percent == 100.0


@pytest.mark.parametrize("method, expected", [
    # The prompt: P x H.
    (methods.PromptTuning(length=P), P * H),
    # Plus a [P, H] prompt before every encoder layer.
    (methods.DeepPromptConfig(length=P), P * H * (1 + E)),
    # LoRA r=8 on q and v of every attention (encoder self; decoder self and
    # cross): r * (in + out) per projection, in = H, out = heads * head_dim.
    (methods.LoraConfig(), 8 * (H + HD) * 2 * (E + 2 * D)),
    (methods.LoraConfig(rank=2, targets=("query", "value", "wo")),
     2 * (H + HD) * 2 * (E + 2 * D) + 2 * (M + H) * (E + D)),
    # IA3 on key, value (output: heads * head_dim) and wo (input: mlp).
    (methods.IA3Config(), E * (2 * HD + M) + D * (4 * HD + M)),
    # Prefix: a [P, blocks, heads, head_dim] table, 2 blocks (key, value)
    # per layer of each prefixed attention (encoder self, decoder self,
    # cross).
    (methods.PrefixConfig(length=P), P * 2 * (E + D + D) * HD),
    (methods.PrefixConfig(length=P, attentions=("decoder_self",)),
     P * 2 * D * HD),
    # Li & Liang's MLP: embedding [P, H] -> Linear(H, 16), tanh,
    # Linear(16, blocks * HD); the layers' prefixes are its output.
    (methods.PrefixConfig(length=P, hidden=16),
     P * H + (H * 16 + 16) + (16 * 12 * HD + 12 * HD)),
    # P-tuning's MLP (width H): embedding [P, H] and three Linear(H, H).
    (methods.PTuningConfig(length=P), P * H + 3 * (H * H + H)),
])
def test_trainable_counts_by_hand(method, expected):
  assert _count(method) == expected


@pytest.mark.parametrize("name", ["prompt", "deep_prompt", "prefix",
                                  "p_tuning", "ia3", "lora", "model"])
def test_scanned_counts_equal_unscanned(name):
  method = methods.METHODS[name]()
  scanned = parameter_share.trainable_shapes(method, CONFIG)
  unscanned = parameter_share.trainable_shapes(method, CONFIG,
                                               scan_layers=False)
  size = lambda shapes: sum(int(np.prod(s)) for s in shapes.values())
  assert size(scanned) == size(unscanned) > 0


@pytest.mark.parametrize("name, options", [
    ("prompt", None), ("deep_prompt", None), ("prefix", None),
    ("p_tuning", methods.PTuningConfig(encoder="lstm", hidden=8)),
    ("ia3", None), ("lora", None)])
def test_what_the_builder_creates(frozen, name, options):
  """The counts are the run builder's own: same names, same shapes."""
  prompt = setup.PromptConfig(length=P, init="random_uniform")
  method = setup.make_method(name, prompt, {name: options} if options else
                             {})
  run = setup.build_model(
      initial_checkpoint_path=frozen, model_config=CONFIG.replace(
          dtype="float32"), mode=name, prompt=prompt,
      mesh=partitioning.create_mesh((1, 1), devices=jax.devices()[:1]),
      rules=partitioning.logical_axis_rules(), vocabulary=None,
      rng=jax.random.PRNGKey(0), dtype="float32", method=method)
  built = {n: tuple(v.shape)
           for n, v in method_base.flat(run.trainable).items()}
  assert parameter_share.trainable_shapes(method, CONFIG,
                                          scan_layers=False) == built


def test_the_papers_prompt_sizes():
  """PAPER.md: P=100 -> Small 51,200 ... XXL 409,600 (0.0037% of XXL)."""
  shares = {s.preset: s for s in parameter_share.table()
            if s.label == "prompt"}
  assert [shares[p].trainable_parameters for p in parameter_share.PRESETS] \
      == [51_200, 76_800, 102_400, 204_800, 409_600]
  assert f"{shares['t5_1_1_xxl'].percent:.4f}" == "0.0037"
  # The frozen sizes are the paper's 77M, 248M, 783M, 2.85B, 11.1B.
  assert [round(shares[p].model_parameters / 1e6) for p in
          parameter_share.PRESETS] == [77, 248, 783, 2850, 11135]


def test_markdown_table():
  shares = [parameter_share.Share("prompt", "a", 1000, 10),
            parameter_share.Share("prompt", "b", 2_000_000_000, 20),
            parameter_share.Share("ia3", "a", 1000, 5)]
  lines = parameter_share.markdown(shares)
  assert lines[0] == "| method | a (0.001M) | b (2B) |"
  assert lines[2] == "| prompt | 10 (1%) | 20 (0.00000100%) |"
  assert lines[3] == "| ia3 | 5 (0.500%) | - |"
  assert summary.percent_text(100.0) == "100%"
  assert summary.percent_text(0.0000368) == "0.0000368%"


def test_cli_prints_the_table_without_runs(capsys):
  assert report.main(["--parameter_share"]) == 0
  out = capsys.readouterr().out
  assert "| method | t5_1_1_small (77M) |" in out
  assert "| prompt | 51,200 (0.0665%) |" in out
  for name in ("prompt", "deep_prompt", "prefix", "p_tuning", "ia3", "lora",
               "model"):
    assert f"\n| {name} | " in out
  # A method its defaults do not configure is named, not left out silently.
  for name in methods.METHODS:
    assert f"\n| {name} | " in out or f"Not counted: {name} (" in out
  assert "| model | 76,961,152 (100%) |" in out


def _run_dir(root, name, mode):
  """A finished run of a one-axis sweep (method = `mode`)."""
  path = os.path.join(root, name)
  os.makedirs(path)
  records.write_json(os.path.join(path, "sweep_run.json"), {
      "run": name, "point": {"method": mode}, "task": "t", "seed": 0,
      "best_metric": "t/score", "studies": ["all"]})
  records.append_eval(path, 10, {"t/score": 50.0, "t/accuracy": 50.0})
  records.write_summary(path, 10, 10, {}, {})
  return path


@pytest.fixture(scope="module")
def share_report(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("shares"))
  # As train writes it today: model = the frozen model alone.
  records.write_parameters(
      _run_dir(root, "lora", "lora"),
      {"total": 1_000_400, "trainable": 400, "trainable_percent": 0.04},
      prompt_parameters=400, mode="lora")
  records.write_parameters(
      _run_dir(root, "model", "model"),
      {"total": 1000, "trainable": 1000, "trainable_percent": 100.0},
      prompt_parameters=0, mode="model")
  # An old or hand-written file: no model count, no mode.
  records.write_json(
      os.path.join(_run_dir(root, "old", "old"), records.PARAMETERS_FILE),
      {"total": 5000, "trainable": 50})
  values = ["lora", "model", "old"]
  records.write_json(os.path.join(root, "sweep.json"), {
      "name": "shares",
      "axes": [{"name": "method", "values": values, "default": "lora"}],
      "studies": [{"name": "all", "vary": {"method": values}, "lines": None,
                   "x": "method", "title": "", "paper": ""}],
      "runs": values})
  return root, report.write_report(root)


def test_report_column_per_run(share_report):
  _, paths = share_report
  with open(paths["csv"], encoding="utf-8") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert float(rows["lora"]["trainable_percent_of_frozen"]) == 0.04
  assert rows["lora"]["model_parameters"] == "1000000"
  assert float(rows["model"]["trainable_percent_of_frozen"]) == 100.0
  assert rows["old"]["trainable_percent_of_frozen"] == ""
  assert rows["old"]["trainable_parameters"] == "50"
  assert rows["old"]["status"] == "finished" and rows["old"]["problem"] == ""


def test_summary_lists_the_share(share_report):
  _, paths = share_report
  with open(paths["summary"], encoding="utf-8") as f:
    text = f.read()
  header = next(line for line in text.splitlines()
                if line.startswith("| method |"))
  assert "| frozen params | trainable (% of frozen) | seeds |" in header
  assert "| lora | 1M | 400 (0.0400%) | 0 |" in text
  assert "| model | 1K | 1K (100%) | 0 |" in text
  assert "| old | ? | 50 | 0 |" in text
  assert "## Parameter usage (cf. the paper's Figure 4)" in text
  assert "`parameter_share.png`" in text


def test_report_writes_the_figure_and_table(share_report):
  root, paths = share_report
  assert paths["figure:parameter_share"] == os.path.join(
      root, "parameter_share.png")
  with open(paths["figure:parameter_share"], "rb") as f:
    data = f.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  with open(paths["parameter_share"], encoding="utf-8") as f:
    table = f.read()
  assert "| lora | 344,064 (0.447%) |" in table
  assert "| prefix, P=100 |" in table


def test_run_points():
  assert parameter_share.run_points(
      [("lora", 1000, 10), ("old", None, 5), ("x", 1000, None)]) == [
          ("lora", 1000.0, 1.0)]


def test_decoder_only_presets_by_hand(capsys, monkeypatch):
  """Qwen2.5-0.5B (24 layers, H 896, 2 KV heads x 64, MLP 4864, tied):
  the published 494,032,768 parameters; a P=100 prompt, LoRA r=8 on q
  [896->896] and v [896->128], IA3 on k, v (128 each) and wo's input,
  deep prompts and prefixes."""
  share = parameter_share.count("prompt", methods.PromptTuning(length=100),
                                "qwen2_5_0_5b")
  assert share.model_parameters == 494_032_768
  assert share.trainable_parameters == 100 * 896
  lora = parameter_share.count("lora", methods.LoraConfig(), "qwen2_5_0_5b")
  assert lora.trainable_parameters == 24 * 8 * ((896 + 896) + (896 + 128))
  ia3 = parameter_share.count("ia3", methods.IA3Config(), "qwen2_5_0_5b")
  assert ia3.trainable_parameters == 24 * (128 + 128 + 4864)
  # The report's CLI prints the decoder-only table (one preset here: the
  # whole ladder takes half a minute to trace).
  monkeypatch.setattr(parameter_share, "QWEN_PRESETS", ("qwen2_5_0_5b",))
  assert report.main(["--parameter_share", "--family", "decoder"]) == 0
  out = capsys.readouterr().out
  assert "decoder-only LM" in out
  assert "| prompt | 89,600 (0.0181%) |" in out
  assert "| lora | 540,672 (0.109%) |" in out
  # Deep prompts: the input prompt and one [100, 896] per layer; a P=10
  # prefix: keys and values of the 2 KV heads x 64 in each of 24 layers.
  assert f"| deep_prompt | {25 * 100 * 896:,} (0.453%) |" in out
  assert f"| prefix | {10 * 2 * 24 * 2 * 64:,} (0.0124%) |" in out
