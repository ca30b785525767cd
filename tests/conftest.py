"""Test-session setup: 8 fake CPU devices, set before JAX is first imported.

Sharding tests need a (data=4, model=2) mesh; XLA only honours the flag if it
is in the environment before the CPU backend initialises.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") +
    " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (pulled in by seqio) must not grab the GPU or spam the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
