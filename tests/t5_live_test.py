"""The differential tests against live T5 0.9.4, as CI runs them.

`tests/metrics/t5_oracle_test.py` and `tests/data/t5_formats_oracle_test.py`
compare ours with fixtures of T5's answers; this runs T5 itself on the same
cases (each fixture script's `--check`, in a subprocess so that T5's task
registry, which uses our task names, never meets ours). T5's answers must
equal the fixtures within the fixture tolerance (`tests/float_fixtures.py`:
the fixtures were written on one CPU, and correlations' last bits depend on
the CPU's BLAS kernels), and for metrics ours must equal T5's bit for bit.

Each script also runs with OpenBLAS forced onto other kernels
(`OPENBLAS_CORETYPE`: Haswell's AVX2 ones, which give the bits of the AVX2
machines where a bit-exact fixture check first failed, and Prescott's SSE
ones, which every x86-64 CPU runs), so a bit that only one CPU computes
shows up on the developer's own machine, not first on a user's.

T5 comes from README's test command (`pip install --no-deps t5==0.9.4`: its
own requirements would replace seqio and tensorflow-datasets,
docs/t5_parity.md). Without it this fails, saying how to install it: it
never skips.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests import float_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = "pip install -c .ci/constraints.txt --no-deps t5==0.9.4"
FORCED_KERNELS = ("Haswell", "Prescott")


def _check(script, coretype=None):
  """Runs `script --check`; returns (output, last-bit differences)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  env.pop("OPENBLAS_CORETYPE", None)
  if coretype:
    env["OPENBLAS_CORETYPE"] = coretype
  result = subprocess.run([sys.executable, "-m", script, "--check"], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=600)
  output = result.stdout[-3000:] + result.stderr[-3000:]
  assert result.returncode == 0, f"OPENBLAS_CORETYPE={coretype}: {output}"
  found = re.search(re.escape(float_fixtures.LAST_BITS) + r" (\d+)", output)
  assert found, output
  return output, int(found.group(1))


@pytest.mark.parametrize("script", ["tests.metrics.make_t5_fixture",
                                    "tests.data.make_t5_format_fixture"])
def test_live_t5_agrees_on_every_kernel(script):
  assert importlib.util.find_spec("t5") is not None, (
      f"T5 0.9.4 is not installed: {INSTALL} (README's test command does)")
  _check(script)
  forced = {k: _check(script, k)[1] for k in FORCED_KERNELS}
  # The fixture holds one kernel's bits: some other kernel computes other
  # last bits, so the tolerance above was really exercised (were every count
  # 0, forcing kernels would have changed nothing and this check nothing).
  assert any(forced.values()), forced
