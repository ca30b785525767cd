"""The SentencePiece vocabularies of T5 and mT5, by configurable path.

Task modules build their output features from these functions when they are
imported. The default paths are the public T5 ones on Google Cloud Storage;
machines without access to them (tests, air-gapped clusters) point the
environment variables `T5_VOCABULARY` / `MT5_VOCABULARY` at a local copy
before any task module is imported. `HF_TOKENIZER` (a Hugging Face model
directory) makes the task modules tokenize for a decoder-only LM instead
(`task_vocabulary`). seqio loads a SentencePiece model lazily,
on first use, so building a vocabulary object never touches the file.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import seqio

# T5 and T5.1.1 (and the LM-adapted checkpoints) share this 32k vocabulary
# with 100 sentinel ids.
DEFAULT_T5_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
DEFAULT_MT5_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
T5_ENV = "T5_VOCABULARY"
MT5_ENV = "MT5_VOCABULARY"
# A Hugging Face model directory (or its tokenizer.json) whose tokenizer the
# registered task modules use instead of T5's: for decoder-only LMs.
HF_TOKENIZER_ENV = "HF_TOKENIZER"
# T5's vocabularies reserve 100 ids for span-corruption sentinels.
EXTRA_IDS = 100


def t5_path() -> str:
  """The T5 SentencePiece model path: $T5_VOCABULARY, else the public one."""
  return os.environ.get(T5_ENV) or DEFAULT_T5_PATH


def mt5_path() -> str:
  """The mT5 SentencePiece model path: $MT5_VOCABULARY, else the public one."""
  return os.environ.get(MT5_ENV) or DEFAULT_MT5_PATH


def t5_vocabulary(path: Optional[str] = None) -> seqio.Vocabulary:
  """T5's vocabulary (`path` overrides the configured one)."""
  return seqio.SentencePieceVocabulary(path or t5_path(), EXTRA_IDS)


def mt5_vocabulary(path: Optional[str] = None) -> seqio.Vocabulary:
  """mT5's vocabulary (`path` overrides the configured one)."""
  return seqio.SentencePieceVocabulary(path or mt5_path(), EXTRA_IDS)


def task_vocabulary() -> seqio.Vocabulary:
  """What the registered task modules (tasks/: SuperGLUE, GLUE, MRQA, ...)
  tokenize with: the Hugging Face tokenizer at $HF_TOKENIZER when set (a
  decoder-only LM's, `hf_vocabulary.HFTokenizerVocabulary`), else T5's."""
  path = os.environ.get(HF_TOKENIZER_ENV)
  if path:
    from prompt_tuning.data.hf_vocabulary import HFTokenizerVocabulary  # pylint: disable=g-import-not-at-top
    return HFTokenizerVocabulary(path)
  return t5_vocabulary()


def output_features(vocabulary: seqio.Vocabulary
                    ) -> Dict[str, seqio.Feature]:
  """T5's text-to-text features: inputs and targets, both EOS-terminated.

  Inputs are not required so that a task may also serve decoder-only uses,
  as in T5's own `DEFAULT_OUTPUT_FEATURES`.
  """
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
  }
