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

# Task modules build T5's SentencePiece vocabulary from $T5_VOCABULARY when
# they are imported; the default is on GCS (no network here). A small
# SentencePiece model is trained here instead (~50 ms): byte fallback makes
# every string round-trip through encode/decode (seqio's own test model has
# no capital letters), with T5's special ids (0 pad, 1 EOS, 2 unknown).
import io  # pylint: disable=g-import-not-at-top
import string  # pylint: disable=g-import-not-at-top
import tempfile  # pylint: disable=g-import-not-at-top

import sentencepiece  # pylint: disable=g-import-not-at-top


def _train_test_vocabulary() -> str:
  corpus = ["The quick brown fox jumps over the lazy dog.",
            "question: who wrote it? context: Ann wrote it. passage: True",
            "False entailment not_entailment contradiction neutral choice1",
            string.ascii_letters + string.digits + string.punctuation] * 20
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=model, vocab_size=420,
      byte_fallback=True, character_coverage=1.0, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      minloglevel=2)
  path = os.path.join(tempfile.mkdtemp(prefix="t5_test_vocab_"),
                      "sentencepiece.model")
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return path


os.environ["T5_VOCABULARY"] = _train_test_vocabulary()

# The entry points cache compiled steps (prompt_tuning/compilation_cache.py);
# the tests' subprocesses use one cache per test session, shared by its xdist
# workers (JAX's cache writes are safe with several processes), never the
# user's ~/.cache.
os.environ.setdefault("PROMPT_TUNING_COMPILATION_CACHE", os.path.join(
    tempfile.gettempdir(), "prompt_tuning_test_compilation_cache_" + (
        os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid()))))

import pytest  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="session")
def frozen(tmp_path_factory):
  """A random tiny T5 (t5_1_1_tiny, seed 0) saved as a T5X legacy checkpoint:
  the frozen model of the end-to-end training tests."""
  # Imported here: JAX must not load before the XLA_FLAGS above are set.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pretrained.assemble import flat_names  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import T5  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5_config  # pylint: disable=g-import-not-at-top
  from tests import t5x_fixtures  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("frozen"))
  tokens = np.ones((1, 3), np.int32)
  variables = jax.jit(T5(t5_config("t5_1_1_tiny")).init)(
      jax.random.PRNGKey(0), tokens, tokens, tokens)
  flat = {k: np.asarray(v.unbox()) for k, v in
          flat_names(variables["params"]).items()}
  t5x_fixtures.write_t5x_legacy(path, 0, flat)
  return path
