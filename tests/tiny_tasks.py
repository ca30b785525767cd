"""Tiny in-memory SeqIO tasks for tests: no files, no network, no SentencePiece.

`register()` adds, once per process, tasks built with `seqio.FunctionDataSource`
and `seqio.ByteVocabulary` (ids = UTF-8 byte + 3; 0 pad, 1 EOS). The text is
lowercase ASCII, spaces and ':' only, so every id is below 128 and fits the
`t5_1_1_tiny` preset's vocabulary. Each task has a 'train' split of
`NUM_TRAIN` and a 'validation' split of `NUM_VALIDATION` examples, the same on
every call (numpy RandomState seeded per split); NUM_VALIDATION is not a
multiple of 8, so evaluation exercises a padded last batch.

- `tiny_copy`: 'copy: w1 w2 w3' -> 'w1 w2 w3'; metric: exact-match accuracy.
- `tiny_classify`: 'classify: w1 w2 w3' -> 'yes' if w1 starts with a letter
  in a..m, else 'no'; predictions outside {yes, no} become `INVALID`; its
  label words are in the task catalogue (rank classification, class-label
  prompt init).
- `tiny_classify_scored`: tiny_classify's data with a score metric (the mean
  log-likelihood the model gives the targets).
- `tiny_mix`: a mixture of tiny_copy and tiny_classify, equal rates.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import seqio

from prompt_tuning.data import custom_tasks
from prompt_tuning.data import registry

NUM_TRAIN = 64
NUM_VALIDATION = 60
LABELS = ("yes", "no")
# What the postprocessor makes of an output that is not a label; never a
# target, so it always counts as wrong.
INVALID = "<invalid>"

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}
_SPLIT_SEEDS = {"train": 0, "validation": 1}
_SPLIT_SIZES = {"train": NUM_TRAIN, "validation": NUM_VALIDATION}
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _words(split: str) -> List[List[str]]:
  """Three random 2-5 letter words per example, fixed per split."""
  rng = np.random.RandomState(_SPLIT_SEEDS[split])
  examples = []
  for _ in range(_SPLIT_SIZES[split]):
    examples.append(["".join(rng.choice(_LETTERS, rng.randint(2, 6)))
                     for _ in range(3)])
  return examples


def classify_label(words: Sequence[str]) -> str:
  """The tiny_classify rule."""
  return "yes" if words[0][0] <= "m" else "no"


def _copy_examples(split: str) -> Dict[str, List[str]]:
  texts = [" ".join(w) for w in _words(split)]
  return {"inputs": [f"copy: {t}" for t in texts], "targets": texts}


def _classify_examples(split: str) -> Dict[str, List[str]]:
  words = _words(split)
  return {"inputs": [f"classify: {' '.join(w)}" for w in words],
          "targets": [classify_label(w) for w in words]}


def accuracy(targets: Sequence[Any],
             predictions: Sequence[Any]) -> Dict[str, float]:
  """Fraction (0..1) of predictions equal to their target."""
  if not targets:
    return {"accuracy": 0.0}
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": hits / len(targets)}


def mean_log_likelihood(targets: Sequence[Any],
                        scores: Sequence[float]) -> Dict[str, float]:
  """Mean score the model gave the targets."""
  del targets
  return {"mean_log_likelihood": float(np.mean(scores))}


def postprocess_label(output: str, example: Optional[Mapping[str, Any]] = None,
                      is_target: bool = False) -> str:
  """Maps anything but a label word to `INVALID`."""
  del example, is_target
  return output if output in LABELS else INVALID


def _preprocessors() -> List[Any]:
  return [seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim]


def _add_task(name: str, make_examples, metric_fns, postprocess_fn=None,
              class_labels=()):
  registry.add_task(
      name, family="tests", class_labels=class_labels,
      source=custom_tasks.function_source(make_examples, _SPLIT_SIZES),
      preprocessors=_preprocessors(),
      output_features=OUTPUT_FEATURES,
      postprocess_fn=postprocess_fn,
      metric_fns=metric_fns,
      shuffle_buffer_size=NUM_TRAIN)


def register() -> None:
  """Registers every tiny task and the mixture; safe to call repeatedly."""
  _add_task("tiny_copy", _copy_examples, [accuracy])
  _add_task("tiny_classify", _classify_examples, [accuracy],
            postprocess_fn=postprocess_label, class_labels=LABELS)
  _add_task("tiny_classify_scored", _classify_examples, [mean_log_likelihood])
  registry.add_mixture("tiny_mix", ["tiny_copy", "tiny_classify"],
                            family="tests", default_rate=1.0)


def examples(task_name: str, split: str) -> Dict[str, List[str]]:
  """The raw text examples of a tiny task, in source order."""
  if task_name == "tiny_copy":
    return _copy_examples(split)
  if task_name in ("tiny_classify", "tiny_classify_scored"):
    return _classify_examples(split)
  raise KeyError(task_name)


# Importing this module registers the tasks (e.g. --task_module=tests.tiny_tasks).
register()
