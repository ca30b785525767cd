"""Builds the decoder-only quickstart's frozen model: a tiny Llama-style LM.

The decoder-only counterpart of `launch/make_quickstart_checkpoint.py`, made
the same way with the project's own loop:

1. a random-init Llama-style LM (`QUICKSTART_DECODER_CONFIG`: RMSNorm,
   rotary positions, SwiGLU, grouped-query attention with 4 query and 2
   key/value heads, untied logits; ~0.12M parameters; vocabulary 384 over
   seqio's ByteVocabulary, EOS 1, no BOS) is written as a Hugging Face
   checkpoint (`save_hf_decoder`: `LlamaForCausalLM` reads it);
2. it is model-tuned (`train(mode='model')`) on the prefixed mixture
   `quickstart_pretrain` as LM rows `inputs targets` with the loss on the
   targets (`data.decoder_features`), and evaluated on each task;
3. the final weights are restored from the run's checkpoint and exported
   into tasks/quickstart_decoder_checkpoint/ (read back bit-exactly, checked
   here), next to a README.md with the metrics.

Run from the repository root (minutes on 2 CPU cores; the result is
committed, so users never need to):

  python launch/make_quickstart_decoder.py

Seeded: a rerun on the same machine writes the same bytes; other CPUs may
differ in the last bits.
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

from prompt_tuning.models.decoder_only import DecoderConfig
from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.pretrained import load_decoder_only
from prompt_tuning.pretrained.hf_export import save_hf_decoder
from prompt_tuning.training import checkpoints
from prompt_tuning.training import loop
from prompt_tuning.training import optimizers
from prompt_tuning.training.state import create_train_state
from prompt_tuning.tasks import quickstart
# pylint: enable=g-import-not-at-top,wrong-import-position

# As wide as the T5 quickstart's model, with twice its layers (one stack).
QUICKSTART_DECODER_CONFIG = DecoderConfig(
    vocab_size=384, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16,
    mlp_dim=128, num_layers=4, family="llama", norm_eps=1e-6,
    bos_id=None, eos_id=1, dtype="float32")
OUTPUT = os.path.join(_ROOT, "tasks", "quickstart_decoder_checkpoint")


def _parse(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--output", default=OUTPUT)
  parser.add_argument("--work_dir", default="",
                      help="run directory for the pretraining checkpoints; "
                      "default: a temporary directory, deleted at the end.")
  parser.add_argument("--train_steps", type=int, default=3000)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--learning_rate", type=float, default=2e-3)
  parser.add_argument("--eval_period", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def _write_readme(output: str, args: argparse.Namespace,
                  config: DecoderConfig, parameters: int, metrics: dict,
                  seconds: float) -> None:
  accuracies = "\n".join(
      f"| `{name.split('/')[0]}` | {value:.1f} |"
      for name, value in sorted(metrics.items())
      if name.endswith("/accuracy"))
  text = f"""# quickstart_decoder_checkpoint

The frozen model of the decoder-only quickstart
(gin_configs/runs/quickstart_decoder.gin).

A tiny Llama-style LM with {parameters:,} parameters ({config.emb_dim} wide,
{config.num_heads} query and {config.num_kv_heads} key/value heads x \
{config.head_dim}, MLP {config.mlp_dim}, {config.num_layers} layers,
vocabulary {config.vocab_size} over seqio's ByteVocabulary, EOS \
{config.eos_id}, no BOS, SwiGLU, untied), as a Hugging Face
checkpoint (float32, `LlamaForCausalLM`). It was trained from a random init
by `launch/make_quickstart_decoder.py` on the mixture `quickstart_pretrain`
(tasks/quickstart.py) as LM rows `inputs targets`, loss on the targets, for
{args.train_steps} steps of batch {args.batch_size} (Adafactor, learning rate
{args.learning_rate}, seed {args.seed}; {seconds / 60:.1f} minutes on the
machine that made it).

Validation accuracy (%, greedy decoding) at the end of pretraining:

| task | accuracy |
|---|---|
{accuracies}

Regenerate with `python launch/make_quickstart_decoder.py`.
"""
  with open(os.path.join(output, "README.md"), "w", encoding="utf-8") as f:
    f.write(text)


def main(argv=None) -> int:
  args = _parse(argv)
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  start = time.perf_counter()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="quickstart_decoder_")
  init_dir = os.path.join(work_dir, "init")
  run_dir = os.path.join(work_dir, "run")
  config = QUICKSTART_DECODER_CONFIG

  tokens = np.ones((1, 4), np.int32)
  variables = jax.jit(DecoderOnlyLM(config).init)(
      jax.random.PRNGKey(args.seed), tokens)
  save_hf_decoder(variables["params"], config, init_dir)

  optimizer = optimizers.AdafactorConfig(
      learning_rate=args.learning_rate, decay_rate=0.8, factored=True,
      multiply_by_parameter_scale=False, weight_decay_rate=0.0)
  schedule = loop.TrainConfig(
      train_steps=args.train_steps, batch_size=args.batch_size,
      seed=args.seed, checkpoint_period=args.train_steps, keep_checkpoints=1,
      eval_period=args.eval_period, log_period=100)
  result = loop.train(
      model_dir=run_dir, initial_checkpoint_path=init_dir, model_config=None,
      mixture_or_task_name=quickstart.PRETRAIN_MIXTURE,
      task_feature_lengths=quickstart.FEATURE_LENGTHS, mode="model",
      optimizer=optimizer, schedule=schedule, dropout_rate=None,
      mesh_shape=(-1, 1))
  seconds = time.perf_counter() - start

  # The restore target: a train state shaped like the run's.
  _, init_params = load_decoder_only(init_dir)
  target = create_train_state(init_params, optimizers.adafactor(optimizer),
                              jax.random.PRNGKey(args.seed))
  with checkpoints.Checkpointer(run_dir) as ckpt:
    state, _ = ckpt.restore(target)
  save_hf_decoder(state.params, config, args.output)
  # What the quickstart will freeze must be exactly what was trained.
  _, loaded = load_decoder_only(args.output)
  trained = traverse_util.flatten_dict(state.params, sep="/")
  for name, value in traverse_util.flatten_dict(loaded, sep="/").items():
    np.testing.assert_array_equal(np.asarray(value),
                                  np.asarray(trained[name]), err_msg=name)
  _write_readme(args.output, args, config, result["parameters"]["total"],
                result["eval"], seconds)
  if not args.work_dir:
    shutil.rmtree(work_dir)
  size = sum(os.path.getsize(os.path.join(args.output, f))
             for f in os.listdir(args.output))
  logging.info("Wrote %s (%d bytes) in %.1f min; eval: %s", args.output, size,
               seconds / 60, json.dumps(result["eval"], sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
