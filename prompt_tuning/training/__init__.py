"""Training: train state, loss, optimizer, steps, the loop, run checkpoints.

Owns what happens to a prompt once a model and a task exist: `state` (what
trains vs what is frozen), `losses`, `optimizers` (the paper's Adafactor),
`step` (the pure train/eval steps), `setup` (building the frozen model and the
prompt), `loop` (`train(...)`, the function gin configures), `checkpoints`
(orbax checkpoints of what trains, resume, prompt export, best-by-dev),
`evaluation` (seqio's evaluator over our decoding and rank classification),
`eval_logs` (what an evaluation writes: metric log, predictions JSONL),
`inference` (evaluation during training), `runs` (eval / infer runs of a
saved prompt), `run_directory` (MODEL_DIR checks, `run.lock`, configs written
once a run starts), `prompt_files` (reading saved prompts) and `records`
(plain-JSON run records). May import `models/`, `prompts/`, `pretrained/`, `data/`,
`metrics/`, `partitioning` and orbax; never gin or the entry points.
Importing this package imports none of its modules.
"""
