"""Model FLOPs of one T5 train step, the number MFU divides by.

Pure Python (no JAX, no torch): the benchmark's parent process and both
frameworks' workers count with the same formula. Counted: every matrix
product of the step, at 2 FLOPs per multiply-add, attention's score
(`q k^T`) and value (`p v`) products included, the untied LM head included.
Not counted: embedding lookups (gathers), norms, activations, softmax,
the optimizer, and any work rematerialisation repeats (MFU measures useful
work, so a remat policy that recomputes more scores lower).

Forward FLOPs, with B batch, S encoder length (P + T), L target length,
H model width, A = heads * head_dim, F the MLP width, g the number of MLP
input projections (2 for T5.1.1's gated GELU), V the vocabulary:

  encoder layer:  2*B*S*H*A*4 (q, k, v, out) + 2*B*S*S*A*2 (scores, values)
                  + 2*B*S*H*F*(g + 1)
  decoder layer:  self attention as above over L; cross attention
                  2*B*L*H*A*2 (q, out) + 2*B*S*H*A*2 (k, v over the encoder
                  output) + 2*B*L*S*A*2; the MLP over L
  LM head:        2*B*L*H*V

The backward pass is counted by what each mode must compute:

  model tuning:   every product needs the gradient of both operands, so
                  backward = 2 x forward and the step is 3 x forward;
  prompt tuning:  no weight gradients, only activation gradients all the
                  way back to the prompt: a weight product costs one more
                  product (dX = dY W^T), an attention product two (both of
                  its operands depend on the prompt), so the step is
                  forward + weight_fwd + 2 x attention_fwd (about 2 x forward).

For T5.1.1-XL at B=32, S=612, L=8 this gives 56.4 TFLOP forward and 115
TFLOP per prompt-tuning step.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

MODES = ("prompt", "model")


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The architecture numbers the FLOP count depends on."""

  # H, the model width.
  emb_dim: int
  # Attention heads per layer.
  num_heads: int
  # Width of one head; A = num_heads * head_dim.
  head_dim: int
  # F, the MLP hidden width.
  mlp_dim: int
  # Encoder layers.
  num_encoder_layers: int
  # Decoder layers.
  num_decoder_layers: int
  # V, the (padded) vocabulary.
  vocab_size: int
  # g: MLP input projections (2 for gated GELU, 1 for ReLU).
  num_mlp_inputs: int = 2

  @classmethod
  def from_t5_config(cls, config) -> "Shapes":
    """From a `prompt_tuning.models.T5Config` (duck-typed)."""
    return cls(config.emb_dim, config.num_heads, config.head_dim,
               config.mlp_dim, config.num_encoder_layers,
               config.num_decoder_layers, config.vocab_size,
               len(config.mlp_activations))


def forward_flops(shapes: Shapes, batch: int, encoder_length: int,
                  target_length: int) -> Dict[str, float]:
  """Forward matmul FLOPs of one batch, split by kind.

  Args:
    shapes: the model's dimensions.
    batch: B.
    encoder_length: S, encoder positions (prompt included).
    target_length: L, decoder positions.

  Returns:
    {'weights': products with a weight operand (projections, MLP, LM head),
     'attention': score and value products, 'total': their sum}.
  """
  b, s, l = batch, encoder_length, target_length
  h, a, f = shapes.emb_dim, shapes.num_heads * shapes.head_dim, shapes.mlp_dim
  g = shapes.num_mlp_inputs
  mlp = lambda n: 2.0 * n * h * f * (g + 1)
  enc_weights = 2.0 * b * s * h * a * 4 + mlp(b * s)
  enc_attention = 2.0 * b * s * s * a * 2
  dec_weights = (2.0 * b * l * h * a * 4  # self q, k, v, out
                 + 2.0 * b * l * h * a * 2  # cross q, out
                 + 2.0 * b * s * h * a * 2  # cross k, v over the encoder
                 + mlp(b * l))
  dec_attention = 2.0 * b * l * l * a * 2 + 2.0 * b * l * s * a * 2
  head = 2.0 * b * l * h * shapes.vocab_size
  weights = (shapes.num_encoder_layers * enc_weights +
             shapes.num_decoder_layers * dec_weights + head)
  attention = (shapes.num_encoder_layers * enc_attention +
               shapes.num_decoder_layers * dec_attention)
  return {"weights": weights, "attention": attention,
          "total": weights + attention}


def step_flops(shapes: Shapes, mode: str, batch: int, encoder_length: int,
               target_length: int) -> float:
  """Model FLOPs of one train step (forward + the backward `mode` needs).

  Args:
    shapes: the model's dimensions.
    mode: 'prompt' (activation gradients only) or 'model' (all gradients).
    batch: B.
    encoder_length: S = P + T.
    target_length: L.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
  fwd = forward_flops(shapes, batch, encoder_length, target_length)
  if mode == "model":
    return 3.0 * fwd["total"]
  return fwd["total"] + fwd["weights"] + 2.0 * fwd["attention"]
