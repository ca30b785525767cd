"""Experiments: sweeps over gin bindings, and the reports that summarise them.

Owns the paper's studies as data and as results: `sweeps` (the sweep file
format and its expansion into named runs), `runner` (running a sweep's runs
on this machine, resumable, N at a time), `emit` (the same runs as a SLURM
array job and per-run commands for TPU VM pods), `results` (reading run
directories: parameter counts, every evaluation, the step early stopping
selects), `summary` (results.csv and summary.md: mean +- std over seeds, the
SuperGLUE-style score), `figures` (the paper-style PNGs) and `paper` (the
paper's own numbers, for overlays) and `parameter_share` (the paper's
Figure 4 from the configs). Runs are separate `python -m
prompt_tuning.train` processes, so this package never imports gin or
`training/`'s model code: only `training.records` (the run directory's plain
files), `data`-free; JAX only in `parameter_share`, for the models' shapes
(`jax.eval_shape`: no device is touched). The entry points are `python -m prompt_tuning.sweep` and
`python -m prompt_tuning.report`. Importing this package imports none of its
modules.
"""
