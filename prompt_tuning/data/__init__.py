"""Data: SeqIO input pipelines, the task catalogue and the tasks' formats.

Owns everything between a registered SeqIO task and a numpy batch:
`pipeline` (deterministic, resumable, per-host batches and padded evaluation
batches), `registry` (the task catalogue: families, label words, close-match
lookup, `python -m prompt_tuning.tasks list`), `custom_tasks` (tasks from your
TSV/JSONL files), `vocabularies` (T5/mT5 SentencePiece by path),
`preprocessors/` (T5's text-to-text formats) and `postprocessors` (model
output text -> what the metrics compare). May import `metrics/`, seqio, tfds
and TensorFlow; never `models/`, `prompts/`, `training/` or gin. Importing
this package imports none of its modules.
"""
