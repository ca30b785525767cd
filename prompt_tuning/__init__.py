"""Prompt tuning (Lester et al., 2021) on frozen T5 models in JAX/Flax.

The folders are the architecture, bottom to top: `models/` (the frozen T5),
`metrics/` (T5's metrics), `data/` (SeqIO pipelines, the task catalogue, the
tasks' formats), `prompts/` (the soft prompt), `pretrained/` (reading T5X and
Hugging Face checkpoints), `training/` (train state, steps, the loop, run
checkpoints, evaluation), `bench/` (benchmarks), then the entry points
(`train`, `eval`, `infer`, `smoke`, with `cli` and `configurables`, the only
modules that import gin). `partitioning` (mesh, rules table, specs) is used at
every level. A module imports only from its own level or below
(`tests/layout_test.py` checks this). The registered SeqIO tasks live in the
repository's `tasks/`, installed as `prompt_tuning.tasks`.
"""
