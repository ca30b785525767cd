"""Does mixing prompts in a batch cost throughput? Measured side by side.

Three jitted programs over the same shapes (batch B, inputs T, prompt P,
targets L) and the same random frozen weights, timed in interleaved rounds
so that a noisy neighbour hits all of them alike:

- `single`: `PromptedT5` with its one shared prompt parameter, the
  single-task serving path (`training.inference`);
- `mixed_1`: the mixed-prompt path (`prompts.mixed`) with a bank of one;
- `mixed_8`: the same path, 8 different prompts, row b using prompt b % 8.

Each program runs the encoder once and greedy-decodes all L positions (an
EOS id no token has, so every variant does the same work), which is what
inference costs. Reported: median seconds per batch and examples/s of each,
and the ratios mixed_8 / single and mixed_8 / mixed_1.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable, Dict

import jax
import numpy as np

from prompt_tuning.models import decoding
from prompt_tuning.models.config import t5_config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import mixed
from prompt_tuning.prompts.model import PromptedT5
from prompt_tuning.prompts.model import merge_params

# An id no token has: greedy decoding never stops early.
_NO_EOS = -1


def _single(params, tokens, *, model, length):
  encoded, mask = model.apply({"params": params}, tokens,
                              method="encode_with_mask")
  return decoding.greedy_decode_encoded(model, params, encoded, mask, length,
                                        _NO_EOS)


def _mixed(frozen, bank, lengths, prompt_ids, tokens, *, model, length):
  return mixed.predict(model, frozen, bank, lengths, prompt_ids, tokens,
                       max_decode_length=length, eos_id=_NO_EOS)


def _time(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def compare(preset: str = "t5_1_1_small", batch: int = 32, inputs: int = 128,
            prompt: int = 20, targets: int = 8, rounds: int = 5,
            dtype: str = "float32") -> Dict[str, Any]:
  """Times the three programs; see the module docstring.

  Returns:
    {'config': {...}, '<variant>': {'seconds': median, 'examples_per_s'},
    'mixed_8_over_single', 'mixed_8_over_mixed_1', 'device'}.
  """
  config = t5_config(preset, dtype=dtype)
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, config.vocab_size, (batch, inputs), np.int32)
  tokens[:, -1] = 1
  shapes = jax.eval_shape(T5(config).init, jax.random.PRNGKey(0),
                          tokens[:1], tokens[:1, :targets],
                          tokens[:1, :targets])["params"]
  frozen = jax.tree_util.tree_map(
      lambda s: jax.numpy.asarray(rng.normal(
          0, 0.05, s.value.shape).astype(np.float32)), shapes,
      is_leaf=lambda x: hasattr(x, "unbox"))
  prompts = rng.uniform(-0.5, 0.5, (8, prompt, config.emb_dim)).astype(
      np.float32)
  single_model = PromptedT5(config, prompt)
  single_params = merge_params(
      {"encoder": {"prompt": {"prompt": jax.numpy.asarray(prompts[0])}}},
      frozen)
  single = jax.jit(functools.partial(_single, model=single_model,
                                     length=targets))
  run_mixed = jax.jit(functools.partial(_mixed, model=T5(config),
                                        length=targets))
  one_bank, one_lengths = mixed.stack_prompts([prompts[0]])
  eight_bank, eight_lengths = mixed.stack_prompts(list(prompts))
  zeros = np.zeros((batch,), np.int32)
  spread = (np.arange(batch) % 8).astype(np.int32)
  variants = {
      "single": lambda: single(single_params, tokens),
      "mixed_1": lambda: run_mixed(frozen, one_bank, one_lengths, zeros,
                                   tokens),
      "mixed_8": lambda: run_mixed(frozen, eight_bank, eight_lengths, spread,
                                   tokens),
  }
  compile_s = {name: _time(fn) for name, fn in variants.items()}
  for fn in variants.values():  # one warm call each
    _time(fn)
  times = {name: [] for name in variants}
  for _ in range(rounds):
    for name, fn in variants.items():
      times[name].append(_time(fn))
  report: Dict[str, Any] = {
      "config": {"preset": preset, "batch": batch, "inputs": inputs,
                 "prompt": prompt, "targets": targets, "dtype": dtype,
                 "rounds": rounds},
      "device": str(jax.devices()[0].device_kind),
  }
  for name, values in times.items():
    median = statistics.median(values)
    report[name] = {"seconds": round(median, 5),
                    "examples_per_s": round(batch / median, 2),
                    "first_call_s": round(compile_s[name], 2)}
  report["mixed_8_over_single"] = round(
      report["single"]["seconds"] / report["mixed_8"]["seconds"], 3)
  report["mixed_8_over_mixed_1"] = round(
      report["mixed_1"]["seconds"] / report["mixed_8"]["seconds"], 3)
  return report
