"""The generated examples and shared plumbing of the task-format T5 oracle.

`t5_formats_oracle_test.py` compares our tasks with what T5 0.9.4's tasks
made of these examples, saved in `t5_format_expected.json` by
`make_t5_format_fixture.py` (T5 cannot be installed by the `test` extra:
docs/t5_parity.md says why). Both sides import this module, which uses
neither T5 nor our task modules: the examples, the case list, running a
task's text preprocessors, the predictions to score and the scoring itself
are the same code for both.

The examples are TFDS-shaped (the fields and dtypes of each dataset) with
generated text: unicode (accents, combining marks, CJK, emoji), ASCII and
typographic punctuation, whitespace runs, tabs, newlines and the whitespace
RE2's \\s does not match, empty fields, hidden -1 labels, and the markup the
formats rewrite (MultiRC's <br>/<b>, ReCoRD's @highlight, MRQA's [PAR]).
They are seeded: the same on every run (the fixture records a digest).
"""

import dataclasses
import hashlib
import json
import random
import string
from typing import Any, Callable, Dict, List, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

# Pieces of generated text: ASCII and typographic punctuation, accents,
# combining marks, CJK, emoji, every kind of whitespace RE2's \s does and
# does not match, and the markup the formats rewrite.
_ATOMS = (list(string.ascii_letters + string.digits) * 4 +
          list(string.punctuation) * 2 + [" "] * 60 +
          list("\t\n\r\f\v\u00a0\u2009\u3000\u200b") +
          list("éüßçñøÅİıΩжщ") + list("—–“”‘’…«»¿¡·•€£°§") +
          ["日本語", "中文", "한국어", "🙂", "👍🏽", "🇯🇵", "e\u0301", "...",
           "U.S.", "--", "''", "(sic)", "$5.00", "[PAR]", "[DOC]", "[TLE]",
           "<br>", "<b>", "</b>", "@highlight", "\n@highlight\n", " X ",
           "X", "*", "@placeholder", "\\1", "  ", " , ", "n't"])
# Hand-picked texts every dataset also gets.
_FIXED_TEXTS = ("", " ", "  padded  ", "U.S.-led (sic)!? \"quoted\" 'single'",
                "a\tb\nc", "no_space_at_all", " leading", "trailing ",
                "Café naïve — “smart” ‘quotes’ … 日本語 🙂",
                "<b>Sent 1: </b>Tom ran.<br><b>Sent 2: </b>Ann sat.")
_NUM_RANDOM = 16


def _rng(name):
  return random.Random(f"t5-oracle/{name}")


def _text(rng, low=0, high=40):
  return "".join(rng.choice(_ATOMS) for _ in range(rng.randint(low, high)))


def _texts(rng, count):
  """`count` texts: the fixed ones first, then random ones."""
  fixed = list(_FIXED_TEXTS)
  rng.shuffle(fixed)
  return [fixed[i] if i < len(fixed) else _text(rng) for i in range(count)]


def _word(rng):
  """A space-free word (WSC/DPR split on spaces), now and then opening with
  other whitespace (where the taskless rules differ); no backslash, which a
  pronoun would carry into a regex rewrite string."""
  word = "".join(rng.choice(_ATOMS) for _ in range(rng.randint(1, 6)))
  word = word.replace(" ", "").replace("\\", "") or "w"
  return rng.choice(["", "", "", "\t", "\n", "\u00a0"]) + word


def _strings(values):
  return np.array(list(values), dtype=object)


# Text fields and class counts of the GLUE / SuperGLUE configs (TFDS's).
_GLUE_FIELDS = {
    "cola": ("sentence",), "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "mnli_matched": ("premise", "hypothesis"),
    "mnli_mismatched": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"), "ax": ("premise", "hypothesis"),
}
_NUM_CLASSES = {
    "cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "mnli": 3, "mnli_matched": 3,
    "mnli_mismatched": 3, "qnli": 2, "rte": 2, "wnli": 2, "ax": 3,
    "boolq": 2, "cb": 3, "copa": 2, "multirc": 2, "wic": 2, "axb": 2,
    "axg": 2,
}
_SUPER_GLUE_FIELDS = {
    "boolq": ("question", "passage"), "cb": ("premise", "hypothesis"),
    "copa": ("premise", "choice1", "choice2", "question"),
    "rte": ("premise", "hypothesis"), "axb": ("sentence1", "sentence2"),
    "axg": ("premise", "hypothesis"),
    "wic": ("word", "sentence1", "sentence2"),
    "multirc": ("paragraph", "question", "answer"),
}


def _classification(name, fields, num_classes, float_label=False):
  rng = _rng(name)
  columns = {f: _texts(rng, len(_FIXED_TEXTS) + _NUM_RANDOM) for f in fields}
  examples = []
  for i in range(len(_FIXED_TEXTS) + _NUM_RANDOM):
    ex = {f: columns[f][(i + k) % len(columns[f])]
          for k, f in enumerate(fields)}
    if float_label:
      ex["label"] = np.float32(rng.choice(
          [-1.0, 0.0, 0.09, 0.1, 0.3, 0.5, 2.5, 2.7, 3.71, 4.9, 5.0]))
    else:
      ex["label"] = np.int64(rng.randrange(-1, num_classes))
    ex["idx"] = np.int32(i)
    examples.append(ex)
  return examples


def _glue_examples(config):
  return _classification(f"glue/{config}", _GLUE_FIELDS[config],
                         _NUM_CLASSES.get(config, 0),
                         float_label=config == "stsb")


def _super_glue_examples(config):
  if config == "record":
    return _record_examples()
  examples = _classification(f"super_glue/{config}",
                             _SUPER_GLUE_FIELDS[config],
                             _NUM_CLASSES[config])
  rng = _rng(f"super_glue/{config}/extra")
  for i, ex in enumerate(examples):
    if config == "copa":
      ex["question"] = rng.choice(["cause", "effect"])
    if config == "wic":
      for key in ("start1", "end1", "start2", "end2"):
        ex[key] = np.int32(rng.randrange(10))
    if config == "multirc":
      ex["idx"] = {"paragraph": np.int32(i // 4), "question": np.int32(i // 2),
                   "answer": np.int32(i)}
  return examples


def _record_examples():
  rng = _rng("super_glue/record")
  examples = []
  for i, passage in enumerate(_texts(rng, len(_FIXED_TEXTS) + _NUM_RANDOM)):
    entities = [_text(rng, 1, 8) for _ in range(rng.randint(1, 4))]
    answers = rng.sample(entities, rng.randint(0, len(entities)))
    highlights = "".join(rng.choice(["\n@highlight\n", ".\n@highlight\n",
                                     "!\n@highlight\n", "\"\n@highlight\n"]) +
                         _text(rng, 0, 10) for _ in range(rng.randint(0, 3)))
    examples.append({
        "passage": passage + highlights, "query": _text(rng) + "@placeholder",
        "entities": _strings(entities), "answers": _strings(answers),
        "idx": {"passage": np.int32(i // 2), "query": np.int32(i)}})
  return examples


# T5's two WSC texts with a hard-coded marked form.
_WSC_SPECIAL = (
    "The boy continued to whip the pony , and eventually the pony threw him "
    "over. John laughed out quite loud. \"Good for him,\" he said. ",
    "When they had eventually calmed down a bit , and had gotten home, Mr. "
    "Farley put the magic pebble in an iron safe . Some day they might want "
    "to use it , but really for now, what more could they wish for?")


def _wsc_examples():
  rng = _rng("super_glue/wsc.fixed")
  examples = []
  for i in range(_NUM_RANDOM + 8):
    words = [_word(rng) for _ in range(rng.randint(3, 12))]
    if rng.random() < 0.3:
      words.insert(rng.randint(1, len(words) - 1), "X")
    index = rng.randint(1, len(words) - 1)
    examples.append({
        "text": " ".join(words), "span1_index": np.int32(0),
        "span2_index": np.int32(index), "span1_text": words[0],
        "span2_text": words[index], "idx": np.int32(i),
        "label": np.int64(rng.choice([-1, 0, 1]))})
  for i, text in enumerate(_WSC_SPECIAL):
    words = text.split(" ")
    pronoun = "him" if i == 0 else "it"
    examples.append({
        "text": text, "span1_index": np.int32(0),
        "span2_index": np.int32(words.index(pronoun)), "span1_text": "pony",
        "span2_text": pronoun, "idx": np.int32(100 + i),
        "label": np.int64(1)})
  return examples


def _dpr_examples():
  rng = _rng("definite_pronoun_resolution")
  examples = []
  for _ in range(_NUM_RANDOM + 8):
    pronoun = rng.choice(["he", "she", "it", "they", "him", "her", "them",
                          "his", "él", "它"])
    words = [_word(rng) for _ in range(rng.randint(2, 10))]
    for _ in range(rng.randint(0, 2)):
      # Sentence-initial, before a space, '.', ',' or other punctuation, or
      # glued into a longer word: only some of these get marked.
      form = rng.choice(["{}", "{}", "{}.", "{},", "{}!", "{}'s", "x{}",
                         "{}x"])
      word = form.format(rng.choice([pronoun, pronoun.capitalize()]))
      words.insert(rng.randint(0, len(words)), word)
    examples.append({
        "sentence": " ".join(words), "pronoun": pronoun,
        "candidates": _strings([_text(rng, 1, 10), _text(rng, 1, 10)]),
        "label": np.int64(rng.randrange(2))})
  return examples


def _answers(rng, context):
  """Gold answers: spans of the context (as in SQuAD), plus free text."""
  answers = []
  for _ in range(rng.randint(1, 3)):
    if context and rng.random() < 0.7:
      start = rng.randrange(len(context))
      answers.append(context[start:start + rng.randint(1, 15)])
    else:
      answers.append(_text(rng, 1, 12))
  return answers


def _squad_examples():
  rng = _rng("squad")
  examples = []
  for i, context in enumerate(_texts(rng, len(_FIXED_TEXTS) + _NUM_RANDOM)):
    answers = _answers(rng, context)
    examples.append({
        "id": f"squad-{i}", "title": _text(rng, 0, 8), "context": context,
        "question": _text(rng),
        "answers": {"text": _strings(answers),
                    "answer_start": np.array([0] * len(answers), np.int32)}})
  return examples


def _mrqa_examples(config):
  rng = _rng(f"mrqa/{config}")
  examples = []
  for i, context in enumerate(_texts(rng, len(_FIXED_TEXTS) + _NUM_RANDOM)):
    context = rng.choice(["[PAR] [TLE] ", "[DOC] ", ""]) + context
    examples.append({
        "qid": f"{config}-{i}", "subset": config, "context": context,
        "question": _text(rng), "answers": _strings(_answers(rng, context))})
  return examples


# ------------------------------------------------------------- pipelines --


def _spec(value):
  """The tf.TensorSpec of a generated feature (lists have variable length)."""
  if isinstance(value, dict):
    return {k: _spec(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    dtype = tf.string if value.dtype == object else tf.as_dtype(value.dtype)
    return tf.TensorSpec([None], dtype)
  if isinstance(value, str):
    return tf.TensorSpec([], tf.string)
  return tf.TensorSpec([], tf.as_dtype(np.asarray(value).dtype))


def examples(dataset: str) -> List[Dict[str, Any]]:
  """The generated examples of a dataset key ('glue/cola', 'squad', ...)."""
  family, _, config = dataset.partition("/")
  if family == "glue":
    return _glue_examples(config)
  if family == "super_glue":
    return _wsc_examples() if config == "wsc.fixed" else (
        _super_glue_examples(config))
  if family == "definite_pronoun_resolution":
    return _dpr_examples()
  if family == "squad":
    return _squad_examples()
  if family == "mrqa":
    return _mrqa_examples(config)
  raise ValueError(f"No examples for {dataset!r}.")


def to_plain(value: Any) -> Any:
  """JSON-able Python of a feature: str for text, int, float, lists, dicts."""
  if isinstance(value, dict):
    return {k: to_plain(v) for k, v in value.items()}
  if isinstance(value, (np.ndarray, list, tuple)):
    return [to_plain(v) for v in value]
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.generic):
    return value.item()
  return value


def digest(values: Any) -> str:
  """A stable fingerprint of generated examples (JSON of `to_plain`)."""
  text = json.dumps(to_plain(values), sort_keys=True, ensure_ascii=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Case:
  """One of our tasks and T5's task it must equal."""

  # Our task's name.
  name: str
  # T5's task (a taskless twin's oracle is T5's plain task + the official
  # first-token removal).
  t5_name: str
  # Key of `examples`.
  dataset: str
  taskless: bool


GLUE_CONFIGS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched",
                "mnli_mismatched", "qnli", "rte", "wnli", "ax")
SUPER_GLUE_CONFIGS = ("boolq", "cb", "copa", "multirc", "record", "rte",
                      "wic", "axb", "axg")
MRQA_CONFIGS = ("squad", "news_qa", "trivia_qa", "search_qa", "hotpot_qa",
                "natural_questions", "bio_asq", "drop", "duo_rc", "race",
                "relation_extraction", "textbook_qa")
_PLAIN = (
    [(f"glue_{c}_v002", f"glue/{c}") for c in GLUE_CONFIGS] +
    [(f"super_glue_{c}_v102", f"super_glue/{c}") for c in SUPER_GLUE_CONFIGS] +
    [(f"super_glue_wsc_v102_simple_{kind}", "super_glue/wsc.fixed")
     for kind in ("train", "eval")] +
    [("dpr_v001_simple", "definite_pronoun_resolution")])
CASES = tuple(
    [Case(name, name, dataset, False) for name, dataset in _PLAIN] +
    [Case("taskless_" + name, name, dataset, True)
     for name, dataset in _PLAIN] +
    [Case("squad_v010_allanswers", "squad_v010_allanswers", "squad", False)])


def text_steps(task: seqio.Task) -> List[Callable]:
  """A task's preprocessors before tokenization: its text-to-text format."""
  steps = []
  for step in task.preprocessors:
    if step is seqio.preprocessors.tokenize:
      break
    steps.append(step)
  return steps


@seqio.map_over_dataset
def remove_first_text_token(x):
  """The official prompt-tuning `remove_first_text_token` (its one regex):
  the taskless oracle."""
  x = dict(x)
  x["inputs"] = tf.strings.regex_replace(x["inputs"], r"^[^ ]* ", "",
                                         replace_global=False)
  return x


def run(steps: Sequence[Callable], rows: Sequence[Mapping[str, Any]]
        ) -> List[Dict[str, Any]]:
  """`steps` (tf.data maps) over the examples -> plain rows."""
  ds = tf.data.Dataset.from_generator(
      lambda: iter(rows), output_signature=_spec(rows[0]))
  for step in steps:
    ds = step(ds)
  return [to_plain(ex) for ex in ds.as_numpy_iterator()]


def mrqa_as_squad(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """MRQA examples under SQuAD's keys (the official `mrqa` is T5's SQuAD
  formatting of them)."""
  return [{"id": ex["qid"], "context": ex["context"],
           "question": ex["question"], "answers": {"text": ex["answers"]}}
          for ex in rows]


def squad_rows_as_mrqa(rows: Sequence[Mapping[str, Any]]
                       ) -> List[Dict[str, Any]]:
  """T5's SQuAD rows under the official `mrqa`'s output keys."""
  return [{"idx": r["id"], "question": r["question"], "context": r["context"],
           "answer": r["targets"], "answers": r["answers"],
           "inputs": r["inputs"], "targets": r["targets"]} for r in rows]


def scored(rows: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
  """The rows a metric sees: hidden labels ('<unk>', STS-B's -1, WSC's -1)
  and ReCoRD queries without answers only occur on test splits, which are
  never scored."""
  return [r for r in rows if r["targets"] not in ("<unk>", "-1.0") and
          r.get("label", 0) != -1]


def predictions(name: str, rows: Sequence[Mapping[str, Any]]) -> List[str]:
  """Right, wrong, invalid and empty predictions for the (scored) rows."""
  rng = _rng(f"predictions/{name}")
  label_words = sorted({r["targets"] for r in rows})
  out = []
  for row in rows:
    target = row["targets"]
    pool = [target, target, "", "not a label", target.upper(), " " + target]
    pool += label_words[:8]
    if "stsb" in name:
      pool += ["0.0", "2.4", "5.0", "3.8", "nan?", "-1"]
    if "answers" in row:  # QA and ReCoRD: also the unpadded gold answers.
      golds = list(row["answers"])
      pool += golds + [" ".join(g.split()) for g in golds]
      pool += [g.replace(" ", "") for g in golds]
    out.append(rng.choice(pool))
  return out


def _postprocessor_example(row: Mapping[str, Any]) -> Dict[str, Any]:
  """A row as seqio hands it to a postprocessor: text as bytes, the target
  text also under 'targets_pretokenized'."""
  def as_bytes(value):
    if isinstance(value, str):
      return value.encode("utf-8")
    if isinstance(value, list):
      return [as_bytes(v) for v in value]
    return value
  ex = {k: as_bytes(v) for k, v in row.items()}
  ex["targets_pretokenized"] = ex["targets"]
  return ex


def scores(task: seqio.Task, rows: Sequence[Mapping[str, Any]],
           predicted: Sequence[str]) -> Dict[str, float]:
  """The task's postprocessor and metric functions on rows and predictions."""
  examples = [_postprocessor_example(r) for r in rows]
  targets = [task.postprocess_fn(r["targets"], example=ex, is_target=True)
             for r, ex in zip(rows, examples)]
  preds = [task.postprocess_fn(p, example=ex, is_target=False)
           for p, ex in zip(predicted, examples)]
  out = {}
  for metric in task.metric_fns:
    out.update(metric(targets, preds))
  return {k: float(v) for k, v in out.items()}
