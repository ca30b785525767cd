"""SeqIO task registrations, imported as `prompt_tuning.tasks.<module>`.

Each module registers its tasks when imported (once per process):
`super_glue` (SuperGLUE v1.0.2 and DPR, plain and taskless), `glue` (GLUE,
plain and taskless), `mrqa` (T5's SQuAD and MRQA: SQuAD -> out-of-domain
QA), `paraphrase` (QQP <-> MRPC), `custom_example` (a task from local TSV
files: copy it for your own data), `quickstart` (the README quickstart's
synthetic tasks). The vocabulary is T5's SentencePiece model
(`$T5_VOCABULARY` overrides its path).
`python -m prompt_tuning.tasks list` prints every name.
"""
