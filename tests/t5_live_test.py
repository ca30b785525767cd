"""The differential tests against live T5 0.9.4, as CI runs them.

`tests/metrics/t5_oracle_test.py` and `tests/data/t5_formats_oracle_test.py`
compare ours with fixtures of T5's answers; this runs T5 itself on the same
cases (each fixture script's `--check`, in a subprocess so that T5's task
registry, which uses our task names, never meets ours) and requires T5's
answers to equal the fixtures bit for bit, and for metrics also ours. T5
comes from README's test command (`pip install --no-deps t5==0.9.4`: its own
requirements would replace seqio and tensorflow-datasets, docs/t5_parity.md).
Without it this fails, saying how to install it: it never skips.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = "pip install -c .ci/constraints.txt --no-deps t5==0.9.4"


@pytest.mark.parametrize("script", ["tests.metrics.make_t5_fixture",
                                    "tests.data.make_t5_format_fixture"])
def test_live_t5_agrees(script):
  assert importlib.util.find_spec("t5") is not None, (
      f"T5 0.9.4 is not installed: {INSTALL} (README's test command does)")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-m", script, "--check"], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, (result.stdout[-3000:] +
                                  result.stderr[-3000:])
