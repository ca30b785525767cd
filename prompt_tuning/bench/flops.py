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

The backward pass is counted by how far each method's gradients must reach
(`step_flops`' `backward`; `RunSpec.backward` picks it):

  'model' (model tuning): every product needs the gradient of both
                  operands, so backward = 2 x forward and the step is
                  3 x forward;
  'prompt' (prompt, deep_prompt, p_tuning; and lora, ia3 and li_liang
                  prefixes, whose parameters sit in every encoder layer):
                  no weight gradients, only activation gradients all the
                  way back to the encoder's first layer: a weight product
                  costs one more product (dX = dY W^T), an attention product
                  two (both of its operands depend on what trains), so the
                  step is forward + weight_fwd + 2 x attention_fwd (about
                  2 x forward);
  'decoder' (prefixes in the decoder's self-attention only, PEFT's layout):
                  nothing in the encoder trains, so no gradient enters it or
                  the cross-attention's key/value projections over its
                  output; the decoder's other weight products and the LM
                  head cost one more product, its self-attention products
                  two, its cross-attention products one (keys and values are
                  constants).

What this leaves out, by method (each is small against the frozen model's
products, about a percent or less at the benchmark's shapes, so the formula
stays the frozen network's and a method's MFU is approximate to that
degree): the methods' own products (LoRA's x A B, at
2 x B x S x r x (H + A) per adapted projection, and their weight gradients;
P-tuning's MLP on [P, H]; IA3's scalings are elementwise); prefix tuning's
extra key/value positions (each prefixed attention's score and value
products run over S + P' keys instead of S, P' the prefix length); and the
few activation-gradient products 'prompt' counts that a method whose first
trainable parameter sits inside encoder layer 0 (LoRA, IA3, prefixes) does
not need (layer 0's dX into its input, and dk of its first score product).

For T5.1.1-XL at B=32, S=612, L=8 this gives 56.4 TFLOP forward and 115
TFLOP per prompt-tuning step.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

# How far a step's gradients reach (see the module docstring).
BACKWARDS = ("prompt", "model", "decoder")
MODES = BACKWARDS  # the benchmark's first name for them


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
     'attention': score and value products, 'total': their sum}, and the
    parts 'decoder' backward needs: 'decoder_weights' (without the cross
    key/value projections), 'cross_kv' (those), 'head', 'decoder_self'
    and 'cross' (attention products).
  """
  b, s, l = batch, encoder_length, target_length
  h, a, f = shapes.emb_dim, shapes.num_heads * shapes.head_dim, shapes.mlp_dim
  g = shapes.num_mlp_inputs
  mlp = lambda n: 2.0 * n * h * f * (g + 1)
  enc_weights = 2.0 * b * s * h * a * 4 + mlp(b * s)
  enc_attention = 2.0 * b * s * s * a * 2
  dec_own = (2.0 * b * l * h * a * 4  # self q, k, v, out
             + 2.0 * b * l * h * a * 2  # cross q, out
             + mlp(b * l))
  cross_kv = 2.0 * b * s * h * a * 2  # cross k, v over the encoder
  dec_self = 2.0 * b * l * l * a * 2
  cross = 2.0 * b * l * s * a * 2
  head = 2.0 * b * l * h * shapes.vocab_size
  n_enc, n_dec = shapes.num_encoder_layers, shapes.num_decoder_layers
  weights = n_enc * enc_weights + n_dec * (dec_own + cross_kv) + head
  attention = n_enc * enc_attention + n_dec * (dec_self + cross)
  return {"weights": weights, "attention": attention,
          "total": weights + attention, "decoder_weights": n_dec * dec_own,
          "cross_kv": n_dec * cross_kv, "head": head,
          "decoder_self": n_dec * dec_self, "cross": n_dec * cross}


def step_flops(shapes: Shapes, backward: str, batch: int,
               encoder_length: int, target_length: int) -> float:
  """Model FLOPs of one train step (forward + the backward it needs).

  Args:
    shapes: the model's dimensions.
    backward: 'prompt' (activation gradients back to the encoder's first
      layer), 'model' (all gradients) or 'decoder' (activation gradients
      through the decoder only); see the module docstring for which method
      needs which.
    batch: B.
    encoder_length: S = P + T.
    target_length: L.
  """
  if backward not in BACKWARDS:
    raise ValueError(f"Unknown backward {backward!r}; use one of "
                     f"{BACKWARDS}.")
  fwd = forward_flops(shapes, batch, encoder_length, target_length)
  if backward == "model":
    return 3.0 * fwd["total"]
  if backward == "decoder":
    return (fwd["total"] + fwd["decoder_weights"] + fwd["head"] +
            2.0 * fwd["decoder_self"] + fwd["cross"])
  return fwd["total"] + fwd["weights"] + 2.0 * fwd["attention"]
