"""HFTokenizerVocabulary: a tokenizer.json (byte-level BPE, as Llama 3's and
Qwen2's) as a seqio vocabulary, through a task and the decoder-only rows."""

import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from prompt_tuning.data import decoder_features
from prompt_tuning.data.hf_vocabulary import HFTokenizerVocabulary

TEXT = ["the cat sat on the mat", "a dog ran far away!", "cats and dogs",
        "prompt tuning trains a few numbers", "Hello, world! 123"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tokenizer"))
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|begin|>", "<|end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(TEXT * 5, trainer)
  tokenizer.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|end|>",
               "bos_token": {"content": "<|begin|>"}}, f)
  return path


def test_encode_decode_and_special_ids(model_dir):
  vocab = HFTokenizerVocabulary(model_dir)
  raw = tokenizers.Tokenizer.from_file(os.path.join(model_dir,
                                                    "tokenizer.json"))
  assert vocab.eos_id == raw.token_to_id("<|end|>") == 1
  assert vocab.bos_id == raw.token_to_id("<|begin|>") == 0
  assert vocab.vocab_size == raw.get_vocab_size()
  for text in TEXT + ["unseen words: zebra, 9!"]:
    ids = vocab.encode(text)
    assert ids == raw.encode(text, add_special_tokens=False).ids
    assert vocab.bos_id not in ids and vocab.eos_id not in ids
    assert vocab.decode(ids) == text
    # Through the graph, as seqio's tokenize preprocessor calls it.
    np.testing.assert_array_equal(
        vocab.encode_tf(tf.constant(text)).numpy(), ids)
    # Decoding stops at EOS, which is not text.
    assert vocab.decode(ids + [vocab.eos_id] + ids) == text
  rows = [vocab.encode("the cat"), vocab.encode("a dog ")]
  width = max(map(len, rows)) + 2
  # Each row: its text, EOS, then anything (cut at the EOS).
  batch = tf.constant([r + [1] + [5] * (width - len(r) - 1) for r in rows])
  assert [s.decode() for s in vocab.decode_tf(batch).numpy()] == [
      "the cat", "a dog "]
  # The same file by name: an equal vocabulary (seqio compares features).
  assert vocab == HFTokenizerVocabulary(model_dir)
  assert vocab != HFTokenizerVocabulary(model_dir, eos_token="<|begin|>")


def test_a_task_on_it_feeds_decoder_only_rows(model_dir):
  vocab = HFTokenizerVocabulary(os.path.join(model_dir, "tokenizer.json"))
  name = "hf_vocabulary_test_task"
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, seqio.FunctionDataSource(
            lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
                {"inputs": ["the cat sat"], "targets": ["on the mat"]}),
            splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                         "targets": seqio.Feature(vocab, add_eos=True)})
  lengths = {"inputs": 8, "targets": 8}
  ds = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split="train", shuffle=False, trim_output_features=True)
  converter = decoder_features.DecoderOnlyConverter(vocab.bos_id)
  row = next(converter(ds, lengths).as_numpy_iterator())
  inputs, targets = vocab.encode("the cat sat"), vocab.encode("on the mat")
  real = [vocab.bos_id] + inputs + targets + [vocab.eos_id]
  np.testing.assert_array_equal(row["decoder_input_tokens"][:len(real)],
                                real)
  assert row["decoder_mask"].sum() == len(real)
  weighted = row["decoder_target_tokens"][row["decoder_loss_weights"] > 0]
  np.testing.assert_array_equal(weighted, targets + [vocab.eos_id])


def test_one_line_errors(tmp_path, model_dir):
  with pytest.raises(ValueError, match="Cannot read the tokenizer"):
    _ = HFTokenizerVocabulary(str(tmp_path)).eos_id
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="is not a tokenizers JSON file"):
    _ = HFTokenizerVocabulary(str(bad)).eos_id
  plain = tmp_path / "plain"
  plain.mkdir()
  with open(os.path.join(model_dir, "tokenizer.json")) as f:
    (plain / "tokenizer.json").write_text(f.read())
  with pytest.raises(ValueError, match="no EOS token"):
    _ = HFTokenizerVocabulary(str(plain)).eos_id
  assert HFTokenizerVocabulary(str(plain), eos_token="<|end|>").eos_id == 1
  with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
    _ = HFTokenizerVocabulary(str(plain), eos_token="<nope>").eos_id


def test_task_modules_take_the_tokenizer_from_the_environment(model_dir,
                                                              monkeypatch):
  from prompt_tuning.data import vocabularies  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(vocabularies.HF_TOKENIZER_ENV, model_dir)
  assert vocabularies.task_vocabulary() == HFTokenizerVocabulary(model_dir)
  monkeypatch.delenv(vocabularies.HF_TOKENIZER_ENV)
  assert isinstance(vocabularies.task_vocabulary(),
                    seqio.SentencePieceVocabulary)
