"""A Hugging Face `tokenizer.json` as a seqio vocabulary (Llama 3, Qwen2, ...).

Llama 3, Qwen2/2.5 and Mistral's newer checkpoints ship their tokenizer
only as `tokenizer.json` (no SentencePiece model, which
`seqio.SentencePieceVocabulary` would read; Llama 2's and Gemma's
`tokenizer.model` still work there). `HFTokenizerVocabulary` wraps the
`tokenizers` package's fast tokenizer so that a SeqIO task built on it
feeds a decoder-only LM like any other task:

- `encode` never adds special tokens: the row's BOS comes from the model's
  config (`data.decoder_features`), and seqio's `add_eos` appends `eos_id`;
- `eos_id` / `bos_id` are the tokenizer's end and start tokens, read from
  `tokenizer_config.json` beside the file (or named when constructed), so
  they are the ids the checkpoint's `generation_config` stops at;
- the file is read on first use (a task module may build the vocabulary at
  import without touching storage); `gs://` paths work.

Id 0 is a real token in these vocabularies (Llama 3's '!'), which seqio's
padding convention cannot say; the decoder-only rows therefore carry an
explicit mask (`decoder_mask`), and decoding keeps a prediction's tokens up
to its first EOS.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import storage

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _token_text(value: Any) -> Optional[str]:
  """A special token as tokenizer_config.json writes it: text or
  {'content': text}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


class HFTokenizerVocabulary(seqio.Vocabulary):
  """seqio's vocabulary interface over a Hugging Face fast tokenizer."""

  def __init__(self, path: str, eos_token: Optional[str] = None,
               bos_token: Optional[str] = None):
    """Args:

    path: a model directory holding tokenizer.json (and, usually,
      tokenizer_config.json), or the tokenizer.json file itself; local or
      gs://.
    eos_token, bos_token: the end and start tokens' text; None reads them
      from tokenizer_config.json beside the file.
    """
    super().__init__(extra_ids=0)
    self._path = path
    self._eos_token = eos_token
    self._bos_token = bos_token
    self._lock = threading.Lock()
    self._tokenizer = None
    self._eos_id: Optional[int] = None
    self._bos_id: Optional[int] = None

  def _files(self):
    if self._path.endswith(".json"):
      return self._path, storage.join(storage.dirname(self._path),
                                      TOKENIZER_CONFIG_FILE)
    return (storage.join(self._path, TOKENIZER_FILE),
            storage.join(self._path, TOKENIZER_CONFIG_FILE))

  @property
  def tokenizer(self):
    """The `tokenizers.Tokenizer`, loaded on first use."""
    with self._lock:
      if self._tokenizer is None:
        self._load()
      return self._tokenizer

  def _load(self) -> None:
    import tokenizers  # pylint: disable=g-import-not-at-top
    tokenizer_file, config_file = self._files()
    try:
      text = storage.read_text(tokenizer_file)
    except OSError as e:
      raise ValueError(f"Cannot read the tokenizer {tokenizer_file} ({e}); "
                       f"point the vocabulary at a model directory with "
                       f"{TOKENIZER_FILE}.") from None
    try:
      tokenizer = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{tokenizer_file} is not a tokenizers JSON file "
                       f"({str(e).splitlines()[0] if str(e) else e!r}).") \
          from None
    config = {}
    if storage.isfile(config_file):
      try:
        config = json.loads(storage.read_text(config_file))
      except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON ({e}).") from None
    eos = self._eos_token or _token_text(config.get("eos_token"))
    bos = self._bos_token or _token_text(config.get("bos_token"))
    if eos is None:
      raise ValueError(
          f"{tokenizer_file}: no EOS token (no eos_token in "
          f"{config_file}); name it: HFTokenizerVocabulary(path, "
          f"eos_token='<|end_of_text|>').")
    self._eos_id = self._id_of(tokenizer, eos, tokenizer_file, "EOS")
    self._bos_id = (self._id_of(tokenizer, bos, tokenizer_file, "BOS")
                    if bos else None)
    self._tokenizer = tokenizer

  @staticmethod
  def _id_of(tokenizer, token: str, where: str, what: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{where}: the {what} token {token!r} is not in the "
                       f"vocabulary.")
    return int(token_id)

  @property
  def eos_id(self) -> int:
    self.tokenizer  # pylint: disable=pointless-statement
    return self._eos_id

  @property
  def bos_id(self) -> Optional[int]:
    self.tokenizer  # pylint: disable=pointless-statement
    return self._bos_id

  @property
  def unk_id(self) -> Optional[int]:
    # Byte-level BPE (Llama 3, Qwen2) has no unknown token.
    return None

  @property
  def _base_vocab_size(self) -> int:
    return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    # Special tokens (BOS, the EOS seqio keeps) are not text.
    return self.tokenizer.decode([int(i) for i in ids],
                                 skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string -> [n] int32 (a Python call inside the graph)."""
    def encode(text):
      return np.asarray(self._encode(text.numpy().decode("utf-8")), np.int32)
    ids = tf.py_function(encode, [s], tf.int32)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """[n] or [B, n] ids -> a string or [B] strings."""
    rank = ids.shape.rank

    def decode(values):
      values = values.numpy()
      if values.ndim == 1:
        return self._decode(values).encode("utf-8")
      return np.asarray([self._decode(row).encode("utf-8")
                         for row in values], object)
    out = tf.py_function(decode, [ids], tf.string)
    out.set_shape([] if rank == 1 else [None])
    return out

  def __eq__(self, other: Any) -> bool:
    return (isinstance(other, HFTokenizerVocabulary) and
            (self._path, self._eos_token, self._bos_token) ==
            (other._path, other._eos_token, other._bos_token))

  def __hash__(self) -> int:
    return hash((self._path, self._eos_token, self._bos_token))
