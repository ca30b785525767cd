"""One frozen model, many prompts: the runs that serve a prompt library.

`frozen` (the frozen T5 on the mesh, the prompt library read in every
format, and `MixedRunner`: jitted mixed-prompt decoding and rank
classification), `mixed` (inference over rows that each name their prompt
or task, `infer_mixed`), `ensemble` (K prompts evaluated in one pass, each
prompt's metrics, their mean and best, and the majority vote's),
`analysis` (nearest vocabulary tokens of a prompt, SPoT similarity ranking,
PEFT export and import). The array-level pieces live in `prompts/`
(`library`, `mixed`, `ensemble`, `nearest`, `similarity`, `peft`); this
level adds checkpoints, tasks, vocabularies and files. No gin.
"""
