"""What the JAX device can do and did: matmul peak, peak memory, versions.

MFU is only meaningful against a ceiling measured on the same chip in the
same invocation (clocks, drivers and the XLA version all move it), so the
benchmark times one large matrix product here instead of trusting a
datasheet. Peak memory is the device allocator's high-water mark where the
backend reports one (GPU, TPU); the CPU backend reports none, so there the
process's peak resident set size stands in: an upper bound that includes the
framework and the Python heap, not comparable with a device figure.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp


def describe() -> Dict[str, Any]:
  """Backend, device kind and library versions, for every result line."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return {
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "device_count": jax.device_count(),
      "cpu_count": _cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
  }


def _cpu_count() -> Optional[int]:
  import os  # pylint: disable=g-import-not-at-top
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count()


def default_matmul_size() -> int:
  """8192 on accelerators (the issue's reference product), 2048 on CPU."""
  return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_peak(dtype: str, size: Optional[int] = None,
                repeats: int = 10) -> Dict[str, Any]:
  """Times `size`^3 matrix products on random data; best FLOP/s.

  Random operands, not zeros: zeros run measurably faster on some chips.
  The fastest repeat, not the median, because a peak is a best case and on
  a shared CPU the median mostly measures the neighbours' load.

  Args:
    dtype: operand dtype ('bfloat16' or 'float32').
    size: matrix side; `default_matmul_size()` if None.
    repeats: timed products after two warm-ups.

  Returns:
    {'dtype', 'size', 'flops_per_s'}.
  """
  size = size or default_matmul_size()
  keys = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(keys[0], (size, size), jnp.dtype(dtype))
  b = jax.random.normal(keys[1], (size, size), jnp.dtype(dtype))
  product = jax.jit(jnp.dot)
  for _ in range(2):
    product(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    product(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return {"dtype": dtype, "size": size,
          "flops_per_s": 2.0 * size ** 3 / min(times)}


def peak_memory() -> Tuple[Optional[int], str]:
  """(bytes, source): the device's peak in use, else the process's peak RSS.

  The device figure is a process-lifetime maximum, which is why the
  benchmark runs each configuration in a process of its own by default.
  """
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
  return peak_rss(), "process_peak_rss"


def peak_rss() -> int:
  """Peak resident set size of this process in bytes."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports kilobytes, macOS bytes.
  return int(rss if sys.platform == "darwin" else rss * 1024)
