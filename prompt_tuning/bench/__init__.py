"""Throughput and memory benchmark of the train step, against HF PEFT.

`python -m prompt_tuning.bench` times our jitted train step (random weights,
synthetic tokens) and, on request, the PyTorch peer (HF PEFT prompt tuning,
HF full fine-tuning) on the same shapes, and prints JSON lines. Modules:
`spec` (one configuration), `flops` (the FLOP count MFU divides by), `ours`
and `peer` (the two workers), `device` (matmul peak, peak memory), `harness`
(process isolation, ratios). `python -m prompt_tuning.bench.pipeline` is a
separate entry point (the SeqIO input pipeline's rate; it imports
TensorFlow). This package imports nothing on import, so a PyTorch-only
worker can load `prompt_tuning.bench.peer`.
"""
