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

# Task modules build T5's SentencePiece vocabulary from this path when they
# are imported; the default is on GCS (no network here). seqio ships a small
# SentencePiece model for its own tests.
import importlib.util  # pylint: disable=g-import-not-at-top

_SEQIO = importlib.util.find_spec("seqio")
os.environ["T5_VOCABULARY"] = os.path.join(
    os.path.dirname(_SEQIO.origin), "test_data", "sentencepiece",
    "sentencepiece.model")
