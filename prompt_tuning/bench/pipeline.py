"""`python -m prompt_tuning.bench.pipeline`: input-pipeline throughput.

Measures how fast the project's training input pipeline (seqio task ->
tokenize -> EOS -> encoder-decoder feature converter -> fixed-shape numpy
batches, `pipeline.get_dataset`) produces batches for a SuperGLUE-like task, and
compares the rate with what a train step consumes: the pipeline must stay
well ahead of the accelerator (issue target: >= 10x the T5.1.1-XL prompt
step's rate). The task is BoolQ-shaped and formatted exactly like
`super_glue_boolq_v102` ('boolq passage: <~350 words> question: <~9 words>'
-> 'True'/'False'), generated in memory so no dataset download is needed;
the vocabulary is T5's SentencePiece model (`--vocabulary`, default
$T5_VOCABULARY, else the small model seqio ships for its tests: a smaller
vocabulary cuts text into more pieces, so it errs on the slow side).

Unlike the step benchmark this imports TensorFlow and seqio (it measures
them). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

_WORDS = ("the", "river", "court", "ruled", "that", "a", "season", "of",
          "players", "during", "national", "was", "first", "released", "in",
          "episode", "series", "which", "government", "is", "located", "north",
          "station", "album", "film", "won", "award", "after", "city", "by",
          "population", "known", "as", "company", "founded", "its", "water",
          "species", "found", "between", "two", "league", "state", "island")
TASK = "bench_boolq_like"


def _examples(num: int, seed: int) -> Dict[str, List]:
  """BoolQ-shaped raw examples: passage, question, label, idx."""
  rng = np.random.default_rng(seed)
  passages, questions = [], []
  for _ in range(num):
    passages.append(" ".join(rng.choice(_WORDS, int(rng.integers(250, 450)))))
    questions.append("is " + " ".join(rng.choice(_WORDS, 8)))
  return {"passage": passages, "question": questions,
          "label": rng.integers(0, 2, num).tolist(),
          "idx": list(range(num))}


def _default_vocabulary() -> str:
  import seqio  # pylint: disable=g-import-not-at-top
  return os.environ.get("T5_VOCABULARY") or os.path.join(
      os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
      "sentencepiece.model")


def register(vocabulary_path: str, num_examples: int) -> str:
  """Registers the BoolQ-like task (idempotent); returns its name."""
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import custom_tasks  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import registry  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import vocabularies  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tasks import super_glue  # pylint: disable=g-import-not-at-top

  raw = _examples(num_examples, seed=0)
  registry.add_task(
      TASK, family="bench", description="BoolQ-shaped synthetic task",
      source=custom_tasks.function_source(lambda split: raw,
                                          {"train": num_examples}),
      # The text preprocessors of super_glue_boolq_v102 itself.
      preprocessors=super_glue.text_preprocessors("boolq") + [
          seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim],
      output_features=vocabularies.output_features(
          vocabularies.t5_vocabulary(vocabulary_path)),
      metric_fns=[], shuffle_buffer_size=num_examples)
  return TASK


def measure(batch_size: int, inputs: int, targets: int, batches: int,
            warmup: int, vocabulary_path: str,
            num_examples: int) -> Dict[str, object]:
  """Times `batches` batches after `warmup`; returns the JSON record."""
  from prompt_tuning.data import pipeline  # pylint: disable=g-import-not-at-top
  name = register(vocabulary_path, num_examples)
  lengths = {"inputs": inputs, "targets": targets}
  start = time.perf_counter()
  iterator = pipeline.get_dataset(name, lengths, "train", batch_size,
                              shuffle=True, seed=0, repeat=True, shard_id=0,
                              num_shards=1)
  for _ in range(warmup):
    batch = next(iterator)
  first = time.perf_counter() - start
  start = time.perf_counter()
  real_tokens = 0
  for _ in range(batches):
    batch = next(iterator)
    real_tokens += int((batch["encoder_input_tokens"] != 0).sum())
  elapsed = time.perf_counter() - start
  return {
      "what": "input_pipeline", "task": "boolq-like (super_glue_boolq_v102 "
      "format)", "batch": batch_size, "inputs": inputs, "targets": targets,
      "vocabulary": vocabulary_path, "batches": batches,
      "setup_and_warmup_s": round(first, 3),
      "batches_per_s": round(batches / elapsed, 2),
      "examples_per_s": round(batches * batch_size / elapsed, 1),
      "mean_real_input_tokens": round(real_tokens / (batches * batch_size),
                                      1),
      "cpu_count": os.cpu_count(), "machine": platform.processor() or
      platform.machine(),
  }


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m prompt_tuning.bench.pipeline",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--inputs", type=int, default=512)
  p.add_argument("--targets", type=int, default=8)
  p.add_argument("--batches", type=int, default=100)
  p.add_argument("--warmup", type=int, default=20,
                 help="batches before timing (the first fills the shuffle "
                      "buffer)")
  p.add_argument("--examples", type=int, default=4000,
                 help="distinct examples in the synthetic train split")
  p.add_argument("--vocabulary", default=None,
                 help="SentencePiece model (default $T5_VOCABULARY, else "
                      "seqio's test model)")
  p.add_argument("--step_time", type=float, default=None,
                 help="seconds per train step to compare with: prints the "
                      "pipeline/step rate ratio")
  args = p.parse_args(argv)
  record = measure(args.batch, args.inputs, args.targets, args.batches,
                   args.warmup, args.vocabulary or _default_vocabulary(),
                   args.examples)
  if args.step_time:
    record["step_time_s"] = args.step_time
    record["ratio_to_step_rate"] = round(
        record["batches_per_s"] * args.step_time, 2)
  print(json.dumps(record))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
