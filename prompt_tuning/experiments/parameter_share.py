"""The paper's Figure 4: each method's trainable parameters vs model size.

Counted from the configs alone: nothing trains, no weight is loaded or
created. For each T5.1.1 preset (Small ... XXL) and each method, the
model's init is traced with `jax.eval_shape` with the method's hooks on, and
what trains is `methods.base.trainable_shapes` of it, the same function the
run builder creates its parameters from (a pretrained checkpoint holds
exactly plain T5's tree, so plain T5's names stand in for it). The share is
trainable / frozen-model parameters in percent, the quantity of the paper's
Figure 4 and of the report's `trainable_percent_of_frozen` column for runs.

Besides each method with its defaults (P = 100 for the prompt methods, as
the paper's), `comparison_methods` are the paper's own points: prompt and
prefix lengths 1 and 100 (its figure's bands span lengths 1-100) and prefix
tuning while training, through Li & Liang's MLP of width 512 (the paper's
"Prefix Tuning (Train)"). This is the one module of `experiments` that
imports JAX (the models' shapes); nothing here runs a computation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import matplotlib

from prompt_tuning import methods
from prompt_tuning.experiments.summary import percent_text
from prompt_tuning.methods import base
from prompt_tuning.models import T5
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.config import t5_config
from prompt_tuning.models.decoder_only import PRESETS as DECODER_PRESETS
from prompt_tuning.models.decoder_only import DecoderConfig
from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.models.decoder_only import decoder_config
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly

# No display: pyplot (imported in `draw`) draws into files only.
matplotlib.use("Agg")

# The paper's x axis: T5.1.1 Small, Base, Large, XL, XXL.
SIZES = ("small", "base", "large", "xl", "xxl")
PRESETS = tuple(f"t5_1_1_{size}" for size in SIZES)
# The same question on decoder-only LMs (`--parameter_share --family
# decoder`): the Qwen2.5 ladder, one tokenizer for every size.
QWEN_PRESETS = ("qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b",
                "qwen2_5_14b", "qwen2_5_32b", "qwen2_5_72b")
# The paper's prompt length (and its figure's longest prompt and prefix).
PAPER_LENGTH = 100


@functools.lru_cache(maxsize=None)
def _defaults() -> Tuple[Tuple[Tuple[str, methods.Method], ...],
                         Tuple[Tuple[str, str], ...]]:
  """(name, method) of every method its defaults configure (P = 100), and
  (name, why) of those they do not (e.g. a multitask prompt needs its
  tasks: what it trains depends on how many), found by counting each on
  the tiny preset."""
  built, skipped = [], []
  for name, cls in methods.METHODS.items():
    try:
      method = (cls(length=PAPER_LENGTH) if name in methods.PROMPT_METHODS
                else cls())
      trainable_shapes(method, t5_config("t5_1_1_tiny"))
    except ValueError as e:
      skipped.append((name, " ".join(str(e).split())))
      continue
    built.append((name, method))
  return tuple(built), tuple(skipped)


def default_methods() -> List[Tuple[str, methods.Method]]:
  """(label, method) for every method with its defaults, P = 100."""
  return list(_defaults()[0])


def skipped_methods() -> List[Tuple[str, str]]:
  """(name, why) of the methods their defaults do not configure."""
  return list(_defaults()[1])


def comparison_methods() -> List[Tuple[str, methods.Method]]:
  """(label, method) for the paper's own comparison points (Figure 4)."""
  return [
      ("prompt, P=1", methods.PromptTuning(length=1)),
      ("prefix, P=1", methods.PrefixConfig(length=1)),
      ("prefix, P=100", methods.PrefixConfig(length=PAPER_LENGTH)),
      # Li & Liang train through an MLP (their code's mid_dim = 512) and keep
      # only its output: the paper's "Prefix Tuning (Train)".
      ("prefix + MLP 512 (training), P=10",
       methods.PrefixConfig(hidden=512)),
  ]


def _shapes(model) -> Dict[str, Tuple[int, ...]]:
  """'/'-joined name -> shape of every parameter `model.init` creates."""
  def init(key):
    tokens = jnp.ones((1, 1), jnp.int32)
    if isinstance(model, DecoderOnlyLM):
      return model.init(key, tokens)["params"]
    return model.init(key, tokens, tokens, tokens)["params"]
  # An abstract key and tokens made inside the trace: no array is ever put on
  # a device, so no backend starts (the report may run beside a training run
  # that holds the accelerator).
  tree = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))
  return {n: tuple(getattr(v, "value", v).shape)
          for n, v in base.flat(tree).items()}


def _size(shapes: Dict[str, Tuple[int, ...]]) -> int:
  return sum(int(_product(s)) for s in shapes.values())


def _product(shape: Sequence[int]) -> int:
  out = 1
  for d in shape:
    out *= int(d)
  return out


@functools.lru_cache(maxsize=None)
def _model_shapes(config, length: int = 0, placement: str = "prefix",
                  adapters=None) -> Dict[str, Tuple[int, ...]]:
  """The parameters of T5 or a decoder-only LM (`length` 0; with no
  adapters, the checkpoint's tree) or of the model with a P = `length`
  prompt; cached per model. A decoder-only LM's hooks are `adapters` (a
  T5's are in its config)."""
  if isinstance(config, DecoderConfig):
    return _shapes(PromptedDecoderOnly(config, adapters, prompt_length=length,
                                       placement=placement) if length
                   else DecoderOnlyLM(config, adapters))
  return _shapes(PromptedT5(config, length, placement=placement) if length
                 else T5(config))


def trainable_shapes(method: methods.Method, config,
                     scan_layers: bool = True
                     ) -> Dict[str, Tuple[int, ...]]:
  """What `method` trains on a frozen `config` (name -> shape), as the run
  builder would create it, from shapes alone.

  Args:
    method: the method and its options.
    config: the frozen model's config (no adapters): a T5Config, or a
      DecoderConfig for a decoder-only LM.
    scan_layers: trace T5's layers scanned: one layer body instead of 24
      (seconds faster for XXL), the same parameters with a leading [layers]
      axis, so the same counts; False gives the builder's own names for an
      unscanned config. (Decoder-only LMs are not scanned.)
  """
  placement = getattr(method, "placement", "prefix")
  if isinstance(config, DecoderConfig):
    method = method.bind(config)
    adapters = method.adapters(config)
    return base.trainable_shapes(
        method, config,
        _model_shapes(config, method.prompt_length(), placement, adapters),
        _model_shapes(config))
  config = config.replace(scan_layers=scan_layers)
  method = method.bind(config)
  frozen = _model_shapes(config)
  adapted = config.replace(adapters=method.adapters(config))
  model = _model_shapes(adapted, method.prompt_length(), placement)
  return base.trainable_shapes(method, adapted, model, frozen)


@dataclasses.dataclass(frozen=True)
class Share:
  """One method on one frozen model."""
  label: str
  preset: str
  # The frozen model's own parameters, and what the method trains.
  model_parameters: int
  trainable_parameters: int

  @property
  def percent(self) -> float:
    """Trainable parameters as a share of the frozen model, in percent."""
    return 100.0 * self.trainable_parameters / self.model_parameters


def count(label: str, method: methods.Method, preset: str) -> Share:
  """`method` on the T5 or decoder-only preset named `preset`."""
  if preset in DECODER_PRESETS:
    config = decoder_config(preset)
    frozen = _model_shapes(config)
  else:
    config = t5_config(preset)
    frozen = _model_shapes(config.replace(scan_layers=True))
  return Share(label, preset, _size(frozen),
               _size(trainable_shapes(method, config)))


@functools.lru_cache(maxsize=None)
def table(presets: Tuple[str, ...] = PRESETS,
          comparisons: bool = True) -> Tuple[Share, ...]:
  """Every default method (then the paper's comparison points) on every
  preset, in that order; cached (a few seconds of tracing). Decoder-only
  presets take the default methods only (the comparison points are the
  paper's, on T5)."""
  rows = default_methods() + (comparison_methods() if comparisons else [])
  if all(p in DECODER_PRESETS for p in presets):
    rows = default_methods()
  return tuple(count(label, method, preset) for label, method in rows
               for preset in presets)


def _millions(parameters: float) -> str:
  if parameters >= 1e9:
    return f"{parameters / 1e9:.3g}B"
  return f"{parameters / 1e6:.3g}M"


def markdown(shares: Sequence[Share]) -> List[str]:
  """A markdown table: one row per method, one column per frozen model,
  each cell 'trainable parameters (share of the frozen model)'."""
  presets = list(dict.fromkeys(s.preset for s in shares))
  labels = list(dict.fromkeys(s.label for s in shares))
  by_key = {(s.label, s.preset): s for s in shares}
  sizes = {s.preset: s.model_parameters for s in shares}
  header = ["method"] + [f"{p} ({_millions(sizes[p])})" for p in presets]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for label in labels:
    cells = [label]
    for preset in presets:
      share = by_key.get((label, preset))
      cells.append("-" if share is None else
                   f"{share.trainable_parameters:,} "
                   f"({percent_text(share.percent)})")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def text(shares: Sequence[Share]) -> str:
  """The table with its caption, as the CLI prints it and the report
  writes it."""
  if shares and all(s.preset in DECODER_PRESETS for s in shares):
    return "\n".join([
        "Trainable parameters per method and their share of the frozen "
        "decoder-only LM (cf. Lester et al. 2021, Figure 4), counted from "
        "the presets' configs (jax.eval_shape; nothing trained or loaded). "
        "Defaults: prompt P=100; LoRA r=8 on q, v; IA3 on k, v and the MLP's "
        "down projection input.", ""] + markdown(shares)) + "\n"
  return "\n".join([
      "Trainable parameters per method and their share of the frozen model "
      "(Lester et al. 2021, Figure 4), counted from the T5.1.1 configs "
      "(jax.eval_shape; nothing trained or loaded). Defaults: P=100 for "
      "prompt, deep_prompt and p_tuning (MLP, width H); prefix P=10 in every "
      "attention, no MLP; LoRA r=8 on q, v; IA3 on k, v, wo. The rows after "
      "`model` are the paper's comparison points.", ""] + markdown(shares) +
      [""] * bool(skipped_methods()) +
      [f"Not counted: {name} (its defaults do not configure it: {why})"
       for name, why in skipped_methods()]) + "\n"


# Run points: (label, frozen-model parameters, trainable share in percent).
RunPoint = Tuple[str, float, float]


def draw(path: str, shares: Sequence[Share],
         runs: Sequence[RunPoint] = ()) -> None:
  """Writes the Figure 4-style PNG: log-log, x = frozen-model parameters,
  y = trainable share in %, one line per default method; the paper's bands
  (prompt and prefix lengths 1-100) shaded, prefix training dashed; runs
  (from their parameters.json) as crosses."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  series: Dict[str, List[Share]] = {}
  for share in shares:
    series.setdefault(share.label, []).append(share)

  def points(label: str) -> Tuple[List[float], List[float]]:
    rows = sorted(series.get(label, []), key=lambda s: s.model_parameters)
    return ([s.model_parameters for s in rows], [s.percent for s in rows])

  colours = {}
  for label, _ in default_methods():
    xs, ys = points(label)
    if xs:
      (line,) = axes.plot(xs, ys, marker="o", label=label)
      colours[label] = line.get_color()
  for label, low, high in (("prompt", "prompt, P=1", "prompt"),
                           ("prefix", "prefix, P=1", "prefix, P=100")):
    xs, lows = points(low)
    _, highs = points(high)
    if xs and len(lows) == len(highs):
      axes.fill_between(xs, lows, highs, color=colours.get(label, "grey"),
                        alpha=0.15, label=f"{label}, P=1-100")
  xs, ys = points("prefix + MLP 512 (training), P=10")
  if xs:
    axes.plot(xs, ys, linestyle="--", color=colours.get("prefix", "grey"),
              label="prefix + MLP 512 (training)")
  if runs:
    axes.scatter([r[1] for r in runs], [r[2] for r in runs], marker="x",
                 color="black", zorder=3, label="runs (parameters.json)")
    for mode, x, y in sorted(set(runs)):
      axes.annotate(mode, (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize="x-small")
  axes.set_xscale("log")
  axes.set_yscale("log")
  axes.set_xlabel("frozen model parameters")
  axes.set_ylabel("task-specific parameters (% of the frozen model)")
  axes.set_title("Parameter usage of adaptation methods (cf. Figure 4)")
  axes.grid(True, alpha=0.3)
  axes.legend(fontsize="x-small")
  figure.tight_layout()
  figure.savefig(path, format="png")
  plt.close(figure)


def run_points(runs: Sequence[Tuple[str, Optional[int], Optional[int]]]
               ) -> List[RunPoint]:
  """(mode, model, trainable) of runs -> the points `draw` marks (runs
  without both counts are left out)."""
  return [(mode, float(model), 100.0 * trainable / model)
          for mode, model, trainable in runs if model and trainable]
