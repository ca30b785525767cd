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
