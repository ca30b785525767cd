"""P-tuning (Liu et al. 2021): the prompt is the output of a small network.

A [P, H] embedding goes through an MLP (PEFT's `MLP` encoder: Linear(H, h),
ReLU, Linear(h, h), ReLU, Linear(h, H)) or a bidirectional LSTM followed by
Linear(2h, 2h), ReLU, Linear(2h, H) (PEFT's `LSTM` encoder, PyTorch's gate
order i, f, g, o); h defaults to H. What trains is that network
(`prompt_encoder/...`); its output is the model's `encoder/prompt/prompt`,
computed every step while training and once for evaluation, export and
serving, where the network is merged away (as PEFT saves P-tuning adapters).
Initialisation follows PyTorch's defaults, as PEFT's: embedding N(0, 1),
Linear and LSTM weights U(+-1/sqrt(fan_in)) (LSTM: U(+-1/sqrt(h))).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict

import jax
import jax.numpy as jnp

from prompt_tuning.methods import base
from prompt_tuning.methods.prompt import PROMPT_PATH
from prompt_tuning.methods.prompt import PromptTuning
from prompt_tuning.methods.prompt import prompt_name
from prompt_tuning.models.config import T5Config

Array = jax.Array
PyTree = Any

ENCODERS = ("mlp", "lstm")
PREFIX = "prompt_encoder"


@dataclasses.dataclass(frozen=True)
class PTuningConfig(PromptTuning):
  """The prompt encoder's choices (PEFT's PromptEncoderConfig)."""

  name: ClassVar[str] = "p_tuning"

  # 'mlp' or 'lstm' (PEFT's encoder_reparameterization_type).
  encoder: str = "mlp"
  # Hidden width h; 0 means the model width H (PEFT's default).
  hidden: int = 0
  # LSTM layers (PEFT's encoder_num_layers; the MLP ignores it).
  num_layers: int = 2
  # Where the output goes in the model's tree (set by `bind`: T5's encoder
  # or a decoder-only LM's decoder); not an option.
  target: str = dataclasses.field(default="/".join(PROMPT_PATH),
                                  compare=False, repr=False)

  def __post_init__(self):
    super().__post_init__()
    if self.encoder not in ENCODERS:
      raise ValueError(f"PTuningConfig.encoder = {self.encoder!r} is not one "
                       f"of {ENCODERS}.")
    if self.hidden < 0 or self.num_layers < 1:
      raise ValueError("PTuningConfig.hidden must be >= 0 and num_layers "
                       ">= 1.")

  def bind(self, config: T5Config) -> "PTuningConfig":
    return dataclasses.replace(self, target=prompt_name(config))

  def _width(self, config: T5Config) -> int:
    return self.hidden or config.emb_dim

  def reparameterisation(self, config: T5Config) -> base.ParamSpecs:
    width, h = config.emb_dim, self._width(config)
    none = (None, None)
    specs = {f"{PREFIX}/embedding": ((self.length, width),
                                     ("prompt", "prompt_embed"),
                                     base.normal_init)}

    def linear(name, fan_in, fan_out):
      init = base.torch_linear_init(fan_in)
      specs[f"{PREFIX}/{name}/kernel"] = ((fan_in, fan_out), none, init)
      specs[f"{PREFIX}/{name}/bias"] = ((fan_out,), (None,), init)

    if self.encoder == "mlp":
      linear("mlp_0", width, h)
      linear("mlp_1", h, h)
      linear("mlp_2", h, width)
      return specs
    init = base.torch_linear_init(h)
    for layer in range(self.num_layers):
      fan_in = width if layer == 0 else 2 * h
      for direction in ("forward", "backward"):
        stem = f"{PREFIX}/lstm_{layer}_{direction}"
        specs[f"{stem}/w_ih"] = ((4 * h, fan_in), none, init)
        specs[f"{stem}/w_hh"] = ((4 * h, h), none, init)
        specs[f"{stem}/b_ih"] = ((4 * h,), (None,), init)
        specs[f"{stem}/b_hh"] = ((4 * h,), (None,), init)
    linear("mlp_0", 2 * h, 2 * h)
    linear("mlp_1", 2 * h, width)
    return specs

  def produced(self, config: T5Config):
    return (prompt_name(config),)

  def model_params(self, trainable: PyTree) -> PyTree:
    names = base.flat(trainable)
    if f"{PREFIX}/embedding" not in names:
      return trainable  # already merged (a served prompt)
    prompt = encode(names, self.encoder, self.num_layers)
    return base.replace_reparameterisation(trainable, PREFIX,
                                          {self.target: prompt})


def _linear(names: Dict[str, Array], name: str, x: Array) -> Array:
  return x @ names[f"{PREFIX}/{name}/kernel"] + names[f"{PREFIX}/{name}/bias"]


def _lstm_direction(names: Dict[str, Array], stem: str, x: Array,
                    reverse: bool) -> Array:
  """One direction of one LSTM layer over x [P, in] -> [P, h]."""
  w_ih, w_hh = names[f"{stem}/w_ih"], names[f"{stem}/w_hh"]
  bias = names[f"{stem}/b_ih"] + names[f"{stem}/b_hh"]
  h = w_hh.shape[1]
  gates_x = x @ w_ih.T + bias  # [P, in] -> [P, 4h]

  def step(carry, g):
    hidden, cell = carry
    g = g + hidden @ w_hh.T
    i, f, c, o = jnp.split(g, 4)  # PyTorch's gate order
    cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(c)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return (hidden, cell), hidden

  zeros = jnp.zeros((h,), x.dtype)
  _, out = jax.lax.scan(step, (zeros, zeros), gates_x, reverse=reverse)
  return out


def encode(names: Dict[str, Array], encoder: str, num_layers: int) -> Array:
  """The prompt [P, H] from the encoder's flat parameters."""
  x = names[f"{PREFIX}/embedding"].astype(jnp.float32)
  if encoder == "mlp":
    x = jax.nn.relu(_linear(names, "mlp_0", x))
    x = jax.nn.relu(_linear(names, "mlp_1", x))
    return _linear(names, "mlp_2", x)
  for layer in range(num_layers):
    stem = f"{PREFIX}/lstm_{layer}"
    x = jnp.concatenate(
        [_lstm_direction(names, f"{stem}_forward", x, False),
         _lstm_direction(names, f"{stem}_backward", x, True)], axis=-1)
  x = jax.nn.relu(_linear(names, "mlp_0", x))  # [P, 2h]
  return _linear(names, "mlp_1", x)
