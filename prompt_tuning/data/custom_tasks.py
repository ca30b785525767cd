"""Registering your own task from local TSV or JSONL files, in one call.

`register_from_files` reads each split's file, formats its rows as T5 does
(classification: '[prefix] <field>: <value> ...' -> label word; generation:
an inputs column -> a targets column), and registers a SeqIO task with the
vocabulary, postprocessor and metrics that fit, plus its label words in the
task catalogue (so the class-label prompt initialiser and rank
classification find them by the task's name). Files are read into memory
when the task is registered, so a bad file fails there, in one line naming
the file, the line and the fix; for data larger than memory register a
`seqio.Task` over a `seqio.TextLineDataSource` instead.

`function_source` is the in-memory source the quickstart and the tests use.
"""

from __future__ import annotations

import csv
import json
import os
from typing import (Callable, Dict, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import seqio
import tensorflow as tf

from prompt_tuning import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

Examples = Dict[str, List]
# Metric names `register_from_files` accepts, by mode.
CLASSIFICATION_METRICS = {
    "accuracy": lambda labels: metrics.accuracy,
    "f1": lambda labels: metrics.f1_score_with_invalid,
    "macro_f1": lambda labels: metrics.mean_multiclass_f1(len(labels)),
    "matthews": lambda labels: metrics.matthews_corrcoef,
}
GENERATION_METRICS = {"squad": metrics.squad}
FORMATS = ("tsv", "jsonl")


def function_source(load: Callable[[str], Examples],
                    num_input_examples: Mapping[str, int]
                    ) -> seqio.FunctionDataSource:
  """A seqio source over in-memory examples.

  Args:
    load: split -> {feature: list of values}, all lists one length.
    num_input_examples: split -> example count (also names the splits).
  """
  def dataset_fn(split: str, shuffle_files: bool,
                 seed: Optional[int] = None) -> tf.data.Dataset:
    # There are no files to shuffle; shuffling is the Task's own seeded
    # shuffle buffer.
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(load(split))
  return seqio.FunctionDataSource(
      dataset_fn, splits=tuple(num_input_examples),
      num_input_examples=dict(num_input_examples))


def _format_of(path: str, file_format: Optional[str]) -> str:
  if file_format:
    if file_format not in FORMATS:
      raise ValueError(f"Unknown file format {file_format!r} for {path}; use "
                       f"one of {FORMATS}.")
    return file_format
  extension = os.path.splitext(path)[1].lower()
  if extension in (".tsv", ".tab"):
    return "tsv"
  if extension in (".jsonl", ".json"):
    return "jsonl"
  raise ValueError(f"Cannot tell the format of {path} from its extension: "
                   f"name it .tsv or .jsonl, or pass file_format=.")


def read_rows(path: str, file_format: Optional[str] = None
              ) -> List[Dict[str, str]]:
  """Rows of a TSV (first line = column names) or JSONL (one object a line).

  Values are kept as text (JSON numbers and booleans become their JSON
  text, e.g. 1 -> '1', true -> 'true').

  Raises:
    ValueError: (one line) a missing/empty file or a malformed line.
  """
  if not os.path.isfile(path):
    raise ValueError(f"Task file not found: {path}.")
  kind = _format_of(path, file_format)
  rows = []
  with open(path, encoding="utf-8", newline="") as f:
    if kind == "tsv":
      # QUOTE_NONE: GLUE-style TSVs contain bare quote characters.
      reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
      header = next(reader, None)
      if not header:
        raise ValueError(f"{path} is empty: a TSV task file needs a first "
                         f"line of column names.")
      for number, values in enumerate(reader, start=2):
        if not values:
          continue
        if len(values) != len(header):
          raise ValueError(
              f"{path} line {number}: {len(values)} tab-separated values for "
              f"{len(header)} columns ({', '.join(header)}).")
        rows.append(dict(zip(header, values)))
    else:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path} line {number}: not JSON ({e.msg}).") from None
        if not isinstance(row, dict):
          raise ValueError(f"{path} line {number}: expected a JSON object.")
        rows.append({k: v if isinstance(v, str) else json.dumps(v)
                     for k, v in row.items()})
  if not rows:
    raise ValueError(f"{path} has no examples.")
  return rows


def _column(rows: Sequence[Mapping[str, str]], key: str, path: str,
            file_format: Optional[str]) -> List[str]:
  values = []
  for number, row in enumerate(rows):
    if key not in row:
      where = ("row" if _format_of(path, file_format) == "tsv"
               else "line")
      raise ValueError(
          f"{path} {where} {number + 1}: no field {key!r} (fields: "
          f"{', '.join(row)}); pass the right field name to "
          f"register_from_files.")
    values.append(row[key])
  return values


def _label_words(raw: Mapping[str, List[str]],
                 label_words: Union[None, Sequence[str], Mapping[str, str]]
                 ) -> Tuple[Tuple[str, ...], Dict[str, str]]:
  """(label words in class order, raw label -> word)."""
  seen = sorted({v for values in raw.values() for v in values})
  if label_words is None:
    return tuple(seen), {v: v for v in seen}
  if isinstance(label_words, Mapping):
    words = tuple(dict.fromkeys(label_words.values()))
    return words, dict(label_words)
  words = tuple(label_words)
  # Raw labels may be the words themselves or their class ids.
  mapping = {w: w for w in words}
  mapping.update({str(i): w for i, w in enumerate(words)})
  return words, mapping


def register_from_files(
    name: str,
    files: Mapping[str, str],
    *,
    text_fields: Sequence[str] = (),
    label_field: str = "label",
    label_words: Union[None, Sequence[str], Mapping[str, str]] = None,
    inputs_field: str = "inputs",
    targets_field: str = "targets",
    task_prefix: str = "",
    file_format: Optional[str] = None,
    metric_names: Sequence[str] = (),
    vocabulary: Optional[seqio.Vocabulary] = None,
    family: str = "custom",
) -> str:
  """Registers a SeqIO task over local TSV/JSONL files; returns its name.

  Classification (when `text_fields` is given): inputs are
  '[task_prefix ]<field>: <value> <field>: <value> ...' in the given field
  order, targets the label word of `label_field`; predictions outside the
  label words count as wrong. Generation (no `text_fields`): inputs and
  targets are the `inputs_field` and `targets_field` columns as they are.

  Args:
    name: the task name (a name already registered is left as it is).
    files: split -> path, e.g. {'train': 'train.tsv', 'validation':
      'dev.jsonl'}; '.tsv' has a header line, '.jsonl' one object a line.
    text_fields: the input columns of a classification task.
    label_field: its label column.
    label_words: the target word of each label: a list (raw labels are the
      words or their 0-based class ids), a mapping raw label -> word, or
      None (the distinct raw labels, sorted, are the words).
    inputs_field: a generation task's input column.
    targets_field: a generation task's target column.
    task_prefix: a leading task word for the inputs ('' = taskless, as the
      paper's prompts are trained).
    file_format: 'tsv' or 'jsonl' for every file; default by extension.
    metric_names: classification: any of 'accuracy', 'f1' (binary, class 1
      positive), 'macro_f1', 'matthews' (default accuracy); generation:
      'squad' (exact match and token F1, the default). Classification always
      adds `invalid_prediction_rate`.
    vocabulary: default T5's SentencePiece vocabulary.
    family: the catalogue group for `python -m prompt_tuning.tasks list`.

  Returns:
    `name`.

  Raises:
    ValueError: (one line) a missing file or column, an unknown label or
      metric, or no files.
  """
  if not files:
    raise ValueError(f"register_from_files({name!r}) needs files: "
                     f"{{'train': path, 'validation': path}}.")
  classify = bool(text_fields)
  rows = {split: read_rows(path, file_format) for split, path in files.items()}
  examples: Dict[str, Examples] = {}
  labels: Tuple[str, ...] = ()
  if classify:
    raw = {split: _column(rows[split], label_field, files[split], file_format)
           for split in rows}
    labels, to_word = _label_words(raw, label_words)
    for split, split_rows in rows.items():
      columns = {f: _column(split_rows, f, files[split], file_format)
                 for f in text_fields}
      inputs = [" ".join(([task_prefix] if task_prefix else []) +
                         [f"{f}: {columns[f][i]}" for f in text_fields])
                for i in range(len(split_rows))]
      targets = []
      for i, value in enumerate(raw[split]):
        if value not in to_word:
          raise ValueError(
              f"{files[split]} example {i + 1}: label {value!r} is not one of "
              f"{sorted(to_word)}; fix the file or pass label_words=.")
        targets.append(to_word[value])
      examples[split] = {"inputs": inputs, "targets": targets}
    chosen = list(metric_names) or ["accuracy"]
    unknown = [m for m in chosen if m not in CLASSIFICATION_METRICS]
    metric_fns = [CLASSIFICATION_METRICS[m](labels) for m in chosen
                  if m in CLASSIFICATION_METRICS]
    metric_fns.append(metrics.invalid_rate(labels))
    postprocess = postprocessors.class_labels(labels)
  else:
    for split, split_rows in rows.items():
      inputs = _column(split_rows, inputs_field, files[split], file_format)
      targets = _column(split_rows, targets_field, files[split], file_format)
      if task_prefix:
        inputs = [f"{task_prefix} {text}" for text in inputs]
      # One gold answer per example, in the list form the QA metric takes.
      examples[split] = {"inputs": inputs, "targets": targets,
                         "answers": [[t] for t in targets]}
    chosen = list(metric_names) or ["squad"]
    unknown = [m for m in chosen if m not in GENERATION_METRICS]
    metric_fns = [GENERATION_METRICS[m] for m in chosen
                  if m in GENERATION_METRICS]
    postprocess = postprocessors.qa_answers
  if unknown:
    known = CLASSIFICATION_METRICS if classify else GENERATION_METRICS
    raise ValueError(f"Unknown metric(s) {unknown} for task {name!r}; use "
                     f"{sorted(known)}.")
  vocabulary = vocabulary or vocabularies.t5_vocabulary()
  registry.add_task(
      name, family=family, class_labels=labels,
      description="from " + ", ".join(
          sorted({os.path.basename(p) for p in files.values()})),
      source=function_source(lambda split: examples[split],
                             {s: len(e["inputs"]) for s, e in examples.items()}),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=vocabularies.output_features(vocabulary),
      postprocess_fn=postprocess,
      metric_fns=metric_fns,
      shuffle_buffer_size=max(len(e["inputs"]) for e in examples.values()))
  return name
