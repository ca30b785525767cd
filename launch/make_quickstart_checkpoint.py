"""Builds the quickstart's frozen model: a tiny T5 pretrained on synthetic tasks.

The README quickstart prompt-tunes a frozen T5 on a task the model was never
told the name of (`quickstart_sentiment_taskless`, see tasks/quickstart.py).
That needs a pretrained model that is small enough to commit (< 2 MB) and to
run in minutes on a laptop CPU, and that really has the skill. This script
makes it from scratch, with the project's own training loop:

1. a random-init T5 of `SIZES[--size]` (T5.1.1 style: gated-GELU, untied
   logits; 'base' = `QUICKSTART_CONFIG`, ~0.25M parameters; 'small' and
   'large' are the other rungs of the mini-study's ladder) is written as a
   Hugging Face checkpoint;
2. it is model-tuned (every weight trains, `train(mode='model')`) on the
   prefixed multi-task mixture `quickstart_pretrain` ('first: ...',
   'last: ...', 'sentiment: ...'), and evaluated on each task's validation
   split;
3. the final weights are restored from the run's orbax checkpoint and
   exported with `save_hf` (float32 config.json + model.safetensors, which
   `load_pretrained` reads back bit-exactly, checked here) into
   tasks/quickstart_checkpoint/ ('base') or tasks/mini_study_checkpoints/
   <size>/, next to a README.md recording the metrics.

Run from the repository root (about 10 minutes on 2 CPU cores; the result is
committed, so users never need to):

  python launch/make_quickstart_checkpoint.py              # base
  python launch/make_quickstart_checkpoint.py --size small
  python launch/make_quickstart_checkpoint.py --size large

`--help` lists the options (--output, --work_dir to keep the run directory,
--train_steps, --batch_size, --learning_rate, --seed, ...). Data order,
initialisation and training are seeded: a rerun on the same machine writes
the same bytes; other CPUs may differ in the last bits, so a regenerated
checkpoint is equivalent, not identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

# Before TensorFlow (via seqio) is imported: keep its C++ log quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np
from flax import traverse_util

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run as a script: make the repository importable
  sys.path.insert(0, _ROOT)

from prompt_tuning.training import checkpoints
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.pretrained.hf_export import save_hf
from prompt_tuning.models import T5
from prompt_tuning.models import T5Config
from prompt_tuning.training import loop
from prompt_tuning.training import optimizers
from prompt_tuning.training.state import create_train_state
from prompt_tuning.tasks import quickstart
# pylint: enable=g-import-not-at-top,wrong-import-position

# Big enough to learn three skills from scratch in minutes, small enough to
# commit: 64 wide, 4 heads x 16, 2+2 layers. The vocabulary covers seqio's
# ByteVocabulary (259 ids), padded to a multiple of 128 like T5's.
QUICKSTART_CONFIG = T5Config(
    vocab_size=384, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
    num_encoder_layers=2, num_decoder_layers=2,
    mlp_activations=("gelu", "linear"), logits_via_embedding=False,
    # Written to config.json for the prompt-tuning runs (the paper's 0.1);
    # pretraining here overrides it with --dropout_rate.
    dropout_rate=0.1, dtype="float32")
# The mini-study's ladder of frozen models (gin_configs/sweeps/mini_study.toml):
# three clearly different sizes, all pretrained the same way on the same
# mixture. 'base' is the quickstart's model itself (committed once).
SIZES = {
    "small": QUICKSTART_CONFIG.replace(emb_dim=32, num_heads=2, head_dim=16,
                                       mlp_dim=64),
    "base": QUICKSTART_CONFIG,
    "large": QUICKSTART_CONFIG.replace(emb_dim=112, num_heads=4, head_dim=28,
                                       mlp_dim=224),
}
# Pretraining per size. The large model diverged to a poor optimum at 2e-3
# (first/last-word accuracy 11% / 13% after 3,000 steps); at 1e-3 it needs
# more steps.
RECIPES = {
    "small": {"learning_rate": 2e-3, "train_steps": 3000},
    "base": {"learning_rate": 2e-3, "train_steps": 3000},
    "large": {"learning_rate": 1e-3, "train_steps": 4000},
}
OUTPUTS = {
    "small": os.path.join(_ROOT, "tasks", "mini_study_checkpoints", "small"),
    "base": os.path.join(_ROOT, "tasks", "quickstart_checkpoint"),
    "large": os.path.join(_ROOT, "tasks", "mini_study_checkpoints", "large"),
}


def _parse(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--size", default="base", choices=sorted(SIZES),
                      help="which model of the ladder: 'base' is the "
                      "quickstart's; 'small' and 'large' complete the "
                      "mini-study's size curve.")
  parser.add_argument("--output", default="",
                      help="HF checkpoint directory to (over)write; default: "
                      "the size's folder under tasks/.")
  parser.add_argument("--work_dir", default="",
                      help="run directory for the pretraining checkpoints; "
                      "default: a temporary directory, deleted at the end.")
  parser.add_argument("--train_steps", type=int, default=None,
                      help="default: the size's recipe (RECIPES)")
  parser.add_argument("--batch_size", type=int, default=32)
  # Constant, no parameter scaling (as the model-tuning recipe): 1e-2 stalled
  # (loss flat at 0.5 for 1,500 steps), 1e-3 learns about half as fast.
  parser.add_argument("--learning_rate", type=float, default=None,
                      help="default: the size's recipe (RECIPES)")
  parser.add_argument("--dropout_rate", type=float, default=0.0,
                      help="pretraining dropout (the data are unlimited in "
                      "kind, so regularisation only slows learning).")
  parser.add_argument("--eval_period", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  recipe = RECIPES[args.size]
  for name, value in recipe.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


def _write_readme(output: str, args: argparse.Namespace, config: T5Config,
                  parameters: int, metrics: dict, seconds: float) -> None:
  accuracies = "\n".join(
      f"| `{name.split('/')[0]}` | {value:.1f} |"
      for name, value in sorted(metrics.items())
      if name.endswith("/accuracy"))
  role = ("The frozen model of the README quickstart (and the 'base' rung of "
          "the mini-study's ladder)" if args.size == "base" else
          f"The '{args.size}' rung of the mini-study's ladder of frozen models "
          "(gin_configs/sweeps/mini_study.toml)")
  text = f"""# {os.path.basename(os.path.normpath(output))}

{role}.

A tiny T5.1.1-style T5 with {parameters:,} parameters ({config.emb_dim} wide,
{config.num_heads} heads x {config.head_dim}, MLP {config.mlp_dim}, \
{config.num_encoder_layers}+{config.num_decoder_layers} layers, vocabulary \
{config.vocab_size}, gated-GELU, untied), as a
Hugging Face checkpoint (float32). It was trained from a random init by
`launch/make_quickstart_checkpoint.py` on the mixture `quickstart_pretrain`
(tasks/quickstart.py) for {args.train_steps} steps of batch \
{args.batch_size} (Adafactor,
learning rate {args.learning_rate}, dropout {args.dropout_rate}, seed \
{args.seed}; {seconds / 60:.1f} minutes on the machine that made it).

Validation accuracy (%, greedy decoding) at the end of pretraining:

| task | accuracy |
|---|---|
{accuracies}

Regenerate with `python launch/make_quickstart_checkpoint.py --size {args.size}`.
"""
  with open(os.path.join(output, "README.md"), "w", encoding="utf-8") as f:
    f.write(text)


def _restore_params(run_dir: str, init_dir: str, config: T5Config,
                    optimizer: optimizers.AdafactorConfig, seed: int):
  """The model-tuned params of the run's newest checkpoint.

  The restore target is a train state shaped like the run's: the model
  tuned in `run_dir` started from `init_dir`, with the same optimizer.
  """
  _, init_params = load_pretrained(init_dir, config=config)
  target = create_train_state(init_params, optimizers.adafactor(optimizer),
                              jax.random.PRNGKey(seed))
  with checkpoints.Checkpointer(run_dir) as ckpt:
    state, _ = ckpt.restore(target)
  return state.params


def main(argv=None) -> int:
  args = _parse(argv)
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.info("jax %s, devices: %s", jax.__version__, jax.devices())
  start = time.perf_counter()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="quickstart_ckpt_")
  init_dir = os.path.join(work_dir, "init")
  run_dir = os.path.join(work_dir, "run")
  config = SIZES[args.size]
  output = args.output or OUTPUTS[args.size]

  tokens = np.ones((1, 4), np.int32)
  variables = jax.jit(T5(config).init)(jax.random.PRNGKey(args.seed), tokens,
                                       tokens, tokens)
  save_hf(variables["params"], config, init_dir)

  optimizer = optimizers.AdafactorConfig(
      learning_rate=args.learning_rate, decay_rate=0.8, factored=True,
      multiply_by_parameter_scale=False, weight_decay_rate=0.0)
  schedule = loop.TrainConfig(
      train_steps=args.train_steps, batch_size=args.batch_size,
      seed=args.seed, checkpoint_period=args.train_steps, keep_checkpoints=1,
      eval_period=args.eval_period, log_period=100)
  result = loop.train(
      model_dir=run_dir, initial_checkpoint_path=init_dir,
      model_config=config, mixture_or_task_name=quickstart.PRETRAIN_MIXTURE,
      task_feature_lengths=quickstart.FEATURE_LENGTHS, mode="model",
      optimizer=optimizer, schedule=schedule,
      dropout_rate=args.dropout_rate, mesh_shape=(-1, 1))
  seconds = time.perf_counter() - start

  params = _restore_params(run_dir, init_dir, config, optimizer, args.seed)
  save_hf(params, config, output)
  # What the quickstart will freeze must be exactly what was trained.
  _, loaded = load_pretrained(output)
  trained = traverse_util.flatten_dict(params, sep="/")
  for name, value in traverse_util.flatten_dict(loaded, sep="/").items():
    np.testing.assert_array_equal(np.asarray(value),
                                  np.asarray(trained[name]), err_msg=name)
  _write_readme(output, args, config, result["parameters"]["total"],
                result["eval"], seconds)
  if not args.work_dir:
    shutil.rmtree(work_dir)
  size = sum(os.path.getsize(os.path.join(output, f))
             for f in os.listdir(output))
  logging.info("Wrote %s (%d bytes) in %.1f min; eval: %s", output, size,
               seconds / 60, json.dumps(result["eval"], sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
