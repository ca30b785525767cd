"""The GPU path of fused attention, checked without a GPU.

JAX can lower a function for CUDA on a CPU-only machine. Lowering the real
train step that way (tiny preset, bfloat16) runs everything that happens
before XLA's GPU compiler: the cuDNN shape and dtype checks, our fallback
logic, the custom VJP of the backward pass, scan and remat around it. It
does not run cuDNN itself (only a GPU can), so the numbers are tested on
CPU elsewhere (`attention_variants_test`); this file tests that a GPU run
gets cuDNN flash attention forward and backward, masked by real lengths
(so no [B, heads, q, k] bias is built), in every remat/scan layout and both
modes.

Two things are faked for the duration of a test: JAX's cuDNN version probe
(there is no cuDNN library on a CPU machine) and the default backend that
`layers._fused_backend` reads.
"""

import collections
import functools
import re

import jax
import pytest

from prompt_tuning.bench import ours
from prompt_tuning.bench.spec import RunSpec
from prompt_tuning.models import T5
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import initializers
from prompt_tuning.training import optimizers
from prompt_tuning.training import step as step_lib
from prompt_tuning.training.state import create_train_state
from prompt_tuning.training.state import split_trainable

# Distinct sizes, so operand types say which tensor they are: the tiny
# preset has 4 heads of width 8; q/k/v are [B, length, 4, 8].
BATCH, INPUTS, PROMPT, TARGETS = 2, 12, 4, 6
FWD, BWD = "__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"
FWD_NO_BIAS, BWD_NO_BIAS = "__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"


@pytest.fixture
def pretend_gpu(monkeypatch):
  monkeypatch.setattr(
      "jax._src.cudnn.fused_attention_stablehlo.check_cudnn_version",
      lambda: 91000)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def _lowered_for_cuda(mode: str, remat: str, scan: bool,
                      inputs: int = INPUTS) -> str:
  spec = RunSpec(impl="ours", preset="t5_1_1_tiny", mode=mode, batch=BATCH,
                 inputs=inputs, prompt=PROMPT, targets=TARGETS, steps=1,
                 warmup=0, remat=remat, scan=scan, attention="fused",
                 frozen_dtype="bfloat16", dtype="bfloat16")
  config = ours.model_config(spec)
  # The bench's two classic shapes: a prompt of P vectors, or plain T5.
  model = (PromptedT5(config, PROMPT, initializers.random_uniform(0.5))
           if mode == "prompt" else T5(config))
  tx = optimizers.adafactor(optimizers.PROMPT_TUNING if mode == "prompt"
                            else optimizers.MODEL_TUNING)

  def init_state():
    params = ours.random_params(config, spec)  # plain T5's tree
    if mode == "prompt":
      params["encoder"]["prompt"] = {"prompt": jax.numpy.zeros(
          (PROMPT, config.emb_dim), jax.numpy.float32)}
    trainable, frozen = split_trainable(params, mode)
    return create_train_state(trainable, tx, jax.random.PRNGKey(1)), frozen

  state, frozen = jax.eval_shape(init_state)
  batch = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
      ours.synthetic_batch(spec, config.vocab_size))
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                   enable_dropout=False))
  return step.trace(state, frozen, batch).lower(
      lowering_platforms=("cuda",)).as_text()


def _cudnn_calls(text: str):
  """(target, operand types) of every cuDNN attention custom call."""
  return re.findall(r"custom_call @(__cudnn\$\w+)\([^)]*\)[^\n]*?: \(([^)]*)\)",
                    text)


@pytest.mark.parametrize("mode", ["prompt", "model"])
@pytest.mark.parametrize("remat,scan", [
    ("none", False),
    ("dots_with_no_batch_dims_saveable", True),
    ("full", True),
])
def test_train_step_lowers_to_cudnn_attention(pretend_gpu, mode, remat,
                                              scan):
  del pretend_gpu
  calls = _cudnn_calls(_lowered_for_cuda(mode, remat, scan))
  counts = collections.Counter(target for target, _ in calls)
  # Self-attention carries the position bias, cross-attention has none; both
  # run forward and backward in cuDNN.
  for target in (FWD, BWD, FWD_NO_BIAS, BWD_NO_BIAS):
    assert counts[target] >= 1, (target, counts)
  assert set(counts) == {FWD, BWD, FWD_NO_BIAS, BWD_NO_BIAS}, counts
  for target, operands in calls:
    types = operands.split(", ")
    # The padding is given as lengths, so no per-example [B, heads, q, k]
    # array (bias or its gradient) is built; the bias is the shared
    # [1, heads, q, k] position bias, in bfloat16.
    per_example = re.compile(rf"tensor<{BATCH}x4x\d+x\d+x")
    assert not any(per_example.match(t) for t in types), (target, types)
    if target in (FWD, BWD):
      assert any(t.startswith("tensor<1x4x") and t.endswith("xbf16>")
                 for t in types), (target, types)
    # Real lengths, one per example.
    assert f"tensor<{BATCH}xi32>" in types, (target, types)


def test_odd_length_with_bias_falls_back_to_xla_attention(pretend_gpu,
                                                          caplog):
  """cuDNN wants even lengths in training: 4 prompt + 11 input positions
  make the encoder's self-attention and the cross-attention run XLA's
  attention (with a warning saying why), while the decoder's
  self-attention (6 positions) still gets cuDNN."""
  del pretend_gpu
  encoder_length = PROMPT + 11
  calls = _cudnn_calls(_lowered_for_cuda("prompt", "none", False, inputs=11))
  assert encoder_length % 2 and TARGETS % 2 == 0
  assert calls
  for target, operands in calls:
    assert f"x{encoder_length}x" not in operands, (target, operands)
  counts = collections.Counter(target for target, _ in calls)
  assert counts[FWD] >= 1 and counts[BWD] >= 1, counts
  assert f"odd length {encoder_length}x{encoder_length}" in caplog.text
