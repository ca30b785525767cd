"""The README quickstart's synthetic SeqIO tasks: no files, no network.

A miniature of the paper's setting. Every example is a sentence of 3-7 words
drawn from a fixed lexicon of positive, negative and neutral words. A tiny T5
is pretrained (by `launch/make_quickstart_checkpoint.py`) on a mixture of
three skills, each named by a task prefix as in T5's multi-task training:

- `quickstart_first`:     'first: happy cat awful'  -> 'happy'
- `quickstart_last`:      'last: happy cat awful'   -> 'awful'
- `quickstart_sentiment`: 'sentiment: happy cat awful angry' -> 'negative'
- `quickstart_pretrain`:  the mixture of the three, equal rates.

The held-out prompt-tuning task is the sentiment task WITHOUT its prefix, as
in the paper's "taskless" SuperGLUE: the inputs no longer say which skill is
wanted, so a soft prompt in front of the frozen model has to select it.

- `quickstart_sentiment_taskless`: 'happy cat awful angry' -> 'negative'

For multitask prompts (one run, a prompt per task, the task given per
example rather than in the text) the other two skills have taskless tasks
too, and the three make a mixture:

- `quickstart_first_taskless`, `quickstart_last_taskless`;
- `quickstart_taskless_mix`: the three taskless tasks, equal rates. Without
  a per-task prompt, first and last cannot both be right.

Sentiment is the label of the majority of the polar words; every sentence
has 1, 3 or 5 polar words, so there are no ties, and the two labels are
equally frequent. Metrics: `accuracy`, in percent (0..100, as the paper
reports it); for the sentiment tasks, a prediction that is not one of
`LABELS` becomes `INVALID` and counts as wrong. Text is lowercase ASCII, so
`seqio.ByteVocabulary` ids stay below 128; inputs fit 64 tokens and targets
16 ('positive' is 8 bytes plus EOS, more than the paper's 8 targets tokens).
Splits: 'train' (`NUM_PRETRAIN_TRAIN` examples for the pretraining tasks,
`NUM_TRAIN` for the taskless one) and 'validation' (`NUM_VALIDATION`),
generated from fixed seeds, identical on every call and machine; each task
draws its own sentences.

Importing this module (`prompt_tuning.tasks.quickstart`, as runs/quickstart.gin
does) registers the tasks once per process: each registration is skipped if
the name is taken. The sentiment tasks carry their label words in the task
catalogue (`prompt_tuning.data.registry.class_labels`).
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio

from prompt_tuning.data import custom_tasks
from prompt_tuning import metrics
from prompt_tuning.data import registry

# Pretraining sees many sentences so that the tiny model learns the rules
# rather than the examples; prompt tuning gets "a few thousand", as a small
# downstream dataset.
NUM_PRETRAIN_TRAIN = 20000
NUM_TRAIN = 4000
NUM_VALIDATION = 200
LABELS = ("positive", "negative")
# What the postprocessor makes of an output that is not a label; never a
# target, so it always counts as wrong.
INVALID = "<invalid>"

FIRST_TASK = "quickstart_first"
LAST_TASK = "quickstart_last"
SENTIMENT_TASK = "quickstart_sentiment"
TASKLESS_TASK = "quickstart_sentiment_taskless"
PRETRAIN_MIXTURE = "quickstart_pretrain"
PRETRAIN_TASKS = (FIRST_TASK, LAST_TASK, SENTIMENT_TASK)
FIRST_TASKLESS_TASK = "quickstart_first_taskless"
LAST_TASKLESS_TASK = "quickstart_last_taskless"
TASKLESS_MIXTURE = "quickstart_taskless_mix"
TASKLESS_TASKS = (FIRST_TASKLESS_TASK, LAST_TASKLESS_TASK, TASKLESS_TASK)
# Feature lengths every quickstart example fits untruncated.
FEATURE_LENGTHS = {"inputs": 64, "targets": 16}

# Every polar word has 5 letters, so the majority of polar words is also the
# majority of polar bytes: a tiny byte-level model may weigh characters or
# words, the label is the same. Words have at most 6 letters: 7 words, their
# spaces and the longest prefix ('sentiment: ') plus EOS fit
# FEATURE_LENGTHS['inputs'].
POSITIVE_WORDS = ("great", "happy", "merry", "sunny", "sweet", "lucky",
                  "jolly", "proud", "brave", "super")
NEGATIVE_WORDS = ("awful", "angry", "cruel", "nasty", "harsh", "bleak",
                  "scary", "gross", "lousy", "tense")
NEUTRAL_WORDS = ("cat", "dog", "table", "house", "car", "tree", "river",
                 "city", "book", "chair", "lamp", "road", "blue", "green",
                 "red", "small", "big", "old", "new", "day", "night", "door",
                 "shoe", "bird")

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}

_SPLIT_IDS = {"train": 0, "validation": 1}
# One random stream per task, so that the taskless task's sentences are not
# the ones the frozen model was pretrained on.
_STREAMS = {FIRST_TASK: 0, LAST_TASK: 1, SENTIMENT_TASK: 2, TASKLESS_TASK: 3,
            FIRST_TASKLESS_TASK: 4, LAST_TASKLESS_TASK: 5}
_PREFIXES = {FIRST_TASK: "first: ", LAST_TASK: "last: ",
             SENTIMENT_TASK: "sentiment: ", TASKLESS_TASK: "",
             FIRST_TASKLESS_TASK: "", LAST_TASKLESS_TASK: ""}
# An odd count of polar words makes a majority always exist.
_POLAR_COUNTS = (1, 3, 5)
_MIN_WORDS, _MAX_WORDS = 3, 7


def sentiment(words: Sequence[str]) -> str:
  """'positive' or 'negative': the label of most polar words in `words`.

  Raises:
    ValueError: if the positive and negative words are equally many (no
      generated sentence is like that).
  """
  score = (sum(w in POSITIVE_WORDS for w in words) -
           sum(w in NEGATIVE_WORDS for w in words))
  if score == 0:
    raise ValueError(f"No majority sentiment in {' '.join(words)!r}.")
  return LABELS[0] if score > 0 else LABELS[1]


def format_example(task_name: str, words: Sequence[str]) -> Dict[str, str]:
  """The {'inputs', 'targets'} text of one sentence for a quickstart task."""
  if task_name not in _PREFIXES:
    raise KeyError(f"Not a quickstart task: {task_name!r}; known: "
                   f"{sorted(_PREFIXES)}.")
  if task_name in (FIRST_TASK, FIRST_TASKLESS_TASK):
    target = words[0]
  elif task_name in (LAST_TASK, LAST_TASKLESS_TASK):
    target = words[-1]
  else:
    target = sentiment(words)
  return {"inputs": _PREFIXES[task_name] + " ".join(words), "targets": target}


def _sentence(rng: np.random.Generator) -> List[str]:
  """3-7 words with 1, 3 or 5 polar ones; each label equally likely."""
  length = int(rng.integers(_MIN_WORDS, _MAX_WORDS + 1))
  num_polar = int(rng.choice([k for k in _POLAR_COUNTS if k <= length]))
  num_majority = int(rng.integers(num_polar // 2 + 1, num_polar + 1))
  majority, minority = ((POSITIVE_WORDS, NEGATIVE_WORDS) if rng.integers(2)
                        else (NEGATIVE_WORDS, POSITIVE_WORDS))
  words = (list(rng.choice(majority, num_majority)) +
           list(rng.choice(minority, num_polar - num_majority)) +
           list(rng.choice(NEUTRAL_WORDS, length - num_polar)))
  return [str(w) for w in rng.permutation(words)]


def split_sizes(task_name: str) -> Dict[str, int]:
  """Examples per split of a quickstart task."""
  train = NUM_PRETRAIN_TRAIN if task_name in PRETRAIN_TASKS else NUM_TRAIN
  return {"train": train, "validation": NUM_VALIDATION}


def sentences(task_name: str, split: str) -> List[List[str]]:
  """The sentences of a task's split, in source order (fixed per seed)."""
  rng = np.random.default_rng([_STREAMS[task_name], _SPLIT_IDS[split]])
  return [_sentence(rng) for _ in range(split_sizes(task_name)[split])]


def examples(task_name: str, split: str) -> Dict[str, List[str]]:
  """The text examples of a task's split: {'inputs': [...], 'targets': [...]}."""
  formatted = [format_example(task_name, words)
               for words in sentences(task_name, split)]
  return {key: [ex[key] for ex in formatted] for key in ("inputs", "targets")}


def postprocess_label(output: str, example: Optional[Mapping[str, Any]] = None,
                      is_target: bool = False) -> str:
  """Maps anything but a label word to `INVALID`."""
  del example, is_target
  return output if output in LABELS else INVALID


def _add_task(task_name: str) -> None:
  is_sentiment = task_name in (SENTIMENT_TASK, TASKLESS_TASK)
  registry.add_task(
      task_name, family="quickstart",
      description="synthetic " + task_name[len("quickstart_"):].replace(
          "_", ", ") + " (README quickstart)",
      class_labels=LABELS if is_sentiment else (),
      source=custom_tasks.function_source(
          lambda split: examples(task_name, split), split_sizes(task_name)),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=OUTPUT_FEATURES,
      postprocess_fn=postprocess_label if is_sentiment else None,
      metric_fns=[metrics.accuracy],
      shuffle_buffer_size=split_sizes(task_name)["train"])


def register() -> Tuple[str, ...]:
  """Registers the tasks and the mixture (idempotent); returns their names."""
  for task_name in PRETRAIN_TASKS + TASKLESS_TASKS:
    _add_task(task_name)
  registry.add_mixture(PRETRAIN_MIXTURE, PRETRAIN_TASKS,
                            family="quickstart", default_rate=1.0,
                            description="pretraining mixture of the three "
                                        "prefixed tasks")
  registry.add_mixture(TASKLESS_MIXTURE, TASKLESS_TASKS, family="quickstart",
                       default_rate=1.0,
                       description="the three skills without their prefixes "
                                   "(multitask prompts)")
  return (PRETRAIN_TASKS + TASKLESS_TASKS +
          (PRETRAIN_MIXTURE, TASKLESS_MIXTURE))


register()
