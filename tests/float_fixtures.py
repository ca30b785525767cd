"""Comparing plain (JSON-ready) values with fixtures written on another CPU.

Committed fixtures hold floats that a library computed on the machine that
wrote them. Reductions (sums, dot products, norms) in numpy, scipy and
OpenBLAS take a kernel chosen for the CPU at run time (SSE, AVX2, AVX-512),
and kernels add in different orders, so the same call gives other last bits
on another CPU: the T5 fixtures, written on an AVX-512 machine, differed from
an AVX2 machine's in the last 1-2 digits of 30 Pearson correlations. A test
that compares such a float with the fixture bit for bit fails for every
user but the fixture's author.

So against a fixture: everything discrete (types, structure, strings, ints,
bools, NaN-ness, the sign of a zero, infinities) is compared exactly, and a
finite float within `REL_TOL` of the fixture's (relative), or within an
absolute floor the caller gives where values can be near zero (a correlation
of N terms: N * eps). Two computations on one machine (ours against a live
T5 beside it) still compare bit for bit: pass `rel=0`.
"""

import math
from typing import Any, List

# A few hundred ULPs of float64 (eps = 2.2e-16): far above any reordering
# of the sums these fixtures hold (seen: 1 to 3 ULPs), far below any
# change a bug would make to a metric.
REL_TOL = 1e-12
# How the fixture scripts' --check report `last_bit_differences` (parsed by
# tests/t5_live_test.py).
LAST_BITS = "floats within the tolerance but not bit-equal to the fixture:"


def close(a: float, b: float, rel: float = REL_TOL, abs_: float = 0.0) -> bool:
  """Floats equal up to the tolerance; NaN, infinities and zero signs exact."""
  if a.hex() == b.hex():  # hex() tells -0.0 from 0.0, which == does not.
    return True
  if math.isnan(a) and math.isnan(b):
    return True
  if not (math.isfinite(a) and math.isfinite(b)) or (a == 0 and b == 0):
    return False
  return abs(a - b) <= max(rel * max(abs(a), abs(b)), abs_)


def differences(actual: Any, expected: Any, rel: float = REL_TOL,
                abs_: float = 0.0, path: str = "") -> List[str]:
  """One line per place where `actual` and `expected` differ beyond `close`.

  Types must match exactly (JSON keeps 1 and 1.0 apart, so a float where the
  fixture has an int is a difference), as must dict keys and list lengths.
  """
  where = path or "(top)"
  if type(actual) is not type(expected):
    return [f"{where}: {actual!r} ({type(actual).__name__}) vs "
            f"{expected!r} ({type(expected).__name__})"]
  if isinstance(actual, float):
    return ([] if close(actual, expected, rel, abs_) else
            [f"{where}: {actual!r} vs {expected!r}"])
  if isinstance(actual, dict):
    if actual.keys() != expected.keys():
      return [f"{where}: keys {sorted(actual)} vs {sorted(expected)}"]
    return [line for k in actual for line in differences(
        actual[k], expected[k], rel, abs_, f"{path}/{k}")]
  if isinstance(actual, list):
    if len(actual) != len(expected):
      return [f"{where}: {len(actual)} items vs {len(expected)}"]
    return [line for i, (a, b) in enumerate(zip(actual, expected))
            for line in differences(a, b, rel, abs_, f"{path}[{i}]")]
  return [] if actual == expected else [
      f"{where}: {actual!r} vs {expected!r}"]


def same(actual: Any, expected: Any, rel: float = REL_TOL,
         abs_: float = 0.0) -> bool:
  """No `differences`."""
  return not differences(actual, expected, rel, abs_)


def last_bit_differences(actual: Any, expected: Any) -> int:
  """How many floats differ in any bit (for the scripts' reports)."""
  if isinstance(actual, float) and isinstance(expected, float):
    return int(actual.hex() != expected.hex() and not (
        math.isnan(actual) and math.isnan(expected)))
  if isinstance(actual, dict) and isinstance(expected, dict):
    return sum(last_bit_differences(actual[k], expected[k])
               for k in actual if k in expected)
  if isinstance(actual, list) and isinstance(expected, list):
    return sum(last_bit_differences(a, b) for a, b in zip(actual, expected))
  return 0
