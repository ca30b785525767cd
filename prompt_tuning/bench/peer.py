"""The PyTorch peer: HF PEFT's methods and HF full fine-tuning of T5.

What most users would otherwise run: a `transformers.T5ForConditionalGeneration`
built (randomly initialised) from a config with the preset's shapes (T5.1.1:
gated GELU, untied LM head), wrapped by the `peft` method of the run
(`peft_config`) or trained whole. Same batch, same synthetic full-length
rows, same steps as ours. PEFT's methods, set as ours are by default:

- prompt: `PromptTuningConfig`, `num_virtual_tokens=P`, random init. On a
  seq2seq model PEFT's table is [2P, H] (one half per transformer
  submodule) of which only the first P rows reach the encoder: it trains
  twice our parameters for the same computation.
- p_tuning: `PromptEncoderConfig`, MLP encoder of width `p_tuning_hidden`
  (H by default), P virtual tokens (the embedding is [2P, H] likewise).
- prefix: `PrefixTuningConfig`, `num_virtual_tokens=prefix_length`, no
  projection, `token_dim` = heads * head_dim (T5's d_model is not that in
  general). On T5 PEFT prefixes the decoder's self-attention only: compare
  with our `prefix_layout='peft'`; our default 'li_liang' also prefixes the
  encoder's self-attention and the cross-attention (more work).
- ia3: `IA3Config` with PEFT's T5 defaults (k, v, and `wo` as feed-forward).
- lora: `LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=q, v,
  lora_dropout=0)`.

Numerics (`RunSpec.peer_precision`): 'auto' is float32 weights under bf16
`torch.autocast` on CUDA (the usual recipe) and plain float32 on CPU; 'bf16'
stores the weights in bfloat16 too. Optimizer (`RunSpec.peer_optimizer`):
HF's `Adafactor` with the paper's settings (prompt: lr 0.3, weight decay
1e-5; model: lr 1e-3; decay -0.8, no parameter scaling, no relative step),
matching ours; or `torch.optim.AdamW`. The HF loss is the mean token
cross-entropy (ours adds T5X's z-loss); the cost difference is negligible.

`compile_s` for the peer is its first step (eager PyTorch compiles nothing;
that step pays lazy CUDA/cuBLAS initialisation). Peak memory is
`torch.cuda.max_memory_allocated` on CUDA, the process's peak RSS on CPU.

This module imports no JAX (the peer may run in a PyTorch-only environment)
and imports torch only inside `run`. Run as a worker:
`python -m prompt_tuning.bench.peer '<RunSpec JSON>'` prints one result line.
"""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from typing import Any, Dict

from prompt_tuning.bench import flops
from prompt_tuning.bench.spec import RESULT_MARKER
from prompt_tuning.bench.spec import RunSpec


def _hf_config(spec: RunSpec):
  import transformers  # pylint: disable=g-import-not-at-top
  s = flops.Shapes(**spec.shapes)
  if s.num_mlp_inputs != 2:
    raise ValueError(f"The peer builds T5.1.1 shapes (gated GELU); preset "
                     f"{spec.preset} has {s.num_mlp_inputs} MLP inputs.")
  return transformers.T5Config(
      vocab_size=s.vocab_size, d_model=s.emb_dim, d_kv=s.head_dim,
      d_ff=s.mlp_dim, num_layers=s.num_encoder_layers,
      num_decoder_layers=s.num_decoder_layers, num_heads=s.num_heads,
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      dropout_rate=spec.dropout, layer_norm_epsilon=1e-6,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
      use_cache=False)


def _optimizer(spec: RunSpec, params):
  """(optimizer, its name): the requested one, or AdamW where this
  transformers version has no Adafactor."""
  import torch  # pylint: disable=g-import-not-at-top
  lr, decay = (0.3, 1e-5) if spec.impl == "peft" else (1e-3, 0.0)
  if spec.peer_optimizer == "adafactor":
    try:
      from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
    except ImportError:
      pass
    else:
      return Adafactor(params, lr=lr, weight_decay=decay, decay_rate=-0.8,
                       scale_parameter=False, relative_step=False,
                       warmup_init=False, clip_threshold=1.0), "adafactor"
  return torch.optim.AdamW(params, lr=lr, weight_decay=decay), "adamw"


def peft_config(spec: RunSpec, shapes: flops.Shapes):
  """PEFT's config for `spec.mode`, on the same shapes as ours."""
  import peft  # pylint: disable=g-import-not-at-top
  task = peft.TaskType.SEQ_2_SEQ_LM
  if spec.mode == "prompt":
    return peft.PromptTuningConfig(
        task_type=task, num_virtual_tokens=spec.prompt,
        prompt_tuning_init=peft.PromptTuningInit.RANDOM)
  if spec.mode == "p_tuning":
    return peft.PromptEncoderConfig(
        task_type=task, num_virtual_tokens=spec.prompt,
        encoder_reparameterization_type="MLP",
        encoder_hidden_size=spec.p_tuning_hidden or shapes.emb_dim)
  if spec.mode == "prefix":
    return peft.PrefixTuningConfig(
        task_type=task, num_virtual_tokens=spec.prefix_length,
        token_dim=shapes.num_heads * shapes.head_dim,
        num_attention_heads=shapes.num_heads,
        num_layers=shapes.num_encoder_layers, prefix_projection=False)
  if spec.mode == "ia3":
    return peft.IA3Config(task_type=task)
  if spec.mode == "lora":
    return peft.LoraConfig(task_type=task, r=spec.lora_rank,
                           lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                           target_modules=["q", "v"])
  raise ValueError(f"PEFT has no {spec.mode!r} here.")


def _batch(spec: RunSpec, vocab_size: int, device):
  """The same rows as `ours.synthetic_batch` (same generator, same seed)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(spec.seed)
  enc = rng.integers(2, vocab_size, (spec.batch, spec.input_tokens))
  enc[:, -1] = 1
  tgt = rng.integers(2, vocab_size, (spec.batch, spec.targets))
  tgt[:, -1] = 1
  as_tensor = lambda x: torch.as_tensor(x, dtype=torch.long, device=device)
  return {"input_ids": as_tensor(enc),
          "attention_mask": torch.ones_like(as_tensor(enc)),
          "labels": as_tensor(tgt)}


def run(spec: RunSpec) -> Dict[str, Any]:
  """Builds the peer model, then times `spec.steps` train steps.

  Returns:
    One result record (the harness adds MFU and ratios).
  """
  if spec.impl not in ("peft", "hf_full"):
    raise ValueError(f"peer.run got impl={spec.impl!r}.")
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  precision = spec.peer_precision
  if precision == "auto":
    precision = "autocast" if cuda else "fp32"
  torch.manual_seed(spec.seed)
  if cuda:
    torch.cuda.reset_peak_memory_stats()

  config = _hf_config(spec)
  with device:  # initialise on the device: no host copy of a 3B model
    model = transformers.T5ForConditionalGeneration(config)
  if precision == "bf16":
    model = model.to(torch.bfloat16)
  peft_version = None
  if spec.impl == "peft":
    import peft  # pylint: disable=g-import-not-at-top
    peft_version = peft.__version__
    model = peft.get_peft_model(
        model, peft_config(spec, flops.Shapes(**spec.shapes)))
  model.to(device)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer, optimizer_name = _optimizer(spec, trainable)
  batch = _batch(spec, config.vocab_size, device)
  autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
              if precision == "autocast" and cuda
              else contextlib.nullcontext())
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  def step() -> float:
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return loss.detach()

  start = time.perf_counter()
  losses = [step()]
  sync()
  first_step_s = time.perf_counter() - start
  for _ in range(max(spec.warmup - 1, 0)):
    losses.append(step())
  sync()
  times = []
  for _ in range(spec.steps):
    start = time.perf_counter()
    losses.append(step())
    sync()
    times.append(time.perf_counter() - start)

  if cuda:
    peak_bytes = int(torch.cuda.max_memory_allocated())
    memory_source = "torch_cuda_max_memory_allocated"
    device_name = torch.cuda.get_device_name()
  else:
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory_source = "process_peak_rss"
    device_name = "cpu"
  step_s = statistics.median(times)
  shapes = flops.Shapes(**spec.shapes)
  return {
      **spec.describe(),
      "backend": "cuda" if cuda else "cpu",
      "device": device_name,
      "python": platform.python_version(),
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "peft": peft_version,
      "precision": precision,
      "optimizer": optimizer_name,
      "attn_implementation": getattr(config, "_attn_implementation", None),
      "compute_dtype": "bfloat16" if precision != "fp32" else "float32",
      "torch_threads": torch.get_num_threads(),
      "compile_s": first_step_s,
      "step_s": step_s,
      "step_s_min": min(times),
      "encoder_tokens_per_s": spec.batch * spec.encoder_length / step_s,
      "peak_bytes": peak_bytes,
      "memory_source": memory_source,
      "flops_per_step": flops.step_flops(shapes, spec.backward, spec.batch,
                                         spec.encoder_length, spec.targets),
      "params_trainable": sum(p.numel() for p in trainable),
      "params_total": sum(p.numel() for p in model.parameters()),
      "loss_first": float(losses[0]),
      "loss_last": float(losses[-1]),
  }


def main(argv) -> None:
  spec = RunSpec.from_dict(json.loads(argv[1]))
  print(RESULT_MARKER + json.dumps(run(spec)), flush=True)


if __name__ == "__main__":
  main(sys.argv)
